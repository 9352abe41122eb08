/*
 * rsl_options.io_model through the public API: an r.http step answered by the model
 * (status, body, outcome, the attempt's fields), a latency at or over the limit taken as
 * a timeout, the clock moved on by the model seen by the breaker's latency, retries
 * reaching the model as attempts 1, 2, and nothing sent anywhere (the URL is unroutable).
 */
#include "resilua.h"
#include "test.h"
#include "fake_clock.h"

#include <jansson.h>
#include <stdatomic.h>

typedef struct seen {
    int calls;
    char policy[32], step[32], kind[16];
    int attempt;
    int64_t limit_ns;
    char tier[16];
} seen;

static rsl_outcome next_outcome = RSL_OUTCOME_OK;
static int next_status = 200;
static int64_t next_latency;

static void model(void *ud, const rsl_io_attempt *a, rsl_io_answer *ans) {
    seen *s = ud;
    s->calls++;
    snprintf(s->policy, sizeof(s->policy), "%s", a->policy);
    snprintf(s->step, sizeof(s->step), "%s", a->step);
    snprintf(s->kind, sizeof(s->kind), "%s", a->kind);
    s->attempt = a->attempt;
    s->limit_ns = a->limit_ns;
    size_t n = 0;
    const char *t = rsl_req_get(a->req, "tier", &n);
    snprintf(s->tier, sizeof(s->tier), "%.*s", (int)n, t ? t : "");
    ans->outcome = next_outcome;
    ans->status = next_status;
    ans->body = "modelled";
    ans->body_len = 8;
    ans->latency_ns = next_latency;
    int64_t d = next_latency < a->limit_ns ? next_latency : a->limit_ns;
    atomic_fetch_add(&fake_now, d);
}

static rsl_runtime *open_model(const char *dir, seen *s) {
    rsl_test_write(dir, "p.lua",
                   "local r = require 'resilua'\n"
                   "r.breaker 'b' { min_calls = 100 }\n"
                   "r.policy 'p' {\n"
                   "  steps = {\n"
                   "    primary = r.http { url = 'http://192.0.2.1:9/x', timeout = '200ms',\n"
                   "      guards = { 'b' }, retry = { attempts = 2, base = '1ms', max = '1ms',\n"
                   "      on = { '5xx' } } },\n"
                   "    stub = r.stub { status = 200, body = 'stub' },\n"
                   "  },\n"
                   "  chain = { 'primary', 'stub' },\n"
                   "}\n");
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    o.workers = 1;
    o.clock = fake_clock;
    o.otlp_endpoint = "";
    o.io_model = model;
    o.io_model_ud = s;
    rsl_runtime *rt = NULL;
    char err[1024];
    if (rsl_open(&rt, &o, err, sizeof(err)) != 0) {
        rsl_test_fail(__FILE__, __LINE__, "rsl_open: %s", err);
    }
    return rt;
}

static rsl_result *call(rsl_runtime *rt) {
    rsl_req *req = rsl_req_new();
    rsl_req_set(req, "tier", "vip", 3);
    rsl_result *r = NULL;
    ASSERT_EQ(rsl_call_sync(rt, "p", req, 5000000000LL, &r), 0);
    rsl_req_free(req);
    return r;
}

TEST(the_model_answers_the_http_step) {
    seen s = {0};
    rsl_runtime *rt = open_model(rsl_test_tmpdir(), &s);
    next_latency = 5000000; /* 5 ms */
    rsl_result *r = call(rt);
    ASSERT_EQ(rsl_result_status(r), 200);
    ASSERT_STR_EQ(rsl_result_served_by(r), "primary");
    size_t n;
    const char *b = rsl_result_body(r, &n);
    ASSERT_EQ(n, 8);
    ASSERT(memcmp(b, "modelled", 8) == 0);
    rsl_result_free(r);
    ASSERT_EQ(s.calls, 1);
    ASSERT_STR_EQ(s.policy, "p");
    ASSERT_STR_EQ(s.step, "primary");
    ASSERT_STR_EQ(s.kind, "http");
    ASSERT_STR_EQ(s.tier, "vip");
    ASSERT_EQ(s.attempt, 1);
    ASSERT_EQ(s.limit_ns, 200000000);
    /* The breaker saw the model's 5 ms (its quantiles are of a histogram: near 5). */
    char *st = rsl_state_json(rt);
    json_t *doc = json_loads(st, 0, NULL);
    rsl_free(st);
    json_t *g = json_object_get(json_object_get(doc, "guards"), "b");
    ASSERT_EQ(json_integer_value(json_object_get(g, "calls")), 1);
    ASSERT_NEAR(json_real_value(json_object_get(g, "p99_ms")), 5.0, 0.5);
    json_decref(doc);
    rsl_close(rt);
}

TEST(status_outcome_retry_and_timeout) {
    seen s = {0};
    rsl_runtime *rt = open_model(rsl_test_tmpdir(), &s);
    next_latency = 1000000;
    next_status = 503; /* a 5xx: retried once, then the stub */
    rsl_result *r = call(rt);
    ASSERT_STR_EQ(rsl_result_served_by(r), "stub");
    rsl_path_entry e;
    rsl_result_path(r, 0, &e);
    ASSERT_EQ(e.outcome, RSL_OUTCOME_5XX);
    ASSERT_EQ(e.attempts, 2);
    ASSERT_EQ(s.attempt, 2);
    rsl_result_free(r);

    next_status = 200;
    next_outcome = RSL_OUTCOME_CONNECT;
    r = call(rt);
    rsl_result_path(r, 0, &e);
    ASSERT_EQ(e.outcome, RSL_OUTCOME_CONNECT);
    rsl_result_free(r);

    next_outcome = RSL_OUTCOME_OK;
    next_latency = 300000000; /* over the 200 ms timeout */
    int64_t t0 = atomic_load(&fake_now);
    r = call(rt);
    rsl_result_path(r, 0, &e);
    ASSERT_EQ(e.outcome, RSL_OUTCOME_TIMEOUT);
    ASSERT_CONTAINS(e.error, "timed out after 200.0 ms");
    ASSERT_STR_EQ(rsl_result_served_by(r), "stub");
    rsl_result_free(r);
    ASSERT_EQ(atomic_load(&fake_now) - t0, 200000000); /* the model moved it to the limit */
    rsl_close(rt);
}
