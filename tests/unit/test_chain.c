/*
 * The chain through the public API: policies written to a temp dir, a runtime with one
 * worker on an injected clock, calls and their outcomes and paths.  Behaviour cases are
 * data: a policy, then calls (clock advance, attributes, expected outcome and path).
 */
// ctest-labels: tsan
#include "resilua.h"
#include "test.h"
#include "fake_clock.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The run-time limits of route() and of Lua steps are on the real clock (the sandbox's
 * watchdog), not the injected one.  Calls that must succeed get 2 s, far beyond any
 * stall of a loaded machine; cases that want a runaway stopped get shorter ones, still
 * far above what a route or a step that ends needs. */
#define LIMIT_MS         2000
#define RUNAWAY_ROUTE_MS 250
#define RUNAWAY_STEP_MS  500

static rsl_runtime *open_policy_limits(const char *text, int64_t route_ms, int64_t step_ms) {
    const char *dir = rsl_test_tmpdir();
    rsl_test_write(dir, "p.lua", text);
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    o.clock = fake_clock;
    o.seed = 42;
    o.route_limit_ns = route_ms * 1000000;
    o.lua_step_limit_ns = step_ms * 1000000;
    rsl_runtime *rt = NULL;
    char err[1024];
    int rc = rsl_open(&rt, &o, err, sizeof(err));
    if (rc != 0) {
        rsl_test_fail(__FILE__, __LINE__, "rsl_open: %s: %s", rsl_strerror(rc), err);
    }
    return rt;
}

static rsl_runtime *open_policy(const char *text) {
    return open_policy_limits(text, LIMIT_MS, LIMIT_MS);
}

/* "step=outcome,step=outcome" */
static void path_str(const rsl_result *r, char *out, size_t n) {
    out[0] = 0;
    for (size_t i = 0; i < rsl_result_path_len(r); i++) {
        rsl_path_entry e;
        rsl_result_path(r, i, &e);
        size_t l = strlen(out);
        snprintf(out + l, n - l, "%s%s=%s", i ? "," : "", e.step, rsl_outcome_name(e.outcome));
    }
}

/* Calls `policy` with "k=v" attributes (NULL-terminated). */
static rsl_result *call(rsl_runtime *rt, const char *policy, ...) {
    rsl_req *req = rsl_req_new();
    va_list ap;
    va_start(ap, policy);
    const char *kv;
    while ((kv = va_arg(ap, const char *)) != NULL) {
        const char *eq = strchr(kv, '=');
        char name[64];
        snprintf(name, sizeof(name), "%.*s", (int)(eq - kv), kv);
        rsl_req_set(req, name, eq + 1, strlen(eq + 1));
    }
    va_end(ap);
    rsl_result *r = NULL;
    int rc = rsl_call_sync(rt, policy, req, 5000000000LL, &r);
    rsl_req_free(req);
    if (rc != 0) {
        rsl_test_fail(__FILE__, __LINE__, "call %s: %s", policy, rsl_strerror(rc));
    }
    return r;
}

static void expect(rsl_result *r, const char *outcome, const char *path) {
    char p[512];
    path_str(r, p, sizeof(p));
    if (strcmp(rsl_outcome_name(rsl_result_outcome(r)), outcome) != 0 || strcmp(p, path) != 0) {
        char *j = rsl_result_json(r);
        rsl_test_fail(__FILE__, __LINE__, "expected %s [%s], got %s", outcome, path, j);
    }
}

/* ---- data-driven cases ---------------------------------------------------------------- */

typedef struct step_case {
    int64_t advance_ms;
    const char *attrs[4];
    const char *outcome;
    const char *path;
} step_case;

typedef struct policy_case {
    const char *name;
    const char *policy;
    step_case calls[24];
} policy_case;

#define END {.advance_ms = -1}

static const char *flaky_breaker =
    "local r = require 'resilua'\n"
    "r.breaker 'b' { window = '10s', buckets = 10, min_calls = 4, failure_rate = 50,\n"
    "  open_for = '1s', backoff = { factor = 2, max = '4s', jitter = 0 }, probes = 1 }\n"
    "r.policy 'p' {\n"
    "  steps = {\n"
    "    primary = r.lua { run = function(req) if req.fail == '1' then return nil, '5xx' end\n"
    "                      return { status = 200, body = 'fresh' } end, guards = { 'b' } },\n"
    "    stub = r.stub { status = 503, body = 'later' },\n"
    "  },\n"
    "  chain = { 'primary', 'stub' },\n"
    "}\n";

static const policy_case cases[] = {
    {"stub_only",
     "local r = require 'resilua'\n"
     "r.policy 'p' { steps = { s = r.stub { status = 200, body = 'hi' } } }\n",
     {{0, {NULL}, "ok", "s=ok"}, END}},
    {"fallback_on_5xx_and_4xx_passes",
     "local r = require 'resilua'\n"
     "r.policy 'p' {\n"
     "  steps = { a = r.lua(function(req) return { status = tonumber(req.st) } end),\n"
     "            b = r.stub { body = 'fallback' } },\n"
     "  chain = { 'a', 'b' } }\n",
     {{0, {"st=502"}, "ok", "a=5xx,b=ok"},
      {0, {"st=404"}, "4xx", "a=4xx"},
      {0, {"st=200"}, "ok", "a=ok"},
      END}},
    {"outcomes_from_lua",
     "local r = require 'resilua'\n"
     "r.policy 'p' {\n"
     "  steps = { a = r.lua(function(req) return nil, req.o end), b = r.stub {} },\n"
     "  chain = { 'a', 'b' } }\n",
     {{0, {"o=timeout"}, "ok", "a=timeout,b=ok"},
      {0, {"o=miss"}, "ok", "a=miss,b=ok"},
      {0, {"o=canceled"}, "canceled", "a=canceled"},
      {0, {"o=bogus"}, "ok", "a=error,b=ok"},
      END}},
    {"custom_fallback_on",
     "local r = require 'resilua'\n"
     "r.policy 'p' {\n"
     "  steps = { a = r.lua(function(req) return nil, req.o end), b = r.stub {} },\n"
     "  chain = { 'a', 'b' }, fallback_on = { 'timeout' } }\n",
     {{0, {"o=timeout"}, "ok", "a=timeout,b=ok"}, {0, {"o=5xx"}, "5xx", "a=5xx"}, END}},
    {"route_vip_free",
     "local r = require 'resilua'\n"
     "r.policy 'p' {\n"
     "  steps = { primary = r.lua(function() return nil, '5xx' end),\n"
     "            cache = r.stub { body = 'cached' }, stub = r.stub { status = 503 } },\n"
     "  chain = { 'primary', 'stub' },\n"
     "  route = function(req, sig)\n"
     "    if req.tier == 'vip' then return { 'primary', 'cache', 'stub' } end\n"
     "    return { 'primary', 'stub' } end }\n",
     {{0, {"tier=vip"}, "ok", "primary=5xx,cache=ok"},
      {0, {"tier=free"}, "5xx", "primary=5xx,stub=5xx"},
      END}},
    {"failing_routes_take_chain",
     "local r = require 'resilua'\n"
     "r.policy 'p' {\n"
     "  steps = { a = r.stub { body = 'a' }, b = r.stub { body = 'b' } },\n"
     "  chain = { 'b' },\n"
     "  route = function(req)\n"
     "    if req.m == 'raise' then error('boom') end\n"
     "    if req.m == 'loop' then while true do end end\n"
     "    if req.m == 'pcall' then pcall(function() while true do end end) return { 'a' } end\n"
     "    if req.m == 'garbage' then return 42 end\n"
     "    if req.m == 'unknown' then return { 'zzz' } end\n"
     "    if req.m == 'empty' then return {} end\n"
     "    if req.m == 'mem' then local t = {} while true do t[#t + 1] = string.rep('x', 65536) .. #t end end\n"
     "    return { 'a' } end }\n",
     {{0, {"m=raise"}, "ok", "b=ok"},
      {0, {"m=loop"}, "ok", "b=ok"},
      {0, {"m=pcall"}, "ok", "b=ok"},
      {0, {"m=garbage"}, "ok", "b=ok"},
      {0, {"m=unknown"}, "ok", "b=ok"},
      {0, {"m=empty"}, "ok", "b=ok"},
      {0, {"m=mem"}, "ok", "b=ok"},
      {0, {"m=fine"}, "ok", "a=ok"},
      END}},
    {"breaker_trips_and_recovers",
     NULL, /* flaky_breaker */
     {{0, {"fail=1"}, "5xx", "primary=5xx,stub=5xx"},
      {0, {"fail=1"}, "5xx", "primary=5xx,stub=5xx"},
      {0, {"fail=1"}, "5xx", "primary=5xx,stub=5xx"},
      {0, {"fail=1"}, "5xx", "primary=5xx,stub=5xx"}, /* 4 calls, 100% failures: open */
      {0, {"fail=0"}, "5xx", "primary=rejected,stub=5xx"},
      {999, {"fail=0"}, "5xx", "primary=rejected,stub=5xx"},
      {2, {"fail=1"}, "5xx", "primary=5xx,stub=5xx"}, /* the probe fails: open for 2 s */
      {1500, {"fail=0"}, "5xx", "primary=rejected,stub=5xx"},
      {600, {"fail=0"}, "ok", "primary=ok"}, /* the probe succeeds: closed */
      {0, {"fail=1"}, "5xx", "primary=5xx,stub=5xx"}, /* a fresh window: no verdict yet */
      {0, {"fail=0"}, "ok", "primary=ok"},
      END}},
    {"route_avoiding_an_open_breaker_still_lets_it_recover",
     "local r = require 'resilua'\n"
     "r.breaker 'b' { min_calls = 2, failure_rate = 50, open_for = '1s',\n"
     "  backoff = { factor = 2, max = '4s', jitter = 0 } }\n"
     "local BOTH, STUB = { 'primary', 'stub' }, { 'stub' }\n"
     "r.policy 'p' {\n"
     "  steps = { primary = r.lua { run = function(req) if req.fail == '1' then return nil, '5xx' end\n"
     "                              return { body = 'ok' } end, guards = { 'b' } },\n"
     "            stub = r.stub { status = 503 } },\n"
     "  chain = { 'primary', 'stub' },\n"
     "  route = function(req, sig) if sig.state('b') == 'open' then return STUB end return BOTH end }\n",
     {{0, {"fail=1"}, "5xx", "primary=5xx,stub=5xx"},
      {0, {"fail=1"}, "5xx", "primary=5xx,stub=5xx"},
      {0, {"fail=0"}, "5xx", "stub=5xx"},
      {999, {"fail=0"}, "5xx", "stub=5xx"},
      {2, {"fail=0"}, "ok", "primary=ok"}, /* reads half_open: the probe goes through */
      {0, {"fail=0"}, "ok", "primary=ok"},
      END}},
    {"local_cache_write_through_and_ttl",
     "local r = require 'resilua'\n"
     "r.policy 'p' {\n"
     "  steps = { primary = r.lua(function(req) if req.down == '1' then return nil, 'connect' end\n"
     "                              return { body = 'user ' .. req.id } end),\n"
     "            cache = r.local_cache { key = 'u:${id}', ttl = '10s' },\n"
     "            stub = r.stub { status = 503 } },\n"
     "  chain = { 'primary', 'cache', 'stub' } }\n",
     {{0, {"id=7", "down=1"}, "5xx", "primary=connect,cache=miss,stub=5xx"},
      {0, {"id=7", "down=0"}, "ok", "primary=ok"},
      {0, {"id=7", "down=1"}, "ok", "primary=connect,cache=ok"},
      {0, {"id=8", "down=1"}, "5xx", "primary=connect,cache=miss,stub=5xx"},
      {10001, {"id=7", "down=1"}, "5xx", "primary=connect,cache=miss,stub=5xx"},
      {0, {"down=1"}, "5xx", "primary=connect,cache=error,stub=5xx"},
      END}},
    {"signals",
     "local r = require 'resilua'\n"
     "r.breaker 'b' { min_calls = 1 }\n"
     "r.limiter 'l' { rate = 10, per = '1s', burst = 2 }\n"
     "r.bulkhead 'h' { max = 4 }\n"
     "r.policy 'p' {\n"
     "  steps = { ok = r.stub { body = 'ok' }, bad = r.stub { status = 500 } },\n"
     "  chain = { 'bad' },\n"
     "  route = function(req, sig)\n"
     "    local s = req.s\n"
     "    if s == 'state' then return sig.state('b') == 'closed' and { 'ok' } or { 'bad' } end\n"
     "    if s == 'load' then return sig.load('h') == 0 and sig.inflight('h') == 0 and { 'ok' } or { 'bad' } end\n"
     "    if s == 'tokens' then return sig.tokens('l') == 2 and { 'ok' } or { 'bad' } end\n"
     "    if s == 'gauge' then return sig.gauge('cpu') == 0.5 and sig.gauge('nope') == nil and { 'ok' } or { 'bad' } end\n"
     "    if s == 'rates' then return sig.failure_rate('b') == 0 and sig.slow_rate('b') == 0 and sig.calls('b') == 0\n"
     "                                and sig.latency('b', 0.99) == 0 and { 'ok' } or { 'bad' } end\n"
     "    if s == 'now' then return sig.now() == 1000000 and { 'ok' } or { 'bad' } end\n"
     "    if s == 'wrongkind' then return { tostring(sig.load('b')) } end\n"
     "    return { 'bad' } end }\n",
     {{0, {"s=state"}, "ok", "ok=ok"},
      {0, {"s=load"}, "ok", "ok=ok"},
      {0, {"s=tokens"}, "ok", "ok=ok"},
      {0, {"s=gauge"}, "ok", "ok=ok"},
      {0, {"s=rates"}, "ok", "ok=ok"},
      {0, {"s=now"}, "ok", "ok=ok"},
      {0, {"s=wrongkind"}, "5xx", "bad=5xx"},
      END}},
    {"prev_and_lua_errors",
     "local r = require 'resilua'\n"
     "local n = 0\n"
     "r.policy 'p' {\n"
     "  steps = { a = r.lua(function(req) n = n + 1\n"
     "              if req.m == 'raise' then error('bad thing') end\n"
     "              if req.m == 'loop' then while true do end end\n"
     "              if req.m == 'type' then return 'str' end\n"
     "              if req.m == 'status' then return { status = 'x' } end\n"
     "              if req.m == 'mem' then local t = {} while true do t[#t + 1] = string.rep('y', 65536) .. #t end end\n"
     "              return nil, '5xx' end),\n"
     "            b = r.lua(function(req, prev) return { body = prev.step .. ':' .. prev.outcome .. ':' .. n } end) },\n"
     "  chain = { 'a', 'b' } }\n",
     {{0, {"m=5xx"}, "ok", "a=5xx,b=ok"},
      {0, {"m=raise"}, "ok", "a=error,b=ok"},
      {0, {"m=loop"}, "ok", "a=error,b=ok"},
      {0, {"m=type"}, "ok", "a=error,b=ok"},
      {0, {"m=status"}, "ok", "a=error,b=ok"},
      {0, {"m=mem"}, "ok", "a=error,b=ok"},
      {0, {"m=5xx"}, "ok", "a=5xx,b=ok"}, /* the state still serves */
      END}},
    {"lua_step_timeout_is_a_timeout",
     "local r = require 'resilua'\n"
     "r.policy 'p' {\n"
     "  steps = { a = r.lua { run = function() while true do end end, timeout = '10ms' },\n"
     "            b = r.stub { body = 'b' } },\n"
     "  chain = { 'a', 'b' } }\n",
     {{0, {NULL}, "ok", "a=timeout,b=ok"}, END}},
    {"fault_abort",
     "local r = require 'resilua'\n"
     "r.policy 'p' {\n"
     "  steps = { a = r.stub { fault = { abort = '5xx', abort_percent = 100 } }, b = r.stub { body = 'b' } },\n"
     "  chain = { 'a', 'b' } }\n",
     {{0, {NULL}, "ok", "a=5xx,b=ok"}, END}},
    {"guards_reject",
     "local r = require 'resilua'\n"
     "r.limiter 'l' { rate = 1, per = '10s', burst = 1 }\n"
     "r.policy 'p' {\n"
     "  steps = { a = r.stub { guards = { 'l' } }, b = r.stub { body = 'b' } },\n"
     "  chain = { 'a', 'b' } }\n",
     {{0, {NULL}, "ok", "a=ok"}, {0, {NULL}, "ok", "a=rejected,b=ok"},
      {10000, {NULL}, "ok", "a=ok"}, END}},
};

/* The cases with calls that loop forever: shorter run-time limits. */
static int has_runaways(const policy_case *pc) {
    return strcmp(pc->name, "failing_routes_take_chain") == 0 ||
           strcmp(pc->name, "prev_and_lua_errors") == 0;
}

static void run_case(const policy_case *pc) {
    atomic_store(&fake_now, 1000000000000);
    const char *text = pc->policy ? pc->policy : flaky_breaker;
    rsl_runtime *rt = has_runaways(pc) ? open_policy_limits(text, RUNAWAY_ROUTE_MS, RUNAWAY_STEP_MS)
                                       : open_policy(text);
    rsl_gauge_set(rt, "cpu", 0.5);
    for (int i = 0; pc->calls[i].advance_ms >= 0; i++) {
        const step_case *sc = &pc->calls[i];
        advance_ms(sc->advance_ms);
        rsl_result *r = call(rt, "p", sc->attrs[0], sc->attrs[1], sc->attrs[2], NULL);
        char p[512];
        path_str(r, p, sizeof(p));
        if (strcmp(rsl_outcome_name(rsl_result_outcome(r)), sc->outcome) != 0 ||
            strcmp(p, sc->path) != 0) {
            char *j = rsl_result_json(r);
            rsl_test_fail(__FILE__, __LINE__, "%s call %d: expected %s [%s], got %s", pc->name,
                          i + 1, sc->outcome, sc->path, j);
        }
        rsl_result_free(r);
    }
    rsl_close(rt);
}

TEST(policy_cases) {
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        run_case(&cases[i]);
    }
}

/* ---- details the table does not show ---------------------------------------------------- */

TEST(result_fields_and_json) {
    rsl_runtime *rt = open_policy(
        "local r = require 'resilua'\n"
        "r.policy 'p' {\n"
        "  steps = { a = r.lua(function() return nil, '5xx', 'upstream said no' end),\n"
        "            b = r.stub { status = 200, body = 'b\"ody', headers = { ['X-A'] = '1' } } },\n"
        "  chain = { 'a', 'b' } }\n");
    rsl_result *r = call(rt, "p", NULL);
    ASSERT_EQ(rsl_result_status(r), 200);
    size_t len;
    ASSERT_STR_EQ(rsl_result_body(r, &len), "b\"ody");
    ASSERT_STR_EQ(rsl_result_served_by(r), "b");
    ASSERT_EQ(rsl_result_degraded(r), 1);
    ASSERT_EQ(rsl_result_header_count(r), 1);
    rsl_path_entry e;
    rsl_result_path(r, 0, &e);
    ASSERT_STR_EQ(e.error, "upstream said no");
    ASSERT_EQ(e.attempts, 1);
    char *j = rsl_result_json(r);
    ASSERT_CONTAINS(j, "\"policy\":\"p\",\"status\":200,\"outcome\":\"ok\",\"served_by\":\"b\","
                       "\"degraded\":true,\"body\":\"b\\\"ody\"");
    ASSERT_CONTAINS(j, "{\"step\":\"a\",\"outcome\":\"5xx\"");
    ASSERT_CONTAINS(j, "\"error\":\"upstream said no\"");
    rsl_free(j);
    rsl_result_free(r);
    rsl_close(rt);
}

TEST(missing_attribute_names_it) {
    rsl_runtime *rt = open_policy(
        "local r = require 'resilua'\n"
        "r.policy 'p' { steps = { c = r.local_cache { key = 'k:${id}' }, s = r.stub {} },\n"
        "  chain = { 'c', 's' } }\n");
    rsl_result *r = call(rt, "p", NULL);
    rsl_path_entry e;
    rsl_result_path(r, 0, &e);
    ASSERT_EQ(e.outcome, RSL_OUTCOME_ERROR);
    ASSERT_STR_EQ(e.error, "missing attribute \"id\"");
    rsl_result_free(r);
    rsl_close(rt);
}

TEST(unknown_policy_and_bad_dir) {
    rsl_runtime *rt = open_policy("local r = require 'resilua'\n"
                                  "r.policy 'p' { steps = { s = r.stub {} } }\n");
    rsl_result *r = NULL;
    ASSERT_EQ(rsl_call_sync(rt, "nope", NULL, 0, &r), RSL_ENOENT);
    ASSERT(r == NULL);
    rsl_close(rt);
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = "/nonexistent/dir";
    char err[512];
    ASSERT_EQ(rsl_open(&rt, &o, err, sizeof(err)), RSL_ELOAD);
    ASSERT_CONTAINS(err, "/nonexistent/dir");
}

TEST(retries_attempts_and_budget) {
    rsl_runtime *rt = open_policy(
        "local r = require 'resilua'\n"
        "local tries = 0\n"
        "r.policy 'p' {\n"
        "  steps = { a = r.lua { run = function(req) tries = tries + 1\n"
        "              if req.count then return { body = tostring(tries) } end\n"
        "              return nil, '5xx' end,\n"
        "            retry = { attempts = 3, base = '1ms', max = '2ms', on = { '5xx' }, budget = 0.2 } },\n"
        "            s = r.stub { body = 'stub' } },\n"
        "  chain = { 'a', 's' } }\n");
    rsl_result *r = call(rt, "p", NULL);
    rsl_path_entry e;
    rsl_result_path(r, 0, &e);
    ASSERT_EQ(e.attempts, 3);
    rsl_result_free(r);
    /* 100 more failing calls in the same 10 s: retries <= 0.2 * first attempts + 10. */
    for (int i = 0; i < 100; i++) {
        rsl_result_free(call(rt, "p", NULL));
    }
    r = call(rt, "p", "count=1", NULL);
    int tries = atoi(rsl_result_body(r, NULL));
    rsl_result_free(r);
    int first = 102, retries = tries - first;
    ASSERT(retries >= 10);
    ASSERT(retries <= (int)(0.2 * first) + 10 + 2);
    rsl_close(rt);
}

/* ---- host steps ------------------------------------------------------------------------- */

static _Atomic int host_calls;

static void answer_now(rsl_step_call *sc, const rsl_req *req, void *ud) {
    atomic_fetch_add(&host_calls, 1);
    size_t n;
    const char *v = rsl_req_get(req, "v", &n);
    rsl_step_answer(sc, 200, v ? v : "none", v ? n : 4);
    ASSERT_EQ(rsl_step_answer(sc, 200, "again", 5), RSL_EALREADY);
}

static void *answer_later_thread(void *arg) {
    usleep(20000);
    rsl_step_answer(arg, 201, "later", 5);
    return NULL;
}

static pthread_t later_threads[512];
static _Atomic int nlater;

static void answer_later(rsl_step_call *sc, const rsl_req *req, void *ud) {
    int i = atomic_fetch_add(&nlater, 1);
    ASSERT(i < 512);
    pthread_create(&later_threads[i], NULL, answer_later_thread, sc);
}

/* Every answering thread has answered (late answers after close included). */
static void join_later(void) {
    for (int i = 0; i < atomic_load(&nlater); i++) {
        pthread_join(later_threads[i], NULL);
    }
    atomic_store(&nlater, 0);
}

static rsl_step_call *parked[64];
static _Atomic int nparked;

static void never_answer(rsl_step_call *sc, const rsl_req *req, void *ud) {
    parked[atomic_fetch_add(&nparked, 1)] = sc;
}

/* Waits (10 s at most) until n calls are parked in `never`. */
static void wait_parked(int n) {
    for (int64_t until = mono_ms() + 10000; atomic_load(&nparked) < n && mono_ms() < until;) {
        usleep(1000);
    }
    ASSERT_EQ(atomic_load(&nparked), n);
}

static void slow_clock_step(rsl_step_call *sc, const rsl_req *req, void *ud) {
    advance_ms(500);
    rsl_step_answer(sc, 500, "slow", 4);
}

static const char *host_policy =
    "local r = require 'resilua'\n"
    "r.policy 'now' { steps = { h = r.c 'now' } }\n"
    "r.policy 'later' { steps = { h = r.c { name = 'later', timeout = '10s' } } }\n"
    "r.policy 'never' { steps = { h = r.c { name = 'never', timeout = '30ms' }, s = r.stub { body = 's' } },\n"
    "  chain = { 'h', 's' } }\n"
    "r.policy 'never_untimed' { steps = { h = r.c 'never' } }\n"
    "r.policy 'unregistered' { steps = { h = r.c 'nobody', s = r.stub {} }, chain = { 'h', 's' } }\n"
    "r.policy 'deadline' { deadline = '300ms',\n"
    "  steps = { slow = r.c 'slow', other = r.c 'now', l = r.lua(function() return nil, 'miss' end),\n"
    "            s = r.stub { body = 'stub' } },\n"
    "  chain = { 'slow', 'other', 'l', 's' } }\n";

static rsl_runtime *open_host(void) {
    rsl_runtime *rt = open_policy(host_policy);
    ASSERT_EQ(rsl_register_step(rt, "now", answer_now, NULL), 0);
    ASSERT_EQ(rsl_register_step(rt, "later", answer_later, NULL), 0);
    ASSERT_EQ(rsl_register_step(rt, "never", never_answer, NULL), 0);
    ASSERT_EQ(rsl_register_step(rt, "slow", slow_clock_step, NULL), 0);
    return rt;
}

TEST(host_steps) {
    rsl_runtime *rt = open_host();
    rsl_result *r = call(rt, "now", "v=hello", NULL);
    expect(r, "ok", "h=ok");
    ASSERT_STR_EQ(rsl_result_body(r, NULL), "hello");
    rsl_result_free(r);
    r = call(rt, "later", NULL);
    expect(r, "ok", "h=ok");
    ASSERT_EQ(rsl_result_status(r), 201);
    rsl_result_free(r);
    join_later();
    r = call(rt, "never", NULL);
    expect(r, "ok", "h=timeout,s=ok");
    rsl_result_free(r);
    /* The late answer to the timed-out step is accepted and dropped. */
    ASSERT_EQ(rsl_step_answer(parked[0], 200, "late", 4), RSL_EALREADY);
    r = call(rt, "unregistered", NULL);
    expect(r, "ok", "h=error,s=ok");
    rsl_result_free(r);
    /* Deadline: after the slow step the I/O step is skipped, the Lua step and stub run. */
    r = call(rt, "deadline", NULL);
    expect(r, "ok", "slow=5xx,other=timeout,l=miss,s=ok");
    rsl_path_entry e;
    rsl_result_path(r, 1, &e);
    ASSERT_EQ(e.attempts, 0);
    rsl_result_free(r);
    rsl_close(rt);
}

/* The sync timeout (the test wants it to fire: the step never answers) cancels the call.
 * Which stage the cancel finds it in depends on how soon the worker ran it: queued, or
 * parked in the host step.  The parked case is the one to see (its late answer is then
 * dropped), so a timeout that beat the worker to the step is tried again, longer. */
TEST(sync_timeout_cancels) {
    rsl_runtime *rt = open_host();
    atomic_store(&nparked, 0);
    int64_t timeout_ms = 30;
    for (int tries = 0; atomic_load(&nparked) == 0; tries++) {
        ASSERT(tries < 8); /* 30 ms .. 3.8 s */
        rsl_result *r = NULL;
        ASSERT_EQ(rsl_call_sync(rt, "never_untimed", NULL, timeout_ms * 1000000, &r),
                  RSL_ETIMEDOUT);
        ASSERT(r == NULL);
        timeout_ms *= 2;
    }
    ASSERT_EQ(atomic_load(&nparked), 1);
    ASSERT_EQ(rsl_step_answer(parked[0], 200, "late", 4), RSL_EALREADY);
    rsl_close(rt);
}

static _Atomic int completions;
static _Atomic int canceled_n;

static void count_cb(const rsl_result *r, void *ud) {
    atomic_fetch_add(&completions, 1);
    if (rsl_result_outcome(r) == RSL_OUTCOME_CANCELED) {
        atomic_fetch_add(&canceled_n, 1);
    }
}

TEST(close_completes_every_call_once) {
    rsl_runtime *rt = open_host();
    atomic_store(&nparked, 0);
    atomic_store(&completions, 0);
    atomic_store(&canceled_n, 0);
    for (int i = 0; i < 10; i++) {
        ASSERT_EQ(rsl_call(rt, "never_untimed", NULL, count_cb, NULL), 0);
    }
    for (int i = 0; i < 1000; i++) {
        ASSERT_EQ(rsl_call(rt, "now", NULL, count_cb, NULL), 0);
    }
    wait_parked(10);
    rsl_close(rt);
    ASSERT_EQ(atomic_load(&completions), 1010);
    ASSERT_EQ(atomic_load(&canceled_n), 10);
    for (int i = 0; i < 10; i++) {
        ASSERT_EQ(rsl_step_answer(parked[i], 200, "late", 4), RSL_EALREADY);
    }
}

/* Calls made on a worker (here: each callback makes the next call) reuse the objects of
 * finished calls with their buffers, request block and result: nothing of an earlier call
 * may show in a later one, whatever the sizes (bodies, attributes and names growing and
 * shrinking, some past what is kept). */
#define REUSE_CALLS 600

static struct {
    rsl_runtime *rt;
    _Atomic int done;
    int bad;
    char first_bad[256];
} reuse;

static void reuse_next(int i);

static void reuse_bad(int i, const char *what) {
    if (!reuse.bad++) {
        snprintf(reuse.first_bad, sizeof(reuse.first_bad), "call %d: %.200s", i, what);
    }
}

static size_t reuse_pad(int i) {
    return i % 7 == 0 ? 10000 + (size_t)i : 1 + (size_t)(i % 50) * 40;
}

static void reuse_cb(const rsl_result *r, void *ud) {
    int i = (int)(intptr_t)ud;
    char path[512], want[64];
    path_str(r, path, sizeof(path));
    size_t len;
    const char *body = rsl_result_body(r, &len);
    rsl_path_entry e;
    switch (i % 3) {
    case 0: /* the attribute comes back as the body, with one header */
        if (strcmp(path, "echo=ok") != 0 || len != reuse_pad(i) + 1 || body[len - 1] != '!' ||
            rsl_result_header_count(r) != 1 || rsl_result_degraded(r) ||
            strcmp(rsl_result_policy(r), "a") != 0) {
            reuse_bad(i, path);
        }
        break;
    case 1: /* a failure with its message, then a stub without headers */
        snprintf(want, sizeof(want), "no %d", i);
        rsl_result_path(r, 0, &e);
        if (strcmp(path, "fails=5xx,stub=ok") != 0 || strcmp(body, "b") != 0 ||
            !e.error || strcmp(e.error, want) != 0 || rsl_result_header_count(r) != 0 ||
            !rsl_result_degraded(r)) {
            reuse_bad(i, path);
        }
        break;
    default: /* long names, an empty body */
        rsl_result_path(r, 0, &e);
        if (strcmp(path, "a_step_with_a_rather_long_name=ok") != 0 || len != 0 ||
            e.error || strcmp(rsl_result_policy(r), "a_much_longer_policy_name") != 0 ||
            strcmp(rsl_result_served_by(r), "a_step_with_a_rather_long_name") != 0) {
            reuse_bad(i, path);
        }
    }
    if (i + 1 < REUSE_CALLS) {
        reuse_next(i + 1);
    }
    atomic_fetch_add(&reuse.done, 1);
}

static void reuse_next(int i) {
    static const char *const policies[] = {"a", "f", "a_much_longer_policy_name"};
    rsl_req *req = rsl_req_new();
    if (i % 3 == 0) {
        size_t n = reuse_pad(i);
        char *pad = malloc(n);
        memset(pad, 'x', n);
        rsl_req_set(req, "pad", pad, n);
        rsl_req_set_body(req, pad, n / 2);
        free(pad);
    } else {
        char v[16];
        snprintf(v, sizeof(v), "%d", i);
        rsl_req_set(req, "n", v, strlen(v));
    }
    if (rsl_call(reuse.rt, policies[i % 3], req, reuse_cb, (void *)(intptr_t)i) != 0) {
        reuse_bad(i, "rsl_call failed");
        atomic_store(&reuse.done, REUSE_CALLS);
    }
    rsl_req_free(req);
}

TEST(calls_made_on_a_worker_reuse_objects_and_carry_nothing_over) {
    reuse.rt = open_policy(
        "local r = require 'resilua'\n"
        "r.policy 'a' { steps = { echo = r.lua(function(req)\n"
        "    return { body = req.pad .. '!', headers = { ['X-Len'] = tostring(#req.pad) } } end) } }\n"
        "r.policy 'f' {\n"
        "  steps = { fails = r.lua(function(req) return nil, '5xx', 'no ' .. req.n end),\n"
        "            stub = r.stub { body = 'b' } },\n"
        "  chain = { 'fails', 'stub' } }\n"
        "r.policy 'a_much_longer_policy_name' {\n"
        "  steps = { a_step_with_a_rather_long_name = r.stub { body = '' } } }\n");
    atomic_store(&reuse.done, 0);
    reuse_next(0);
    for (int64_t until = mono_ms() + 30000;
         atomic_load(&reuse.done) < REUSE_CALLS && mono_ms() < until;) {
        usleep(1000);
    }
    ASSERT_EQ(atomic_load(&reuse.done), REUSE_CALLS);
    if (reuse.bad) {
        rsl_test_fail(__FILE__, __LINE__, "%d results wrong, first: %s", reuse.bad,
                      reuse.first_bad);
    }
    rsl_close(reuse.rt);
}

static rsl_runtime *shared_rt;

static void *caller(void *arg) {
    for (int i = 0; i < 300; i++) {
        rsl_result *r = NULL;
        rsl_req *req = rsl_req_new();
        rsl_req_set(req, "v", "x", 1);
        int rc = rsl_call_sync(shared_rt, "now", req, 0, &r);
        rsl_req_free(req);
        if (rc == 0 && rsl_result_outcome(r) == RSL_OUTCOME_OK) {
            atomic_fetch_add(&completions, 1);
        }
        rsl_result_free(r);
        if (i % 10 == 0) {
            ASSERT_EQ(rsl_call(shared_rt, "later", NULL, count_cb, NULL), 0);
        }
    }
    return NULL;
}

TEST(threads_call_at_once) {
    shared_rt = open_host();
    atomic_store(&completions, 0);
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        pthread_create(&t[i], NULL, caller, NULL);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
    }
    rsl_close(shared_rt);
    join_later();
    ASSERT_EQ(atomic_load(&completions), 4 * 300 + 4 * 30);
}

TEST(binary_body_still_encodes) {
    rsl_runtime *rt = open_policy(
        "local r = require 'resilua'\n"
        "r.policy 'p' { steps = { s = r.lua(function() return { body = 'a\\255\\0b' } end) } }\n");
    rsl_result *r = call(rt, "p", NULL);
    size_t len;
    rsl_result_body(r, &len);
    ASSERT_EQ(len, 4);
    char *j = rsl_result_json(r);
    ASSERT_CONTAINS(j, "\"body\":\"a\\uFFFD\\u0000b\"");
    rsl_free(j);
    rsl_result_free(r);
    rsl_close(rt);
}

TEST(a_route_breaking_its_sig_breaks_only_itself) {
    rsl_runtime *rt = open_policy(
        "local r = require 'resilua'\n"
        "r.breaker 'b' {}\n"
        "r.policy 'vandal' { steps = { s = r.stub { body = 's' }, t = r.stub { body = 't' } },\n"
        "  chain = { 't' }, route = function(req, sig) sig.state = nil return { 's' } end }\n"
        "r.policy 'victim' { steps = { s = r.stub { body = 's' }, t = r.stub { body = 't' } },\n"
        "  chain = { 't' }, route = function(req, sig)\n"
        "    return sig.state('b') == 'closed' and { 's' } or { 't' } end }\n");
    for (int i = 0; i < 3; i++) {
        rsl_result *r = call(rt, "vandal", NULL);
        expect(r, "ok", "s=ok");
        rsl_result_free(r);
        r = call(rt, "victim", NULL);
        expect(r, "ok", "s=ok");
        ASSERT_EQ(rsl_result_route_failed(r), 0);
        rsl_result_free(r);
    }
    rsl_close(rt);
}

TEST(metrics_text) {
    rsl_runtime *rt = open_policy(
        "local r = require 'resilua'\n"
        "r.breaker 'b' { min_calls = 1, failure_rate = 50 }\n"
        "r.bulkhead 'h' { max = 2 }\n"
        "r.policy 'p' {\n"
        "  steps = { a = r.lua { run = function() return nil, '5xx' end, guards = { 'b', 'h' },\n"
        "                        retry = { attempts = 2, base = '1ms' } },\n"
        "            s = r.stub { body = 's' } },\n"
        "  chain = { 'a', 's' }, route = function(req) if req.bad then error('x') end\n"
        "                                             return { 'a', 's' } end }\n");
    /* a: 5xx (trips the breaker), the retry is rejected; s: ok */
    rsl_result_free(call(rt, "p", NULL));
    /* the route fails, the chain is taken; a: rejected; s: ok */
    rsl_result_free(call(rt, "p", "bad=1", NULL));
    char *m = rsl_metrics_text(rt);
    ASSERT(m != NULL);
    ASSERT_CONTAINS(m, "# TYPE resilua_calls_total counter\n");
    ASSERT_CONTAINS(m, "resilua_calls_total{policy=\"p\",outcome=\"ok\"} 2\n");
    ASSERT_CONTAINS(m, "resilua_route_failures_total{policy=\"p\"} 1\n");
    ASSERT_CONTAINS(m, "resilua_step_calls_total{policy=\"p\",step=\"a\",outcome=\"rejected\"} 2\n");
    ASSERT_CONTAINS(m, "resilua_step_duration_seconds_bucket{policy=\"p\",step=\"s\",le=\"+Inf\"} 2\n");
    ASSERT_CONTAINS(m, "resilua_step_duration_seconds_count{policy=\"p\",step=\"a\"} 2\n");
    ASSERT_CONTAINS(m, "resilua_fallbacks_total{policy=\"p\",step=\"a\"} 2\n");
    ASSERT_CONTAINS(m, "resilua_retries_total{policy=\"p\",step=\"a\"} 1\n");
    ASSERT_CONTAINS(m, "resilua_breaker_state{breaker=\"b\",state=\"open\"} 1\n");
    ASSERT_CONTAINS(m, "resilua_breaker_state{breaker=\"b\",state=\"closed\"} 0\n");
    ASSERT_CONTAINS(m, "resilua_breaker_transitions_total{breaker=\"b\",from=\"closed\",to=\"open\"} 1\n");
    ASSERT_CONTAINS(m, "resilua_guard_rejections_total{guard=\"b\"} 2\n");
    ASSERT_CONTAINS(m, "resilua_bulkhead_inflight{bulkhead=\"h\"} 0\n");
    ASSERT_CONTAINS(m, "resilua_reloads_total{result=\"ok\"} 0\n");
    ASSERT_CONTAINS(m, "resilua_policy_generation 1\n");
    /* Every sample line: name{labels} value, with nothing of the request in it. */
    for (char *line = strtok(m, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#') {
            continue;
        }
        ASSERT(strncmp(line, "resilua_", 8) == 0);
        ASSERT(strstr(line, "bad") == NULL);
        char *sp = strrchr(line, ' ');
        ASSERT(sp != NULL);
        char *end;
        strtod(sp + 1, &end);
        ASSERT(*end == 0);
    }
    rsl_free(m);
    /* A reload resets no counter and moves the generation. */
    char err[512];
    ASSERT_EQ(rsl_reload(rt, err, sizeof(err)), 0);
    m = rsl_metrics_text(rt);
    ASSERT_CONTAINS(m, "resilua_calls_total{policy=\"p\",outcome=\"ok\"} 2\n");
    ASSERT_CONTAINS(m, "resilua_reloads_total{result=\"ok\"} 1\n");
    ASSERT_CONTAINS(m, "resilua_policy_generation 2\n");
    ASSERT_CONTAINS(m, "resilua_breaker_state{breaker=\"b\",state=\"open\"} 1\n");
    rsl_free(m);
    rsl_close(rt);
}

static _Atomic int last_outcome = -1;

static void outcome_cb(const rsl_result *r, void *ud) {
    atomic_store(&last_outcome, (int)rsl_result_outcome(r));
    atomic_fetch_add(&completions, 1);
}

/* Waits (10 s at most) until n calls have completed. */
static void wait_completions(int n) {
    for (int64_t until = mono_ms() + 10000; atomic_load(&completions) < n && mono_ms() < until;) {
        usleep(1000);
    }
    ASSERT_EQ(atomic_load(&completions), n);
}

TEST(cancel_one_call) {
    rsl_runtime *rt = open_policy(
        host_policy /* "never_untimed": a host step that never answers */);
    rsl_register_step(rt, "never", never_answer, NULL);
    rsl_register_step(rt, "now", answer_now, NULL);
    atomic_store(&nparked, 0);
    atomic_store(&completions, 0);
    uint64_t id = 0;
    /* Parked in a host step: canceled at once, the late answer dropped. */
    ASSERT_EQ(rsl_call_id(rt, "never_untimed", NULL, outcome_cb, NULL, &id), 0);
    ASSERT(id != 0);
    wait_parked(1);
    ASSERT_EQ(rsl_cancel(rt, id), 0);
    wait_completions(1);
    ASSERT_EQ(atomic_load(&last_outcome), RSL_OUTCOME_CANCELED);
    ASSERT_EQ(rsl_step_answer(parked[0], 200, "late", 4), RSL_EALREADY);
    /* Already answered: nothing happens, the callback ran once. */
    ASSERT_EQ(rsl_call_id(rt, "now", NULL, outcome_cb, NULL, &id), 0);
    wait_completions(2);
    ASSERT_EQ(rsl_cancel(rt, id), 0);
    ASSERT_EQ(atomic_load(&last_outcome), RSL_OUTCOME_OK);
    ASSERT_EQ(rsl_cancel(rt, 0), RSL_EINVAL);
    ASSERT_EQ(rsl_cancel(rt, (id + 256) | 7), RSL_EINVAL);
    rsl_close(rt);
    ASSERT_EQ(atomic_load(&completions), 2);
}

/* Polls the metrics (10 s at most) until they contain `line`. */
static void wait_metric(rsl_runtime *rt, const char *line) {
    for (int64_t until = mono_ms() + 10000;;) {
        char *m = rsl_metrics_text(rt);
        int found = m && strstr(m, line) != NULL;
        rsl_free(m);
        if (found) {
            return;
        }
        if (mono_ms() >= until) {
            rsl_test_fail(__FILE__, __LINE__, "metrics never showed %s", line);
        }
        usleep(1000);
    }
}

TEST(cancel_during_retry_backoff) {
    rsl_runtime *rt = open_policy(
        "local r = require 'resilua'\n"
        "r.policy 'p' {\n"
        "  steps = { a = r.lua { run = function() return nil, '5xx' end,\n"
        "            retry = { attempts = 3, backoff = 'constant', base = '60s', jitter = 'none' } },\n"
        "            s = r.stub {} },\n"
        "  chain = { 'a', 's' } }\n");
    atomic_store(&completions, 0);
    uint64_t id = 0;
    ASSERT_EQ(rsl_call_id(rt, "p", NULL, outcome_cb, NULL, &id), 0);
    /* The first attempt failed and the retry is scheduled: the call now sleeps 60 s. */
    wait_metric(rt, "resilua_retries_total{policy=\"p\",step=\"a\"} 1\n");
    ASSERT_EQ(atomic_load(&completions), 0);
    ASSERT_EQ(rsl_cancel(rt, id), 0);
    wait_completions(1); /* well before the 60 s backoff */
    ASSERT_EQ(atomic_load(&last_outcome), RSL_OUTCOME_CANCELED);
    rsl_close(rt);
}

static void keep_cb(const rsl_result *r, void *ud) {
    atomic_store(&last_outcome, (int)rsl_result_outcome(r));
    if (ud) {
        char *j = rsl_result_json(r);
        strncpy(ud, j ? j : "", 1023);
        rsl_free(j);
    }
    atomic_fetch_add(&completions, 1);
}

/* The worker's thread, learnt on the worker. */
static pthread_t worker_thread;
static _Atomic int worker_known;

static void note_worker(void *ud, struct uv_loop_s *loop) {
    worker_thread = pthread_self();
    atomic_store(&worker_known, 1);
}

static int64_t thread_cpu_ms(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

TEST(cancel_queued_and_in_route) {
    const char *dir = rsl_test_tmpdir();
    /* The route spins until told to stop (or for 20 s of CPU, far beyond the test). */
    rsl_test_write(dir, "p.lua",
                   "local r = require 'resilua'\n"
                   "r.policy 'p' { steps = { a = r.stub { body = 'a' } }, chain = { 'a' },\n"
                   "  route = function(req, sig)\n"
                   "    if req.spin then local t = os.clock()\n"
                   "      while os.clock() - t < 20 and sig.gauge('stop') ~= 1 do end end\n"
                   "    return { 'a' } end }\n");
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    o.route_limit_ns = 60000000000LL;
    rsl_runtime *rt = NULL;
    char err[512];
    ASSERT_EQ(rsl_open(&rt, &o, err, sizeof(err)), 0);
    rsl_gauge_set(rt, "stop", 0);
    atomic_store(&completions, 0);
    /* The one worker's CPU clock: a route spinning is the only thing that makes it climb. */
    ASSERT_EQ(rsl_on_worker(rt, 0, note_worker, NULL), 0);
    for (int64_t until = mono_ms() + 10000; !atomic_load(&worker_known) && mono_ms() < until;) {
        usleep(1000);
    }
    ASSERT(atomic_load(&worker_known));
    clockid_t wcpu;
    ASSERT_EQ(pthread_getcpuclockid(worker_thread, &wcpu), 0);
    /* A first call pays whatever a first call costs on the worker. */
    rsl_result *warm = NULL;
    ASSERT_EQ(rsl_call_sync(rt, "p", NULL, 10000000000LL, &warm), 0);
    expect(warm, "ok", "a=ok");
    rsl_result_free(warm);
    static char in_route[1024], queued[1024];
    rsl_req *spin = rsl_req_new();
    rsl_req_set(spin, "spin", "1", 1);
    uint64_t id1 = 0, id2 = 0;
    /* The first call spins in its route until told to stop; the second waits queued. */
    int64_t cpu0 = thread_cpu_ms(wcpu);
    ASSERT_EQ(rsl_call_id(rt, "p", spin, keep_cb, in_route, &id1), 0);
    ASSERT_EQ(rsl_call_id(rt, "p", NULL, keep_cb, queued, &id2), 0);
    /* In the route for sure once the worker has spent 100 ms of CPU on it. */
    for (int64_t until = mono_ms() + 20000;
         thread_cpu_ms(wcpu) - cpu0 < 100 && mono_ms() < until;) {
        usleep(1000);
    }
    ASSERT(thread_cpu_ms(wcpu) - cpu0 >= 100);
    ASSERT_EQ(atomic_load(&completions), 0);
    ASSERT_EQ(rsl_cancel(rt, id2), 0);
    ASSERT_EQ(rsl_cancel(rt, id1), 0);
    rsl_gauge_set(rt, "stop", 1);
    wait_completions(2);
    ASSERT_CONTAINS(in_route, "\"outcome\":\"canceled\"");
    ASSERT_CONTAINS(in_route, "{\"step\":\"a\",\"outcome\":\"canceled\"");
    ASSERT_CONTAINS(in_route, "\"attempts\":0");
    ASSERT_CONTAINS(queued, "\"outcome\":\"canceled\"");
    ASSERT_CONTAINS(queued, "\"path\":[]");
    rsl_req_free(spin);
    rsl_close(rt);
    ASSERT_EQ(atomic_load(&completions), 2);
}

static char transitions[2048];

static void on_transition(void *ud, const char *breaker, const char *from, const char *to,
                          const char *reason) {
    size_t l = strlen(transitions);
    snprintf(transitions + l, sizeof(transitions) - l, "%s:%s>%s(%s);", breaker, from, to,
             reason);
}

TEST(transition_callback) {
    const char *dir = rsl_test_tmpdir();
    rsl_test_write(dir, "p.lua", flaky_breaker);
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    o.clock = fake_clock;
    o.route_limit_ns = LIMIT_MS * 1000000LL;
    o.lua_step_limit_ns = LIMIT_MS * 1000000LL; /* the Lua step must answer */
    o.on_transition = on_transition;
    rsl_runtime *rt = NULL;
    char err[512];
    ASSERT_EQ(rsl_open(&rt, &o, err, sizeof(err)), 0);
    atomic_store(&fake_now, 1000000000000);
    for (int i = 0; i < 4; i++) {
        rsl_result_free(call(rt, "p", "fail=1", NULL));
    }
    advance_ms(1001);
    rsl_result_free(call(rt, "p", "fail=0", NULL)); /* the probe succeeds */
    rsl_close(rt);
    ASSERT_CONTAINS(transitions, "b:closed>open(failure_rate 100.0% >= 50% over 4 calls");
    ASSERT_CONTAINS(transitions, "b:open>half_open(");
    ASSERT_CONTAINS(transitions, "b:half_open>closed(");
}
