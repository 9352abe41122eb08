/*
 * A global limiter (scope = "global", lease.h) shared through a real redis-server: two
 * runtimes in this process stand for two instances, each with its own Redis connections
 * and its own instance id.
 *
 *   - hammered from both for ~2 s, the fleet admits at most rate x T + burst + instances x
 *     lease and most of rate x T; both learn that there are 2 instances;
 *   - Redis killed mid-run: no call waits on it (each decision is local), the guard goes
 *     down and decides at rate / instances, and rejoins once Redis is restarted;
 *   - Redis stopped (SIGSTOP): the same, by the refill's timeout;
 *   - on_redis_down = "closed" refuses and "open" admits while Redis is gone; with no
 *     Redis at all the guard is down from its first call, and says why.
 *
 * Real clocks, so the bounds are the bucket's (a fleet cannot get more than Redis grants),
 * not a speed; every loop is bounded in calls and time.
 */
// ctest-labels: io;tsan
#include "redis_server.h"
#include "resilua.h"
#include "test.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define S 1000000000LL

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static const char *password; /* rsl_options.redis_password for the next open_rt */

static rsl_runtime *open_rt(const char *dir, int port, const char *text) {
    rsl_test_write(dir, "p.lua", text);
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    o.workers = 2;
    o.otlp_endpoint = "";
    char redis[64];
    snprintf(redis, sizeof(redis), "127.0.0.1:%d", port);
    o.redis = port ? redis : NULL;
    o.redis_prefix = "test:";
    o.redis_password = password;
    rsl_runtime *rt = NULL;
    char err[1024];
    int rc = rsl_open(&rt, &o, err, sizeof(err));
    if (rc) {
        printf("  %s\n", err);
    }
    ASSERT_EQ(rc, 0);
    return rt;
}

/* The guard's field from /state, as a string ("" when absent). */
static void state_field(rsl_runtime *rt, const char *field, char *out, size_t cap) {
    char *st = rsl_state_json(rt);
    char want[64];
    snprintf(want, sizeof(want), "\"%s\":", field);
    const char *p = st ? strstr(st, want) : NULL;
    size_t n = 0;
    if (p) {
        p += strlen(want);
        if (*p == '"') {
            p++;
        }
        while (p[n] && p[n] != '"' && p[n] != ',' && p[n] != '}' && n + 1 < cap) {
            n++;
        }
        memcpy(out, p, n);
    }
    out[n] = 0;
    rsl_free(st);
}

static int mode_is(rsl_runtime *rt, const char *mode) {
    char m[32];
    state_field(rt, "mode", m, sizeof(m));
    return strcmp(m, mode) == 0;
}

/* One call: 1 ok, 0 rejected; its wall time into *ms. */
static int call_once(rsl_runtime *rt, double *ms) {
    double t0 = now_ms();
    rsl_result *r = NULL;
    ASSERT_EQ(rsl_call_sync(rt, "p", NULL, 10 * S, &r), 0);
    int ok = rsl_result_outcome(r) == RSL_OUTCOME_OK;
    if (!ok) {
        ASSERT_EQ(rsl_result_outcome(r), RSL_OUTCOME_REJECTED);
    }
    rsl_result_free(r);
    if (ms) {
        *ms = now_ms() - t0;
    }
    return ok;
}

#define POLICY(rate, burst, lease, down)                                                           \
    "local r = require 'resilua'\n"                                                                \
    "r.limiter 'partner' { rate = " rate ", per = '1s', burst = " burst                            \
    ", scope = 'global', lease = " lease ", on_redis_down = '" down "' }\n"                        \
    "r.policy 'p' { steps = { s = r.stub { body = 'ok', guards = { 'partner' } } } }\n"

/* Calls until `mode` shows (or n calls), none slower than what the caller may wait. */
static int until_mode(rsl_runtime *rt, const char *mode, int n, double *worst) {
    for (int i = 0; i < n; i++) {
        double ms;
        call_once(rt, &ms);
        *worst = ms > *worst ? ms : *worst;
        if (mode_is(rt, mode)) {
            return 1;
        }
        usleep(2000);
    }
    return 0;
}

typedef struct hammer_arg {
    rsl_runtime *rt;
    double until;
    int calls, admitted;
    double worst_ms;
} hammer_arg;

static void *hammer(void *p) {
    hammer_arg *a = p;
    while (now_ms() < a->until && a->calls < 200000) {
        double ms;
        a->admitted += call_once(a->rt, &ms);
        a->calls++;
        a->worst_ms = ms > a->worst_ms ? ms : a->worst_ms;
    }
    return NULL;
}

TEST(the_fleet_admits_what_redis_grants) {
    rsl_redis_server s;
    ASSERT(rsl_redis_start(&s) == 0);
    rsl_runtime *a = open_rt(rsl_test_tmpdir(), s.port, POLICY("200", "20", "10", "local"));
    rsl_runtime *b = open_rt(rsl_test_tmpdir(), s.port, POLICY("200", "20", "10", "local"));
    /* Both joined (a lease is asked for by calls: bounded polls that call). */
    double worst = 0;
    ASSERT(until_mode(a, "joined", 2000, &worst));
    ASSERT(until_mode(b, "joined", 2000, &worst));
    double t0 = now_ms();
    hammer_arg args[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (hammer_arg){i < 2 ? a : b, t0 + 2000, 0, 0, 0};
        pthread_create(&th[i], NULL, hammer, &args[i]);
    }
    int calls = 0, admitted = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        calls += args[i].calls;
        admitted += args[i].admitted;
    }
    double secs = (now_ms() - t0) / 1e3;
    char inst[16];
    state_field(a, "instances", inst, sizeof(inst));
    double bound = 200 * secs + 20 + 2 * 10;
    printf("  %.2f s: %d calls, %d admitted (%.1f%% of rate x T = %.0f; bound %.0f), "
           "instances %s\n",
           secs, calls, admitted, 100.0 * admitted / (200 * secs), 200 * secs, bound, inst);
    ASSERT(calls > admitted * 2); /* it was really limiting */
    ASSERT(admitted <= bound);
    ASSERT(admitted >= 0.8 * 200 * secs);
    ASSERT_STR_EQ(inst, "2");
    rsl_close(a);
    rsl_close(b);
    rsl_redis_stop(&s);
}

/* Redis killed (stop 0) or stopped (stop 1) under calls: the guard goes down (at once on
 * the lost connection; by the 250 ms timeout when Redis stops answering), decides by its
 * on_redis_down ("local" when killed, "closed" when stopped), and rejoins once Redis is
 * back; no call waits on Redis meanwhile. */
static void down_and_back(int stop) {
    rsl_redis_server s;
    ASSERT(rsl_redis_start(&s) == 0);
    rsl_runtime *a = open_rt(rsl_test_tmpdir(), s.port,
                             stop ? POLICY("1000", "100", "10", "closed")
                                  : POLICY("1000", "100", "10", "local"));
    double worst = 0;
    ASSERT(until_mode(a, "joined", 2000, &worst));
    if (stop) {
        rsl_redis_pause(&s);
    } else {
        rsl_redis_kill(&s);
    }
    ASSERT(until_mode(a, "down", 3000, &worst));
    int ok = 0;
    for (int i = 0; i < 20; i++) {
        ok += call_once(a, NULL);
    }
    if (stop) { /* "closed": refused, and why */
        ASSERT_EQ(ok, 0);
        rsl_result *r = NULL;
        ASSERT_EQ(rsl_call_sync(a, "p", NULL, 10 * S, &r), 0);
        rsl_path_entry e;
        rsl_result_path(r, 0, &e);
        ASSERT_CONTAINS(e.error, "on_redis_down is \"closed\"");
        rsl_result_free(r);
        rsl_redis_resume(&s);
    } else { /* "local": rate / instances (1 here) */
        ASSERT(ok > 0);
        ASSERT(rsl_redis_restart(&s) == 0);
    }
    char errs[32];
    state_field(a, "redis_errors", errs, sizeof(errs));
    ASSERT(atoi(errs) >= 1);
    ASSERT(until_mode(a, "joined", 5000, &worst));
    printf("  slowest call throughout: %.1f ms\n", worst);
    ASSERT(worst < 1000); /* a call waiting on a stopped Redis would wait its 10 s */
    char *d = rsl_describe_json(a);
    ASSERT_CONTAINS(d, stop ? "\"scope\":\"global\",\"lease\":10,\"on_redis_down\":\"closed\""
                            : "\"scope\":\"global\",\"lease\":10,\"on_redis_down\":\"local\"");
    rsl_free(d);
    char *m = rsl_metrics_text(a);
    ASSERT_CONTAINS(m, "resilua_shared_mode{guard=\"partner\",mode=\"joined\"} 1\n");
    ASSERT_CONTAINS(m, "resilua_redis_errors_total{guard=\"partner\"} ");
    rsl_free(m);
    rsl_close(a);
    rsl_redis_stop(&s);
}

TEST(redis_killed_then_restarted) {
    down_and_back(0);
}

TEST(redis_stopped_then_resumed) {
    down_and_back(1);
}

TEST(open_and_no_redis) {
    /* No Redis configured: down from the first call, "open" admits everything. */
    rsl_runtime *a = open_rt(rsl_test_tmpdir(), 0, POLICY("1", "1", "1", "open"));
    double worst = 0;
    ASSERT(until_mode(a, "down", 100, &worst));
    int ok = 0;
    for (int i = 0; i < 50; i++) {
        ok += call_once(a, NULL);
    }
    ASSERT_EQ(ok, 50);
    rsl_close(a);
    /* "local" with no Redis: rate / 1, so a burst of 1 is one call. */
    a = open_rt(rsl_test_tmpdir(), 0, POLICY("1", "1", "1", "local"));
    ASSERT(until_mode(a, "down", 100, &worst));
    ok = 0;
    for (int i = 0; i < 10; i++) {
        ok += call_once(a, NULL);
    }
    ASSERT(ok <= 2);
    rsl_close(a);
}

/* AUTH: from the options, from the environment; a wrong password keeps the guard down
 * (the refused AUTH drops each connection) and never reaches the log. */
static char logged[4096];
static pthread_mutex_t log_m = PTHREAD_MUTEX_INITIALIZER;

static void on_log(void *ud, rsl_log_level level, const char *msg) {
    (void)ud;
    (void)level;
    pthread_mutex_lock(&log_m);
    size_t l = strlen(logged);
    snprintf(logged + l, sizeof(logged) - l, "%s\n", msg);
    pthread_mutex_unlock(&log_m);
}

TEST(auth_from_the_options_or_the_environment) {
    rsl_redis_server s;
    ASSERT(rsl_redis_start(&s) == 0);
    char out[64];
    ASSERT_EQ(rsl_redis_cmd(&s, "CONFIG SET requirepass s3cret", out, sizeof(out)), 0);
    double worst = 0;
    password = "s3cret";
    rsl_runtime *a = open_rt(rsl_test_tmpdir(), s.port, POLICY("1000", "100", "10", "local"));
    ASSERT(until_mode(a, "joined", 2000, &worst));
    rsl_close(a);
    password = NULL;
    setenv("RESILUA_REDIS_PASSWORD", "s3cret", 1);
    a = open_rt(rsl_test_tmpdir(), s.port, POLICY("1000", "100", "10", "local"));
    ASSERT(until_mode(a, "joined", 2000, &worst));
    rsl_close(a);
    unsetenv("RESILUA_REDIS_PASSWORD");
    /* A wrong one: down, and the log says AUTH was refused, without the password. */
    const char *dir = rsl_test_tmpdir();
    rsl_test_write(dir, "p.lua", POLICY("1000", "100", "10", "local"));
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    o.otlp_endpoint = "";
    char redis[64];
    snprintf(redis, sizeof(redis), "127.0.0.1:%d", s.port);
    o.redis = redis;
    o.redis_password = "wrong-pw";
    o.log = on_log;
    ASSERT_EQ(rsl_open(&a, &o, NULL, 0), 0);
    ASSERT(until_mode(a, "down", 2000, &worst));
    rsl_close(a);
    pthread_mutex_lock(&log_m);
    ASSERT_CONTAINS(logged, "AUTH refused");
    ASSERT(!strstr(logged, "wrong-pw"));
    /* Once per worker connection, not once per retry; no "connection lost" beside it. */
    int refusals = 0;
    for (const char *p = logged; (p = strstr(p, "AUTH refused")) != NULL; p++) {
        refusals++;
    }
    ASSERT(refusals >= 1 && refusals <= 2); /* 2 workers */
    ASSERT(!strstr(logged, "connection lost"));
    pthread_mutex_unlock(&log_m);
    rsl_redis_stop(&s);
}

TEST(bad_settings_at_file_line) {
    const char *dir = rsl_test_tmpdir();
    const char *bad[][2] = {
        {"r.limiter 'l' { rate = 10, scope = 'fleet' }",
         "p.lua:2: limiter \"l\": scope must be one of \"local\", \"global\""},
        {"r.limiter 'l' { rate = 10, burst = 5, scope = 'global', lease = 6 }",
         "p.lua:2: limiter \"l\": lease must be at most burst"},
        {"r.limiter 'l' { rate = 10, lease = 6 }",
         "p.lua:2: limiter \"l\": lease and on_redis_down need scope = \"global\""},
        {"r.limiter 'l' { rate = 10, scope = 'global', on_redis_down = 'maybe' }",
         "p.lua:2: limiter \"l\": on_redis_down must be one of"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char text[512];
        snprintf(text, sizeof(text), "local r = require 'resilua'\n%s\n", bad[i][0]);
        rsl_test_write(dir, "p.lua", text);
        rsl_options o;
        rsl_options_init(&o);
        o.policy_dir = dir;
        o.otlp_endpoint = "";
        rsl_runtime *rt = NULL;
        char err[1024];
        ASSERT_EQ(rsl_open(&rt, &o, err, sizeof(err)), RSL_ELOAD);
        ASSERT_CONTAINS(err, bad[i][1]);
    }
}
