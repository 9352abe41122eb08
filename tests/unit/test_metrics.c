/* Metrics: label escaping, histogram buckets, counters surviving a new view. */
#include "metrics.h"
#include "test.h"
#include "tmpl.h"

TEST(label_escaping) {
    rsl__buf b = {0};
    ASSERT_EQ(rsl__metrics_label(&b, "a\"b\\c\nd"), 0);
    ASSERT_STR_EQ(b.p, "\"a\\\"b\\\\c\\nd\"");
    rsl__buf_free(&b);
}

TEST(views_share_counters_and_buckets) {
    rsl__metrics m = {0};
    const char *steps1[] = {"a", "b"};
    const char *steps2[] = {"b", "c"};
    rsl__pview *v1 = rsl__metrics_view(&m, "p", steps1, 2);
    rsl__pview *v2 = rsl__metrics_view(&m, "p", steps2, 2); /* as after a reload */
    ASSERT(v1->ps == v2->ps);
    ASSERT(v1->steps[1] == v2->steps[0]);
    rsl__stepstats_observe(v1->steps[1], RSL_OUTCOME_OK, 300000);     /* 0.3 ms */
    rsl__stepstats_observe(v2->steps[0], RSL_OUTCOME_5XX, 20000000);  /* 20 ms */
    rsl__stepstats_observe(v2->steps[0], RSL_OUTCOME_OK, 20000000000); /* 20 s */
    rsl__buf b = {0};
    ASSERT_EQ(rsl__metrics_render(&m, &b), 0);
    ASSERT_CONTAINS(b.p, "resilua_step_duration_seconds_bucket{policy=\"p\",step=\"b\",le=\"0.0005\"} 1\n");
    ASSERT_CONTAINS(b.p, "resilua_step_duration_seconds_bucket{policy=\"p\",step=\"b\",le=\"0.025\"} 2\n");
    ASSERT_CONTAINS(b.p, "resilua_step_duration_seconds_bucket{policy=\"p\",step=\"b\",le=\"10\"} 2\n");
    ASSERT_CONTAINS(b.p, "resilua_step_duration_seconds_bucket{policy=\"p\",step=\"b\",le=\"+Inf\"} 3\n");
    ASSERT_CONTAINS(b.p, "resilua_step_duration_seconds_sum{policy=\"p\",step=\"b\"} 20.020300000\n");
    ASSERT_CONTAINS(b.p, "resilua_step_calls_total{policy=\"p\",step=\"b\",outcome=\"ok\"} 2\n");
    ASSERT_CONTAINS(b.p, "resilua_step_calls_total{policy=\"p\",step=\"b\",outcome=\"5xx\"} 1\n");
    rsl__buf_free(&b);
    rsl__pview_free(v1);
    rsl__pview_free(v2);
    rsl__metrics_free(&m);
}
