/*
 * Virtual time: the heap (time order, arming order on a tie, disarming), and a runtime on
 * it (rsl_options.virtual_time, attached to a loop) with an I/O model: modelled answers
 * arrive when rsl_vt_advance reaches their latency, so calls overlap as they would in
 * real time (a bulkhead of 2 turns the third away), and a retry's backoff waits on the
 * same clock; nothing moves until the clock is told.
 */
#include "resilua.h"
#include "test.h"
#include "vtime.h"

#include <string.h>
#include <uv.h>

#define MS 1000000LL

TEST(heap_orders_by_time_then_arming) {
    rsl__vtime v;
    rsl__vt_init(&v, 0);
    size_t slot[6] = {0};
    int item[6] = {0, 1, 2, 3, 4, 5};
    int64_t at_of[6] = {50, 10, 50, 30, 10, 70};
    for (int i = 0; i < 6; i++) {
        ASSERT_EQ(rsl__vt_arm(&v, &item[i], &slot[i], at_of[i]), 0);
    }
    rsl__vt_disarm(&v, &slot[3]); /* the 30 goes */
    ASSERT_EQ(slot[3], 0);
    ASSERT_EQ(rsl__vt_arm(&v, &item[5], &slot[5], 20), 0); /* re-armed earlier */
    ASSERT_EQ(rsl__vt_next(&v), 10);
    static const int want[] = {1, 4, 5, 0, 2};
    int64_t at;
    for (int i = 0; i < 5; i++) {
        int *got = rsl__vt_pop(&v, 60, &at);
        ASSERT(got != NULL);
        ASSERT_EQ(*got, want[i]);
        ASSERT_EQ(slot[*got], 0);
    }
    ASSERT(rsl__vt_pop(&v, 1000, &at) == NULL);
    ASSERT_EQ(rsl__vt_next(&v), INT64_MAX);
    rsl__vt_close(&v);
}

/* 503 for attempt 1 of an id "retry", else 200; 50 ms each. */
static void model(void *ud, const rsl_io_attempt *a, rsl_io_answer *ans) {
    size_t n = 0;
    const char *id = rsl_req_get(a->req, "id", &n);
    if (id && n == 5 && memcmp(id, "retry", 5) == 0 && a->attempt == 1) {
        ans->status = 503;
    }
    ans->latency_ns = 50 * MS;
}

typedef struct got {
    int n;
    char served[4][16];
    double ms[4];
} got;

static void on_result(const rsl_result *r, void *ud) {
    got *g = ud;
    snprintf(g->served[g->n], sizeof(g->served[0]), "%s",
             rsl_result_served_by(r) ? rsl_result_served_by(r) : "none");
    g->ms[g->n] = rsl_result_elapsed_ms(r);
    g->n++;
}

static void call(rsl_runtime *rt, const char *id, got *g) {
    rsl_req *req = rsl_req_new();
    rsl_req_set(req, "id", id, strlen(id));
    ASSERT_EQ(rsl_call(rt, "p", req, on_result, g), 0);
    rsl_req_free(req);
}

TEST(calls_overlap_and_wait_on_the_virtual_clock) {
    const char *dir = rsl_test_tmpdir();
    rsl_test_write(dir, "p.lua",
                   "local r = require 'resilua'\n"
                   "r.bulkhead 'h' { max = 2 }\n"
                   "r.policy 'p' {\n"
                   "  steps = {\n"
                   "    primary = r.http { url = 'http://192.0.2.1:9/${id}', timeout = '1s',\n"
                   "      guards = { 'h' }, retry = { attempts = 2, backoff = 'constant',\n"
                   "      base = '100ms', jitter = 'none', on = { '5xx' } } },\n"
                   "    stub = r.stub { status = 200, body = 'stub' },\n"
                   "  },\n"
                   "  chain = { 'primary', 'stub' },\n"
                   "}\n");
    uv_loop_t loop;
    ASSERT_EQ(uv_loop_init(&loop), 0);
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    o.loop = &loop;
    o.virtual_time = 1;
    o.io_model = model;
    o.otlp_endpoint = "";
    rsl_runtime *rt = NULL;
    char err[1024];
    ASSERT_EQ(rsl_open(&rt, &o, err, sizeof(err)), 0);
    int64_t t0 = rsl_vt_now(rt);
    ASSERT_EQ(t0, 1000 * 1000 * MS);

    got g = {0};
    call(rt, "1", &g);
    call(rt, "2", &g);
    call(rt, "3", &g); /* the bulkhead is full: the stub, at once */
    ASSERT_EQ(g.n, 1);
    ASSERT_STR_EQ(g.served[0], "stub");
    ASSERT_EQ(rsl_vt_next(rt), t0 + 50 * MS);
    ASSERT_EQ(rsl_vt_advance(rt, t0 + 49 * MS), 0);
    ASSERT_EQ(g.n, 1);
    ASSERT_EQ(rsl_vt_advance(rt, t0 + 50 * MS), 2);
    ASSERT_EQ(g.n, 3);
    ASSERT_STR_EQ(g.served[1], "primary");
    ASSERT_STR_EQ(g.served[2], "primary");
    ASSERT_NEAR(g.ms[1], 50.0, 0.001);

    /* A 503, 100 ms of backoff, then the 200: 50 + 100 + 50 ms, all virtual. */
    got h = {0};
    call(rt, "retry", &h);
    ASSERT_EQ(rsl_vt_advance(rt, t0 + 1000 * MS), 3);
    ASSERT_EQ(h.n, 1);
    ASSERT_STR_EQ(h.served[0], "primary");
    ASSERT_NEAR(h.ms[0], 200.0, 0.001);
    ASSERT_EQ(rsl_vt_now(rt), t0 + 1000 * MS);
    ASSERT_EQ(rsl_vt_advance(rt, t0), RSL_EINVAL); /* never backwards */

    rsl_close(rt);
    uv_run(&loop, UV_RUN_DEFAULT);
    ASSERT_EQ(uv_loop_close(&loop), 0);
}

TEST(virtual_time_needs_a_loop) {
    const char *dir = rsl_test_tmpdir();
    rsl_test_write(dir, "p.lua", "local r = require 'resilua'\n"
                                 "r.policy 'p' { steps = { s = r.stub { status = 200 } } }\n");
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    o.virtual_time = 1;
    rsl_runtime *rt = NULL;
    char err[256];
    ASSERT_EQ(rsl_open(&rt, &o, err, sizeof(err)), RSL_EINVAL);
    ASSERT_CONTAINS(err, "virtual_time needs an attached loop");
}
