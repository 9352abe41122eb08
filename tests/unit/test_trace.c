/*
 * Traces through the public API: W3C traceparent parsing, the ratio sampler, and the
 * spans a runtime hands its on_span hook (no collector: otlp_endpoint ""), on an injected
 * clock: a call's span and its attempts' spans, their parents, attributes and the
 * breaker's opening as an event; parent-based sampling; trace_errors; the caller's
 * deadline.
 */
// ctest-labels: tsan
#include "resilua.h"
#include "test.h"
#include "fake_clock.h"
#include "otlp.h"
#include "trace.h"

#include <jansson.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- the context ---------------------------------------------------------------------- */

TEST(traceparent_parses_and_formats) {
    const char *tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    rsl__tctx t;
    ASSERT_EQ(rsl__tctx_parse(tp, strlen(tp), &t), 0);
    ASSERT_EQ(t.flags, 1);
    ASSERT_EQ(t.trace_id[0], 0x4b);
    ASSERT_EQ(t.span_id[7], 0xb7);
    char out[56];
    rsl__tctx_format(&t, out);
    ASSERT_STR_EQ(out, tp);
    /* A later version may add fields after the flags; version 00 may not. */
    const char *v1 = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra";
    ASSERT_EQ(rsl__tctx_parse(v1, strlen(v1), &t), 0);
    ASSERT_EQ(t.flags, 0);
    static const char *const bad[] = {
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", /* v00 longer */
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",   /* uppercase */
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",   /* zero trace id */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",   /* zero span id */
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",   /* version ff */
        "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",   /* dashes misplaced */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",   /* bad flags */
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",  /* no dash after */
        "",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (rsl__tctx_parse(bad[i], strlen(bad[i]), &t) == 0) {
            rsl_test_fail(__FILE__, __LINE__, "parsed \"%s\"", bad[i]);
        }
    }
    rsl_req *req = rsl_req_new();
    ASSERT_EQ(rsl_req_set_trace(req, bad[1], NULL), RSL_EINVAL);
    ASSERT_EQ(rsl_req_trace(req, out, NULL), RSL_ENOENT);
    ASSERT_EQ(rsl_req_set_trace(req, tp, "congo=t61rcWkgMzE"), 0);
    const char *ts = NULL;
    ASSERT_EQ(rsl_req_trace(req, out, &ts), 0);
    ASSERT_STR_EQ(out, tp);
    ASSERT_STR_EQ(ts, "congo=t61rcWkgMzE");
    char big[600];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    ASSERT_EQ(rsl_req_set_trace(req, tp, big), RSL_EINVAL);
    ASSERT_EQ(rsl_req_set_deadline(req, -1), RSL_EINVAL);
    rsl_req_free(req);
}

/* The exporter's encoding, parsed back: every field, and strings no collector may choke
 * on (quotes, control bytes, invalid UTF-8 become U+FFFD; valid multibyte text stays). */
TEST(otlp_encoding_parses_back) {
    rsl_span_attr at[] = {
        {"resilua.error", RSL_ATTR_STRING, "say \"hi\"\\\n\t\x01 caf\xc3\xa9 \xff\xc0\xaf end", 0},
        {"http.response.status_code", RSL_ATTR_INT, NULL, 503},
        {"resilua.degraded", RSL_ATTR_BOOL, NULL, 1},
        {"neg", RSL_ATTR_INT, NULL, -9223372036854775807LL - 1},
    };
    rsl_span_attr eat[] = {{"resilua.reason", RSL_ATTR_STRING, "failure rate 60% >= 50%", 0}};
    rsl_span_event ev[] = {{"resilua.breaker.transition", 1700000000000000001LL, eat, 1}};
    rsl_span s = {
        .name = "step\x80",
        .trace_id = "4bf92f3577b34da6a3ce929d0e0e4736",
        .span_id = "00f067aa0ba902b7",
        .parent_span_id = "00f067aa0ba902b8",
        .kind = RSL_SPAN_CLIENT,
        .start_unix_ns = 1700000000000000000LL,
        .end_unix_ns = 1700000000123456789LL,
        .error = 1,
        .status_message = "boom",
        .attrs = at,
        .nattrs = 4,
        .events = ev,
        .nevents = 1,
    };
    rsl__buf b = {0};
    ASSERT_EQ(rsl__otlp_encode(&b, &s), 0);
    json_error_t err;
    json_t *o = json_loadb(b.p, b.len, 0, &err);
    ASSERT(o != NULL);
    ASSERT_STR_EQ(json_string_value(json_object_get(o, "traceId")), s.trace_id);
    ASSERT_STR_EQ(json_string_value(json_object_get(o, "parentSpanId")), "00f067aa0ba902b8");
    ASSERT_STR_EQ(json_string_value(json_object_get(o, "name")), "step\xef\xbf\xbd");
    ASSERT_EQ(json_integer_value(json_object_get(o, "kind")), 3);
    ASSERT_STR_EQ(json_string_value(json_object_get(o, "endTimeUnixNano")), "1700000000123456789");
    json_t *a = json_object_get(o, "attributes");
    ASSERT_EQ(json_array_size(a), 4);
    ASSERT_STR_EQ(json_string_value(json_object_get(
                      json_object_get(json_array_get(a, 0), "value"), "stringValue")),
                  "say \"hi\"\\\n\t\x01 caf\xc3\xa9 \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd end");
    ASSERT_STR_EQ(json_string_value(json_object_get(
                      json_object_get(json_array_get(a, 1), "value"), "intValue")),
                  "503");
    ASSERT(json_is_true(json_object_get(json_object_get(json_array_get(a, 2), "value"),
                                        "boolValue")));
    ASSERT_STR_EQ(json_string_value(json_object_get(
                      json_object_get(json_array_get(a, 3), "value"), "intValue")),
                  "-9223372036854775808");
    json_t *e = json_array_get(json_object_get(o, "events"), 0);
    ASSERT_STR_EQ(json_string_value(json_object_get(e, "timeUnixNano")), "1700000000000000001");
    ASSERT_STR_EQ(json_string_value(json_object_get(e, "name")), "resilua.breaker.transition");
    json_t *st = json_object_get(o, "status");
    ASSERT_EQ(json_integer_value(json_object_get(st, "code")), 2);
    ASSERT_STR_EQ(json_string_value(json_object_get(st, "message")), "boom");
    json_decref(o);
    /* A root span that went well: no parent, status OK without a message. */
    s.parent_span_id[0] = 0;
    s.error = 0;
    s.nevents = 0;
    s.nattrs = 0;
    b.len = 0;
    ASSERT_EQ(rsl__otlp_encode(&b, &s), 0);
    o = json_loadb(b.p, b.len, 0, &err);
    ASSERT(o != NULL);
    ASSERT(json_object_get(o, "parentSpanId") == NULL);
    ASSERT_EQ(json_integer_value(json_object_get(json_object_get(o, "status"), "code")), 1);
    ASSERT_EQ(json_array_size(json_object_get(o, "attributes")), 0);
    json_decref(o);
    rsl__buf_free(&b);
}

TEST(ratio_sampler_is_the_trace_ids) {
    int hits = 0, n = 20000;
    for (int i = 0; i < n; i++) {
        uint8_t id[16];
        rsl__trace_id_new(id);
        int s = rsl__trace_sampled(id, 0.1);
        ASSERT_EQ(s, rsl__trace_sampled(id, 0.1)); /* the same id, the same answer */
        hits += s;
        ASSERT_EQ(rsl__trace_sampled(id, 0.0), 0);
        ASSERT_EQ(rsl__trace_sampled(id, 1.0), 1);
    }
    /* 10% of 20000: 2000, sd ~42; the bound is ~10 sd wide. */
    ASSERT(hits > 1600 && hits < 2400);
}

/* ---- spans through on_span ------------------------------------------------------------- */

typedef struct got_span {
    char name[64], trace[33], id[17], parent[17];
    char attrs[1024]; /* "k=v;" */
    char events[1024];
    int error;
    int kind;
} got_span;

static pthread_mutex_t got_m = PTHREAD_MUTEX_INITIALIZER;
static got_span got[256];
static int ngot;

static void attrs_str(char *out, size_t cap, const rsl_span_attr *a, size_t n) {
    size_t l = strlen(out);
    for (size_t i = 0; i < n && l < cap; i++) {
        int w = a[i].type == RSL_ATTR_STRING
                    ? snprintf(out + l, cap - l, "%s=%s;", a[i].key, a[i].str)
                    : snprintf(out + l, cap - l, "%s=%lld;", a[i].key, (long long)a[i].num);
        l += w > 0 ? (size_t)w : 0;
    }
}

static void on_span(void *ud, const rsl_span *s) {
    pthread_mutex_lock(&got_m);
    if (ngot < 256) {
        got_span *g = &got[ngot++];
        memset(g, 0, sizeof(*g));
        snprintf(g->name, sizeof(g->name), "%s", s->name);
        memcpy(g->trace, s->trace_id, 33);
        memcpy(g->id, s->span_id, 17);
        memcpy(g->parent, s->parent_span_id, 17);
        attrs_str(g->attrs, sizeof(g->attrs), s->attrs, s->nattrs);
        for (size_t i = 0; i < s->nevents; i++) {
            size_t l = strlen(g->events);
            snprintf(g->events + l, sizeof(g->events) - l, "%s{", s->events[i].name);
            attrs_str(g->events, sizeof(g->events), s->events[i].attrs, s->events[i].nattrs);
            l = strlen(g->events);
            snprintf(g->events + l, sizeof(g->events) - l, "}");
        }
        g->error = s->error;
        g->kind = s->kind;
        ASSERT(s->end_unix_ns >= s->start_unix_ns);
    }
    pthread_mutex_unlock(&got_m);
}

static void got_reset(void) {
    pthread_mutex_lock(&got_m);
    ngot = 0;
    pthread_mutex_unlock(&got_m);
}

static const got_span *find(const char *name, int nth) {
    for (int i = 0; i < ngot; i++) {
        if (strcmp(got[i].name, name) == 0 && nth-- == 0) {
            return &got[i];
        }
    }
    rsl_test_fail(__FILE__, __LINE__, "no span \"%s\" (%d spans)", name, ngot);
}

static void has(const got_span *s, const char *kv) {
    if (!strstr(s->attrs, kv)) {
        rsl_test_fail(__FILE__, __LINE__, "span %s lacks %s: %s", s->name, kv, s->attrs);
    }
}

static const char *storefront =
    "local r = require 'resilua'\n"
    "r.breaker 'primary-b' { min_calls = 2, failure_rate = 50, open_for = '1s',\n"
    "  backoff = { factor = 2, max = '4s', jitter = 0 } }\n"
    "r.policy 'product' {\n"
    "  steps = {\n"
    "    primary = r.lua { run = function(req) if req.fail == '1' then return nil, '5xx' end\n"
    "                      return { status = 200, body = 'fresh' } end, guards = { 'primary-b' } },\n"
    "    cache = r.stub { status = 200, body = 'cached' },\n"
    "  },\n"
    "  chain = { 'primary', 'cache' },\n"
    "}\n"
    "r.policy 'park' { steps = { h = r.c 'park' } }\n"
    "r.policy 'prio' { priority = function(req) return 3 end, steps = { s = r.stub {} } }\n";

static rsl_runtime *open_traced(double sample, int errors) {
    const char *dir = rsl_test_tmpdir();
    rsl_test_write(dir, "p.lua", storefront);
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    o.clock = fake_clock;
    o.seed = 7;
    o.otlp_endpoint = ""; /* the hook only, whatever the environment says */
    o.trace_sample = sample;
    o.trace_errors = errors;
    o.on_span = on_span;
    rsl_runtime *rt = NULL;
    char err[1024];
    int rc = rsl_open(&rt, &o, err, sizeof(err));
    if (rc != 0) {
        rsl_test_fail(__FILE__, __LINE__, "rsl_open: %s: %s", rsl_strerror(rc), err);
    }
    got_reset();
    return rt;
}

static rsl_result *call(rsl_runtime *rt, const char *policy, const char *fail, const char *tp) {
    rsl_req *req = rsl_req_new();
    rsl_req_set(req, "fail", fail, strlen(fail));
    if (tp) {
        ASSERT_EQ(rsl_req_set_trace(req, tp, "vendor=1"), 0);
    }
    rsl_result *r = NULL;
    int rc = rsl_call_sync(rt, policy, req, 5000000000LL, &r);
    rsl_req_free(req);
    ASSERT_EQ(rc, 0);
    return r;
}

#define CALLER "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

TEST(call_and_attempt_spans_with_parents_attributes_and_the_breaker_event) {
    rsl_runtime *rt = open_traced(1.0, 0);
    rsl_result *r = call(rt, "product", "1", CALLER);
    char tp[56];
    ASSERT_EQ(rsl_result_trace(r, tp), 0);
    ASSERT(strncmp(tp, "00-4bf92f3577b34da6a3ce929d0e0e4736-", 36) == 0);
    rsl_result_free(r);
    /* on_span runs after the answer: wait for the call's span (bounded). */
    for (int i = 0; i < 5000; i++) {
        pthread_mutex_lock(&got_m);
        int n = ngot;
        pthread_mutex_unlock(&got_m);
        if (n >= 3) {
            break;
        }
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    pthread_mutex_lock(&got_m);
    ASSERT_EQ(ngot, 3);
    const got_span *callsp = find("product", 0), *primary = find("primary", 0),
                   *cache = find("cache", 0);
    ASSERT_STR_EQ(callsp->trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    ASSERT_STR_EQ(callsp->parent, "00f067aa0ba902b7");
    ASSERT(strncmp(tp + 36, callsp->id, 16) == 0); /* the result names the call's span */
    ASSERT_STR_EQ(primary->parent, callsp->id);
    ASSERT_STR_EQ(cache->parent, callsp->id);
    ASSERT_STR_EQ(primary->trace, callsp->trace);
    has(callsp, "resilua.policy=product;");
    has(callsp, "resilua.outcome=ok;");
    has(callsp, "resilua.served_by=cache;");
    has(callsp, "resilua.degraded=1;");
    has(callsp, "resilua.path=primary=5xx,cache=ok;");
    has(callsp, "http.response.status_code=200;");
    has(primary, "resilua.step=primary;");
    has(primary, "resilua.step.kind=lua;");
    has(primary, "resilua.attempt=1;");
    has(primary, "resilua.outcome=5xx;");
    has(primary, "error.type=5xx;");
    ASSERT_EQ(primary->error, 1);
    ASSERT_EQ(cache->error, 0);
    has(cache, "resilua.outcome=ok;");
    ASSERT_EQ(callsp->kind, RSL_SPAN_INTERNAL);
    ngot = 0;
    pthread_mutex_unlock(&got_m);

    /* The second failure opens the breaker: an event on that attempt's span. */
    r = call(rt, "product", "1", NULL);
    rsl_result_free(r);
    /* Open: the next attempt is refused by the breaker. */
    r = call(rt, "product", "0", NULL);
    ASSERT_STR_EQ(rsl_result_served_by(r), "cache");
    rsl_result_free(r);
    rsl_close(rt); /* every span handed on by now */
    ASSERT_EQ(ngot, 6);
    const got_span *opened = find("primary", 0), *refused = find("primary", 1);
    if (!strstr(opened->events, "resilua.breaker.transition{resilua.guard=primary-b;"
                                "resilua.from=closed;resilua.to=open;resilua.reason=failure_rate")) {
        rsl_test_fail(__FILE__, __LINE__, "no opening event: %s", opened->events);
    }
    has(refused, "resilua.outcome=rejected;");
    has(refused, "resilua.guard=primary-b;");
    has(refused, "resilua.guard.kind=breaker;");
    ASSERT(find("product", 0)->parent[0] == 0); /* no caller: a root */
    ASSERT(strcmp(find("product", 0)->trace, find("product", 1)->trace) != 0);
}

/* Waits (bounded) for n spans. */
static void wait_spans(int n) {
    for (int i = 0; i < 5000; i++) {
        pthread_mutex_lock(&got_m);
        int k = ngot;
        pthread_mutex_unlock(&got_m);
        if (k >= n) {
            return;
        }
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

TEST(the_priority_on_the_call_span) {
    rsl_runtime *rt = open_traced(1.0, 0);
    rsl_result_free(call(rt, "prio", "0", NULL));
    wait_spans(2);
    has(find("prio", 0), "resilua.priority=3;");
    rsl_result_free(call(rt, "product", "0", NULL));
    wait_spans(4);
    const got_span *p = find("product", 0);
    ASSERT(!strstr(p->attrs, "resilua.priority=")); /* none given: none said */
    rsl_close(rt);
}

TEST(parent_based_sampling_and_trace_errors) {
    rsl_runtime *rt = open_traced(0.0, 0);
    rsl_result_free(call(rt, "product", "0", NULL));                       /* ratio 0: no */
    rsl_result_free(call(rt, "product", "0", CALLER));                     /* parent: yes */
    rsl_result_free(call(rt, "product", "0", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"));
    rsl_close(rt);
    ASSERT_EQ(ngot, 2); /* the sampled parent's call and its one attempt */
    ASSERT_STR_EQ(find("product", 0)->parent, "00f067aa0ba902b7");

    rt = open_traced(0.0, 1);
    rsl_result_free(call(rt, "product", "0", NULL)); /* ok, not sampled: nothing */
    rsl_result *r = call(rt, "product", "1", NULL);  /* degraded: exported anyway */
    char tp[56];
    ASSERT_EQ(rsl_result_trace(r, tp), 0);
    ASSERT(tp[54] == '0'); /* the context it sent on said "not sampled" */
    rsl_result_free(r);
    rsl_close(rt);
    ASSERT_EQ(ngot, 3);
    has(find("product", 0), "resilua.degraded=1;");
}

static rsl_step_call *parked;

static void park(rsl_step_call *sc, const rsl_req *req, void *ud) {
    parked = sc; /* answered only after the deadline ended the call */
}

TEST(caller_deadline_bounds_the_call) {
    rsl_runtime *rt = open_traced(1.0, 0);
    rsl_register_step(rt, "park", park, NULL);
    rsl_req *req = rsl_req_new();
    ASSERT_EQ(rsl_req_set_deadline(req, 50 * 1000000LL), 0);
    rsl_result *r = NULL;
    ASSERT_EQ(rsl_call_sync(rt, "park", req, 20000000000LL, &r), 0);
    rsl_req_free(req);
    ASSERT_STR_EQ(rsl_outcome_name(rsl_result_outcome(r)), "timeout");
    rsl_result_free(r);
    ASSERT(parked);
    ASSERT_EQ(rsl_step_answer(parked, 200, "late", 4), RSL_EALREADY); /* dropped, freed */
    rsl_close(rt);
}

TEST(tracing_off_passes_the_callers_context_on) {
    const char *dir = rsl_test_tmpdir();
    rsl_test_write(dir, "p.lua", storefront);
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    o.otlp_endpoint = "";
    rsl_runtime *rt = NULL;
    char err[512];
    ASSERT_EQ(rsl_open(&rt, &o, err, sizeof(err)), 0);
    rsl_result *r = call(rt, "product", "0", CALLER);
    char tp[56];
    ASSERT_EQ(rsl_result_trace(r, tp), 0);
    ASSERT_STR_EQ(tp, CALLER); /* not a participant: the caller's, unchanged */
    rsl_result_free(r);
    r = call(rt, "product", "0", NULL);
    ASSERT_EQ(rsl_result_trace(r, tp), RSL_ENOENT);
    rsl_result_free(r);
    rsl_close(rt);
}
