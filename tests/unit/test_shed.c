/*
 * Load shedding (shed.h), each test one invariant: the streamed median settles on the
 * median and follows a change; pressure is d / (d + 20 ms) of the worst worker's delay;
 * the controller rises while pressure is above `above`, sheds the lowest priority seen
 * first and whole before the next, never priority 0 beyond max_shed, and falls by one
 * priority a second once the pressure is gone; a priority not seen for two seconds no
 * longer counts.  Through a runtime: the deadline below a step's recent median is shed
 * (429, the next step answers) and, shed by shed, the median comes down until calls run
 * again; a worker loop held up by a slow Lua step raises sig.pressure(), sheds priority 1
 * and not priority 0, and the shedding ends when the load does.  Two threads under TSan.
 */
// ctest-labels: tsan
#include "clock.h"
#include "resilua.h"
#include "shed.h"
#include "test.h"
#include "fake_clock.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define MS 1000000LL
#define S  1000000000LL

TEST(median_settles_and_follows) {
    rsl__median m = {0};
    ASSERT_EQ(rsl__median_get(&m), 0);
    for (int i = 0; i < 2000; i++) { /* 10..30 ms, evenly: median 20 ms */
        rsl__median_observe(&m, (10 + (i * 8) % 21) * MS);
    }
    int64_t v = rsl__median_get(&m);
    ASSERT(v > 18 * MS && v < 22 * MS);
    for (int i = 0; i < 400; i++) { /* the step got 5x slower */
        rsl__median_observe(&m, (50 + (i * 8) % 101) * MS);
    }
    v = rsl__median_get(&m);
    ASSERT(v > 85 * MS && v < 115 * MS);
}

TEST(median_needs_its_samples) {
    rsl__median m = {0};
    for (int i = 0; i < RSL_MEDIAN_MIN_SAMPLES - 1; i++) {
        rsl__median_observe(&m, 5 * MS);
        ASSERT_EQ(rsl__median_get(&m), 0);
    }
    rsl__median_observe(&m, 5 * MS);
    ASSERT_EQ(rsl__median_get(&m), 5 * MS);
}

TEST(pressure_of_the_worst_worker) {
    rsl__load *l = rsl__load_new(2, NULL);
    ASSERT_NEAR(rsl__load_pressure(l), 0, 1e-9);
    for (int i = 0; i < 60; i++) {
        rsl__load_beat(l, 0, 0);
        rsl__load_beat(l, 1, 20 * MS); /* worker 1's loop is 20 ms late every beat */
    }
    ASSERT_NEAR(rsl__load_pressure(l), 0.5, 0.01);
    for (int i = 0; i < 60; i++) {
        rsl__load_sojourn(l, 0, 60 * MS); /* worker 0's queue: 60 ms waits */
        rsl__load_beat(l, 0, 0);
        rsl__load_beat(l, 1, 0);
    }
    ASSERT_NEAR(rsl__load_pressure(l), 0.75, 0.01);
    for (int i = 0; i < 60; i++) {
        rsl__load_beat(l, 0, -3 * MS); /* early is not negative lag */
        rsl__load_beat(l, 1, 0);
    }
    ASSERT(rsl__load_pressure(l) < 0.01);
    rsl__load_free(l);
}

/* The share of n calls of priority p the load sheds now. */
static double shed_share(rsl__load *l, int p, int n) {
    int k = 0;
    for (int i = 0; i < n; i++) {
        k += rsl__load_shed(l, p);
    }
    return (double)k / n;
}

/* n beats of worker 0 with that lag; in each, a call of every priority in `seen` comes. */
static void beats(rsl__load *l, int n, int64_t lag, unsigned seen) {
    for (int i = 0; i < n; i++) {
        for (int p = 0; p < RSL_PRIORITIES; p++) {
            if (seen & (1u << p)) {
                (void)rsl__load_shed(l, p);
            }
        }
        rsl__load_beat(l, 0, lag);
    }
}

TEST(lowest_priority_first_never_priority_0) {
    rsl__rand_seed(42);
    rsl__load_conf c = {0.5, 0};
    rsl__load *l = rsl__load_new(1, &c);
    /* Calls of priorities 0, 1 and 3 are seen; no pressure: nothing is shed. */
    ASSERT_NEAR(shed_share(l, 0, 10) + shed_share(l, 1, 10) + shed_share(l, 3, 10), 0, 1e-9);
    beats(l, 40, 0, 0xb);
    ASSERT_NEAR(rsl__load_level(l), 0, 1e-9);
    /* Lag of 1 s: pressure ~0.98, the level rises ~0.24 a beat. */
    beats(l, 2, 1000 * MS, 0xb); /* EWMA: pressure 0.93 after two beats */
    double lv = rsl__load_level(l);
    ASSERT(lv > 0.1 && lv < 0.5);
    double s3 = shed_share(l, 3, 4000);
    ASSERT_NEAR(s3, lv, 0.04); /* part of the lowest */
    ASSERT_NEAR(shed_share(l, 1, 1000), 0, 1e-9);
    ASSERT_NEAR(shed_share(l, 0, 1000), 0, 1e-9);
    beats(l, 4, 1000 * MS, 0xb);
    lv = rsl__load_level(l);
    ASSERT(lv > 1 && lv < 2);
    ASSERT_NEAR(shed_share(l, 3, 1000), 1, 1e-9); /* all of the lowest */
    ASSERT_NEAR(shed_share(l, 1, 4000), lv - 1, 0.04);
    ASSERT_NEAR(shed_share(l, 0, 1000), 0, 1e-9);
    beats(l, 20, 1000 * MS, 0xb);
    ASSERT_NEAR(rsl__load_level(l), 3, 1e-6); /* capped at the priorities seen */
    ASSERT_NEAR(shed_share(l, 1, 1000), 1, 1e-9);
    ASSERT_NEAR(shed_share(l, 0, 1000), 0, 1e-9); /* max_shed 0: never */
    ASSERT(rsl__load_shed_count(l, 3) > 0);
    ASSERT_EQ(rsl__load_shed_count(l, 0), 0);
    /* The pressure gone, the level falls one priority a second (20 beats). */
    beats(l, 25, 0, 0xb); /* the EWMA takes a few beats to fall under 0.5 */
    lv = rsl__load_level(l);
    ASSERT(lv > 1.5 && lv < 2.5);
    beats(l, 60, 0, 0xb);
    ASSERT_NEAR(rsl__load_level(l), 0, 1e-9);
    ASSERT_NEAR(shed_share(l, 3, 1000), 0, 1e-9);
    rsl__load_free(l);
}

TEST(max_shed_bounds_priority_0) {
    rsl__rand_seed(7);
    rsl__load_conf c = {0.5, 0.2};
    rsl__load *l = rsl__load_new(1, &c);
    shed_share(l, 0, 1);
    shed_share(l, 2, 1);
    beats(l, 40, 1000 * MS, 0x5);
    ASSERT_NEAR(rsl__load_level(l), 2, 1e-6);
    ASSERT_NEAR(shed_share(l, 2, 1000), 1, 1e-9);
    ASSERT_NEAR(shed_share(l, 0, 10000), 0.2, 0.02);
    rsl__load_free(l);
}

TEST(unseen_priorities_stop_counting) {
    rsl__load_conf c = {0.5, 0};
    rsl__load *l = rsl__load_new(1, &c);
    shed_share(l, 7, 1);
    shed_share(l, 1, 1);
    beats(l, 19, 1000 * MS, 0);
    ASSERT_NEAR(rsl__load_level(l), 2, 1e-6);
    /* Priority 7 stops coming; only 1 does.  Two rotations later the level is capped at
     * one priority, so 1 is still shed whole, and no sooner than it was. */
    for (int i = 0; i < 40; i++) {
        shed_share(l, 1, 1);
        beats(l, 1, 1000 * MS, 0);
    }
    ASSERT_NEAR(rsl__load_level(l), 1, 1e-6);
    ASSERT_NEAR(shed_share(l, 1, 100), 1, 1e-9);
    rsl__load_free(l);
}

TEST(off_by_default) {
    rsl__load *l = rsl__load_new(1, NULL);
    beats(l, 40, 1000 * MS, 0x20);
    ASSERT(rsl__load_pressure(l) > 0.9);
    ASSERT_NEAR(rsl__load_level(l), 0, 1e-9);
    ASSERT_NEAR(shed_share(l, 5, 100), 0, 1e-9);
    rsl__load_free(l);
}

/* ---- through a runtime ------------------------------------------------------------------- */

/* Every r.http attempt takes 50 ms of the injected clock. */
static void model(void *ud, const rsl_io_attempt *a, rsl_io_answer *ans) {
    (void)ud;
    int64_t lat = 50 * MS < a->limit_ns ? 50 * MS : a->limit_ns;
    ans->latency_ns = 50 * MS;
    atomic_fetch_add(&fake_now, lat);
}

TEST(a_deadline_below_the_steps_median_is_shed) {
    const char *dir = rsl_test_tmpdir();
    rsl_test_write(dir, "p.lua",
                   "local r = require 'resilua'\n"
                   "r.policy 'p' {\n"
                   "  steps = { up = r.http { url = 'http://127.0.0.1:9/x', timeout = '1s' },\n"
                   "            stub = r.stub { body = 'stub' } },\n"
                   "  chain = { 'up', 'stub' },\n"
                   "}\n");
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    o.clock = fake_clock;
    o.io_model = model;
    o.otlp_endpoint = "";
    rsl_runtime *rt = NULL;
    char err[512];
    ASSERT_EQ(rsl_open(&rt, &o, err, sizeof(err)), 0);
    rsl_req *slow = rsl_req_new(), *tight = rsl_req_new();
    rsl_req_set_deadline(slow, 500 * MS);
    rsl_req_set_deadline(tight, 30 * MS);
    rsl_result *r = NULL;
    /* Before the median has its samples a tight deadline is not shed: it times out. */
    ASSERT_EQ(rsl_call_sync(rt, "p", tight, 5 * S, &r), 0);
    rsl_path_entry e;
    rsl_result_path(r, 0, &e);
    ASSERT_EQ(e.outcome, RSL_OUTCOME_TIMEOUT);
    rsl_result_free(r);
    for (int i = 0; i < RSL_MEDIAN_MIN_SAMPLES; i++) {
        ASSERT_EQ(rsl_call_sync(rt, "p", slow, 5 * S, &r), 0);
        ASSERT_EQ(rsl_result_outcome(r), RSL_OUTCOME_OK);
        rsl_result_free(r);
    }
    /* Median ~50 ms, 30 ms left: shed before the step, the stub answers. */
    ASSERT_EQ(rsl_call_sync(rt, "p", tight, 5 * S, &r), 0);
    rsl_result_path(r, 0, &e);
    ASSERT_EQ(e.outcome, RSL_OUTCOME_REJECTED);
    ASSERT_CONTAINS(e.error, "shed: 30.0 ms left of the deadline, under the step's recent median");
    ASSERT_EQ(e.attempts, 0);
    ASSERT_STR_EQ(rsl_result_body(r, NULL), "stub");
    rsl_result_free(r);
    char *m = rsl_metrics_text(rt);
    ASSERT_CONTAINS(m, "resilua_shed_total{reason=\"deadline\"} 1\n");
    rsl_free(m);
    /* Shed after shed the median comes down to what the calls have left, until one runs
     * again and measures (here: it times out at its deadline, 30 ms). */
    int ran = 0;
    for (int i = 0; i < 100 && !ran; i++) {
        ASSERT_EQ(rsl_call_sync(rt, "p", tight, 5 * S, &r), 0);
        rsl_result_path(r, 0, &e);
        ran = e.outcome != RSL_OUTCOME_REJECTED;
        rsl_result_free(r);
    }
    ASSERT(ran);
    rsl_req_free(slow);
    rsl_req_free(tight);
    rsl_close(rt);
}

/* A Lua step that holds its worker's loop ~30 ms: lag. */
#define BUSY_POLICY                                                                                \
    "local r = require 'resilua'\n"                                                                \
    "r.policy 'busy' { steps = { s = r.lua { run = function()\n"                                   \
    "    local t = os.clock() while os.clock() - t < 0.03 do end return 'x' end } } }\n"           \
    "r.policy 'vip' { steps = { s = r.stub { body = 'vip' } } }\n"                                 \
    "r.policy 'free' { priority = 1, steps = { s = r.stub { body = 'free' } } }\n"                 \
    "r.policy 'sig' { route = function(req, sig)\n"                                                \
    "    return { sig.pressure() > 0.5 and 'hot' or 'cold' } end,\n"                               \
    "  steps = { hot = r.stub { body = 'hot' }, cold = r.stub { body = 'cold' } },\n"              \
    "  chain = { 'cold' } }\n"

static rsl_runtime *busy_rt;
static _Atomic int busy_stop, vip_shed;

static void *vip_caller(void *arg) {
    while (!atomic_load(&busy_stop)) {
        rsl_result *r = NULL;
        if (rsl_call_sync(busy_rt, "vip", NULL, 10 * S, &r) == 0) {
            if (rsl_result_outcome(r) != RSL_OUTCOME_OK) {
                atomic_store(&vip_shed, 1);
            }
            rsl_result_free(r);
        }
        usleep(2000);
    }
    return arg;
}

static int body_is(const char *policy, const char *want) {
    rsl_result *r = NULL;
    if (rsl_call_sync(busy_rt, policy, NULL, 10 * S, &r) != 0) {
        return 0;
    }
    int eq = rsl_result_body(r, NULL) && strcmp(rsl_result_body(r, NULL), want) == 0;
    rsl_result_free(r);
    return eq;
}

static _Atomic int busy_done;

static void busy_cb(const rsl_result *r, void *ud) {
    (void)r;
    (void)ud;
    atomic_fetch_add(&busy_done, 1);
}

TEST(a_held_up_loop_sheds_the_lower_priority) {
    const char *dir = rsl_test_tmpdir();
    rsl_test_write(dir, "p.lua", BUSY_POLICY);
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    o.otlp_endpoint = "";
    o.shed_above = 0.6; /* 30 ms of delay: far above a busy machine's own */
    char err[512];
    int rc = rsl_open(&busy_rt, &o, err, sizeof(err));
    if (rc) {
        printf("  %s\n", err);
    }
    ASSERT_EQ(rc, 0);
    ASSERT(body_is("free", "free"));
    ASSERT(body_is("sig", "cold"));
    pthread_t t;
    pthread_create(&t, NULL, vip_caller, NULL);
    /* Keep the loop busy (a bounded number of 30 ms calls, a few queued at a time) until
     * a free call is shed. */
    int shed = 0, hot = 0, sent = 0;
    for (int i = 0; i < 400 && !shed; i++) {
        while (sent - atomic_load(&busy_done) < 4 && sent < 600) {
            rsl_call(busy_rt, "busy", NULL, busy_cb, NULL);
            sent++;
        }
        rsl_result *r = NULL;
        if (rsl_call_sync(busy_rt, "free", NULL, 10 * S, &r) == 0) {
            shed = rsl_result_outcome(r) == RSL_OUTCOME_REJECTED && rsl_result_status(r) == 429;
            if (shed) {
                rsl_path_entry e;
                rsl_result_path(r, 0, &e);
                ASSERT_CONTAINS(e.error, "shed under load (pressure ");
            }
            rsl_result_free(r);
        }
        hot |= body_is("sig", "hot");
        usleep(10000);
    }
    ASSERT(shed);
    ASSERT(hot);
    char *st = rsl_state_json(busy_rt);
    ASSERT_CONTAINS(st, "\"load\":{\"pressure\":");
    rsl_free(st);
    /* The load ends: the level falls, free calls are served again. */
    for (int i = 0; i < 1000 && atomic_load(&busy_done) < sent; i++) {
        usleep(10000);
    }
    int served = 0;
    for (int i = 0; i < 500 && !served; i++) {
        served = body_is("free", "free");
        usleep(20000);
    }
    ASSERT(served);
    atomic_store(&busy_stop, 1);
    pthread_join(t, NULL);
    ASSERT(!atomic_load(&vip_shed)); /* priority 0 was never shed */
    char *m = rsl_metrics_text(busy_rt);
    ASSERT_CONTAINS(m, "resilua_shed_total{reason=\"load\",priority=\"1\"} ");
    ASSERT(!strstr(m, "priority=\"0\"} "));
    rsl_free(m);
    rsl_close(busy_rt);
}

/* Two threads: one beats and sheds, the other reads and sheds (TSan). */
static rsl__load *shared;

static void *other(void *arg) {
    for (int i = 0; i < 20000; i++) {
        (void)rsl__load_shed(shared, i % 4);
        (void)rsl__load_pressure(shared);
        rsl__load_sojourn(shared, 1, i);
        if (i % 100 == 0) {
            rsl__load_beat(shared, 1, i);
        }
    }
    return arg;
}

TEST(two_threads) {
    rsl__load_conf c = {0.2, 0.1};
    shared = rsl__load_new(2, &c);
    pthread_t t;
    pthread_create(&t, NULL, other, NULL);
    for (int i = 0; i < 20000; i++) {
        (void)rsl__load_shed(shared, i % 3);
        if (i % 100 == 0) {
            rsl__load_beat(shared, 0, (i % 7) * 10 * MS);
        }
    }
    pthread_join(t, NULL);
    ASSERT(rsl__load_level(shared) >= 0);
    rsl__load_free(shared);
}
