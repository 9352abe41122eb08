/*
 * The adaptive concurrency limit (adaptive.h) on an injected clock, each test one
 * invariant of its definition: growth by smoothing * queue per window while latency is
 * flat; the gradient's shrink once the mean is beyond tolerance x the baseline, floored at
 * 0.5; one 0.9 back-off per window with drops, however many; the hold while the
 * application sends less than half the limit; a window that stays open below
 * min_samples; the baseline falling at once and rising at most 2% a window; clamps and a
 * reconfigure that keeps what was learned; convergence against a modelled upstream of
 * known capacity; identical runs giving identical limits.  Through a policy: the
 * rejection's reason, 503s as drops, sig.limit/sig.inflight, /state, file:line errors.
 * Two threads under TSan.
 */
// ctest-labels: tsan
#include "adaptive.h"
#include "clock.h"
#include "resilua.h"
#include "test.h"
#include "fake_clock.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#define MS 1000000LL
#define S 1000000000LL
#define T0 (1000 * S)

static rsl__adaptive *make(int64_t min, int64_t max, int64_t initial) {
    rsl__adaptive_conf c;
    rsl__adaptive_conf_default(&c);
    c.min = min;
    c.max = max;
    c.initial = initial;
    c.window_ns = 100 * MS;
    rsl__adaptive *a = rsl__adaptive_new("a", &c);
    ASSERT(a != NULL);
    return a;
}

static double est(rsl__adaptive *a) {
    rsl__adaptive_stats s;
    rsl__adaptive_stats_get(a, &s);
    return s.est;
}

/* Opens the first window (the first completion opens it). */
static void open_first(rsl__adaptive *a, int64_t *now) {
    ASSERT(rsl__adaptive_acquire(a));
    rsl__adaptive_release(a, *now, 10 * MS, 0);
}

/* Closes a window: one more completion once it is due. */
static void closer(rsl__adaptive *a, int64_t now, int64_t lat) {
    rsl__adaptive_enter(a);
    rsl__adaptive_release(a, now, lat, 0);
}

TEST(grows_by_smoothing_times_queue_while_latency_is_flat) {
    rsl__adaptive *a = make(4, 500, 20);
    int64_t now = T0;
    open_first(a, &now);
    for (int w = 0; w < 10; w++) {
        int64_t in = 0;
        while (rsl__adaptive_acquire(a)) {
            in++;
        }
        for (int64_t i = 0; i < in; i++) {
            rsl__adaptive_release(a, now, 10 * MS, 0);
        }
        now += 100 * MS;
        closer(a, now, 10 * MS);
    }
    /* gradient 1 (the mean is the baseline): est = 0.8 est + 0.2 (est + 4) = est + 0.8 */
    ASSERT(fabs(est(a) - (20 + 10 * 0.8)) < 1e-9);
    ASSERT_EQ(rsl__adaptive_limit(a), 28);
    ASSERT_EQ(rsl__adaptive_inflight(a), 0);
    rsl__adaptive_free(a);
}

/* Fills the limit and completes every call with latency lat, then closes the window. */
static void full_window(rsl__adaptive *a, int64_t *now, int64_t lat, int drop) {
    int64_t in = 0;
    while (rsl__adaptive_acquire(a)) {
        in++;
    }
    for (int64_t i = 0; i < in; i++) {
        rsl__adaptive_release(a, *now, lat, drop);
    }
    *now += 100 * MS;
    closer(a, *now, lat);
}

TEST(shrinks_by_the_gradient_once_latency_passes_tolerance) {
    rsl__adaptive *a = make(4, 500, 100);
    int64_t now = T0;
    open_first(a, &now);
    full_window(a, &now, 10 * MS, 0); /* baseline 10 ms */
    double e0 = est(a);
    /* 20 ms mean: gradient 1.5 * 10 / 20 = 0.75; est = 0.8 e + 0.2 (0.75 e + 4) */
    rsl__adaptive_stats s;
    int64_t in = 0;
    while (rsl__adaptive_acquire(a)) {
        in++;
    }
    for (int64_t i = 0; i < in; i++) {
        rsl__adaptive_release(a, now, 20 * MS, 0);
    }
    now += 100 * MS;
    closer(a, now, 20 * MS);
    rsl__adaptive_stats_get(a, &s);
    ASSERT_EQ(s.baseline_ns, 10 * MS);
    ASSERT(fabs(s.est - (0.8 * e0 + 0.2 * (0.75 * e0 + 4))) < 1e-9);
    /* 100 ms: the gradient is floored at 0.5 */
    double e1 = s.est;
    full_window(a, &now, 100 * MS, 0);
    ASSERT(fabs(est(a) - (0.8 * e1 + 0.2 * (0.5 * e1 + 4))) < 1e-9);
    /* ... and it never goes below min */
    for (int i = 0; i < 200; i++) {
        full_window(a, &now, 100 * MS, 0);
    }
    ASSERT(rsl__adaptive_limit(a) >= 4);
    rsl__adaptive_free(a);
}

TEST(drops_back_off_once_per_window_however_many) {
    rsl__adaptive *a = make(4, 500, 100);
    int64_t now = T0;
    open_first(a, &now);
    full_window(a, &now, 10 * MS, 0);
    double e0 = est(a);
    full_window(a, &now, 10 * MS, 1); /* ~100 drops */
    ASSERT(fabs(est(a) - 0.9 * e0) < 1e-9);
    /* one drop among samples is a back-off too */
    double e1 = est(a);
    ASSERT(rsl__adaptive_acquire(a));
    rsl__adaptive_release(a, now, 10 * MS, 1);
    full_window(a, &now, 10 * MS, 0);
    ASSERT(fabs(est(a) - 0.9 * e1) < 1e-9);
    rsl__adaptive_stats s;
    rsl__adaptive_stats_get(a, &s);
    ASSERT(s.drops >= 100);
    rsl__adaptive_free(a);
}

TEST(holds_while_the_application_sends_less_than_half) {
    rsl__adaptive *a = make(4, 500, 100);
    int64_t now = T0;
    open_first(a, &now);
    full_window(a, &now, 10 * MS, 0);
    double e0 = est(a);
    /* 49 at once (< 104.8 / 2), slow: neither grows nor shrinks */
    for (int w = 0; w < 5; w++) {
        for (int i = 0; i < 49; i++) {
            ASSERT(rsl__adaptive_acquire(a));
        }
        for (int i = 0; i < 49; i++) {
            rsl__adaptive_release(a, now, 50 * MS, 0);
        }
        now += 100 * MS;
        closer(a, now, 50 * MS);
    }
    ASSERT(fabs(est(a) - e0) < 1e-9);
    rsl__adaptive_free(a);
}

TEST(a_window_below_min_samples_stays_open) {
    rsl__adaptive *a = make(4, 500, 20);
    int64_t now = T0;
    open_first(a, &now);
    rsl__adaptive_stats s;
    for (int i = 0; i < 8; i++) { /* 9 samples with open_first's: below 10 */
        now += 100 * MS;
        closer(a, now, 10 * MS);
    }
    rsl__adaptive_stats_get(a, &s);
    ASSERT_EQ(s.windows, 0);
    now += 100 * MS;
    closer(a, now, 10 * MS); /* the tenth */
    rsl__adaptive_stats_get(a, &s);
    ASSERT_EQ(s.windows, 1);
    rsl__adaptive_free(a);
}

TEST(the_baseline_falls_at_once_and_rises_two_percent_a_window) {
    rsl__adaptive *a = make(40, 500, 40); /* >= min_samples in every window */
    int64_t now = T0;
    open_first(a, &now);
    rsl__adaptive_stats s;
    full_window(a, &now, 20 * MS, 0);
    rsl__adaptive_stats_get(a, &s);
    ASSERT_EQ(s.baseline_ns, 10 * MS); /* open_first's 10 ms sample was in that window */
    full_window(a, &now, 5 * MS, 0);
    rsl__adaptive_stats_get(a, &s);
    ASSERT_EQ(s.baseline_ns, 5 * MS); /* at once */
    /* The upstream got slower for good: 40 ms.  While the 5 ms window is among the last
     * RSL_ADAPTIVE_BASE_WINDOWS it stays; then it rises by at most 2% a window. */
    for (int w = 1; w < RSL_ADAPTIVE_BASE_WINDOWS; w++) {
        full_window(a, &now, 40 * MS, 0);
        rsl__adaptive_stats_get(a, &s);
        ASSERT_EQ(s.baseline_ns, 5 * MS);
    }
    int64_t prev = s.baseline_ns;
    for (int w = 0; w < 20; w++) {
        full_window(a, &now, 40 * MS, 0);
        rsl__adaptive_stats_get(a, &s);
        ASSERT(s.baseline_ns > prev);
        ASSERT(s.baseline_ns <= (int64_t)((double)prev * 1.02) + 1);
        prev = s.baseline_ns;
    }
    ASSERT(prev < 40 * MS);
    rsl__adaptive_free(a);
}

TEST(clamps_and_reconfigure_keep_what_was_learned) {
    rsl__adaptive *a = make(4, 30, 20);
    int64_t now = T0;
    open_first(a, &now);
    for (int w = 0; w < 40; w++) {
        full_window(a, &now, 10 * MS, 0);
    }
    ASSERT_EQ(rsl__adaptive_limit(a), 30); /* max */
    rsl__adaptive_conf c;
    rsl__adaptive_conf_get(a, &c);
    c.max = 100;
    c.initial = 50;
    ASSERT_EQ(rsl__adaptive_configure(a, &c), 0);
    ASSERT_EQ(rsl__adaptive_limit(a), 30); /* kept, not reset to initial */
    c.max = 25;
    c.initial = 20;
    ASSERT_EQ(rsl__adaptive_configure(a, &c), 0);
    ASSERT_EQ(rsl__adaptive_limit(a), 25); /* clamped */
    c.min = 0;
    ASSERT_EQ(rsl__adaptive_configure(a, &c), RSL_EINVAL);
    rsl__adaptive_reset(a);
    ASSERT_EQ(rsl__adaptive_limit(a), 20);
    rsl__adaptive_free(a);
}

/*
 * A modelled upstream of N workers, each call 20 ms of work, and a queue of N: with C
 * calls at once the mean latency is 20 ms x max(1, C / N) (Little's law, closed loop), the
 * calls that find a free worker take 20 ms, and past 2N it answers 503 (a drop).  The
 * limit must settle between N and 2N, and keep there.
 */
static int64_t model_window(rsl__adaptive *a, int64_t *now, int64_t n_workers, int64_t *drops) {
    int64_t c = 0;
    while (c < 1000 && rsl__adaptive_acquire(a)) {
        c++;
    }
    for (int64_t i = 0; i < c; i++) {
        int drop = i >= 2 * n_workers;
        /* the i-th waits for (i / N) workers' turns */
        int64_t lat = 20 * MS * (1 + (i < n_workers ? 0 : (i - n_workers) / n_workers + 1));
        *drops += drop;
        rsl__adaptive_release(a, *now, drop ? MS : lat, drop);
    }
    *now += 100 * MS;
    closer(a, *now, 20 * MS);
    return c;
}

TEST(converges_between_capacity_and_its_queue_against_a_model) {
    const int64_t N = 16;
    rsl__adaptive *a = make(4, 500, 4);
    int64_t now = T0, drops = 0;
    open_first(a, &now);
    for (int w = 0; w < 200; w++) {
        model_window(a, &now, N, &drops);
    }
    int64_t lo = INT64_MAX, hi = 0;
    for (int w = 0; w < 300; w++) {
        model_window(a, &now, N, &drops);
        int64_t l = rsl__adaptive_limit(a);
        lo = l < lo ? l : lo;
        hi = l > hi ? l : hi;
    }
    printf("  model N=%lld: limit in [%lld, %lld] over 300 windows, %lld drops\n",
           (long long)N, (long long)lo, (long long)hi, (long long)drops);
    ASSERT(lo >= N);
    ASSERT(hi <= 2 * N + 4);
    rsl__adaptive_free(a);
}

TEST(identical_runs_give_identical_limits) {
    int64_t seq[2][100];
    for (int run = 0; run < 2; run++) {
        rsl__adaptive *a = make(4, 500, 4);
        int64_t now = T0, drops = 0;
        open_first(a, &now);
        for (int w = 0; w < 100; w++) {
            model_window(a, &now, 10, &drops);
            seq[run][w] = rsl__adaptive_limit(a);
        }
        rsl__adaptive_free(a);
    }
    ASSERT(memcmp(seq[0], seq[1], sizeof(seq[0])) == 0);
}

/* ---- through a policy -------------------------------------------------------------------- */

static rsl_runtime *open_policy(const char *dir, const char *text, char *err, size_t errlen,
                                int *rc) {
    rsl_test_write(dir, "p.lua", text);
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    o.clock = fake_clock;
    o.otlp_endpoint = "";
    rsl_runtime *rt = NULL;
    *rc = rsl_open(&rt, &o, err, errlen);
    return rt;
}

static rsl_step_call *_Atomic parked;

static void hold(rsl_step_call *sc, const rsl_req *req, void *ud) {
    (void)req;
    (void)ud;
    atomic_store(&parked, sc);
}

static _Atomic int held_done;

static void held_cb(const rsl_result *r, void *ud) {
    (void)ud;
    (void)r;
    atomic_store(&held_done, 1);
}

TEST(through_a_policy) {
    char err[1024];
    int rc;
    rsl_runtime *rt = open_policy(
        rsl_test_tmpdir(),
        "local r = require 'resilua'\n"
        "r.adaptive 'conc' { algorithm = 'gradient', min = 1, max = 1, initial = 1 }\n"
        "r.policy 'p' {\n"
        "  steps = { primary = r.c { name = 'hold', timeout = '10s', guards = { 'conc' } },\n"
        "            stub = r.stub { status = 200, body = 'stub' } },\n"
        "  chain = { 'primary', 'stub' },\n"
        "}\n"
        "r.policy 'sig' { route = function(req, sig)\n"
        "    return { 'l' .. sig.limit('conc') .. 'i' .. sig.inflight('conc') } end,\n"
        "  steps = { l1i1 = r.stub { body = 'one inside' }, l1i0 = r.stub { body = 'none' } },\n"
        "  chain = { 'l1i0' } }\n",
        err, sizeof(err), &rc);
    if (rc) {
        printf("  %s\n", err);
    }
    ASSERT_EQ(rc, 0);
    ASSERT_EQ(rsl_register_step(rt, "hold", hold, NULL), 0);
    ASSERT_EQ(rsl_call(rt, "p", NULL, held_cb, NULL), 0);
    for (int i = 0; i < 5000 && !atomic_load(&parked); i++) {
        usleep(1000);
    }
    ASSERT(atomic_load(&parked) != NULL);
    rsl_result *r = NULL;
    ASSERT_EQ(rsl_call_sync(rt, "p", NULL, 5 * S, &r), 0);
    rsl_path_entry e;
    rsl_result_path(r, 0, &e);
    ASSERT_EQ(e.outcome, RSL_OUTCOME_REJECTED);
    ASSERT_CONTAINS(e.error, "adaptive \"conc\" is at its limit");
    rsl_result_free(r);
    ASSERT_EQ(rsl_call_sync(rt, "sig", NULL, 5 * S, &r), 0);
    ASSERT_STR_EQ(rsl_result_body(r, NULL), "one inside");
    rsl_result_free(r);
    char *st = rsl_state_json(rt);
    ASSERT_CONTAINS(st, "\"conc\":{\"kind\":\"adaptive\",\"limit\":1,\"inflight\":1,");
    rsl_free(st);
    /* A 503 is a drop. */
    ASSERT_EQ(rsl_step_answer(atomic_load(&parked), 503, "busy", 4), 0);
    for (int i = 0; i < 5000 && !atomic_load(&held_done); i++) {
        usleep(1000);
    }
    ASSERT(atomic_load(&held_done));
    st = rsl_state_json(rt);
    ASSERT_CONTAINS(st, "\"inflight\":0,");
    ASSERT_CONTAINS(st, "\"drops\":1,");
    rsl_free(st);
    ASSERT_EQ(rsl_call_sync(rt, "sig", NULL, 5 * S, &r), 0);
    ASSERT_STR_EQ(rsl_result_body(r, NULL), "none");
    rsl_result_free(r);
    char *m = rsl_metrics_text(rt);
    ASSERT_CONTAINS(m, "resilua_adaptive_limit{guard=\"conc\"} 1\n");
    rsl_free(m);
    char *d = rsl_describe_json(rt);
    ASSERT_CONTAINS(d, "\"algorithm\":\"gradient\"");
    rsl_free(d);
    rsl_close(rt);
}

TEST(bad_settings_at_file_line) {
    char err[1024];
    int rc;
    rsl_runtime *rt = open_policy(rsl_test_tmpdir(),
                                  "local r = require 'resilua'\n"
                                  "r.adaptive 'a' { min = 10, max = 5 }\n",
                                  err, sizeof(err), &rc);
    ASSERT_EQ(rc, RSL_ELOAD);
    ASSERT(rt == NULL);
    ASSERT_CONTAINS(err, "p.lua:2: adaptive \"a\": max must be");
    rt = open_policy(rsl_test_tmpdir(),
                     "local r = require 'resilua'\n"
                     "r.adaptive 'a' { algorithm = 'vegas' }\n",
                     err, sizeof(err), &rc);
    ASSERT_EQ(rc, RSL_ELOAD);
    ASSERT_CONTAINS(err, "p.lua:2: adaptive \"a\": algorithm must be one of \"gradient\"");
    rt = open_policy(rsl_test_tmpdir(),
                     "local r = require 'resilua'\n"
                     "r.adaptive 'a' { backoff = 1 }\n",
                     err, sizeof(err), &rc);
    ASSERT_EQ(rc, RSL_ELOAD);
    ASSERT_CONTAINS(err, "p.lua:2: adaptive \"a\": backoff must be");
}

/* Two threads through one limit: every admission released, inflight back to 0, windows
 * closed by whichever thread finds them due (TSan). */
static rsl__adaptive *shared;

static void *hammer(void *arg) {
    for (int i = 0; i < 20000; i++) {
        if (rsl__adaptive_acquire(shared)) {
            rsl__adaptive_release(shared, T0 + (int64_t)i * MS, 5 * MS, (i % 97) == 0);
        }
        if (i % 1000 == 0) {
            (void)rsl__adaptive_limit(shared);
        }
    }
    return arg;
}

TEST(two_threads) {
    shared = make(4, 500, 20);
    pthread_t a, b;
    pthread_create(&a, NULL, hammer, NULL);
    pthread_create(&b, NULL, hammer, NULL);
    rsl__adaptive_stats s;
    rsl__adaptive_stats_get(shared, &s);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    ASSERT_EQ(rsl__adaptive_inflight(shared), 0);
    rsl__adaptive_stats_get(shared, &s);
    ASSERT(s.windows > 0);
    rsl__adaptive_free(shared);
}
