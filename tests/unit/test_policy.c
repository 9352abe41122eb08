/*
 * Loading policy directories: every load error as the exact `file:line: message` a user
 * sees, the defaults compiled into the structs, several worker states, applying a reload
 * to the guard registry (same objects kept, new settings in place, what changed reported,
 * nothing touched when a load fails), describe JSON, and the static route check.
 */
#include "policy.h"
#include "test.h"

#include <jansson.h>
#include <lauxlib.h>
#include <stdatomic.h>
#include <sys/stat.h>

#define MS INT64_C(1000000)
#define S  INT64_C(1000000000)

static const rsl__gen_opts opts1 = {.nstates = 1, .mem_limit = 32 << 20, .stripes = 2};

/* A new empty directory under the test's temporary one. */
static const char *fresh_dir(void) {
    static char dir[512];
    static int n;
    snprintf(dir, sizeof(dir), "%s/d%d", rsl_test_tmpdir(), n++);
    mkdir(dir, 0700);
    return dir;
}

/* "@" in `pattern` stands for `dir`. */
static void expand(char *out, size_t n, const char *pattern, const char *dir) {
    size_t o = 0;
    for (const char *p = pattern; *p && o + 1 < n; p++) {
        if (*p == '@') {
            o += (size_t)snprintf(out + o, n - o, "%s", dir);
        } else {
            out[o++] = *p;
        }
    }
    out[o < n ? o : n - 1] = 0;
}

static int load(const char *dir, const rsl__gen_opts *o, rsl__guards *reg, rsl__gen **g,
                rsl__load_report *rep, char *err, size_t errlen) {
    return rsl__gen_load(dir, reg, o, g, rep, err, errlen);
}

/* Loads `text` as DIR/a.lua and expects exactly the error `want` ("@" = DIR). */
static void expect_error_at(int line, const char *text, const char *want, const rsl__gen_opts *o) {
    const char *dir = fresh_dir();
    rsl_test_write(dir, "a.lua", text);
    rsl__guards *reg = rsl__guards_new();
    rsl__gen *g = NULL;
    char err[2048], exp[2048];
    int rc = load(dir, o ? o : &opts1, reg, &g, NULL, err, sizeof(err));
    expand(exp, sizeof(exp), want, dir);
    if (rc != RSL_ELOAD || strcmp(err, exp) != 0) {
        rsl_test_fail(__FILE__, line, "rc %d\n  got  %s\n  want %s\n  for\n%s", rc, err, exp, text);
    }
    ASSERT(g == NULL);
    ASSERT_EQ(rsl__guards_count(reg), 0);
    rsl__guards_free(reg);
}

#define EXPECT_ERROR(text, want) expect_error_at(__LINE__, text, want, NULL)

#define HEAD "local r = require 'resilua'\n"

/* ---- declaration errors ------------------------------------------------------------------ */

typedef struct err_case {
    const char *decl; /* line 2 of the file */
    const char *error;
} err_case;

static void run_cases(int line, const err_case *c, size_t n, const char *prefix) {
    for (size_t i = 0; i < n; i++) {
        char text[2048], want[2048];
        snprintf(text, sizeof(text), HEAD "%s\n", c[i].decl);
        snprintf(want, sizeof(want), "@/a.lua:2: %s%s", prefix, c[i].error);
        expect_error_at(line, text, want, NULL);
    }
}

#define RUN_CASES(cases, prefix)                                                                   \
    run_cases(__LINE__, cases, sizeof(cases) / sizeof(cases[0]), prefix)

TEST(breaker_errors) {
    static const err_case cases[] = {
        {"r.breaker 'b' { failure_rate = 150 }", "failure_rate must be in 0..100, got 150"},
        {"r.breaker 'b' { failure_rate = -1 }", "failure_rate must be in 0..100, got -1"},
        {"r.breaker 'b' { failure_rate = '50' }", "failure_rate must be a number, got \"50\""},
        {"r.breaker 'b' { failur_rate = 50 }", "unknown field \"failur_rate\""},
        {"r.breaker 'b' { 'x' }", "unknown field [1]"},
        {"r.breaker 'b' { window = 10 }", "window must be a duration like \"150ms\", got 10"},
        {"r.breaker 'b' { window = '10' }", "window must be a duration like \"150ms\", got \"10\""},
        {"r.breaker 'b' { window = '10 s' }",
         "window must be a duration like \"150ms\", got \"10 s\""},
        {"r.breaker 'b' { window = '10sec' }",
         "window must be a duration like \"150ms\", got \"10sec\""},
        {"r.breaker 'b' { window = '-1s' }",
         "window must be a duration like \"150ms\", got \"-1s\""},
        {"r.breaker 'b' { window = '0s' }", "window must be > 0, got \"0s\""},
        {"r.breaker 'b' { buckets = 0 }", "buckets must be in 1..120, got 0"},
        {"r.breaker 'b' { buckets = 121 }", "buckets must be in 1..120, got 121"},
        {"r.breaker 'b' { buckets = 2.5 }", "buckets must be an integer, got 2.5"},
        {"r.breaker 'b' { buckets = '10' }", "buckets must be an integer, got \"10\""},
        {"r.breaker 'b' { window = '50ms', buckets = 100 }",
         "window / buckets must be at least 1ms, got \"50ms\" / 100"},
        {"r.breaker 'b' { min_calls = 0 }", "min_calls must be >= 1, got 0"},
        {"r.breaker 'b' { min_calls = 1.5 }", "min_calls must be an integer, got 1.5"},
        {"r.breaker 'b' { slow_call = 'fast' }",
         "slow_call must be a duration like \"150ms\", got \"fast\""},
        {"r.breaker 'b' { slow_rate = 101 }", "slow_rate must be in 0..100, got 101"},
        {"r.breaker 'b' { open_for = '200h' }", "open_for must be at most 168h, got \"200h\""},
        {"r.breaker 'b' { open_for = true }",
         "open_for must be a duration like \"150ms\", got true"},
        {"r.breaker 'b' { backoff = 2 }",
         "backoff must be a table like { factor = 2, max = \"2m\", jitter = 0.1 }, got 2"},
        {"r.breaker 'b' { backoff = { factor = 0.5 } }", "backoff.factor must be >= 1, got 0.5"},
        {"r.breaker 'b' { backoff = { fator = 2 } }", "unknown field \"backoff.fator\""},
        {"r.breaker 'b' { backoff = { max = '1s' } }",
         "backoff.max must be >= open_for (\"5s\"), got \"1s\""},
        {"r.breaker 'b' { backoff = { jitter = 2 } }", "backoff.jitter must be in 0..1, got 2"},
        {"r.breaker 'b' { probes = 0 }", "probes must be in 1..255, got 0"},
        {"r.breaker 'b' { probes = 256 }", "probes must be in 1..255, got 256"},
        {"r.breaker 'b' { count = 'timeout' }",
         "count must be a list of outcomes, got \"timeout\""},
        {"r.breaker 'b' { count = { 'tmeout' } }",
         "count: unknown outcome \"tmeout\" (outcomes: ok, timeout, connect, 5xx, 4xx, rejected, "
         "miss, error, canceled)"},
        {"r.breaker 'b' { count = { 'ok' } }", "count must not list \"ok\""},
        {"r.breaker 'b' { count = { 'rejected' } }", "count must not list \"rejected\""},
        {"r.breaker 'b' { count = { 'canceled' } }", "count must not list \"canceled\""},
        {"r.breaker 'b' { shared = true }", "shared must be a table like { quorum = 2, flush = \"100ms\" }, got true"},
        {"r.breaker 'b' { shared = { quorum = 0 } }", "shared.quorum must be in 1..1000, got 0"},
        {"r.breaker 'b' { shared = { flush = \"2m\" } }", "shared.flush must be at most 1m, got \"2m\""},
        {"r.breaker 'b' { shared = { quorum = 2, every = 1 } }", "unknown field \"shared.every\""},
        {"r.breaker 'b' { shared = {}, trip = {} }", "shared is not available with trip yet: the fleet judges failure_rate and slow_rate"},
        {"r.breaker 'b' { shared = {}, key = \"${t}\" }", "shared is not available with key yet: the fleet counts one breaker"},
        {"r.breaker 'b' 'x'", "expected a table of settings, got \"x\""},
    };
    RUN_CASES(cases, "breaker \"b\": ");
    EXPECT_ERROR(HEAD "r.breaker (42) {}\n",
                 "@/a.lua:2: breaker: name must be a string of letters, digits, '_', '.', ':' and "
                 "'-', got 42");
    EXPECT_ERROR(HEAD "r.breaker 'b'\n",
                 "@/a.lua:2: breaker \"b\": declared without its settings table");
}

TEST(limiter_and_bulkhead_errors) {
    static const err_case limiter[] = {
        {"r.limiter 'l' {}", "rate is required"},
        {"r.limiter 'l' { rate = 0 }", "rate must be > 0, got 0"},
        {"r.limiter 'l' { rate = '5' }", "rate must be a number, got \"5\""},
        {"r.limiter 'l' { rate = 1/0 }", "rate must be a number, got inf"},
        {"r.limiter 'l' { rate = 5, burst = 0.5 }", "burst must be >= 1, got 0.5"},
        {"r.limiter 'l' { rate = 5, per = '1' }",
         "per must be a duration like \"150ms\", got \"1\""},
        {"r.limiter 'l' { rate = 5, scope = 'fleet' }",
         "scope must be one of \"local\", \"global\", got \"fleet\""},
        {"r.limiter 'l' { rate = 5, brust = 5 }", "unknown field \"brust\""},
    };
    RUN_CASES(limiter, "limiter \"l\": ");
    static const err_case bulkhead[] = {
        {"r.bulkhead 'h' {}", "max is required"},
        {"r.bulkhead 'h' { max = 0 }", "max must be >= 1, got 0"},
        {"r.bulkhead 'h' { max = 1.5 }", "max must be an integer, got 1.5"},
        {"r.bulkhead 'h' { mx = 1 }", "unknown field \"mx\""},
    };
    RUN_CASES(bulkhead, "bulkhead \"h\": ");
}

TEST(duplicate_names) {
    EXPECT_ERROR(HEAD "r.breaker 'b' {}\nr.breaker 'b' {}\n",
                 "@/a.lua:3: breaker \"b\": already declared at @/a.lua:2");
    /* Guards are one namespace across kinds. */
    EXPECT_ERROR(HEAD "r.breaker 'b' {}\nr.limiter 'b' { rate = 1 }\n",
                 "@/a.lua:3: limiter \"b\": name already used by breaker \"b\" at @/a.lua:2");
    EXPECT_ERROR(HEAD "r.policy 'p' { steps = { s = r.stub {} } }\n"
                      "r.policy 'p' { steps = { s = r.stub {} } }\n",
                 "@/a.lua:3: policy \"p\": already declared at @/a.lua:2");
    /* Across files: the second file (in name order) names the first. */
    const char *dir = fresh_dir();
    rsl_test_write(dir, "a.lua", HEAD "r.bulkhead 'h' { max = 1 }\n");
    rsl_test_write(dir, "b.lua", HEAD "\n\nr.bulkhead 'h' { max = 2 }\n");
    rsl__guards *reg = rsl__guards_new();
    rsl__gen *g = NULL;
    char err[1024], want[1024];
    ASSERT_EQ(load(dir, &opts1, reg, &g, NULL, err, sizeof(err)), RSL_ELOAD);
    expand(want, sizeof(want), "@/b.lua:4: bulkhead \"h\": already declared at @/a.lua:2", dir);
    ASSERT_STR_EQ(err, want);
    rsl__guards_free(reg);
}

TEST(policy_errors) {
    static const err_case cases[] = {
        {"r.policy 'p' {}", "steps is required"},
        {"r.policy 'p' { steps = 1 }", "steps must be a table of name = step, got 1"},
        {"r.policy 'p' { steps = {} }", "steps must not be empty"},
        {"r.policy 'p' { steps = { r.stub {} } }",
         "steps must map names to steps, got a list entry [1]"},
        {"r.policy 'p' { steps = { ['a b'] = r.stub {} } }",
         "step name \"a b\" must be letters, digits, '_', '.' and '-'"},
        {"r.policy 'p' { steps = { a = {} } }",
         "steps.a must be a step (r.lua, r.c, r.stub, r.local_cache), got a table"},
        {"r.policy 'p' { steps = { a = r.stub {}, b = r.stub {} } }",
         "chain is required when a policy has more than one step"},
        {"r.policy 'p' { steps = { a = r.stub {} }, chain = { 'a', 'x' } }",
         "chain: unknown step \"x\""},
        {"r.policy 'p' { steps = { a = r.stub {} }, chain = {} }",
         "chain must be a non-empty list of step names, got a table"},
        {"r.policy 'p' { steps = { a = r.stub {} }, chain = 'a' }",
         "chain must be a non-empty list of step names, got \"a\""},
        {"r.policy 'p' { steps = { a = r.stub {} }, chain = { 'a','a','a','a','a','a','a','a','a',"
         "'a','a','a','a','a','a','a','a' } }",
         "chain has 17 steps, at most 16"},
        {"r.policy 'p' { steps = { a = r.stub {} }, fallback_on = { 'ok' } }",
         "fallback_on must not list \"ok\""},
        {"r.policy 'p' { steps = { a = r.stub {} }, fallback_on = { 'bad' } }",
         "fallback_on: unknown outcome \"bad\" (outcomes: ok, timeout, connect, 5xx, 4xx, "
         "rejected, "
         "miss, error, canceled)"},
        {"r.policy 'p' { steps = { a = r.stub {} }, deadline = 300 }",
         "deadline must be a duration like \"150ms\", got 300"},
        {"r.policy 'p' { steps = { a = r.stub {} }, deadline = '1.5' }",
         "deadline must be a duration like \"150ms\", got \"1.5\""},
        {"r.policy 'p' { steps = { a = r.stub {} }, route = 1 }",
         "route must be a function(req, sig), got 1"},
        {"r.policy 'p' { steps = { a = r.stub {} }, chian = { 'a' } }", "unknown field \"chian\""},
    };
    RUN_CASES(cases, "policy \"p\": ");
    EXPECT_ERROR(HEAD "r.policy 'p p' {}\n",
                 "@/a.lua:2: policy: name must be a string of letters, digits, '_', '.', ':' and "
                 "'-', got \"p p\"");
}

/* A step error is reported at the step's own line, naming the policy and the step. */
TEST(step_errors) {
    static const err_case cases[] = {
        {"r.http { url = 'ftp://x' }",
         "url must start with http:// or https:// and a host, got \"ftp://x\""},
        {"r.http { }", "url must be a template like \"http://127.0.0.1:9000/users/${id}\", got nil"},
        {"r.http { url = 'http://x/${id' }",
         "url: \"${\" must be followed by an attribute name and \"}\", got \"http://x/${id\""},
        {"r.http { url = 'http://x', method = 'FETCH' }",
         "method must be one of \"GET\", \"POST\", \"PUT\", \"PATCH\", \"DELETE\", \"HEAD\", "
         "\"OPTIONS\", got \"FETCH\""},
        {"r.http { url = 'http://x', body = 3 }",
         "body must be a template string, or false for none, got 3"},
        {"r.http { url = 'http://x', headers = { a = 'x\\ny' } }",
         "headers[\"a\"] must be a string without CR, LF or NUL, got \"x\\10y\""},
        {"r.http { url = 'http://x', verb = 'GET' }", "unknown field \"verb\""},
        {"r.redis { cmd = {} }", "cmd must be a list like { \"GET\", \"user:${id}\" }, got a table"},
        {"r.redis { cmd = { 'GET', true } }", "cmd[2] must be a template like \"user:${id}\", got true"},
        {"r.redis { cmd = { 'subscribe', 'ch' } }",
         "cmd: subscribe cannot run on the worker's shared connection"},
        {"r.redis_cache { key = 'k', ttl = 'soon' }",
         "ttl must be a duration like \"150ms\", got \"soon\""},
        {"r.redis_cache { }", "key must be a template like \"user:${id}\", got nil"},
        {"r.stub { status = 600 }", "status must be in 100..599, got 600"},
        {"r.stub { status = 99 }", "status must be in 100..599, got 99"},
        {"r.stub { status = '200' }", "status must be an integer, got \"200\""},
        {"r.stub { body = 1 }", "body must be a string, got 1"},
        {"r.stub { headers = 'x' }", "headers must be a table of name = value strings, got \"x\""},
        {"r.stub { headers = { ['a b'] = 'x' } }", "headers: \"a b\" is not a header name"},
        {"r.stub { headers = { ['X-A'] = 1 } }",
         "headers[\"X-A\"] must be a string without CR, LF or NUL, got 1"},
        {"r.stub { headers = { ['X-A'] = 'a\\r\\nX-B: b' } }",
         "headers[\"X-A\"] must be a string without CR, LF or NUL, got \"a\\13\\10X-B: b\""},
        {"r.stub { stauts = 200 }", "unknown field \"stauts\""},
        {"r.stub 'x'", "expected r.stub { ... }, got \"x\""},
        {"r.lua(42)", "expected r.lua(function) or r.lua { run = function, ... }, got 42"},
        {"r.lua { run = 1 }", "run must be a function, got 1"},
        {"r.lua { rn = type }", "unknown field \"rn\""},
        {"r.c ''", "name must be the name of a registered C step, got \"\""},
        {"r.c(1)", "expected r.c \"name\" or r.c { name = \"name\", ... }, got 1"},
        {"r.local_cache {}", "key must be a template like \"user:${id}\", got nil"},
        {"r.local_cache { key = 'k', ttl = '0s' }", "ttl must be > 0, got \"0s\""},
        {"r.local_cache { key = 'k', max_entries = 0 }", "max_entries must be >= 1, got 0"},
        {"r.local_cache { key = 'u:${id' }", "key: unclosed \"${\" at offset 2"},
        {"r.stub { timeout = 50 }", "timeout must be a duration like \"150ms\", got 50"},
        {"r.stub { timeout = '0ms' }", "timeout must be > 0, got \"0ms\""},
        {"r.stub { guards = 'b' }", "guards must be a list of names, got \"b\""},
        {"r.stub { guards = { 1 } }", "guards must be a list of names, got 1 at position 1"},
        {"r.stub { guards = { 'b', 'b' } }", "guards lists \"b\" twice"},
        {"r.stub { retry = 3 }", "retry must be a table like { attempts = 3 }, got 3"},
        {"r.stub { retry = {} }", "retry.attempts is required"},
        {"r.stub { retry = { attempts = 11 } }", "retry.attempts must be in 1..10, got 11"},
        {"r.stub { retry = { attempts = 0 } }", "retry.attempts must be in 1..10, got 0"},
        {"r.stub { retry = { attempts = 2, tries = 3 } }", "unknown field \"retry.tries\""},
        {"r.stub { retry = { attempts = 2, backoff = 'linear' } }",
         "retry.backoff must be one of \"constant\", \"exponential\", got \"linear\""},
        {"r.stub { retry = { attempts = 2, jitter = 'half' } }",
         "retry.jitter must be one of \"none\", \"full\", \"equal\", \"decorrelated\", got "
         "\"half\""},
        {"r.stub { retry = { attempts = 2, base = 20 } }",
         "retry.base must be a duration like \"150ms\", got 20"},
        {"r.stub { retry = { attempts = 2, base = '1s', max = '10ms' } }",
         "retry.max must be >= retry.base (\"1s\"), got \"10ms\""},
        {"r.stub { retry = { attempts = 2, on = { 'ok' } } }", "retry.on must not list \"ok\""},
        {"r.stub { retry = { attempts = 2, budget = 2 } }", "retry.budget must be in 0..1, got 2"},
        {"r.stub { fault = 1 }",
         "fault must be a table like { abort = \"5xx\", abort_percent = 5 }, got 1"},
        {"r.stub { fault = { abort = '4xx' } }",
         "fault.abort must be one of \"5xx\", \"timeout\", \"connect\", got \"4xx\""},
        {"r.stub { fault = { abort = '5xx', abort_percent = 101 } }",
         "fault.abort_percent must be in 0..100, got 101"},
        {"r.stub { fault = { delay_percent = 5 } }", "fault.delay_percent needs fault.delay"},
        {"r.stub { fault = { delay = '0ms' } }", "fault.delay must be > 0, got \"0ms\""},
        {"r.stub { fault = { dealy = '1ms' } }", "unknown field \"fault.dealy\""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char text[2048], want[2048];
        snprintf(text, sizeof(text),
                 HEAD "r.policy 'p' {\n"
                      "  steps = {\n"
                      "    ok = r.stub {},\n"
                      "    primary = %s,\n"
                      "  },\n"
                      "  chain = { 'primary', 'ok' },\n"
                      "}\n",
                 cases[i].decl);
        snprintf(want, sizeof(want), "@/a.lua:5: policy \"p\": step \"primary\": %s",
                 cases[i].error);
        expect_error_at(__LINE__, text, want, NULL);
    }
}

TEST(cross_file_errors) {
    /* An unknown guard: at the policy's line, naming step and guard; every one of them. */
    EXPECT_ERROR(HEAD
                 "r.breaker 'users-api' {}\n"
                 "r.policy 'p' { steps = { a = r.stub { guards = { 'users-ap' } },\n"
                 "                         b = r.stub { guards = { 'users-api', 'nope' } } },\n"
                 "  chain = { 'a', 'b' } }\n",
                 "@/a.lua:3: policy \"p\": step \"a\": unknown guard \"users-ap\"\n"
                 "@/a.lua:3: policy \"p\": step \"b\": unknown guard \"nope\"");
    /* A guard declared in another file is fine; a policy exposed from another file too. */
    const char *dir = fresh_dir();
    rsl_test_write(dir, "a.lua",
                   HEAD "r.policy 'p' { steps = { a = r.stub { guards = { 'b' } } } }\n");
    rsl_test_write(dir, "b.lua", HEAD "r.breaker 'b' {}\nr.expose { ['GET /p/:id'] = 'p' }\n");
    rsl__guards *reg = rsl__guards_new();
    rsl__gen *g = NULL;
    char err[1024];
    int rc = load(dir, &opts1, reg, &g, NULL, err, sizeof(err));
    if (rc != 0) {
        rsl_test_fail(__FILE__, __LINE__, "%s", err);
    }
    rsl__gen_free(g);
    rsl__guards_free(reg);

    static const err_case expose[] = {
        {"r.expose { ['GET /u/:id'] = 'nope' }", "expose \"GET /u/:id\": unknown policy \"nope\""},
        {"r.expose { ['GIT /u'] = 'p' }",
         "expose \"GIT /u\": method must be one of GET, POST, PUT, DELETE, PATCH, HEAD or *, got "
         "\"GIT\""},
        {"r.expose { ['GET u'] = 'p' }", "expose \"GET u\": path must start with \"/\""},
        {"r.expose { ['GET/u'] = 'p' }", "expose \"GET/u\": must be \"METHOD /path\""},
        {"r.expose { ['GET /u/:'] = 'p' }",
         "expose \"GET /u/:\": path parameter \":\" must be a name (letters, digits, '_')"},
        {"r.expose { ['GET /u/:id/:id'] = 'p' }",
         "expose \"GET /u/:id/:id\": path parameter \":id\" appears twice"},
        {"r.expose { ['GET /u'] = 1 }", "expose \"GET /u\": expected a policy name, got 1"},
        {"r.expose { ['GET /u/:id'] = 'p', ['GET /u/:uid'] = 'p' }",
         "expose \"GET /u/:uid\": same route as \"GET /u/:id\" at @/a.lua:2"},
        {"r.expose 'x'",
         "expose: expected a table like { [\"GET /users/:id\"] = \"policy\" }, got \"x\""},
    };
    RUN_CASES(expose, "");
    EXPECT_ERROR(HEAD "r.expose { ['GET /u'] = 'p' }\nr.expose { ['GET /u'] = 'p' }\n",
                 "@/a.lua:3: expose \"GET /u\": already declared at @/a.lua:2");
}

TEST(file_errors) {
    EXPECT_ERROR(HEAD "r.policy 'p' {\n", "@/a.lua:3: unexpected symbol near '<eof>'");
    EXPECT_ERROR(HEAD "local x = = 1\n", "@/a.lua:2: unexpected symbol near '='");
    EXPECT_ERROR(HEAD "\nerror('boom')\n", "@/a.lua:3: boom");
    EXPECT_ERROR(HEAD "error({})\n", "@/a.lua: (error object is a table value)");
    EXPECT_ERROR(HEAD "error('no place', 0)\n", "@/a.lua: no place");
    EXPECT_ERROR(HEAD "local x = nil + 1\n",
                 "@/a.lua:2: attempt to perform arithmetic on a nil value");
    EXPECT_ERROR(HEAD "os.execute('true')\n",
                 "@/a.lua:2: attempt to call field 'execute' (a nil value)");
    EXPECT_ERROR("local r = require 'lfs'\n",
                 "@/a.lua:1: module \"lfs\" is not available in policies");
    EXPECT_ERROR(HEAD "r.breaker = nil\n",
                 "@/a.lua:2: cannot set \"breaker\": resilua is read-only");
    EXPECT_ERROR(HEAD "x = 1\n", "@/a.lua:2: assignment to undeclared global \"x\"");

    /* The memory cap. */
    rsl__gen_opts small = opts1;
    small.mem_limit = 8 << 20;
    expect_error_at(__LINE__,
                    HEAD "local t = {} while true do t[#t + 1] = string.rep('x', 4096) .. #t end\n",
                    "@/a.lua: out of memory (the limit is 8388608 bytes per state)", &small);

    /* The load time limit, with a watchdog. */
    rsl__gen_opts timed = opts1;
    timed.wd = rsl__watchdog_new(0);
    expect_error_at(__LINE__, HEAD "\nwhile true do end\n",
                    "@/a.lua:3: still running after the load time limit of 1 s", &timed);
    rsl__watchdog_free(timed.wd);

    /* Every failing file is reported, in name order; finish() does not run. */
    const char *dir = fresh_dir();
    rsl_test_write(dir, "b.lua", HEAD "r.bulkhead 'h' { max = 0 }\n");
    rsl_test_write(dir, "a.lua", HEAD "r.limiter 'l' {}\n");
    rsl_test_write(dir, "c.lua",
                   HEAD "r.policy 'p' { steps = { a = r.stub { guards = { 'x' } } } }\n");
    rsl_test_write(dir, "notes.txt", "not a policy");
    rsl__guards *reg = rsl__guards_new();
    rsl__gen *g = NULL;
    char err[1024], want[1024];
    ASSERT_EQ(load(dir, &opts1, reg, &g, NULL, err, sizeof(err)), RSL_ELOAD);
    expand(want, sizeof(want),
           "@/a.lua:2: limiter \"l\": rate is required\n"
           "@/b.lua:2: bulkhead \"h\": max must be >= 1, got 0",
           dir);
    ASSERT_STR_EQ(err, want);
    /* A short buffer still gets the first line, cut. */
    char tiny[16];
    ASSERT_EQ(load(dir, &opts1, reg, &g, NULL, tiny, sizeof(tiny)), RSL_ELOAD);
    ASSERT_EQ(strlen(tiny), 15);
    rsl__guards_free(reg);
}

TEST(directory_errors) {
    rsl__guards *reg = rsl__guards_new();
    rsl__gen *g = NULL;
    char err[1024], want[1024];
    const char *dir = fresh_dir();
    ASSERT_EQ(load(dir, &opts1, reg, &g, NULL, err, sizeof(err)), RSL_ELOAD);
    snprintf(want, sizeof(want), "%s: no policy files (*.lua)", dir);
    ASSERT_STR_EQ(err, want);
    rsl_test_write(dir, "README", "x");
    rsl_test_write(dir, ".hidden.lua", "x");
    ASSERT_EQ(load(dir, &opts1, reg, &g, NULL, err, sizeof(err)), RSL_ELOAD);
    ASSERT_STR_EQ(err, want);
    snprintf(want, sizeof(want),
             "%s/nope: cannot open the policy directory (No such file or directory)", dir);
    char missing[600];
    snprintf(missing, sizeof(missing), "%s/nope", dir);
    ASSERT_EQ(load(missing, &opts1, reg, &g, NULL, err, sizeof(err)), RSL_ELOAD);
    ASSERT_STR_EQ(err, want);
    rsl__gen_opts bad = opts1;
    bad.nstates = 0;
    ASSERT_EQ(load(dir, &bad, reg, &g, NULL, err, sizeof(err)), RSL_EINVAL);
    rsl__guards_free(reg);
}

/* ---- what a load compiles ------------------------------------------------------------------ */

static rsl__gen *load_ok(const char *text, const rsl__gen_opts *o, rsl__guards *reg,
                         rsl__load_report *rep) {
    const char *dir = fresh_dir();
    rsl_test_write(dir, "a.lua", text);
    rsl__gen *g = NULL;
    char err[2048];
    int rc = load(dir, o, reg, &g, rep, err, sizeof(err));
    if (rc != 0) {
        rsl_test_fail(__FILE__, __LINE__, "load: %s", err);
    }
    return g;
}

TEST(defaults) {
    rsl__guards *reg = rsl__guards_new();
    rsl__gen *g = load_ok(
        HEAD "r.breaker 'b' {}\n"
             "r.limiter 'l' { rate = 5 }\n"
             "r.limiter 'slow' { rate = 0.5, per = '1m' }\n"
             "r.bulkhead 'h' { max = 3 }\n"
             "r.policy 'one' { steps = { only = r.stub {} } }\n"
             "r.policy 'all' {\n"
             "  steps = {\n"
             "    z = r.stub { status = 503, body = 'b\\0dy', headers = { B = '2', A = '1' } },\n"
             "    c = r.c 'host',\n"
             "    lua = r.lua { run = function() end, retry = { attempts = 2 },\n"
             "                  fault = { abort = 'timeout' } },\n"
             "    cache = r.local_cache { key = 'k:${id}' },\n"
             "    a = r.c { name = 'h2', timeout = '1.5s', guards = { 'l', 'b' },\n"
             "              fault = { delay = '10ms' } },\n"
             "  },\n"
             "  chain = { 'lua', 'cache', 'z' },\n"
             "}\n",
        &opts1, reg, NULL);
    ASSERT_EQ(g->nstates, 1);
    ASSERT_EQ(atomic_load(&g->refs), 1);
    /* Guards, sorted by name, the same objects as in the registry. */
    ASSERT_EQ(g->nguards, 4);
    ASSERT_STR_EQ(g->guards[0]->name, "b");
    ASSERT_STR_EQ(g->guards[3]->name, "slow");
    ASSERT(rsl__guards_find(reg, "b") == rsl__gen_guard(g, "b"));
    ASSERT(rsl__gen_guard(g, "nope") == NULL);
    rsl__breaker_conf bc;
    rsl__breaker_conf_get(rsl__gen_guard(g, "b")->u.breaker, &bc);
    ASSERT_EQ(bc.window_ns, 10 * S);
    ASSERT_EQ(bc.buckets, 10);
    ASSERT_EQ(bc.stripes, 2);
    ASSERT_EQ(bc.min_calls, 20);
    ASSERT_NEAR(bc.failure_rate, 50, 0);
    ASSERT_EQ(bc.slow_call_ns, 60 * S);
    ASSERT_NEAR(bc.slow_rate, 100, 0);
    ASSERT_EQ(bc.open_for_ns, 5 * S);
    ASSERT_NEAR(bc.backoff_factor, 2, 0);
    ASSERT_EQ(bc.backoff_max_ns, 120 * S);
    ASSERT_NEAR(bc.jitter, 0.1, 1e-12);
    ASSERT_EQ(bc.probes, 1);
    ASSERT_EQ(bc.count_mask, (1u << RSL_OUTCOME_TIMEOUT) | (1u << RSL_OUTCOME_CONNECT) |
                                 (1u << RSL_OUTCOME_5XX) | (1u << RSL_OUTCOME_ERROR));
    rsl__limiter_conf lc;
    rsl__limiter_conf_get(rsl__gen_guard(g, "l")->u.limiter, &lc);
    ASSERT_NEAR(lc.rate, 5, 0);
    ASSERT_EQ(lc.per_ns, S);
    ASSERT_NEAR(lc.burst, 5, 0);
    rsl__limiter_conf_get(rsl__gen_guard(g, "slow")->u.limiter, &lc);
    ASSERT_EQ(lc.per_ns, 60 * S);
    ASSERT_NEAR(lc.burst, 1, 0);
    ASSERT_EQ(rsl__bulkhead_max(rsl__gen_guard(g, "h")->u.bulkhead), 3);

    /* Policies sorted by name. */
    ASSERT_EQ(g->npolicies, 2);
    ASSERT_STR_EQ(g->policies[0].name, "all");
    ASSERT(rsl__gen_policy(g, "one") == &g->policies[1]);
    ASSERT(rsl__gen_policy(g, "two") == NULL);
    rsl__policy *one = rsl__gen_policy(g, "one");
    ASSERT_EQ(one->line, 6);
    ASSERT_EQ(one->deadline_ns, 0);
    ASSERT(one->route_refs == NULL);
    ASSERT_EQ(one->nchain, 1);
    ASSERT_EQ(one->chain[0], 0);
    uint32_t all = (1u << RSL_OUTCOME__COUNT) - 1;
    ASSERT_EQ(one->fallback_mask, all & ~((1u << RSL_OUTCOME_OK) | (1u << RSL_OUTCOME_4XX) |
                                          (1u << RSL_OUTCOME_CANCELED)));
    rsl__step *only = &one->steps[0];
    ASSERT_EQ(only->kind, RSL_STEP_STUB);
    ASSERT_EQ(only->u.stub.status, 200);
    ASSERT_EQ(only->u.stub.body_len, 0);
    ASSERT_STR_EQ(only->u.stub.body, "");
    ASSERT_EQ(only->retry.attempts, 1);
    ASSERT_EQ(only->has_fault, 0);
    ASSERT_EQ(only->fault.abort, -1);
    ASSERT_EQ(only->timeout_ns, 0);
    ASSERT_EQ(only->nguards, 0);

    /* Steps sorted by name; the chain as indices. */
    rsl__policy *p = rsl__gen_policy(g, "all");
    ASSERT_EQ(p->nsteps, 5);
    const char *names[] = {"a", "c", "cache", "lua", "z"};
    for (int i = 0; i < 5; i++) {
        ASSERT_STR_EQ(p->steps[i].name, names[i]);
        ASSERT_EQ(rsl__policy_step(p, names[i], strlen(names[i])), i);
    }
    ASSERT_EQ(rsl__policy_step(p, "cache", 1), 1); /* "c": length counts */
    ASSERT_EQ(rsl__policy_step(p, "zz", 2), -1);
    ASSERT_EQ(p->nchain, 3);
    ASSERT_EQ(p->chain[0], 3);
    ASSERT_EQ(p->chain[1], 2);
    ASSERT_EQ(p->chain[2], 4);
    ASSERT_STR_EQ(p->file, g->policies[1].file);
    ASSERT_EQ(p->line, 7);

    rsl__step *a = &p->steps[0];
    ASSERT_EQ(a->kind, RSL_STEP_C);
    ASSERT_STR_EQ(a->u.c.name, "h2");
    ASSERT_EQ(a->line, 14);
    ASSERT_EQ(a->timeout_ns, 1500 * MS);
    ASSERT_EQ(a->nguards, 2);
    ASSERT(a->guards[0] == rsl__gen_guard(g, "l")); /* declaration order */
    ASSERT(a->guards[1] == rsl__gen_guard(g, "b"));
    ASSERT_EQ(a->has_fault, 1);
    ASSERT_EQ(a->fault.delay_ns, 10 * MS);
    ASSERT_NEAR(a->fault.delay_percent, 100, 0);
    ASSERT_EQ(a->fault.abort, -1);
    ASSERT_STR_EQ(p->steps[1].u.c.name, "host");

    rsl__step *cache = &p->steps[2];
    ASSERT_EQ(cache->kind, RSL_STEP_LOCAL_CACHE);
    ASSERT(cache->u.cache.key && !rsl__tmpl_is_literal(cache->u.cache.key));
    ASSERT_EQ(cache->u.cache.ttl_ns, 60 * S);
    ASSERT_EQ(cache->u.cache.max_entries, 10000);
    ASSERT(cache->u.cache.cache == NULL);

    rsl__step *lua = &p->steps[3];
    ASSERT_EQ(lua->kind, RSL_STEP_LUA);
    ASSERT(lua->u.lua.refs[0] != LUA_NOREF);
    ASSERT_EQ(lua->retry.attempts, 2);
    ASSERT_EQ(lua->retry.exponential, 1);
    ASSERT_EQ(lua->retry.base_ns, 20 * MS);
    ASSERT_EQ(lua->retry.max_ns, S);
    ASSERT_EQ(lua->retry.jitter, RSL_JITTER_FULL);
    ASSERT_EQ(lua->retry.on_mask,
              (1u << RSL_OUTCOME_TIMEOUT) | (1u << RSL_OUTCOME_CONNECT) | (1u << RSL_OUTCOME_5XX));
    ASSERT_NEAR(lua->retry.budget, 0.2, 1e-12);
    ASSERT_EQ(lua->fault.abort, RSL_OUTCOME_TIMEOUT);
    ASSERT_NEAR(lua->fault.abort_percent, 100, 0);
    ASSERT_NEAR(lua->fault.delay_percent, 0, 0);

    rsl__step *z = &p->steps[4];
    ASSERT_EQ(z->u.stub.status, 503);
    ASSERT_EQ(z->u.stub.body_len, 4);
    ASSERT(memcmp(z->u.stub.body, "b\0dy", 4) == 0);
    ASSERT_EQ(z->u.stub.nheaders, 2);
    ASSERT_STR_EQ(z->u.stub.headers[0].name, "A");
    ASSERT_STR_EQ(z->u.stub.headers[1].value, "2");
    rsl__gen_free(g);
    rsl__guards_free(reg);
}

TEST(explicit_settings) {
    rsl__guards *reg = rsl__guards_new();
    rsl__gen *g = load_ok(
        HEAD
        "r.breaker 'users-api' { window = '1.5s', buckets = 15, min_calls = 3, failure_rate = 0,\n"
        "  slow_call = '800ms', slow_rate = 80, open_for = '5m', backoff = { factor = 1.5, jitter "
        "= 0 },\n"
        "  probes = 3, count = { 'timeout', '4xx' } }\n"
        "r.policy 'p' { deadline = '300ms', fallback_on = { 'timeout', 'miss' },\n"
        "  steps = { s = r.stub { retry = { attempts = 3, backoff = 'constant', base = '100us',\n"
        "    max = '2ms', jitter = 'decorrelated', on = { '5xx' }, budget = 0 } } } }\n",
        &opts1, reg, NULL);
    rsl__breaker_conf bc;
    rsl__breaker_conf_get(rsl__gen_guard(g, "users-api")->u.breaker, &bc);
    ASSERT_EQ(bc.window_ns, 1500 * MS);
    ASSERT_EQ(bc.buckets, 15);
    ASSERT_EQ(bc.min_calls, 3);
    ASSERT_NEAR(bc.failure_rate, 0, 0);
    ASSERT_EQ(bc.slow_call_ns, 800 * MS);
    ASSERT_EQ(bc.open_for_ns, 300 * S);
    ASSERT_EQ(bc.backoff_max_ns, 300 * S); /* the default max grows to open_for */
    ASSERT_NEAR(bc.backoff_factor, 1.5, 0);
    ASSERT_NEAR(bc.jitter, 0, 0);
    ASSERT_EQ(bc.probes, 3);
    ASSERT_EQ(bc.count_mask, (1u << RSL_OUTCOME_TIMEOUT) | (1u << RSL_OUTCOME_4XX));
    rsl__policy *p = rsl__gen_policy(g, "p");
    ASSERT_EQ(p->deadline_ns, 300 * MS);
    ASSERT_EQ(p->fallback_mask, (1u << RSL_OUTCOME_TIMEOUT) | (1u << RSL_OUTCOME_MISS));
    rsl__retry *r = &p->steps[0].retry;
    ASSERT_EQ(r->attempts, 3);
    ASSERT_EQ(r->exponential, 0);
    ASSERT_EQ(r->base_ns, 100000);
    ASSERT_EQ(r->max_ns, 2 * MS);
    ASSERT_EQ(r->jitter, RSL_JITTER_DECORRELATED);
    ASSERT_EQ(r->on_mask, 1u << RSL_OUTCOME_5XX);
    ASSERT_NEAR(r->budget, 0, 0);
    rsl__gen_free(g);
    rsl__guards_free(reg);
}

/* Three states: each has its own functions (module-level locals per state). */
TEST(states_have_their_own_refs) {
    rsl__gen_opts o = opts1;
    o.nstates = 3;
    rsl__guards *reg = rsl__guards_new();
    rsl__gen *g = load_ok(
        HEAD
        "local n = 0\n"
        "r.policy 'p' { steps = { s = r.stub {}, f = r.lua(function() n = n + 1 return n end) },\n"
        "  chain = { 'f' }, route = function() n = n + 10 return { 's' } end }\n",
        &o, reg, NULL);
    ASSERT_EQ(g->nstates, 3);
    rsl__policy *p = rsl__gen_policy(g, "p");
    rsl__step *f = &p->steps[rsl__policy_step(p, "f", 1)];
    for (int i = 0; i < 3; i++) {
        ASSERT(g->states[i] != NULL);
        for (int j = 0; j < i; j++) {
            ASSERT(g->states[i] != g->states[j]);
        }
        ASSERT(p->route_refs[i] != LUA_NOREF && f->u.lua.refs[i] != LUA_NOREF);
    }
    /* State 1: route twice (20), then f (21); the others untouched. */
    lua_State *L = g->states[1];
    for (int k = 0; k < 2; k++) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, p->route_refs[1]);
        ASSERT_EQ(rsl__sandbox_pcall(L, 0, 1, 0), 0);
        lua_pop(L, 1);
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, f->u.lua.refs[1]);
    ASSERT_EQ(rsl__sandbox_pcall(L, 0, 1, 0), 0);
    ASSERT_EQ(lua_tointeger(L, -1), 21);
    lua_pop(L, 1);
    for (int i = 0; i < 3; i += 2) {
        lua_rawgeti(g->states[i], LUA_REGISTRYINDEX, f->u.lua.refs[i]);
        ASSERT_EQ(rsl__sandbox_pcall(g->states[i], 0, 1, 0), 0);
        ASSERT_EQ(lua_tointeger(g->states[i], -1), 1);
        lua_pop(g->states[i], 1);
    }
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ(lua_gettop(g->states[i]), 0);
    }
    rsl__gen_free(g);
    rsl__guards_free(reg);
}

TEST(declarations_after_loading_are_refused) {
    rsl__guards *reg = rsl__guards_new();
    rsl__gen *g = load_ok(HEAD "r.policy 'p' { steps = { s = r.stub {} },\n"
                               "  route = function() r.breaker 'late' {} end }\n",
                          &opts1, reg, NULL);
    rsl__policy *p = rsl__gen_policy(g, "p");
    lua_State *L = g->states[0];
    lua_rawgeti(L, LUA_REGISTRYINDEX, p->route_refs[0]);
    ASSERT_EQ(rsl__sandbox_pcall(L, 0, 1, 0), LUA_ERRRUN);
    ASSERT_CONTAINS(lua_tostring(L, -1),
                    "/a.lua:3: breaker: declarations are only allowed while the policy files load");
    lua_pop(L, 1);
    rsl__gen_free(g);
    rsl__guards_free(reg);
}

/* Nondeterministic declarations cannot be split across states. */
TEST(states_must_agree) {
    rsl__gen_opts o = opts1;
    o.nstates = 2;
    const char *dir = fresh_dir();
    /* os.clock differs between the two loads only by chance; math.random is seeded per
     * state the same way, so use the state's own address through tostring({}). */
    rsl_test_write(dir, "a.lua",
                   HEAD "local s = tostring({}) .. tostring(os.clock())\n"
                        "r.policy(s:gsub('[^%w]', '')) { steps = { s = r.stub {} } }\n");
    rsl__guards *reg = rsl__guards_new();
    rsl__gen *g = NULL;
    char err[1024];
    int rc = load(dir, &o, reg, &g, NULL, err, sizeof(err));
    ASSERT_EQ(rc, RSL_ELOAD);
    ASSERT_CONTAINS(err,
                    ": the policy files declared different policies in another worker's state");
    rsl__guards_free(reg);
}

/* ---- reload: applying a generation to the registry -------------------------------------- */

static int has_line(const char *list, const char *name) {
    size_t n = strlen(name);
    for (const char *p = list; p && *p;) {
        const char *e = strchr(p, '\n');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && memcmp(p, name, n) == 0) {
            return 1;
        }
        p = e ? e + 1 : NULL;
    }
    return 0;
}

static int count_lines(const char *list) {
    int n = 0;
    for (const char *p = list; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : "") {
        n++;
    }
    return n;
}

TEST(reload_applies_to_the_registry) {
    rsl__guards *reg = rsl__guards_new();
    rsl__load_report rep;
    rsl__gen *g1 =
        load_ok(HEAD "r.breaker 'b' { min_calls = 5 }\n"
                     "r.breaker 'w' { window = '10s' }\n"
                     "r.limiter 'l' { rate = 5 }\n"
                     "r.bulkhead 'h' { max = 4 }\n"
                     "r.breaker 'x' {}\n"
                     "r.bulkhead 'old' { max = 1 }\n"
                     "r.policy 'p' { steps = { s = r.stub { guards = { 'b', 'old' } } } }\n",
                &opts1, reg, &rep);
    ASSERT_EQ(count_lines(rep.added), 6);
    ASSERT(rep.kept == NULL && rep.changed == NULL && rep.removed == NULL && rep.reset == NULL);
    rsl__load_report_free(&rep);
    ASSERT_EQ(rsl__guards_count(reg), 6);
    rsl__guard *b = rsl__guards_find(reg, "b"), *w = rsl__guards_find(reg, "w");
    rsl__guard *l = rsl__guards_find(reg, "l"), *h = rsl__guards_find(reg, "h");
    rsl__guard *x = rsl__guards_find(reg, "x"), *old = rsl__guards_find(reg, "old");
    rsl__breaker_force_open(b->u.breaker, 0); /* state that must survive */

    rsl__gen *g2 =
        load_ok(HEAD "r.breaker 'b' { min_calls = 5 }\n"
                     "r.breaker 'w' { window = '20s' }\n"
                     "r.limiter 'l' { rate = 10 }\n"
                     "r.bulkhead 'h' { max = 8 }\n"
                     "r.limiter 'x' { rate = 1 }\n"
                     "r.bulkhead 'new' { max = 2 }\n"
                     "r.policy 'p' { steps = { s = r.stub { guards = { 'b', 'x' } } } }\n",
                &opts1, reg, &rep);
    ASSERT_STR_EQ(rep.kept, "b");
    ASSERT_EQ(count_lines(rep.changed), 4);
    ASSERT(has_line(rep.changed, "w") && has_line(rep.changed, "l") && has_line(rep.changed, "h") &&
           has_line(rep.changed, "x"));
    ASSERT_EQ(count_lines(rep.reset), 2);
    ASSERT(has_line(rep.reset, "w") && has_line(rep.reset, "x"));
    ASSERT_STR_EQ(rep.added, "new");
    ASSERT_STR_EQ(rep.removed, "old");
    rsl__load_report_free(&rep);

    /* Same name and kind: the same objects, new settings, old state. */
    ASSERT(rsl__guards_find(reg, "b") == b && rsl__gen_guard(g2, "b") == b);
    ASSERT_EQ(rsl__breaker_state_get(b->u.breaker), RSL_BREAKER_FORCED_OPEN);
    ASSERT(rsl__guards_find(reg, "w") == w);
    rsl__breaker_conf bc;
    rsl__breaker_conf_get(w->u.breaker, &bc);
    ASSERT_EQ(bc.window_ns, 20 * S);
    ASSERT(rsl__guards_find(reg, "l") == l);
    rsl__limiter_conf lc;
    rsl__limiter_conf_get(l->u.limiter, &lc);
    ASSERT_NEAR(lc.rate, 10, 0);
    ASSERT(rsl__guards_find(reg, "h") == h);
    ASSERT_EQ(rsl__bulkhead_max(h->u.bulkhead), 8);
    /* Kind changed: a new object; the old generation keeps the old one alive. */
    rsl__guard *x2 = rsl__guards_find(reg, "x");
    ASSERT(x2 != x && x2->kind == RSL_GUARD_LIMITER);
    ASSERT(rsl__gen_guard(g1, "x") == x && x->kind == RSL_GUARD_BREAKER);
    ASSERT(rsl__guards_find(reg, "old") == NULL);
    ASSERT(rsl__gen_guard(g1, "old") == old);
    ASSERT_EQ(rsl__bulkhead_max(old->u.bulkhead), 1);
    ASSERT_EQ(rsl__guards_count(reg), 6);
    ASSERT(rsl__gen_policy(g2, "p")->steps[0].guards[1] == x2);

    /* A load that fails changes nothing. */
    const char *dir = fresh_dir();
    rsl_test_write(dir, "a.lua",
                   HEAD "r.breaker 'b' { min_calls = 50 }\nr.bulkhead 'h' { max = 1 }\n");
    rsl_test_write(dir, "b.lua", HEAD "r.policy 'p' {\n");
    rsl__gen *g3 = NULL;
    char err[1024];
    ASSERT_EQ(load(dir, &opts1, reg, &g3, &rep, err, sizeof(err)), RSL_ELOAD);
    ASSERT(g3 == NULL && rep.kept == NULL && rep.added == NULL);
    ASSERT_EQ(rsl__guards_count(reg), 6);
    ASSERT(rsl__guards_find(reg, "b") == b);
    rsl__breaker_conf_get(b->u.breaker, &bc);
    ASSERT_EQ(bc.min_calls, 5);
    ASSERT_EQ(rsl__bulkhead_max(h->u.bulkhead), 8);

    rsl__gen_free(g1);
    rsl__gen_free(g2);
    rsl__guards_free(reg);
}

/* ---- describe, warnings, the shipped policies ------------------------------------------- */

TEST(describe_json) {
    rsl__guards *reg = rsl__guards_new();
    rsl__gen *g = load_ok(
        HEAD "r.breaker 'b' { count = { 'timeout', '5xx' } }\n"
             "r.limiter 'l' { rate = 100, burst = 10 }\n"
             "r.policy 'p' { deadline = '300ms',\n"
             "  steps = { a = r.c { name = 'up', guards = { 'b', 'l' }, timeout = '50ms' },\n"
             "            s = r.stub { status = 503 } },\n"
             "  chain = { 'a', 's' }, route = function() return { 'a' } end }\n"
             "r.expose { ['GET /p/:id'] = 'p' }\n",
        &opts1, reg, NULL);
    json_t *j = rsl__gen_describe(g);
    char *s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    const char *dir = g->policies[0].file;
    char want[4096];
    snprintf(
        want, sizeof(want),
        "{\"expose\":[{\"method\":\"GET\",\"path\":\"/p/:id\",\"policy\":\"p\"}],"
        "\"guards\":{\"b\":{\"backoff\":{\"factor\":2.0,\"jitter\":0.10000000000000001,"
        "\"max_ms\":120000.0},\"buckets\":10,\"count\":[\"timeout\",\"5xx\"],\"failure_rate\":50.0,"
        "\"kind\":\"breaker\",\"min_calls\":20,\"open_for_ms\":5000.0,\"probes\":1,"
        "\"slow_call_ms\":60000.0,\"slow_rate\":100.0,\"window_ms\":10000.0},"
        "\"l\":{\"burst\":10.0,\"kind\":\"limiter\",\"per_ms\":1000.0,\"rate\":100.0}},"
        "\"policies\":[{\"chain\":[\"a\",\"s\"],\"deadline_ms\":300.0,"
        "\"fallback_on\":[\"timeout\",\"connect\",\"5xx\",\"rejected\",\"miss\",\"error\"],"
        "\"file\":\"%s\",\"line\":4,\"name\":\"p\",\"route\":true,"
        "\"steps\":[{\"function\":\"up\",\"guards\":[\"b\",\"l\"],\"kind\":\"c\",\"line\":5,"
        "\"name\":\"a\",\"timeout_ms\":50.0},"
        "{\"guards\":[],\"kind\":\"stub\",\"line\":6,\"name\":\"s\",\"status\":503}]}]}",
        dir);
    ASSERT_STR_EQ(s, want);
    free(s);
    json_decref(j);
    rsl__gen_free(g);
    rsl__guards_free(reg);
}

/* A priority without a route is described as no route, and as a priority. */
TEST(describe_priority_without_route) {
    const char *dir = rsl_test_tmpdir();
    rsl_test_write(dir, "p.lua",
                   "local r = require 'resilua'\n"
                   "r.policy 'p' { priority = 2, steps = { s = r.stub { status = 200 } } }\n");
    char *json = NULL, err[512] = "";
    ASSERT_EQ(rsl_check(dir, &json, err, sizeof(err)), 0);
    ASSERT_CONTAINS(json, "\"route\":false,\"priority\":true");
    rsl_free(json);
}

TEST(static_route_warnings) {
    rsl__guards *reg = rsl__guards_new();
    rsl__load_report rep;
    rsl__gen *g =
        load_ok(HEAD "local VIP = { 'primary', 'cahce', 'stub' }\n"
                     "local WORDS = { 'red', 'blue' }\n"
                     "r.policy 'p' {\n"
                     "  steps = { primary = r.stub {}, cache = r.stub {}, stub = r.stub {} },\n"
                     "  chain = { 'primary', 'stub' },\n"
                     "  route = function(req)\n"
                     "    if req.vip then return VIP end\n"
                     "    local pick = function() return { 'stub', 'primry' } end\n"
                     "    if req.x then return pick() end\n"
                     "    if req.w then return WORDS end\n"
                     "    if req.t then return { 'typo' } end\n"
                     "    if req.u then local l = { 'green' } return l end\n"
                     "    return { 'primary', 'stub' }\n"
                     "  end,\n"
                     "}\n",
                &opts1, reg, &rep);
    const char *file = g->policies[0].file;
    char want[2048];
    snprintf(want, sizeof(want),
             "%s:7: policy \"p\": route may return unknown step \"cahce\"\n"
             "%s:9: policy \"p\": route may return unknown step \"primry\"\n"
             "%s:12: policy \"p\": route may return unknown step \"typo\"\n"
             "%s:13: policy \"p\": route may return unknown step \"green\"",
             file, file, file, file);
    ASSERT_STR_EQ(rep.warnings, want);
    rsl__load_report_free(&rep);
    rsl__gen_free(g);
    rsl__guards_free(reg);
}

#ifdef RSL_SOURCE_DIR
#define POLICIES RSL_SOURCE_DIR "/policies"
#else
#define POLICIES "policies"
#endif

TEST(shipped_policies_load) {
    rsl__guards *reg = rsl__guards_new();
    rsl__gen *g = NULL;
    rsl__load_report rep;
    char err[2048];
    rsl__gen_opts o = opts1;
    o.nstates = 2;
    o.wd = rsl__watchdog_new(0);
    int rc = load(POLICIES, &o, reg, &g, &rep, err, sizeof(err));
    if (rc != 0) {
        rsl_test_fail(__FILE__, __LINE__, "%s", err);
    }
    ASSERT(g->npolicies >= 3);
    ASSERT(rep.warnings == NULL);
    rsl__load_report_free(&rep);
    rsl__gen_free(g);
    rsl__guards_free(reg);
    rsl__watchdog_free(o.wd);
}
