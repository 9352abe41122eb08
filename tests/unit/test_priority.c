/*
 * Priorities and reserves, each test one invariant: a bulkhead, an adaptive limit and a
 * limiter fill only their usable share for a caller below the top (-1, "shed", when there
 * is room left in the reserve; 0 when there is none at all); a guard's reserve per
 * priority, counted per priority.  Through a policy: the priority from a `priority`
 * function and from a route's { chain, priority }; a reserve of 0.3 on a bulkhead of 10
 * lets 7 free calls in, sheds the 8th with a 429 and Retry-After, keeps 3 slots for VIP
 * calls; /state, /metrics, /describe; a reload that changes only the reserve; bad values
 * at file:line, and a bad priority from a route is a route failure.  Two threads under
 * TSan.
 */
// ctest-labels: tsan
#include "guard.h"
#include "resilua.h"
#include "test.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define MS 1000000LL
#define S  1000000000LL

TEST(bulkhead_fills_only_its_usable_share) {
    rsl__bulkhead *b = rsl__bulkhead_new("b", 10);
    for (int i = 0; i < 7; i++) {
        ASSERT_EQ(rsl__bulkhead_acquire_upto(b, 700), 1);
    }
    ASSERT_EQ(rsl__bulkhead_acquire_upto(b, 700), -1); /* 3 free, kept */
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ(rsl__bulkhead_acquire_upto(b, 1000), 1);
    }
    ASSERT_EQ(rsl__bulkhead_acquire_upto(b, 1000), 0); /* full: a plain rejection */
    ASSERT_EQ(rsl__bulkhead_acquire_upto(b, 700), 0);
    ASSERT_EQ(rsl__bulkhead_rejections(b), 3);
    rsl__bulkhead_release(b);
    ASSERT_EQ(rsl__bulkhead_acquire_upto(b, 700), -1); /* 9 inside: still in the reserve */
    ASSERT_EQ(rsl__bulkhead_acquire_upto(b, 0), -1);
    ASSERT_EQ(rsl__bulkhead_acquire(b), 1);
    rsl__bulkhead_free(b);
}

TEST(adaptive_fills_only_its_usable_share) {
    rsl__adaptive_conf c;
    rsl__adaptive_conf_default(&c);
    c.min = c.max = c.initial = 10;
    rsl__adaptive *a = rsl__adaptive_new("a", &c);
    for (int i = 0; i < 5; i++) {
        ASSERT_EQ(rsl__adaptive_acquire_upto(a, 500), 1);
    }
    ASSERT_EQ(rsl__adaptive_acquire_upto(a, 500), -1);
    for (int i = 0; i < 5; i++) {
        ASSERT_EQ(rsl__adaptive_acquire_upto(a, 1000), 1);
    }
    ASSERT_EQ(rsl__adaptive_acquire_upto(a, 1000), 0);
    ASSERT_EQ(rsl__adaptive_inflight(a), 10);
    rsl__adaptive_free(a);
}

TEST(limiter_keeps_the_last_tokens) {
    /* 10 a second, burst 10; priority below the top may spend down to 3 left. */
    rsl__limiter_conf c = {10, S, 10};
    rsl__limiter *l = rsl__limiter_new("l", &c);
    for (int i = 0; i < 7; i++) {
        ASSERT_EQ(rsl__limiter_allow_upto(l, 0, 700), 1);
    }
    ASSERT_EQ(rsl__limiter_allow_upto(l, 0, 700), -1);
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ(rsl__limiter_allow_upto(l, 0, 1000), 1);
    }
    ASSERT_EQ(rsl__limiter_allow_upto(l, 0, 1000), 0);
    ASSERT_EQ(rsl__limiter_allow_upto(l, 0, 700), 0);
    /* Refilled for 400 ms: 4 tokens, one above the 3 kept. */
    ASSERT_EQ(rsl__limiter_allow_upto(l, 400 * MS, 700), 1);
    ASSERT_EQ(rsl__limiter_allow_upto(l, 400 * MS, 700), -1);
    ASSERT_EQ(rsl__limiter_allow(l, 400 * MS), 1);
    rsl__limiter_free(l);
}

TEST(guard_reserve_per_priority) {
    rsl__guard *g = rsl__guard_new_bulkhead("b", 10);
    ASSERT(!rsl__guard_has_reserve(g));
    /* reserve = { [0] = 0.2, [1] = 0.1 }: 0 fills all, 1 fills 80%, 2..7 fill 70%. */
    int u[RSL_PRIORITIES] = {1000, 800, 700, 700, 700, 700, 700, 700};
    ASSERT_EQ(rsl__guard_reserve_set(g, u), 1);
    ASSERT_EQ(rsl__guard_reserve_set(g, u), 0);
    ASSERT(rsl__guard_has_reserve(g));
    rsl__permit pm[12];
    const char *why = NULL;
    int n = 0;
    while (rsl__guard_acquire(g, 0, 5, &pm[n], &why) == 1) {
        n++;
    }
    ASSERT_EQ(n, 7);
    ASSERT_CONTAINS(why, "keeps the rest for higher priorities");
    ASSERT_EQ(rsl__guard_acquire(g, 0, 1, &pm[n], &why), 1);
    ASSERT_EQ(rsl__guard_acquire(g, 0, 1, &pm[9], &why), -1);
    ASSERT_EQ(rsl__guard_acquire(g, 0, 0, &pm[9], &why), 1);
    ASSERT_EQ(rsl__guard_acquire(g, 0, 0, &pm[10], &why), 1);
    ASSERT_EQ(rsl__guard_acquire(g, 0, 0, &pm[11], &why), 0);
    ASSERT_CONTAINS(why, "is full");
    ASSERT_EQ(rsl__guard_shed(g, 5), 1);
    ASSERT_EQ(rsl__guard_shed(g, 1), 1);
    ASSERT_EQ(rsl__guard_shed(g, 0), 0);
    /* Out of range priorities are clamped, not read out of bounds. */
    ASSERT_EQ(rsl__guard_acquire(g, 0, 99, &pm[11], &why), 0);
    ASSERT_EQ(rsl__guard_reserve_set(g, NULL), 1);
    ASSERT(!rsl__guard_has_reserve(g));
    rsl__guard_unref(g);
}

/* ---- through a policy -------------------------------------------------------------------- */

#define MAXPARK 16
static rsl_step_call *_Atomic parked[MAXPARK];
static _Atomic int nparked, ndone;

static void hold(rsl_step_call *sc, const rsl_req *req, void *ud) {
    (void)req;
    (void)ud;
    int i = atomic_fetch_add(&nparked, 1);
    if (i < MAXPARK) {
        atomic_store(&parked[i], sc);
    } else {
        rsl_step_answer(sc, 200, "ok", 2);
    }
}

static void done_cb(const rsl_result *r, void *ud) {
    (void)r;
    (void)ud;
    atomic_fetch_add(&ndone, 1);
}

static void wait_for(_Atomic int *v, int n) {
    for (int i = 0; i < 10000 && atomic_load(v) < n; i++) {
        usleep(1000);
    }
    ASSERT_EQ(atomic_load(v), n);
}

static rsl_runtime *open_text(const char *text, char *err, size_t errlen, int *rc) {
    const char *dir = rsl_test_tmpdir();
    rsl_test_write(dir, "p.lua", text);
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    o.otlp_endpoint = "";
    rsl_runtime *rt = NULL;
    *rc = rsl_open(&rt, &o, err, errlen);
    return rt;
}

static rsl_req *tier(const char *t) {
    rsl_req *q = rsl_req_new();
    rsl_req_set(q, "tier", t, strlen(t));
    return q;
}

static const char *header(const rsl_result *r, const char *name) {
    size_t n = rsl_result_header_count(r);
    for (size_t i = 0; i < n; i++) {
        const char *k, *v;
        if (rsl_result_header(r, i, &k, &v) == 0 && strcmp(k, name) == 0) {
            return v;
        }
    }
    return NULL;
}

#define POLICY                                                                                     \
    "local r = require 'resilua'\n"                                                                \
    "r.bulkhead 'b' { max = 10, reserve = { [0] = 0.3 } }\n"                                       \
    "local steps = { primary = r.c { name = 'hold', timeout = '20s', guards = { 'b' } } }\n"       \
    "r.policy 'p' {\n"                                                                             \
    "  priority = function(req) return req.tier == 'vip' and 0 or 2 end,\n"                        \
    "  steps = steps, chain = { 'primary' },\n"                                                    \
    "}\n"                                                                                          \
    "r.policy 'q' { steps = steps,\n"                                                              \
    "  route = function(req) return { chain = { 'primary' }, priority = tonumber(req.tier) } "     \
    "end }\n"

TEST(reserve_through_a_policy) {
    char err[1024];
    int rc;
    rsl_runtime *rt = open_text(POLICY, err, sizeof(err), &rc);
    if (rc) {
        printf("  %s\n", err);
    }
    ASSERT_EQ(rc, 0);
    ASSERT_EQ(rsl_register_step(rt, "hold", hold, NULL), 0);
    atomic_store(&nparked, 0);
    atomic_store(&ndone, 0);
    for (int i = 0; i < 7; i++) { /* free traffic fills its 70% */
        rsl_req *q = tier("free");
        ASSERT_EQ(rsl_call(rt, "p", q, done_cb, NULL), 0);
        rsl_req_free(q);
    }
    wait_for(&nparked, 7);
    /* The 8th free call is shed: rejected, 429, Retry-After, its reason. */
    rsl_result *r = NULL;
    rsl_req *q = tier("free");
    ASSERT_EQ(rsl_call_sync(rt, "p", q, 5 * S, &r), 0);
    rsl_req_free(q);
    ASSERT_EQ(rsl_result_outcome(r), RSL_OUTCOME_REJECTED);
    ASSERT_EQ(rsl_result_status(r), 429);
    ASSERT(header(r, "Retry-After") != NULL);
    ASSERT_STR_EQ(header(r, "Retry-After"), "1");
    rsl_path_entry e;
    ASSERT_EQ(rsl_result_path(r, 0, &e), 0);
    ASSERT_CONTAINS(e.error, "bulkhead \"b\" keeps the rest for higher priorities (shed)");
    rsl_result_free(r);
    /* A route's priority: 1 is shed too, 0 is not. */
    q = tier("1");
    ASSERT_EQ(rsl_call_sync(rt, "q", q, 5 * S, &r), 0);
    rsl_req_free(q);
    ASSERT_EQ(rsl_result_status(r), 429);
    rsl_result_free(r);
    q = tier("0");
    ASSERT_EQ(rsl_call(rt, "q", q, done_cb, NULL), 0);
    rsl_req_free(q);
    for (int i = 0; i < 2; i++) { /* VIP calls take the 3 kept */
        q = tier("vip");
        ASSERT_EQ(rsl_call(rt, "p", q, done_cb, NULL), 0);
        rsl_req_free(q);
    }
    wait_for(&nparked, 10);
    /* Now full for everyone: a VIP call is a plain rejection, 503, no Retry-After. */
    q = tier("vip");
    ASSERT_EQ(rsl_call_sync(rt, "p", q, 5 * S, &r), 0);
    rsl_req_free(q);
    ASSERT_EQ(rsl_result_outcome(r), RSL_OUTCOME_REJECTED);
    ASSERT_EQ(rsl_result_status(r), 503);
    ASSERT(header(r, "Retry-After") == NULL);
    rsl_result_free(r);
    char *st = rsl_state_json(rt);
    ASSERT_CONTAINS(st, "\"usable\":[1.0,0.7,0.7,0.7,0.7,0.7,0.7,0.7]");
    ASSERT_CONTAINS(st, "\"shed\":[0,1,1,0,0,0,0,0]");
    rsl_free(st);
    char *m = rsl_metrics_text(rt);
    ASSERT_CONTAINS(m, "resilua_guard_shed_total{guard=\"b\",priority=\"2\"} 1\n");
    ASSERT_CONTAINS(m, "resilua_guard_shed_total{guard=\"b\",priority=\"1\"} 1\n");
    rsl_free(m);
    char *d = rsl_describe_json(rt);
    ASSERT_CONTAINS(d, "\"reserve\":{\"0\":0.3");
    rsl_free(d);
    for (int i = 0; i < 10; i++) {
        ASSERT_EQ(rsl_step_answer(atomic_load(&parked[i]), 200, "ok", 2), 0);
    }
    wait_for(&ndone, 10);
    /* A reload that changes only the reserve applies it in place. */
    rsl_test_write(rsl_test_tmpdir(), "p.lua",
                   "local r = require 'resilua'\n"
                   "r.bulkhead 'b' { max = 10, reserve = 0.5 }\n"
                   "r.policy 'p' { steps = { s = r.stub {} }, chain = { 's' } }\n");
    ASSERT_EQ(rsl_reload(rt, err, sizeof(err)), 0);
    st = rsl_state_json(rt);
    ASSERT_CONTAINS(st, "\"changed\":[\"b\"]");
    ASSERT_CONTAINS(st, "\"usable\":[1.0,0.5,");
    rsl_free(st);
    rsl_close(rt);
}

static void load_error(const char *text, const char *want) {
    char err[1024];
    int rc;
    rsl_runtime *rt = open_text(text, err, sizeof(err), &rc);
    ASSERT_EQ(rc, RSL_ELOAD);
    ASSERT(rt == NULL);
    ASSERT_CONTAINS(err, want);
}

TEST(bad_values_at_file_line) {
    load_error("local r = require 'resilua'\n"
               "r.bulkhead 'b' { max = 4, reserve = { [7] = 0.1 } }\n",
               "p.lua:2: bulkhead \"b\": reserve: keys are priorities 0..6");
    load_error("local r = require 'resilua'\n"
               "r.limiter 'l' { rate = 4, reserve = { [0] = 0.6, [1] = 0.4 } }\n",
               "p.lua:2: limiter \"l\": reserve: the shares must add up to less than 1");
    load_error("local r = require 'resilua'\n"
               "r.adaptive 'a' { reserve = 'half' }\n",
               "p.lua:2: adaptive \"a\": reserve must be a table");
    load_error("local r = require 'resilua'\n"
               "r.policy 'p' { steps = { s = r.stub {} }, chain = { 's' },\n"
               "  priority = 8 }\n",
               "p.lua:2: policy \"p\": priority must be");
}

TEST(a_bad_priority_from_a_route_is_a_route_failure) {
    char err[1024];
    int rc;
    rsl_runtime *rt =
        open_text("local r = require 'resilua'\n"
                  "r.policy 'p' { steps = { s = r.stub { body = 'chain' } }, chain = { 's' },\n"
                  "  route = function(req) return { chain = { 's' }, priority = 9 } end }\n"
                  "r.policy 'f' { steps = { s = r.stub { body = 'chain' } }, chain = { 's' },\n"
                  "  priority = function(req) return 'high' end }\n",
                  err, sizeof(err), &rc);
    ASSERT_EQ(rc, 0);
    const char *names[] = {"p", "f"};
    for (int i = 0; i < 2; i++) {
        rsl_result *r = NULL;
        ASSERT_EQ(rsl_call_sync(rt, names[i], NULL, 5 * S, &r), 0);
        ASSERT(rsl_result_route_failed(r));
        ASSERT_STR_EQ(rsl_result_body(r, NULL), "chain");
        rsl_result_free(r);
    }
    rsl_close(rt);
}

/* Two threads, two priorities, one bulkhead of 8 keeping 2 for priority 0: every
 * admission released, the count back to 0, the low priority never holding more than its
 * 6 (TSan). */
static rsl__guard *shared;
static _Atomic int broke;

static void *hammer(void *arg) {
    int prio = (int)(intptr_t)arg;
    for (int round = 0; round < 2000; round++) {
        rsl__permit pm[8];
        const char *why;
        int n = 0;
        while (n < 8 && rsl__guard_acquire(shared, 0, prio, &pm[n], &why) == 1) {
            n++;
        }
        if ((prio && n > 6) || rsl__bulkhead_inflight(shared->u.bulkhead) > 8) {
            atomic_store(&broke, 1);
        }
        while (n > 0) {
            rsl__guard_release(shared, &pm[--n], 1, 0, RSL_OUTCOME_OK, 200, 0);
        }
    }
    return NULL;
}

TEST(two_threads) {
    shared = rsl__guard_new_bulkhead("b", 8);
    int u[RSL_PRIORITIES] = {1000, 750, 750, 750, 750, 750, 750, 750};
    rsl__guard_reserve_set(shared, u);
    pthread_t t[2];
    pthread_create(&t[0], NULL, hammer, (void *)(intptr_t)0);
    pthread_create(&t[1], NULL, hammer, (void *)(intptr_t)3);
    pthread_join(t[0], NULL);
    pthread_join(t[1], NULL);
    ASSERT_EQ(rsl__bulkhead_inflight(shared->u.bulkhead), 0);
    ASSERT(!atomic_load(&broke));
    rsl__guard_unref(shared);
}
