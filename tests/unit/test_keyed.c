/*
 * Per-key guards (keyed.h) through the public API, on an injected clock: a keyed breaker
 * isolates its keys (tenant A's failures open only A); sig.state(name, key) and
 * sig.tokens(name, key) read one key (an unseen key reads closed, or a full bucket); the
 * table holds at most max_keys, evicting the least recently used; an open breaker and a
 * limiter short of a full bucket are never evicted (the shared overflow guard serves a new
 * key instead); a reload keeps the keys (new thresholds reach them), a new key template
 * starts afresh and says so; an admin override of the guard covers every key; /metrics
 * carries at most top_k + 1 series per metric of a keyed guard; the DSL refuses bad
 * declarations with file:line; two host threads through a small table on two workers; a
 * keyed global limiter gives each key a lease of its own (no Redis here: down, closed).
 */
// ctest-labels: tsan
#include "resilua.h"
#include "test.h"
#include "fake_clock.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>

static void quiet(void *ud, rsl_log_level level, const char *msg) {
    (void)ud;
    if (level < RSL_LOG_WARN) {
        fprintf(stderr, "log: %s\n", msg);
    }
}

/* A runtime on dir's policies and the injected clock, its log to `log`. */
static rsl_runtime *open_dir_log(const char *dir, int workers, rsl_log_fn log) {
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    o.workers = workers;
    o.clock = fake_clock;
    o.seed = 7;
    o.log = log;
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

static rsl_runtime *open_dir(const char *dir, int workers) {
    return open_dir_log(dir, workers, quiet);
}

/* Policy "p": `primary` (fails when req.fail == "1") behind guard "g" (declared by DECL),
 * then a stub.  With req.peek, the route answers with a stub named after what sig says of
 * that key: st_closed, st_open, ... for a breaker, tk_N (whole tokens) for a limiter. */
static void write_policy(const char *dir, const char *decl) {
    char text[4096];
    snprintf(text, sizeof(text),
             "local r = require 'resilua'\n"
             "%s\n"
             "local P = { 'primary', 'stub' }\n"
             "local steps = {\n"
             "  primary = r.lua { run = function(req) if req.fail == '1' then\n"
             "      return nil, '5xx' end return { status = 200, body = 'fresh' } end,\n"
             "    guards = { 'g' } },\n"
             "  stub = r.stub { status = 503, body = 'stub' },\n"
             "}\n"
             "for _, s in ipairs { 'closed', 'open', 'half_open', 'forced_open', 'disabled' } do\n"
             "  steps['st_' .. s] = r.stub { status = 200, body = s }\n"
             "end\n"
             "for i = 0, 5 do steps['tk_' .. i] = r.stub { status = 200, body = tostring(i) } end\n"
             "local peek = {}\n"
             "r.policy 'p' {\n"
             "  steps = steps,\n"
             "  chain = P,\n"
             "  route = function(req, sig)\n"
             "    if req.peek then\n"
             "      local k = req.peek ~= '' and req.peek or nil\n"
             "      if req.limiter then peek[1] = 'tk_' .. math.floor(sig.tokens('g', k))\n"
             "      else peek[1] = 'st_' .. sig.state('g', k) end\n"
             "      return peek\n"
             "    end\n"
             "    return P\n"
             "  end,\n"
             "}\n",
             decl);
    rsl_test_write(dir, "p.lua", text);
}

#define BREAKER(extra)                                                                     \
    "r.breaker 'g' { window = '10s', buckets = 10, min_calls = 4, failure_rate = 50,\n"    \
    "  open_for = '1s', backoff = { factor = 2, max = '4s', jitter = 0 }, probes = 1,\n"   \
    "  key = '${tenant}', " extra " }"

/* The first step's outcome of one call for tenant (NULL: no tenant attribute). */
static rsl_outcome call(rsl_runtime *rt, const char *tenant, const char *fail) {
    rsl_req *req = rsl_req_new();
    if (tenant) {
        rsl_req_set(req, "tenant", tenant, strlen(tenant));
    }
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

/* What sig says of key ("" for the guard itself): the body of the stub the route chose. */
static char peeked[64];
static const char *peek(rsl_runtime *rt, const char *key, int limiter) {
    rsl_req *req = rsl_req_new();
    rsl_req_set(req, "peek", key, strlen(key));
    if (limiter) {
        rsl_req_set(req, "limiter", "1", 1);
    }
    rsl_result *r = NULL;
    int rc = rsl_call_sync(rt, "p", req, 5000000000LL, &r);
    rsl_req_free(req);
    if (rc != 0) {
        rsl_test_fail(__FILE__, __LINE__, "peek: %s", rsl_strerror(rc));
    }
    size_t len;
    const char *b = rsl_result_body(r, &len);
    snprintf(peeked, sizeof(peeked), "%.*s", (int)len, b);
    rsl_result_free(r);
    return peeked;
}

static char *state(rsl_runtime *rt) {
    char *s = rsl_state_json(rt);
    ASSERT(s != NULL);
    return s;
}

static void fails(rsl_runtime *rt, const char *tenant, int n) {
    for (int i = 0; i < n; i++) {
        ASSERT_EQ(call(rt, tenant, "1"), RSL_OUTCOME_5XX);
    }
}

TEST(per_key_isolation_and_sig) {
    const char *dir = rsl_test_tmpdir();
    write_policy(dir, BREAKER("max_keys = 100"));
    rsl_runtime *rt = open_dir(dir, 1);
    fails(rt, "A", 4); /* 100% of 4: A opens */
    ASSERT_EQ(call(rt, "A", "0"), RSL_OUTCOME_REJECTED);
    ASSERT_EQ(call(rt, "B", "0"), RSL_OUTCOME_OK); /* B is a guard of its own */
    ASSERT_EQ(call(rt, "B", "1"), RSL_OUTCOME_5XX);
    ASSERT_STR_EQ(peek(rt, "A", 0), "open");
    ASSERT_STR_EQ(peek(rt, "B", 0), "closed");
    ASSERT_STR_EQ(peek(rt, "never-seen", 0), "closed");
    ASSERT_STR_EQ(peek(rt, "", 0), "closed"); /* the guard as a whole: its override only */
    /* A request without the attribute has the key "": one guard for all of them. */
    fails(rt, NULL, 4);
    ASSERT_EQ(call(rt, NULL, "0"), RSL_OUTCOME_REJECTED);
    ASSERT_EQ(call(rt, "B", "0"), RSL_OUTCOME_OK);

    char *s = state(rt);
    ASSERT_CONTAINS(s, "\"g\":{\"kind\":\"breaker\",\"state\":\"closed\"");
    ASSERT_CONTAINS(s, "\"key\":\"${tenant}\",\"max_keys\":100,\"top_k\":10,\"keys\":3,"
                       "\"evictions\":0,\"overflow_calls\":0");
    ASSERT_CONTAINS(s, "{\"key\":\"A\",\"calls\":5,\"rejections\":1,\"state\":\"open\"}");
    ASSERT_CONTAINS(s, "{\"key\":\"B\",\"calls\":3,\"rejections\":0,\"state\":\"closed\"}");
    /* The key "" (no attribute) is not shown by name: it is in "other". */
    ASSERT_CONTAINS(s, "\"other\":{\"key\":\"other\",\"calls\":5,\"rejections\":1}");
    rsl_free(s);

    /* A's open period ends: one probe closes it. */
    advance_ms(1001);
    ASSERT_STR_EQ(peek(rt, "A", 0), "half_open");
    ASSERT_EQ(call(rt, "A", "0"), RSL_OUTCOME_OK);
    ASSERT_STR_EQ(peek(rt, "A", 0), "closed");
    rsl_close(rt);
}

TEST(lru_bound_and_eviction_order) {
    const char *dir = rsl_test_tmpdir();
    write_policy(dir, "r.limiter 'g' { rate = 1, per = '1s', burst = 2, key = '${tenant}',\n"
                      "  max_keys = 3 }");
    rsl_runtime *rt = open_dir(dir, 1);
    ASSERT_EQ(call(rt, "a", "0"), RSL_OUTCOME_OK);
    ASSERT_EQ(call(rt, "b", "0"), RSL_OUTCOME_OK);
    ASSERT_EQ(call(rt, "c", "0"), RSL_OUTCOME_OK);
    ASSERT_STR_EQ(peek(rt, "a", 1), "1"); /* a spent one of 2 */
    ASSERT_STR_EQ(peek(rt, "zz", 1), "2"); /* an unseen key: a full bucket */
    advance_ms(2000);                       /* every bucket full again: all may go */
    ASSERT_EQ(call(rt, "a", "0"), RSL_OUTCOME_OK); /* a is the most recent: b is the oldest */
    advance_ms(2000);
    ASSERT_EQ(call(rt, "d", "0"), RSL_OUTCOME_OK);
    char *s = state(rt);
    ASSERT_CONTAINS(s, "\"keys\":3,\"evictions\":1,\"overflow_calls\":0");
    ASSERT_CONTAINS(s, "{\"key\":\"a\",");
    ASSERT_CONTAINS(s, "{\"key\":\"c\",");
    ASSERT_CONTAINS(s, "{\"key\":\"d\",");
    ASSERT(strstr(s, "{\"key\":\"b\",") == NULL);
    rsl_free(s);

    /* 200 more keys, each bucket full again before the next: never more than 3. */
    for (int i = 0; i < 200; i++) {
        char k[16];
        snprintf(k, sizeof(k), "k%d", i);
        ASSERT_EQ(call(rt, k, "0"), RSL_OUTCOME_OK);
        advance_ms(2000);
    }
    s = state(rt);
    ASSERT_CONTAINS(s, "\"keys\":3,\"evictions\":201,\"overflow_calls\":0");
    rsl_free(s);

    /* A full bucket goes before a drained one, older or not: x drained, y and z not. */
    ASSERT_EQ(call(rt, "x", "0"), RSL_OUTCOME_OK);
    ASSERT_EQ(call(rt, "x", "0"), RSL_OUTCOME_OK);
    ASSERT_EQ(call(rt, "y", "0"), RSL_OUTCOME_OK);
    ASSERT_EQ(call(rt, "z", "0"), RSL_OUTCOME_OK);
    advance_ms(1000); /* y and z full again, x at 1 of 2 */
    ASSERT_EQ(call(rt, "new1", "0"), RSL_OUTCOME_OK); /* x is the oldest, y goes */
    ASSERT_EQ(call(rt, "x", "0"), RSL_OUTCOME_OK);
    ASSERT_EQ(call(rt, "x", "0"), RSL_OUTCOME_REJECTED); /* x kept its drained bucket */
    s = state(rt);
    ASSERT_CONTAINS(s, "\"keys\":3,\"evictions\":205,\"overflow_calls\":0");
    ASSERT(strstr(s, "{\"key\":\"y\",") == NULL);
    rsl_free(s);
    /* All three short of a full bucket: the oldest goes anyway (a limiter table never
     * overflows), and its key comes back with a full bucket. */
    ASSERT_EQ(call(rt, "z", "0"), RSL_OUTCOME_OK);
    ASSERT_EQ(call(rt, "new1", "0"), RSL_OUTCOME_OK); /* order: new1, z, x (the oldest) */
    ASSERT_EQ(call(rt, "new2", "0"), RSL_OUTCOME_OK);
    ASSERT_EQ(call(rt, "x", "0"), RSL_OUTCOME_OK); /* x again, afresh: evicts z */
    s = state(rt);
    ASSERT_CONTAINS(s, "\"keys\":3,\"evictions\":207,\"overflow_calls\":0");
    rsl_free(s);
    rsl_close(rt);
}

TEST(open_breaker_never_evicted) {
    const char *dir = rsl_test_tmpdir();
    write_policy(dir, BREAKER("max_keys = 2"));
    rsl_runtime *rt = open_dir(dir, 1);
    fails(rt, "A", 4);
    ASSERT_EQ(call(rt, "B", "0"), RSL_OUTCOME_OK);
    ASSERT_EQ(call(rt, "C", "0"), RSL_OUTCOME_OK); /* evicts B, the closed one */
    ASSERT_EQ(call(rt, "D", "0"), RSL_OUTCOME_OK); /* evicts C */
    ASSERT_STR_EQ(peek(rt, "A", 0), "open");
    ASSERT_EQ(call(rt, "A", "0"), RSL_OUTCOME_REJECTED);
    char *s = state(rt);
    ASSERT_CONTAINS(s, "\"keys\":2,\"evictions\":2,\"overflow_calls\":0");
    rsl_free(s);

    /* Both open (D: 3 failures after its ok, 75% of 4): a new key goes through the overflow
     * breaker; nothing is evicted. */
    fails(rt, "D", 3);
    ASSERT_EQ(call(rt, "E", "0"), RSL_OUTCOME_OK);
    ASSERT_EQ(call(rt, "A", "0"), RSL_OUTCOME_REJECTED);
    ASSERT_EQ(call(rt, "D", "0"), RSL_OUTCOME_REJECTED);
    s = state(rt);
    ASSERT_CONTAINS(s, "\"keys\":2,\"evictions\":2,\"overflow_calls\":1");
    rsl_free(s);

    /* Half-open is kept too; once A's probe closes it, A may go. */
    advance_ms(1001);
    ASSERT_EQ(call(rt, "A", "0"), RSL_OUTCOME_OK);
    ASSERT_EQ(call(rt, "F", "0"), RSL_OUTCOME_OK); /* D is half_open: A goes */
    ASSERT_STR_EQ(peek(rt, "D", 0), "half_open");
    s = state(rt);
    ASSERT_CONTAINS(s, "\"keys\":2,\"evictions\":3,\"overflow_calls\":1");
    rsl_free(s);
    rsl_close(rt);
}

TEST(reload_keeps_keys_and_new_template_resets) {
    const char *dir = rsl_test_tmpdir();
    write_policy(dir, BREAKER("max_keys = 100"));
    rsl_runtime *rt = open_dir(dir, 1);
    fails(rt, "A", 4);
    ASSERT_STR_EQ(peek(rt, "A", 0), "open");

    /* New thresholds, the same key: A stays open, and a closed key meets the new rate. */
    write_policy(dir, "r.breaker 'g' { window = '10s', buckets = 10, min_calls = 2,\n"
                      "  failure_rate = 100, open_for = '1s', backoff = { jitter = 0 },\n"
                      "  key = '${tenant}', max_keys = 50, top_k = 2 }");
    char err[1024];
    ASSERT_EQ(rsl_reload(rt, err, sizeof(err)), 0);
    char *s = state(rt);
    ASSERT_CONTAINS(s, "\"changed\":[\"g\"]");
    ASSERT_CONTAINS(s, "\"reset\":[]");
    ASSERT_CONTAINS(s, "\"max_keys\":50,\"top_k\":2,\"keys\":1");
    rsl_free(s);
    ASSERT_STR_EQ(peek(rt, "A", 0), "open");
    fails(rt, "B", 2); /* min_calls 2 now */
    ASSERT_STR_EQ(peek(rt, "B", 0), "open");

    /* The same again: kept. */
    ASSERT_EQ(rsl_reload(rt, err, sizeof(err)), 0);
    s = state(rt);
    ASSERT_CONTAINS(s, "\"kept\":[\"g\"]");
    rsl_free(s);

    /* Another template: a fresh table, reported as a reset. */
    write_policy(dir, "r.breaker 'g' { min_calls = 4, key = '${user}', max_keys = 100 }");
    ASSERT_EQ(rsl_reload(rt, err, sizeof(err)), 0);
    s = state(rt);
    ASSERT_CONTAINS(s, "\"reset\":[\"g\"]");
    ASSERT_CONTAINS(s, "\"key\":\"${user}\"");
    ASSERT_CONTAINS(s, "\"keys\":0");
    rsl_free(s);
    ASSERT_STR_EQ(peek(rt, "A", 0), "closed");

    /* No key any more: a plain breaker, again a reset. */
    write_policy(dir, "r.breaker 'g' { min_calls = 4 }");
    ASSERT_EQ(rsl_reload(rt, err, sizeof(err)), 0);
    s = state(rt);
    ASSERT_CONTAINS(s, "\"reset\":[\"g\"]");
    ASSERT(strstr(s, "\"max_keys\"") == NULL);
    rsl_free(s);
    rsl_close(rt);
}

TEST(override_covers_every_key) {
    const char *dir = rsl_test_tmpdir();
    write_policy(dir, BREAKER("max_keys = 100"));
    rsl_runtime *rt = open_dir(dir, 1);
    fails(rt, "A", 4);
    ASSERT_EQ(rsl_guard_override(rt, "g", RSL_OVERRIDE_FORCE_OPEN), 0);
    ASSERT_EQ(call(rt, "B", "0"), RSL_OUTCOME_REJECTED);
    ASSERT_STR_EQ(peek(rt, "B", 0), "forced_open");
    ASSERT_STR_EQ(peek(rt, "", 0), "forced_open");
    ASSERT_EQ(rsl_guard_override(rt, "g", RSL_OVERRIDE_DISABLE), 0);
    ASSERT_EQ(call(rt, "A", "1"), RSL_OUTCOME_5XX); /* passes, recorded nowhere */
    ASSERT_EQ(rsl_guard_override(rt, "g", RSL_OVERRIDE_AUTO), 0);
    ASSERT_STR_EQ(peek(rt, "A", 0), "open"); /* the keys kept their own states */
    ASSERT_EQ(call(rt, "B", "0"), RSL_OUTCOME_OK);
    ASSERT_EQ(rsl_guard_override(rt, "g", RSL_OVERRIDE_RESET), 0); /* forgets every key */
    ASSERT_STR_EQ(peek(rt, "A", 0), "closed");
    ASSERT_EQ(call(rt, "A", "0"), RSL_OUTCOME_OK);
    char *s = state(rt);
    ASSERT_CONTAINS(s, "\"keys\":1");
    rsl_free(s);
    rsl_close(rt);
}

/* Lines of text that start with prefix. */
static int count_lines(const char *text, const char *prefix) {
    int n = 0;
    size_t len = strlen(prefix);
    for (const char *p = text; p && *p;) {
        if (strncmp(p, prefix, len) == 0) {
            n++;
        }
        p = strchr(p, '\n');
        p = p ? p + 1 : NULL;
    }
    return n;
}

TEST(metrics_top_k_and_other) {
    const char *dir = rsl_test_tmpdir();
    write_policy(dir, "r.limiter 'g' { rate = 1, per = '1h', burst = 3, key = '${tenant}',\n"
                      "  max_keys = 1000, top_k = 3 }");
    rsl_runtime *rt = open_dir(dir, 1);
    /* Key t<i> gets i % 5 + 1 calls; 100 keys.  t4, t9, t14 ... get 5 (3 ok, 2 refused). */
    int total = 0;
    for (int i = 0; i < 100; i++) {
        char k[16];
        snprintf(k, sizeof(k), "t%d", i);
        for (int j = 0; j <= i % 5; j++) {
            call(rt, k, "0");
            total++;
        }
    }
    call(rt, "other", "0"); /* a key named "other" is never shown by name */
    total++;
    char *m = rsl_metrics_text(rt);
    ASSERT(m != NULL);
    ASSERT_EQ(count_lines(m, "resilua_keyed_calls_total{guard=\"g\""), 4);
    ASSERT_EQ(count_lines(m, "resilua_guard_rejections_total{guard=\"g\""), 4);
    /* Ties by key: t14, t19, t24 ("t14" < "t19" < "t24" < "t29" ... < "t4" < "t9"). */
    ASSERT_CONTAINS(m, "resilua_keyed_calls_total{guard=\"g\",key=\"t14\"} 5\n");
    ASSERT_CONTAINS(m, "resilua_keyed_calls_total{guard=\"g\",key=\"t19\"} 5\n");
    ASSERT_CONTAINS(m, "resilua_keyed_calls_total{guard=\"g\",key=\"t24\"} 5\n");
    char want[128];
    snprintf(want, sizeof(want), "resilua_keyed_calls_total{guard=\"g\",key=\"other\"} %d\n",
             total - 15);
    ASSERT_CONTAINS(m, want);
    ASSERT_CONTAINS(m, "resilua_guard_rejections_total{guard=\"g\",key=\"t14\"} 2\n");
    /* 20 keys with 5 calls and 20 with 4 each had their excess refused: 2*20 + 1*20. */
    ASSERT_CONTAINS(m, "resilua_guard_rejections_total{guard=\"g\",key=\"other\"} 54\n");
    ASSERT_CONTAINS(m, "resilua_keyed_keys{guard=\"g\"} 101\n");
    rsl_free(m);
    rsl_close(rt);

    /* A keyed breaker: 5 states for each of its top keys and "other". */
    write_policy(dir, BREAKER("max_keys = 100, top_k = 2"));
    rt = open_dir(dir, 1);
    for (int i = 0; i < 20; i++) {
        char k[16];
        snprintf(k, sizeof(k), "u%d", i);
        fails(rt, k, i < 5 ? 4 : 1); /* u0..u4 open */
    }
    m = rsl_metrics_text(rt);
    ASSERT(m != NULL);
    ASSERT_EQ(count_lines(m, "resilua_breaker_state{breaker=\"g\""), 3 * 5);
    ASSERT_EQ(count_lines(m, "resilua_breaker_state{breaker=\"g\",key=\"other\""), 5);
    ASSERT_CONTAINS(m, "resilua_breaker_state{breaker=\"g\",key=\"u0\",state=\"open\"} 1\n");
    ASSERT_CONTAINS(m, "resilua_breaker_state{breaker=\"g\",key=\"other\",state=\"open\"} 3\n");
    ASSERT_CONTAINS(m, "resilua_breaker_state{breaker=\"g\",key=\"other\",state=\"closed\"} 15\n");
    ASSERT_CONTAINS(m, "resilua_breaker_transitions_total{breaker=\"g\",key=\"other\","
                       "from=\"closed\",to=\"open\"} 3\n");
    ASSERT_EQ(count_lines(m, "resilua_guard_rejections_total{guard=\"g\""), 3);
    rsl_free(m);
    rsl_close(rt);
}

/* scope = "global" with key and no Redis: every key's child takes a lease of its own,
 * spends its first credit, goes down and refuses (on_redis_down = "closed"); the guard's
 * /state and /metrics show one mode and the sum of its keys' refusals, logged once; keys
 * evicted from a table of 2 free their leases (ASan); a reload with a new rate keeps the
 * keys; back to scope = "local" starts afresh. */
static int downs;
static void count_downs(void *ud, rsl_log_level level, const char *msg) {
    (void)ud;
    (void)level;
    downs += strstr(msg, "-> down") != NULL;
}

TEST(global_keys_each_their_lease) {
    const char *dir = rsl_test_tmpdir();
    write_policy(dir, "r.limiter 'g' { rate = 100, burst = 10, scope = 'global', lease = 3,\n"
                      "  on_redis_down = 'closed', key = '${tenant}', max_keys = 2 }");
    rsl_runtime *rt = open_dir_log(dir, 1, count_downs);
    char err[1024];
    /* The first call of a key spends its credit; its tend finds no Redis: down, closed. */
    ASSERT_EQ(call(rt, "a", "0"), RSL_OUTCOME_OK);
    ASSERT_EQ(call(rt, "a", "0"), RSL_OUTCOME_REJECTED);
    ASSERT_EQ(call(rt, "b", "0"), RSL_OUTCOME_OK); /* its own credit: its own lease */
    ASSERT_EQ(call(rt, "b", "0"), RSL_OUTCOME_REJECTED);
    ASSERT_STR_EQ(peek(rt, "c", 1), "3"); /* unseen: a whole lease's credit */
    for (int i = 0; i < 20; i++) { /* keys through a table of 2 */
        char k[16];
        snprintf(k, sizeof(k), "k%d", i);
        ASSERT_EQ(call(rt, k, "0"), RSL_OUTCOME_OK);
    }
    char *st = state(rt);
    ASSERT_CONTAINS(st, "\"scope\":\"global\",\"mode\":\"down\",\"refills\":0");
    ASSERT_CONTAINS(st, "\"rejections\":2");
    ASSERT_CONTAINS(st, "\"keys\":2");
    ASSERT(strstr(st, "\"evictions\":0") == NULL);
    rsl_free(st);
    ASSERT_EQ(downs, 1);
    char *m = rsl_metrics_text(rt);
    ASSERT(m != NULL);
    ASSERT_CONTAINS(m, "resilua_shared_mode{guard=\"g\",mode=\"down\"} 1\n");
    rsl_free(m);
    /* A new rate reaches the keys' leases; the table stays. */
    write_policy(dir, "r.limiter 'g' { rate = 50, burst = 10, scope = 'global', lease = 3,\n"
                      "  on_redis_down = 'closed', key = '${tenant}', max_keys = 2 }");
    ASSERT_EQ(rsl_reload(rt, err, sizeof(err)), 0);
    st = state(rt);
    ASSERT_CONTAINS(st, "\"keys\":2");
    rsl_free(st);
    /* Local again: the guard starts afresh, with full buckets and no leases. */
    write_policy(dir, "r.limiter 'g' { rate = 100, burst = 10, key = '${tenant}', max_keys = 2 }");
    ASSERT_EQ(rsl_reload(rt, err, sizeof(err)), 0);
    ASSERT_EQ(call(rt, "a", "0"), RSL_OUTCOME_OK);
    ASSERT_EQ(call(rt, "a", "0"), RSL_OUTCOME_OK);
    st = state(rt);
    ASSERT(strstr(st, "\"scope\":\"global\"") == NULL);
    ASSERT_CONTAINS(st, "\"keys\":1");
    rsl_free(st);
    rsl_close(rt);
}

TEST(dsl_errors) {
    static const struct {
        const char *decl, *want;
    } cases[] = {
        {"r.breaker 'g' { max_keys = 10 }", "p.lua:2: breaker \"g\": max_keys and top_k need key"},
        {"r.limiter 'g' { rate = 1, top_k = 3 }", "p.lua:2: limiter \"g\": max_keys and top_k need key"},
        {"r.breaker 'g' { key = 'tenant' }", "p.lua:2: breaker \"g\": key must name a request attribute"},
        {"r.breaker 'g' { key = 'a:${' }", "p.lua:2: breaker \"g\": key: \"${\" must be followed"},
        {"r.breaker 'g' { key = 42 }", "p.lua:2: breaker \"g\": key must be a template like"},
        {"r.breaker 'g' { key = '${t}', max_keys = 0 }", "p.lua:2: breaker \"g\": max_keys"},
        {"r.breaker 'g' { key = '${t}', max_keys = 1.5 }", "p.lua:2: breaker \"g\": max_keys"},
        {"r.limiter 'g' { rate = 1, key = '${t}', top_k = 101 }", "p.lua:2: limiter \"g\": top_k"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        const char *dir = rsl_test_tmpdir();
        write_policy(dir, cases[i].decl);
        char err[2048] = "";
        ASSERT(rsl_check(dir, NULL, err, sizeof(err)) != 0);
        ASSERT_CONTAINS(err, cases[i].want);
    }
}

/* Two host threads, 2 workers, a table of 8 keys for 64 tenants: keys are made, evicted
 * and found again while calls hold them; every call completes, nothing leaks (ASan), no
 * race (TSan). */
static rsl_runtime *shared_rt;
static _Atomic int completed;

static void *hammer(void *arg) {
    int id = (int)(intptr_t)arg;
    for (int i = 0; i < 2000; i++) {
        char k[16];
        snprintf(k, sizeof(k), "t%d", (i * 7 + id * 13) % 64);
        rsl_req *req = rsl_req_new();
        rsl_req_set(req, "tenant", k, strlen(k));
        rsl_req_set(req, "fail", i % 3 == 0 ? "1" : "0", 1);
        rsl_result *r = NULL;
        if (rsl_call_sync(shared_rt, "p", req, 10000000000LL, &r) == 0) {
            atomic_fetch_add(&completed, 1);
            rsl_result_free(r);
        }
        rsl_req_free(req);
        if (i % 100 == 0) {
            advance_ms(300);
        }
    }
    return NULL;
}

TEST(threads_through_a_small_table) {
    const char *dir = rsl_test_tmpdir();
    write_policy(dir, BREAKER("max_keys = 8"));
    shared_rt = open_dir(dir, 2);
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        ASSERT_EQ(pthread_create(&t[i], NULL, hammer, (void *)(intptr_t)i), 0);
    }
    for (int i = 0; i < 3; i++) { /* scrapes meanwhile */
        char *m = rsl_metrics_text(shared_rt);
        char *s = rsl_state_json(shared_rt);
        ASSERT(m && s);
        rsl_free(m);
        rsl_free(s);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
    }
    ASSERT_EQ(atomic_load(&completed), 4000);
    char *s = state(shared_rt);
    const char *k = strstr(s, "\"keys\":");
    ASSERT(k != NULL);
    int keys = atoi(k + 7);
    ASSERT(keys >= 1 && keys <= 8);
    rsl_free(s);
    rsl_close(shared_rt);
}
