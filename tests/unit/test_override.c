/*
 * Admin overrides through the public API (rsl_guard_override), on an injected clock:
 * force_open refuses every attempt and disable admits every one, on a breaker, a limiter
 * and a bulkhead; auto gives a forced-open breaker back to its rules through an open
 * period and a probe; reset closes it with a fresh window; an override survives a reload
 * that keeps its guard and goes with a guard that is removed; rsl_state_json shows it;
 * bad arguments are refused.
 */
// ctest-labels: tsan
#include "resilua.h"
#include "test.h"
#include "fake_clock.h"

#include <stdatomic.h>

static void quiet(void *ud, rsl_log_level level, const char *msg) {
    (void)ud;
    if (level < RSL_LOG_WARN) {
        fprintf(stderr, "log: %s\n", msg);
    }
}

static rsl_runtime *open_dir(const char *dir) {
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    o.workers = 1;
    o.clock = fake_clock;
    o.seed = 7;
    o.log = quiet;
    o.route_limit_ns = 2000000000LL;
    o.lua_step_limit_ns = 2000000000LL;
    rsl_runtime *rt = NULL;
    char err[1024];
    int rc = rsl_open(&rt, &o, err, sizeof(err));
    if (rc != 0) {
        rsl_test_fail(__FILE__, __LINE__, "rsl_open: %s: %s", rsl_strerror(rc), err);
    }
    return rt;
}

/* Policy "p": `primary` (fails when req.fail == "1") behind GUARDS, then a stub. */
static void write_policy(const char *dir, const char *guards, const char *decls) {
    char text[2048];
    snprintf(text, sizeof(text),
             "local r = require 'resilua'\n"
             "%s\n"
             "r.policy 'p' {\n"
             "  steps = {\n"
             "    primary = r.lua { run = function(req) if req.fail == '1' then\n"
             "        return nil, '5xx' end return { status = 200, body = 'fresh' } end,\n"
             "      guards = { %s } },\n"
             "    stub = r.stub { status = 503, body = 'stub' },\n"
             "  },\n"
             "  chain = { 'primary', 'stub' },\n"
             "}\n",
             decls, guards);
    rsl_test_write(dir, "p.lua", text);
}

#define BREAKER                                                                            \
    "r.breaker 'b' { window = '10s', buckets = 10, min_calls = 4, failure_rate = 50,\n"    \
    "  open_for = '1s', backoff = { factor = 2, max = '4s', jitter = 0 }, probes = 1 }"

/* The first step's outcome of one call (fail = "0" or "1"). */
static rsl_outcome first(rsl_runtime *rt, const char *fail) {
    rsl_req *req = rsl_req_new();
    rsl_req_set(req, "fail", fail, 1);
    rsl_result *r = NULL;
    int rc = rsl_call_sync(rt, "p", req, 5000000000LL, &r);
    rsl_req_free(req);
    if (rc != 0) {
        rsl_test_fail(__FILE__, __LINE__, "call: %s", rsl_strerror(rc));
    }
    rsl_path_entry e;
    rsl_result_path(r, 0, &e);
    rsl_outcome o = e.outcome;
    rsl_result_free(r);
    return o;
}

static char *state(rsl_runtime *rt) {
    char *s = rsl_state_json(rt);
    ASSERT(s != NULL);
    return s;
}

TEST(breaker_force_open_disable_auto_reset) {
    const char *dir = rsl_test_tmpdir();
    write_policy(dir, "'b'", BREAKER);
    rsl_runtime *rt = open_dir(dir);
    ASSERT_EQ(first(rt, "0"), RSL_OUTCOME_OK);

    ASSERT_EQ(rsl_guard_override(rt, "b", RSL_OVERRIDE_FORCE_OPEN), 0);
    ASSERT_EQ(first(rt, "0"), RSL_OUTCOME_REJECTED);
    advance_ms(60000); /* no open period ends a forced open */
    ASSERT_EQ(first(rt, "0"), RSL_OUTCOME_REJECTED);
    char *s = state(rt);
    ASSERT_CONTAINS(s, "\"b\":{\"kind\":\"breaker\",\"override\":\"force_open\","
                       "\"state\":\"forced_open\"");
    rsl_free(s);

    /* auto: open for its period, then one probe decides. */
    ASSERT_EQ(rsl_guard_override(rt, "b", RSL_OVERRIDE_AUTO), 0);
    s = state(rt);
    ASSERT_CONTAINS(s, "\"b\":{\"kind\":\"breaker\",\"state\":\"open\"");
    rsl_free(s);
    ASSERT_EQ(first(rt, "0"), RSL_OUTCOME_REJECTED);
    advance_ms(1001);
    ASSERT_EQ(first(rt, "0"), RSL_OUTCOME_OK); /* the probe */
    s = state(rt);
    ASSERT_CONTAINS(s, "\"b\":{\"kind\":\"breaker\",\"state\":\"closed\"");
    rsl_free(s);

    /* disable: failures pass and trip nothing. */
    ASSERT_EQ(rsl_guard_override(rt, "b", RSL_OVERRIDE_DISABLE), 0);
    for (int i = 0; i < 10; i++) {
        ASSERT_EQ(first(rt, "1"), RSL_OUTCOME_5XX);
    }
    s = state(rt);
    ASSERT_CONTAINS(s, "\"override\":\"disable\",\"state\":\"disabled\"");
    rsl_free(s);
    /* auto from disabled: closed, and the 10 failures were never counted. */
    ASSERT_EQ(rsl_guard_override(rt, "b", RSL_OVERRIDE_AUTO), 0);
    ASSERT_EQ(first(rt, "0"), RSL_OUTCOME_OK);
    s = state(rt);
    ASSERT_CONTAINS(s, "\"b\":{\"kind\":\"breaker\",\"state\":\"closed\",\"failure_rate\":0");
    rsl_free(s);

    /* Trip it for real (3 failures after that ok: 75% of 4), then reset: closed at once
     * with a fresh window. */
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ(first(rt, "1"), RSL_OUTCOME_5XX);
    }
    ASSERT_EQ(first(rt, "0"), RSL_OUTCOME_REJECTED);
    ASSERT_EQ(rsl_guard_override(rt, "b", RSL_OVERRIDE_RESET), 0);
    ASSERT_EQ(first(rt, "0"), RSL_OUTCOME_OK);
    s = state(rt);
    ASSERT_CONTAINS(s, "\"b\":{\"kind\":\"breaker\",\"state\":\"closed\",\"failure_rate\":0");
    ASSERT_CONTAINS(s, "\"backoff_level\":0");
    rsl_free(s);
    rsl_close(rt);
}

TEST(limiter_and_bulkhead_overrides) {
    const char *dir = rsl_test_tmpdir();
    write_policy(dir, "'l', 'h'",
                 "r.limiter 'l' { rate = 1, per = '1h', burst = 2 }\n"
                 "r.bulkhead 'h' { max = 1 }");
    rsl_runtime *rt = open_dir(dir);
    ASSERT_EQ(first(rt, "0"), RSL_OUTCOME_OK);
    ASSERT_EQ(first(rt, "0"), RSL_OUTCOME_OK);
    ASSERT_EQ(first(rt, "0"), RSL_OUTCOME_REJECTED); /* empty for an hour */

    ASSERT_EQ(rsl_guard_override(rt, "l", RSL_OVERRIDE_DISABLE), 0);
    for (int i = 0; i < 5; i++) {
        ASSERT_EQ(first(rt, "0"), RSL_OUTCOME_OK);
    }
    char *s = state(rt);
    ASSERT_CONTAINS(s, "\"l\":{\"kind\":\"limiter\",\"override\":\"disable\"");
    ASSERT_CONTAINS(s, "\"h\":{\"kind\":\"bulkhead\",\"inflight\":0"); /* balanced */
    rsl_free(s);
    ASSERT_EQ(rsl_guard_override(rt, "l", RSL_OVERRIDE_AUTO), 0);
    ASSERT_EQ(first(rt, "0"), RSL_OUTCOME_REJECTED); /* still empty: disable took nothing */
    ASSERT_EQ(rsl_guard_override(rt, "l", RSL_OVERRIDE_RESET), 0);
    ASSERT_EQ(first(rt, "0"), RSL_OUTCOME_OK); /* full again */

    ASSERT_EQ(rsl_guard_override(rt, "h", RSL_OVERRIDE_FORCE_OPEN), 0);
    ASSERT_EQ(first(rt, "0"), RSL_OUTCOME_REJECTED);
    ASSERT_EQ(rsl_guard_override(rt, "h", RSL_OVERRIDE_DISABLE), 0);
    ASSERT_EQ(rsl_guard_override(rt, "l", RSL_OVERRIDE_DISABLE), 0);
    ASSERT_EQ(first(rt, "0"), RSL_OUTCOME_OK);
    s = state(rt);
    ASSERT_CONTAINS(s, "\"h\":{\"kind\":\"bulkhead\",\"override\":\"disable\",\"inflight\":0");
    rsl_free(s);
    rsl_close(rt);
}

TEST(override_survives_reload_and_goes_with_its_guard) {
    const char *dir = rsl_test_tmpdir();
    write_policy(dir, "'b', 'h'", BREAKER "\nr.bulkhead 'h' { max = 4 }");
    rsl_runtime *rt = open_dir(dir);
    ASSERT_EQ(rsl_guard_override(rt, "b", RSL_OVERRIDE_FORCE_OPEN), 0);
    ASSERT_EQ(rsl_guard_override(rt, "h", RSL_OVERRIDE_FORCE_OPEN), 0);
    /* New thresholds and a new window for b, a new max for h: both kept, overrides too. */
    write_policy(dir, "'b', 'h'",
                 "r.breaker 'b' { window = '20s', buckets = 20, min_calls = 8, "
                 "failure_rate = 30 }\nr.bulkhead 'h' { max = 8 }");
    char err[1024];
    ASSERT_EQ(rsl_reload(rt, err, sizeof(err)), 0);
    ASSERT_EQ(first(rt, "0"), RSL_OUTCOME_REJECTED);
    char *s = state(rt);
    ASSERT_CONTAINS(s, "\"b\":{\"kind\":\"breaker\",\"override\":\"force_open\"");
    ASSERT_CONTAINS(s, "\"h\":{\"kind\":\"bulkhead\",\"override\":\"force_open\"");
    rsl_free(s);
    /* h removed, then declared again: a new guard, without the override. */
    write_policy(dir, "'b'", BREAKER);
    ASSERT_EQ(rsl_reload(rt, err, sizeof(err)), 0);
    ASSERT_EQ(rsl_guard_override(rt, "h", RSL_OVERRIDE_AUTO), RSL_ENOENT);
    write_policy(dir, "'h'", BREAKER "\nr.bulkhead 'h' { max = 4 }");
    ASSERT_EQ(rsl_reload(rt, err, sizeof(err)), 0);
    ASSERT_EQ(first(rt, "0"), RSL_OUTCOME_OK);
    s = state(rt);
    ASSERT_CONTAINS(s, "\"h\":{\"kind\":\"bulkhead\",\"inflight\":0");
    rsl_free(s);
    rsl_close(rt);
}

TEST(bad_arguments) {
    const char *dir = rsl_test_tmpdir();
    write_policy(dir, "'b'", BREAKER);
    rsl_runtime *rt = open_dir(dir);
    ASSERT_EQ(rsl_guard_override(rt, "nope", RSL_OVERRIDE_FORCE_OPEN), RSL_ENOENT);
    ASSERT_EQ(rsl_guard_override(rt, NULL, RSL_OVERRIDE_FORCE_OPEN), RSL_EINVAL);
    ASSERT_EQ(rsl_guard_override(NULL, "b", RSL_OVERRIDE_FORCE_OPEN), RSL_EINVAL);
    ASSERT_EQ(rsl_guard_override(rt, "b", (rsl_override)42), RSL_EINVAL);
    ASSERT_EQ(first(rt, "0"), RSL_OUTCOME_OK);
    rsl_close(rt);
}

TEST(state_shows_a_joint_trip) {
    const char *dir = rsl_test_tmpdir();
    write_policy(dir, "'j'",
                 "r.breaker 'j' { min_calls = 5, trip = { failure_rate = 20, periods = 3,\n"
                 "  period = '1s', window = '10s', latency = { q = 0.9, over = '800ms' } } }");
    rsl_runtime *rt = open_dir(dir);
    ASSERT_EQ(first(rt, "0"), RSL_OUTCOME_OK);
    char *s = state(rt);
    ASSERT_CONTAINS(s, "\"trip\":{\"threshold_ms\":800.0,\"streak\":0,\"window_ms\":10000.0}");
    rsl_free(s);
    rsl_close(rt);
}
