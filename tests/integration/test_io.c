/*
 * r.http, r.redis and r.redis_cache against real servers on loopback: examples/flaky (the
 * project's flaky upstream) and a redis-server, both started here on ephemeral ports and
 * stopped at the end of each test.  Real clocks: these are the I/O paths; the breaker
 * and retry logic on an injected clock lives in tests/unit/test_chain.c.
 */
// ctest-labels: io
#include "resilua.h"
#include "test.h"

#include "redis_server.h"
#include "upstream.h"

#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Timing checks on a shared machine: CI runs the suite two tests at a time, under
 * sanitizers, and a worker thread can be descheduled for tens of ms.  So a bound like
 * "within 20 ms" holds for the median of several calls, while every call must still be
 * within a hard limit (never early; always cut well before the upstream would answer). */
static int cmp_ms(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median_ms(double *v, int n) {
    qsort(v, (size_t)n, sizeof(*v), cmp_ms);
    return v[n / 2];
}

/* A clock that never moves, for what must not depend on how long the test takes. */
static int64_t frozen_clock(void *ud) {
    (void)ud;
    return INT64_C(1000000000000); /* 1000 s */
}

/* Opens a runtime on the policy text (printf-formatted), with Redis at `redis` (NULL:
 * none) and `clock` (NULL: the real one). */
static rsl_runtime *vopen_text(const char *redis, rsl_clock_fn clock, const char *fmt, va_list ap) {
    char text[8192];
    vsnprintf(text, sizeof(text), fmt, ap);
    const char *dir = rsl_test_tmpdir();
    rsl_test_write(dir, "p.lua", text);
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    o.seed = 7;
    o.redis = redis;
    o.clock = clock;
    /* Lua steps here must answer: run-time limits (real clock) beyond any stall. */
    o.route_limit_ns = 2000000000LL;
    o.lua_step_limit_ns = 2000000000LL;
    rsl_runtime *rt = NULL;
    char err[2048];
    int rc = rsl_open(&rt, &o, err, sizeof(err));
    if (rc != 0) {
        rsl_test_fail(__FILE__, __LINE__, "rsl_open: %s: %s", rsl_strerror(rc), err);
    }
    return rt;
}

static rsl_runtime *open_text(const char *redis, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    rsl_runtime *rt = vopen_text(redis, NULL, fmt, ap);
    va_end(ap);
    return rt;
}

static rsl_runtime *open_text_clock(rsl_clock_fn clock, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    rsl_runtime *rt = vopen_text(NULL, clock, fmt, ap);
    va_end(ap);
    return rt;
}

/* Calls `policy` with "k=v" attributes (NULL-terminated); "body=..." sets the body. */
static rsl_result *call(rsl_runtime *rt, const char *policy, ...) {
    rsl_req *req = rsl_req_new();
    va_list ap;
    va_start(ap, policy);
    const char *kv;
    while ((kv = va_arg(ap, const char *)) != NULL) {
        const char *eq = strchr(kv, '=');
        char name[64];
        snprintf(name, sizeof(name), "%.*s", (int)(eq - kv), kv);
        if (strcmp(name, "body") == 0) {
            rsl_req_set_body(req, eq + 1, strlen(eq + 1));
        } else {
            rsl_req_set(req, name, eq + 1, strlen(eq + 1));
        }
    }
    va_end(ap);
    rsl_result *r = NULL;
    int rc = rsl_call_sync(rt, policy, req, 10000000000LL, &r);
    rsl_req_free(req);
    if (rc != 0) {
        rsl_test_fail(__FILE__, __LINE__, "call %s: %s", policy, rsl_strerror(rc));
    }
    return r;
}

static void path_str(const rsl_result *r, char *out, size_t n) {
    out[0] = 0;
    for (size_t i = 0; i < rsl_result_path_len(r); i++) {
        rsl_path_entry e;
        rsl_result_path(r, i, &e);
        size_t l = strlen(out);
        snprintf(out + l, n - l, "%s%s=%s", i ? "," : "", e.step, rsl_outcome_name(e.outcome));
    }
}

#define EXPECT(r, outcome, path)                                                            \
    do {                                                                                    \
        char p_[512];                                                                       \
        path_str(r, p_, sizeof(p_));                                                        \
        char *j_ = rsl_result_json(r);                                                      \
        if (strcmp(rsl_outcome_name(rsl_result_outcome(r)), outcome) != 0 ||                \
            strcmp(p_, path) != 0) {                                                        \
            rsl_test_fail(__FILE__, __LINE__, "want %s via %s, got %s", outcome, path, j_); \
        }                                                                                   \
        rsl_free(j_);                                                                       \
    } while (0)

static const char *body(const rsl_result *r) {
    return rsl_result_body(r, NULL);
}

static double step_ms(const rsl_result *r, size_t i) {
    rsl_path_entry e;
    ASSERT(rsl_result_path(r, i, &e) == 0);
    return e.ms;
}

static int step_attempts(const rsl_result *r, size_t i) {
    rsl_path_entry e;
    ASSERT(rsl_result_path(r, i, &e) == 0);
    return e.attempts;
}

/* Requests the upstream counted for `path` (its /_stats). */
static int hits(rsl_upstream *u, const char *path) {
    char out[8192];
    ASSERT(rsl_up_get(u, "GET", "/_stats", out, sizeof(out)) == 200);
    char key[256];
    snprintf(key, sizeof(key), "\"%s\":", path);
    const char *p = strstr(out, key);
    return p ? atoi(p + strlen(key)) : 0;
}

static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ASSERT(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
    socklen_t len = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &len);
    close(fd);
    return ntohs(a.sin_port);
}

#define HEAD "local r = require 'resilua'\n"

TEST(http_ok_and_status_outcomes) {
    rsl_upstream u;
    ASSERT(rsl_up_start("", &u) == 0);
    rsl_runtime *rt = open_text(NULL, HEAD
        "r.policy 'p' {\n"
        "  steps = { up = r.http { url = 'http://127.0.0.1:%d/items/${id}?status=${st}', timeout = '5s' },\n"
        "            stub = r.stub { status = 200, body = 'stub' } },\n"
        "  chain = { 'up', 'stub' },\n"
        "}\n", u.port);
    rsl_result *r = call(rt, "p", "id=7", "st=200", NULL);
    EXPECT(r, "ok", "up=ok");
    ASSERT(strstr(body(r), "\"path\":\"/items/7\"") != NULL);
    ASSERT_EQ(rsl_result_status(r), 200);
    int ct = 0;
    for (size_t i = 0; i < rsl_result_header_count(r); i++) {
        const char *n, *v;
        rsl_result_header(r, i, &n, &v);
        ct |= strcasecmp(n, "content-type") == 0 && strcmp(v, "application/json") == 0;
    }
    ASSERT(ct);
    rsl_result_free(r);

    /* 5xx falls back; 4xx is the answer (a business error is never masked). */
    r = call(rt, "p", "id=7", "st=503", NULL);
    EXPECT(r, "ok", "up=5xx,stub=ok");
    ASSERT_STR_EQ(body(r), "stub");
    rsl_result_free(r);
    r = call(rt, "p", "id=7", "st=404", NULL);
    EXPECT(r, "4xx", "up=4xx");
    ASSERT_EQ(rsl_result_status(r), 404);
    rsl_result_free(r);
    rsl_close(rt);
    rsl_up_stop(&u);
}

/* A 100 ms timeout against an answer due after 2 s: each call never early and cut far
 * before the answer, the median within 20 ms of the timeout. */
TEST(http_timeout_on_time) {
    rsl_upstream u;
    ASSERT(rsl_up_start("", &u) == 0);
    rsl_runtime *rt = open_text(NULL, HEAD
        "r.policy 'p' {\n"
        "  steps = { up = r.http { url = 'http://127.0.0.1:%d/slow?delay=2000', timeout = '100ms' } },\n"
        "  chain = { 'up' },\n"
        "}\n", u.port);
    double steps[5], tooks[5];
    for (int i = 0; i < 5; i++) {
        double t0 = now_ms();
        rsl_result *r = call(rt, "p", NULL);
        tooks[i] = now_ms() - t0;
        EXPECT(r, "timeout", "up=timeout");
        steps[i] = step_ms(r, 0);
        /* Never early, always cut well before the 2 s answer. */
        ASSERT(steps[i] >= 99.0 && steps[i] < 1000.0);
        ASSERT(tooks[i] >= 99.0 && tooks[i] < 1000.0);
        rsl_result_free(r);
    }
    ASSERT(median_ms(steps, 5) <= 120.0);
    ASSERT(median_ms(tooks, 5) <= 120.0);
    rsl_close(rt);
    rsl_up_stop(&u);
}

TEST(http_refused_is_connect_under_100ms) {
    int port = free_port();
    rsl_runtime *rt = open_text(NULL, HEAD
        "r.policy 'p' {\n"
        "  steps = { up = r.http { url = 'http://127.0.0.1:%d/x', timeout = '2s' },\n"
        "            stub = r.stub { body = 'stub' } },\n"
        "  chain = { 'up', 'stub' },\n"
        "}\n", port);
    double tooks[5];
    for (int i = 0; i < 5; i++) {
        double t0 = now_ms();
        rsl_result *r = call(rt, "p", NULL);
        tooks[i] = now_ms() - t0;
        ASSERT(tooks[i] < 1000.0); /* far from the 2 s timeout: refused, not timed out */
        EXPECT(r, "ok", "up=connect,stub=ok");
        rsl_result_free(r);
    }
    ASSERT(median_ms(tooks, 5) < 100.0);
    rsl_close(rt);
}

TEST(retries_hit_the_upstream_exactly_attempts_times) {
    rsl_upstream u;
    ASSERT(rsl_up_start("", &u) == 0);
    rsl_runtime *rt = open_text(NULL, HEAD
        "r.policy 'p' {\n"
        "  steps = { up = r.http { url = 'http://127.0.0.1:%d/r${n}?status=503', timeout = '5s',\n"
        "              retry = { attempts = 3, base = '5ms', on = { '5xx' } } } },\n"
        "  chain = { 'up' },\n"
        "}\n", u.port);
    rsl_result *r = call(rt, "p", "n=1", NULL);
    EXPECT(r, "5xx", "up=5xx");
    ASSERT_EQ(step_attempts(r, 0), 3);
    rsl_result_free(r);
    ASSERT_EQ(hits(&u, "/r1"), 3);
    rsl_close(rt);
    rsl_up_stop(&u);
}

/* An 80 ms deadline against a 3 s step timeout and an answer due after 2 s: the deadline
 * cuts the step (each call never early and far before either; the median within 20 ms).
 * What is left of a deadline goes upstream as X-Resilua-Deadline-Ms: seen on a policy
 * whose deadline (5 s) a call that succeeds surely keeps. */
TEST(deadline_shorter_than_the_step_timeout_wins_and_is_sent_upstream) {
    rsl_upstream u;
    ASSERT(rsl_up_start("", &u) == 0);
    rsl_runtime *rt = open_text(NULL, HEAD
        "r.policy 'p' {\n"
        "  deadline = '80ms',\n"
        "  steps = { up = r.http { url = 'http://127.0.0.1:%d/d?delay=${delay}', timeout = '3s' },\n"
        "            stub = r.stub { body = 'stub' } },\n"
        "  chain = { 'up', 'stub' },\n"
        "}\n"
        "r.policy 'q' {\n"
        "  deadline = '5s',\n"
        "  steps = { up = r.http { url = 'http://127.0.0.1:%d/d?delay=${delay}', timeout = '3s' } },\n"
        "  chain = { 'up' },\n"
        "}\n", u.port, u.port);
    double tooks[5];
    rsl_result *r;
    for (int i = 0; i < 5; i++) {
        double t0 = now_ms();
        r = call(rt, "p", "delay=2000", NULL);
        tooks[i] = now_ms() - t0;
        EXPECT(r, "ok", "up=timeout,stub=ok");
        ASSERT(tooks[i] >= 79.0 && tooks[i] < 1000.0); /* the deadline, not the 3 s */
        rsl_result_free(r);
    }
    ASSERT(median_ms(tooks, 5) <= 100.0);
    r = call(rt, "q", "delay=0", NULL);
    EXPECT(r, "ok", "up=ok");
    rsl_result_free(r);
    char last[8192];
    ASSERT(rsl_up_get(&u, "GET", "/_last", last, sizeof(last)) == 200);
    const char *h = strstr(last, "\"x-resilua-deadline-ms\":\"");
    ASSERT(h != NULL);
    int left = atoi(h + strlen("\"x-resilua-deadline-ms\":\""));
    ASSERT(left > 0 && left <= 5000);
    rsl_close(rt);
    rsl_up_stop(&u);
}

TEST(attributes_are_url_encoded_and_a_missing_one_never_goes_out) {
    rsl_upstream u;
    ASSERT(rsl_up_start("", &u) == 0);
    rsl_runtime *rt = open_text(NULL, HEAD
        "r.policy 'p' {\n"
        "  steps = { up = r.http { url = 'http://127.0.0.1:%d/u/${id}?q=${q}', timeout = '5s',\n"
        "                          headers = { ['X-Tier'] = '${tier}' } },\n"
        "            stub = r.stub { body = 'stub' } },\n"
        "  chain = { 'up', 'stub' },\n"
        "}\n", u.port);
    rsl_result *r = call(rt, "p", "id=a b/c?d&e", "q=x=y#z", "tier=vip gold", NULL);
    EXPECT(r, "ok", "up=ok");
    rsl_result_free(r);
    char last[8192];
    ASSERT(rsl_up_get(&u, "GET", "/_last", last, sizeof(last)) == 200);
    ASSERT(strstr(last, "\"url\":\"/u/a%20b%2Fc%3Fd%26e?q=x%3Dy%23z\"") != NULL);
    ASSERT(strstr(last, "\"x-tier\":\"vip gold\"") != NULL);

    ASSERT(rsl_up_get(&u, "POST", "/_reset", last, sizeof(last)) == 200);
    r = call(rt, "p", "id=1", "tier=free", NULL); /* no q */
    EXPECT(r, "ok", "up=error,stub=ok");
    rsl_path_entry e;
    rsl_result_path(r, 0, &e);
    ASSERT_STR_EQ(e.error, "missing attribute \"q\"");
    rsl_result_free(r);
    char stats[4096];
    ASSERT(rsl_up_get(&u, "GET", "/_stats", stats, sizeof(stats)) == 200);
    ASSERT(strstr(stats, "\"requests\":0") != NULL);
    rsl_close(rt);
    rsl_up_stop(&u);
}

TEST(post_passes_the_request_body_on) {
    rsl_upstream u;
    ASSERT(rsl_up_start("", &u) == 0);
    rsl_runtime *rt = open_text(NULL, HEAD
        "r.policy 'p' {\n"
        "  steps = { up = r.http { url = 'http://127.0.0.1:%d/post', method = 'POST', timeout = '5s' },\n"
        "            tpl = r.http { url = 'http://127.0.0.1:%d/tpl', method = 'PUT', body = '{\"id\":\"${id}\"}' } },\n"
        "  chain = { 'up' },\n"
        "}\n"
        "r.policy 't' { steps = { tpl = r.http { url = 'http://127.0.0.1:%d/tpl', method = 'PUT', body = '{\"id\":\"${id}\"}' } }, chain = { 'tpl' } }\n",
        u.port, u.port, u.port);
    rsl_result *r = call(rt, "p", "body=hello upstream", NULL);
    EXPECT(r, "ok", "up=ok");
    rsl_result_free(r);
    char last[8192];
    ASSERT(rsl_up_get(&u, "GET", "/_last", last, sizeof(last)) == 200);
    ASSERT(strstr(last, "\"method\":\"POST\"") != NULL);
    ASSERT(strstr(last, "\"body\":\"hello upstream\"") != NULL);
    r = call(rt, "t", "id=9", "body=ignored", NULL);
    EXPECT(r, "ok", "tpl=ok");
    rsl_result_free(r);
    ASSERT(rsl_up_get(&u, "GET", "/_last", last, sizeof(last)) == 200);
    ASSERT(strstr(last, "\"method\":\"PUT\"") != NULL);
    ASSERT(strstr(last, "\"body\":\"{\\\"id\\\":\\\"9\\\"}\"") != NULL);
    rsl_close(rt);
    rsl_up_stop(&u);
}

TEST(body_over_the_cap_is_an_error_naming_it) {
    rsl_upstream u;
    ASSERT(rsl_up_start("", &u) == 0);
    char text[1024];
    snprintf(text, sizeof(text), HEAD
        "r.policy 'p' { steps = { up = r.http { url = 'http://127.0.0.1:%d/big?bytes=${n}', timeout = '5s' } }, chain = { 'up' } }\n",
        u.port);
    const char *dir = rsl_test_tmpdir();
    rsl_test_write(dir, "p.lua", text);
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    o.http_max_body = 64 * 1024;
    rsl_runtime *rt = NULL;
    ASSERT(rsl_open(&rt, &o, NULL, 0) == 0);
    rsl_result *r = call(rt, "p", "n=1000", NULL);
    EXPECT(r, "ok", "up=ok");
    ASSERT_EQ(strlen(body(r)), 1000);
    rsl_result_free(r);
    r = call(rt, "p", "n=200000", NULL);
    EXPECT(r, "error", "up=error");
    rsl_path_entry e;
    rsl_result_path(r, 0, &e);
    ASSERT(strstr(e.error, "65536") != NULL);
    rsl_result_free(r);
    rsl_close(rt);
    rsl_up_stop(&u);
}

static void count_cb(const rsl_result *r, void *ud) {
    atomic_int *n = ud;
    rsl_outcome o = rsl_result_outcome(r);
    atomic_fetch_add(&n[o], 1);
}

TEST(cancel_aborts_the_transfer) {
    rsl_upstream u;
    ASSERT(rsl_up_start("", &u) == 0);
    rsl_runtime *rt = open_text(NULL, HEAD
        "r.policy 'p' { steps = { up = r.http { url = 'http://127.0.0.1:%d/c?delay=20000', timeout = '30s' } }, chain = { 'up' } }\n",
        u.port);
    static atomic_int n[RSL_OUTCOME__COUNT];
    double tooks[5];
    for (int i = 0; i < 5; i++) {
        uint64_t id = 0;
        ASSERT(rsl_call_id(rt, "p", NULL, count_cb, n, &id) == 0);
        /* In flight: the upstream has the request (and would answer in 20 s). */
        for (double w0 = now_ms(); hits(&u, "/c") < i + 1;) {
            ASSERT(now_ms() - w0 < 10000);
            usleep(1000);
        }
        double t0 = now_ms();
        ASSERT(rsl_cancel(rt, id) == 0);
        while (atomic_load(&n[RSL_OUTCOME_CANCELED]) == i && now_ms() - t0 < 10000) {
            usleep(1000);
        }
        tooks[i] = now_ms() - t0;
        ASSERT(tooks[i] < 10000); /* long before the 20 s answer */
        ASSERT_EQ(atomic_load(&n[RSL_OUTCOME_CANCELED]), i + 1);
    }
    ASSERT(median_ms(tooks, 5) < 50);
    int done = 0;
    for (int o = 0; o < RSL_OUTCOME__COUNT; o++) {
        done += atomic_load(&n[o]);
    }
    ASSERT_EQ(done, 5); /* nothing but the cancels */
    rsl_close(rt);
    rsl_up_stop(&u);
}

TEST(retry_budget_holds_over_100_failing_calls) {
    rsl_upstream u;
    ASSERT(rsl_up_start("", &u) == 0);
    /* The budget's 10 s window is on the runtime's clock: frozen, so that however long
     * the 100 calls take they all fall in one window. */
    rsl_runtime *rt = open_text_clock(frozen_clock, HEAD
        "r.policy 'p' {\n"
        "  steps = { up = r.http { url = 'http://127.0.0.1:%d/b?status=503', timeout = '5s',\n"
        "              retry = { attempts = 3, base = '1ms', max = '2ms', on = { '5xx' }, budget = 0.2 } } },\n"
        "  chain = { 'up' },\n"
        "}\n", u.port);
    for (int i = 0; i < 100; i++) {
        rsl_result *r = call(rt, "p", NULL);
        EXPECT(r, "5xx", "up=5xx");
        rsl_result_free(r);
    }
    /* 100 first attempts: at most 0.2 * 100 + 10 = 30 retries over the 10 s window. */
    int n = hits(&u, "/b");
    ASSERT(n >= 100 && n <= 130);
    rsl_close(rt);
    rsl_up_stop(&u);
}

TEST(fault_injection_on_an_http_step_is_seeded) {
    rsl_upstream u;
    ASSERT(rsl_up_start("", &u) == 0);
    int first[2] = {0, 0};
    for (int run = 0; run < 2; run++) {
        rsl_runtime *rt = open_text(NULL, HEAD
            "r.policy 'p' { steps = { up = r.http { url = 'http://127.0.0.1:%d/f', timeout = '5s',\n"
            "  fault = { abort = 'connect', abort_percent = 50 } }, s = r.stub {} }, chain = { 'up', 's' } }\n",
            u.port);
        for (int i = 0; i < 40; i++) {
            rsl_result *r = call(rt, "p", NULL);
            rsl_path_entry e;
            rsl_result_path(r, 0, &e);
            first[run] = first[run] * 2 % 1000003 + (e.outcome == RSL_OUTCOME_CONNECT);
            rsl_result_free(r);
        }
        rsl_close(rt);
    }
    ASSERT_EQ(first[0], first[1]);
    rsl_up_stop(&u);
}

/* ---- Redis ----------------------------------------------------------------------------- */

/* Until the policy's first step (a Redis one) answers: ok, or a miss. */
static void wait_redis_up(rsl_runtime *rt, const char *policy) {
    double t0 = now_ms();
    for (;;) {
        rsl_result *r = call(rt, policy, "id=probe", NULL);
        rsl_path_entry e;
        rsl_result_path(r, 0, &e);
        int up = e.outcome == RSL_OUTCOME_OK || e.outcome == RSL_OUTCOME_MISS;
        rsl_result_free(r);
        if (up) {
            return;
        }
        if (now_ms() - t0 > 10000) {
            rsl_test_fail(__FILE__, __LINE__, "redis did not come up");
        }
        usleep(20 * 1000);
    }
}

TEST(redis_get_miss_and_no_redis) {
    rsl_redis_server s;
    ASSERT(rsl_redis_start(&s) == 0);
    char out[256], addr[64];
    rsl_redis_cmd(&s, "SET user:1 alice", out, sizeof(out));
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", s.port);
    const char *pol = HEAD
        "r.policy 'p' { steps = { get = r.redis { cmd = { 'GET', 'user:${id}' }, timeout = '2s' },\n"
        "  stub = r.stub { body = 'stub' } }, chain = { 'get', 'stub' } }\n";
    rsl_runtime *rt = open_text(addr, "%s", pol);
    wait_redis_up(rt, "p");
    rsl_result *r = call(rt, "p", "id=1", NULL);
    EXPECT(r, "ok", "get=ok");
    ASSERT_STR_EQ(body(r), "alice");
    rsl_result_free(r);
    r = call(rt, "p", "id=2", NULL);
    EXPECT(r, "ok", "get=miss,stub=ok");
    rsl_result_free(r);
    rsl_close(rt);

    rt = open_text(NULL, "%s", pol); /* no Redis configured: connect, and the chain goes on */
    r = call(rt, "p", "id=1", NULL);
    EXPECT(r, "ok", "get=connect,stub=ok");
    rsl_result_free(r);
    rsl_close(rt);
    rsl_redis_stop(&s);
}

TEST(cache_write_through_then_served_when_the_upstream_is_down) {
    rsl_upstream u;
    ASSERT(rsl_up_start("", &u) == 0);
    rsl_redis_server s;
    ASSERT(rsl_redis_start(&s) == 0);
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", s.port);
    rsl_runtime *rt = open_text(addr, HEAD
        "r.policy 'p' {\n"
        "  steps = { up = r.http { url = 'http://127.0.0.1:%d/users/${id}', timeout = '2s' },\n"
        "            cache = r.redis_cache { key = 'u:${id}', ttl = '1m', timeout = '2s' },\n"
        "            stub = r.stub { status = 503, body = 'stub' } },\n"
        "  chain = { 'up', 'cache', 'stub' },\n"
        "}\n", u.port);
    wait_redis_up(rt, "p");
    rsl_result *r = call(rt, "p", "id=5", NULL);
    EXPECT(r, "ok", "up=ok");
    char first[256];
    snprintf(first, sizeof(first), "%s", body(r));
    rsl_result_free(r);
    /* The write is off the request path: give it a moment to land. */
    char out[512] = "";
    for (double w0 = now_ms(); !strstr(out, "/users/5") && now_ms() - w0 < 10000;) {
        usleep(5000);
        rsl_redis_cmd(&s, "GET u:5", out, sizeof(out));
    }
    ASSERT(strstr(out, "/users/5") != NULL);
    rsl_up_stop(&u); /* the upstream goes away */
    r = call(rt, "p", "id=5", NULL);
    EXPECT(r, "ok", "up=connect,cache=ok");
    ASSERT_STR_EQ(body(r), first);
    ASSERT(rsl_result_degraded(r));
    rsl_result_free(r);
    r = call(rt, "p", "id=6", NULL);
    EXPECT(r, "5xx", "up=connect,cache=miss,stub=5xx");
    rsl_result_free(r);
    rsl_close(rt);
    rsl_redis_stop(&s);
}

TEST(redis_killed_and_restarted_mid_run) {
    rsl_redis_server s;
    ASSERT(rsl_redis_start(&s) == 0);
    char addr[64], out[256];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", s.port);
    rsl_runtime *rt = open_text(addr, HEAD
        "r.policy 'p' {\n"
        "  steps = { cache = r.redis_cache { key = 'k:${id}', timeout = '2s' },\n"
        "            l = r.lua(function(req) return { body = 'fresh ' .. req.id } end) },\n"
        "  chain = { 'cache', 'l' },\n"
        "}\n");
    wait_redis_up(rt, "p");
    rsl_redis_cmd(&s, "SET k:1 cached", out, sizeof(out));
    rsl_result *r = call(rt, "p", "id=1", NULL);
    EXPECT(r, "ok", "cache=ok");
    rsl_result_free(r);

    rsl_redis_stop(&s);
    double tooks[50];
    for (int i = 0; i < 50; i++) { /* down: every call answers through the chain, quickly */
        double t0 = now_ms();
        r = call(rt, "p", "id=1", NULL);
        tooks[i] = now_ms() - t0;
        ASSERT(tooks[i] < 3000); /* nothing hangs: at most the 2 s step timeout */
        rsl_path_entry e;
        rsl_result_path(r, 0, &e);
        ASSERT(e.outcome == RSL_OUTCOME_CONNECT || e.outcome == RSL_OUTCOME_TIMEOUT);
        ASSERT_STR_EQ(body(r), "fresh 1");
        rsl_result_free(r);
        usleep(2000);
    }
    ASSERT(median_ms(tooks, 50) < 150); /* at once: a Redis known down is not waited on */
    ASSERT(rsl_redis_restart(&s) == 0);
    rsl_redis_cmd(&s, "SET k:1 cached-again", out, sizeof(out));
    double t0 = now_ms();
    for (;;) {
        r = call(rt, "p", "id=1", NULL);
        int back = strcmp(body(r), "cached-again") == 0;
        rsl_result_free(r);
        if (back) {
            break;
        }
        ASSERT(now_ms() - t0 < 10000);
        usleep(20 * 1000);
    }
    rsl_close(rt);
    rsl_redis_stop(&s);
}

/* ---- every call completes exactly once ----------------------------------------------------- */

typedef struct tally {
    atomic_int outcomes[RSL_OUTCOME__COUNT];
    atomic_int done;
} tally;

static void tally_cb(const rsl_result *r, void *ud) {
    tally *t = ud;
    atomic_fetch_add(&t->outcomes[rsl_result_outcome(r)], 1);
    atomic_fetch_add(&t->done, 1);
}

TEST(ten_thousand_mixed_calls_complete_exactly_once) {
    rsl_upstream u;
    ASSERT(rsl_up_start("", &u) == 0);
    rsl_redis_server s;
    ASSERT(rsl_redis_start(&s) == 0);
    char addr[64], out[256];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", s.port);
    rsl_redis_cmd(&s, "SET k:1 one", out, sizeof(out));
    const char *dir = rsl_test_tmpdir();
    char text[4096];
    snprintf(text, sizeof(text), HEAD
        "r.breaker 'b' { window = '1s', min_calls = 50, failure_rate = 90, open_for = '50ms' }\n"
        "r.policy 'p' {\n"
        "  deadline = '150ms',\n"
        "  steps = { up = r.http { url = 'http://127.0.0.1:%d/m?status=${st}&delay=${d}', timeout = '60ms',\n"
        "              guards = { 'b' }, retry = { attempts = 2, base = '1ms' } },\n"
        "            get = r.redis { cmd = { 'GET', 'k:${id}' }, timeout = '30ms' },\n"
        "            cache = r.redis_cache { key = 'c:${id}', timeout = '30ms' },\n"
        "            stub = r.stub { status = 503 } },\n"
        "  chain = { 'up', 'get', 'cache', 'stub' },\n"
        "}\n", u.port);
    rsl_test_write(dir, "p.lua", text);
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    o.workers = 2;
    o.redis = addr;
    rsl_runtime *rt = NULL;
    ASSERT(rsl_open(&rt, &o, NULL, 0) == 0);
    static tally t;
    const int N = 10000;
    static const char *sts[] = {"200", "200", "503", "404", "200"};
    static const char *ds[] = {"0", "0", "0", "100", "20"};
    rsl_req *req = rsl_req_new();
    uint64_t ids[64];
    int nid = 0, canceled_asked = 0;
    for (int i = 0; i < N; i++) {
        rsl_req_set(req, "st", sts[i % 5], 3);
        rsl_req_set(req, "d", ds[(i / 5) % 5], strlen(ds[(i / 5) % 5]));
        rsl_req_set(req, "id", i % 2 ? "1" : "2", 1);
        uint64_t id;
        int rc = rsl_call_id(rt, "p", req, tally_cb, &t, &id);
        ASSERT_EQ(rc, 0);
        if (i % 97 == 0 && nid < 64) {
            ids[nid++] = id;
        }
        if (i == N / 3) {
            rsl_redis_stop(&s); /* Redis down for a stretch */
        }
        if (i == 2 * N / 3) {
            ASSERT(rsl_redis_restart(&s) == 0);
        }
        if (i % 200 == 199) {
            for (int j = 0; j < nid; j++) {
                canceled_asked += rsl_cancel(rt, ids[j]) == 0;
            }
            nid = 0;
            /* Keep at most a few hundred in flight: bounded, like a real client. */
            while (i + 1 - atomic_load(&t.done) > 400) {
                usleep(1000);
            }
        }
    }
    rsl_req_free(req);
    double t0 = now_ms();
    while (atomic_load(&t.done) < N && now_ms() - t0 < 30000) {
        usleep(2000);
    }
    ASSERT_EQ(atomic_load(&t.done), N);
    usleep(200 * 1000);
    ASSERT_EQ(atomic_load(&t.done), N); /* and none twice */
    int sum = 0;
    for (int i = 0; i < RSL_OUTCOME__COUNT; i++) {
        sum += atomic_load(&t.outcomes[i]);
    }
    ASSERT_EQ(sum, N);
    ASSERT(atomic_load(&t.outcomes[RSL_OUTCOME_OK]) > 0); /* the mix depends on timing */
    rsl_close(rt);
    ASSERT_EQ(atomic_load(&t.done), N);
    rsl_up_stop(&u);
    rsl_redis_stop(&s);
    (void)canceled_asked;
}

TEST(close_with_io_in_flight_completes_every_call) {
    rsl_upstream u;
    ASSERT(rsl_up_start("", &u) == 0);
    rsl_redis_server s;
    ASSERT(rsl_redis_start(&s) == 0);
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", s.port);
    rsl_runtime *rt = open_text(addr, HEAD
        "r.policy 'h' { steps = { up = r.http { url = 'http://127.0.0.1:%d/x?delay=20000' } }, chain = { 'up' } }\n"
        "r.policy 'r' { steps = { g = r.redis { cmd = { 'BLPOP', 'nothing', '20' } } }, chain = { 'g' } }\n"
        "r.policy 'probe' { steps = { g = r.redis { cmd = { 'GET', 'k:${id}' }, timeout = '2s' } } }\n",
        u.port);
    wait_redis_up(rt, "probe"); /* else the BLPOPs could be refused at once, not in flight */
    static tally t;
    for (int i = 0; i < 50; i++) {
        ASSERT(rsl_call(rt, i % 2 ? "h" : "r", NULL, tally_cb, &t) == 0);
    }
    /* In flight: the upstream has the 25 requests, Redis blocks on a BLPOP (the others
     * wait behind it on the pipelined connection). */
    char info[4096] = "";
    for (double w0 = now_ms(); hits(&u, "/x") < 25 || !strstr(info, "blocked_clients:1");) {
        if (now_ms() - w0 >= 10000) {
            rsl_test_fail(__FILE__, __LINE__, "not in flight: %d requests upstream; %s",
                          hits(&u, "/x"), info);
        }
        usleep(2000);
        rsl_redis_cmd(&s, "INFO clients", info, sizeof(info));
    }
    double t0 = now_ms();
    rsl_close(rt);
    ASSERT(now_ms() - t0 < 5000); /* generous, and far before the 20 s answers */
    ASSERT_EQ(atomic_load(&t.done), 50);
    rsl_up_stop(&u);
    rsl_redis_stop(&s);
}
