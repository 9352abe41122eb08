/*
 * Client-side throttling (throttle.h) on an injected clock: the SRE formula against
 * hand-computed values, min_requests, the max_p cap, accepts credited to the bucket the
 * attempt started in (and dropped once that bucket has moved on), the window forgetting,
 * a fixed seed giving the same refusals; through a policy: retries counted as requests,
 * refusals as the outcome `rejected` with the throttle's reason, 4xx answers as accepts,
 * /state's counts, and bad settings refused at file:line.
 */
// ctest-labels: tsan
#include "clock.h"
#include "resilua.h"
#include "test.h"
#include "fake_clock.h"
#include "throttle.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#define S 1000000000LL
#define T0 (1000 * S)

static rsl__throttle *make(double k, int64_t min_requests, double max_p) {
    rsl__throttle_conf c;
    rsl__throttle_conf_default(&c);
    c.k = k;
    c.min_requests = min_requests;
    c.max_p = max_p;
    rsl__throttle *t = rsl__throttle_new("t", &c);
    ASSERT(t != NULL);
    return t;
}

/* n requests at `now`, the first `accepted` of them accepted (nothing refused: p is 0
 * while requests < min_requests, which the caller arranges). */
static void feed(rsl__throttle *t, int64_t now, int n, int accepted) {
    for (int i = 0; i < n; i++) {
        uint32_t tag;
        uint8_t slot;
        ASSERT_EQ(rsl__throttle_allow(t, now, &tag, &slot), 1);
        if (i < accepted) {
            rsl__throttle_accept(t, tag, slot);
        }
    }
}

static void set_min(rsl__throttle *t, int64_t min_requests, double max_p) {
    rsl__throttle_conf c;
    rsl__throttle_conf_get(t, &c);
    c.min_requests = min_requests;
    c.max_p = max_p;
    ASSERT_EQ(rsl__throttle_configure(t, &c), 0); /* same window: the counts stay */
}

TEST(the_formula_min_requests_and_max_p) {
    rsl__throttle *t = make(2, 1000000, 1);
    feed(t, T0, 100, 40);
    int64_t r, a;
    rsl__throttle_counts(t, T0, &r, &a);
    ASSERT_EQ(r, 100);
    ASSERT_EQ(a, 40);
    ASSERT_NEAR(rsl__throttle_p(t, T0), 0, 1e-12); /* under min_requests */
    set_min(t, 20, 1);
    ASSERT_NEAR(rsl__throttle_p(t, T0), (100.0 - 2 * 40) / 101, 1e-12); /* 0.198 */
    feed(t, T0, 0, 0);
    set_min(t, 101, 1);
    ASSERT_NEAR(rsl__throttle_p(t, T0), 0, 1e-12);
    /* k = 2 and half accepted: (100 - 100) / 101 = 0; fewer accepts: more refused. */
    rsl__throttle_free(t);
    t = make(2, 1000000, 1);
    feed(t, T0, 100, 0);
    set_min(t, 20, 1);
    ASSERT_NEAR(rsl__throttle_p(t, T0), 100.0 / 101, 1e-12);
    set_min(t, 20, 0.9);
    ASSERT_NEAR(rsl__throttle_p(t, T0), 0.9, 1e-12); /* capped */
    rsl__throttle_free(t);
    t = make(2, 1000000, 1);
    feed(t, T0, 100, 50);
    set_min(t, 20, 1);
    ASSERT_NEAR(rsl__throttle_p(t, T0), 0, 1e-12);
    rsl__throttle_free(t);
}

TEST(accepts_go_to_the_bucket_the_attempt_started_in) {
    rsl__throttle *t = make(2, 1000000, 1); /* 2 min window: 24 buckets of 5 s */
    uint32_t tag;
    uint8_t slot;
    ASSERT_EQ(rsl__throttle_allow(t, T0 + 4 * S, &tag, &slot), 1);
    /* The answer comes 3 s later, in the next bucket: credited to the first one. */
    feed(t, T0 + 7 * S, 1, 0);
    rsl__throttle_accept(t, tag, slot);
    int64_t r, a;
    rsl__throttle_counts(t, T0 + 7 * S, &r, &a);
    ASSERT_EQ(r, 2);
    ASSERT_EQ(a, 1);
    /* An answer so late that its bucket has been reused (a whole window on): dropped. */
    ASSERT_EQ(rsl__throttle_allow(t, T0 + 10 * S, &tag, &slot), 1);
    feed(t, T0 + 10 * S + 120 * S, 1, 0); /* same slot, a later epoch */
    rsl__throttle_accept(t, tag, slot);
    rsl__throttle_counts(t, T0 + 10 * S + 120 * S, &r, &a);
    ASSERT_EQ(r, 1);
    ASSERT_EQ(a, 0);
    /* The window forgets: 2 min after the last request nothing is left. */
    rsl__throttle_counts(t, T0 + 10 * S + 241 * S, &r, &a);
    ASSERT_EQ(r, 0);
    ASSERT_EQ(a, 0);
    rsl__throttle_free(t);
}

/* The refusals of 200 attempts with nothing ever accepted, as a bit string. */
static void refusals(uint64_t seed, char out[201]) {
    rsl__rand_seed(seed);
    rsl__throttle *t = make(2, 20, 0.9);
    for (int i = 0; i < 200; i++) {
        uint32_t tag;
        uint8_t slot;
        out[i] = rsl__throttle_allow(t, T0, &tag, &slot) ? '.' : 'x';
    }
    out[200] = 0;
    rsl__throttle_free(t);
}

TEST(a_fixed_seed_gives_the_same_refusals) {
    char a[201], b[201], c[201];
    refusals(7, a);
    refusals(7, b);
    refusals(8, c);
    ASSERT_STR_EQ(a, b);
    ASSERT(strcmp(a, c) != 0);
    /* None before min_requests; then about max_p of them (p is capped at 0.9). */
    ASSERT(strncmp(a, "...................", 19) == 0);
    int x = 0;
    for (int i = 100; i < 200; i++) {
        x += a[i] == 'x';
    }
    ASSERT(x >= 75 && x <= 100);
}

static rsl_runtime *open_policy(const char *dir, const char *text, char *err, size_t errlen,
                                int *rc) {
    rsl_test_write(dir, "p.lua", text);
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    o.clock = fake_clock;
    o.seed = 3;
    o.otlp_endpoint = "";
    rsl_runtime *rt = NULL;
    *rc = rsl_open(&rt, &o, err, errlen);
    return rt;
}

/* One call of p with code=CODE: the first step's outcome and error. */
static rsl_outcome call(rsl_runtime *rt, const char *code, char *error, size_t n) {
    rsl_req *req = rsl_req_new();
    rsl_req_set(req, "code", code, strlen(code));
    rsl_result *r = NULL;
    ASSERT_EQ(rsl_call_sync(rt, "p", req, 5 * S, &r), 0);
    rsl_req_free(req);
    rsl_path_entry e;
    rsl_result_path(r, 0, &e);
    snprintf(error, n, "%s", e.error ? e.error : "");
    rsl_outcome o = e.outcome;
    rsl_result_free(r);
    return o;
}

TEST(through_a_policy) {
    char err[1024];
    int rc;
    rsl_runtime *rt = open_policy(
        rsl_test_tmpdir(),
        "local r = require 'resilua'\n"
        "r.throttle 'ads' { k = 2, window = '2m', min_requests = 20, max_p = 0.9 }\n"
        "r.policy 'p' {\n"
        "  steps = {\n"
        "    primary = r.lua { run = function(req) return { status = tonumber(req.code) } end,\n"
        "      guards = { 'ads' }, retry = { attempts = 2, base = '1ms', max = '1ms',\n"
        "      on = { '5xx' } } },\n"
        "    stub = r.stub { status = 200, body = 'stub' },\n"
        "  },\n"
        "  chain = { 'primary', 'stub' },\n"
        "}\n",
        err, sizeof(err), &rc);
    ASSERT_EQ(rc, 0);
    char e[256];
    /* 4xx answers are accepts: no refusals however many. */
    for (int i = 0; i < 30; i++) {
        ASSERT_EQ(call(rt, "404", e, sizeof(e)), RSL_OUTCOME_4XX);
    }
    /* 503s, each call two attempts (the retry is a request too), until one is refused. */
    int refused = 0;
    for (int i = 0; i < 200 && !refused; i++) {
        if (call(rt, "503", e, sizeof(e)) == RSL_OUTCOME_REJECTED) {
            refused = 1;
            ASSERT_CONTAINS(e, "throttle \"ads\" refused it locally (client-side throttling)");
        }
    }
    ASSERT(refused);
    char *st = rsl_state_json(rt);
    ASSERT_CONTAINS(st, "\"ads\":{\"kind\":\"throttle\",\"requests\":");
    ASSERT_CONTAINS(st, "\"accepts\":30,");
    rsl_free(st);
    rsl_close(rt);
}

TEST(bad_settings_at_file_line) {
    char err[1024];
    int rc;
    rsl_runtime *rt = open_policy(rsl_test_tmpdir(),
                                  "local r = require 'resilua'\n"
                                  "r.throttle 'ads' { k = 1 }\n"
                                  "r.policy 'p' { steps = { s = r.stub { status = 200,\n"
                                  "  guards = { 'ads' } } } }\n",
                                  err, sizeof(err), &rc);
    ASSERT_EQ(rc, RSL_ELOAD);
    ASSERT(rt == NULL);
    ASSERT_CONTAINS(err, "p.lua:2: throttle \"ads\": k must be > 1, got 1");
    rt = open_policy(rsl_test_tmpdir(),
                     "local r = require 'resilua'\n"
                     "r.throttle 'ads' { max_p = 2, window = '1s' }\n",
                     err, sizeof(err), &rc);
    ASSERT_EQ(rc, RSL_ELOAD);
    ASSERT_CONTAINS(err, "p.lua:2: throttle \"ads\": max_p must be in 0..1, got 2");
}

/* Two threads through one throttle: counts add up, nothing torn (TSan). */
static rsl__throttle *shared;

static void *hammer(void *arg) {
    for (int i = 0; i < 20000; i++) {
        uint32_t tag;
        uint8_t slot;
        if (rsl__throttle_allow(shared, T0 + (int64_t)i * 1000, &tag, &slot) && (i & 1)) {
            rsl__throttle_accept(shared, tag, slot);
        }
    }
    return arg;
}

TEST(two_threads) {
    shared = make(2, 1000000000, 1);
    pthread_t a, b;
    pthread_create(&a, NULL, hammer, NULL);
    pthread_create(&b, NULL, hammer, NULL);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    int64_t r, acc;
    rsl__throttle_counts(shared, T0 + 20000LL * 1000, &r, &acc);
    ASSERT_EQ(r, 40000);
    ASSERT_EQ(acc, 20000);
    rsl__throttle_free(shared);
}
