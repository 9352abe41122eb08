/*
 * bench_shared -- a global limiter's decisions per second on one instance (one runtime,
 * one worker, a real redis-server on loopback), next to, in the same run:
 *   - the same policy with a local limiter (the target: >= 0.8 of it);
 *   - one EVALSHA of the same token-bucket script per call, through an r.redis step (the
 *     target: >= 10x its rate);
 * and the Redis commands the global limiter sent per 1,000 decisions (so, at 50k calls/s,
 * per second).  Calls are rsl_call from 2 host threads, at most 256 in flight each, every
 * one admitted (the rates are far above what is offered).
 *
 * Then Redis commands per second of one instance at 50k calls/s: one host thread paces
 * rsl_call at 50,000 a second for 3 s (at most 4,096 in flight) through a fresh runtime
 * (1 worker) whose one policy has a stub behind a local breaker, a shared breaker
 * (shared = { quorum = 2, flush = "100ms" }) or a global limiter (lease 50, every call
 * admitted), in 3 interleaved rounds.  Redis' own INFO commandstats, before and after,
 * counts what reached it: the EVALs the instance sent (its round trips) and every command
 * Redis ran, those inside the scripts included (the bench's INFOs left out).  Also the
 * shared breaker idle (its flushes alone), and the process's CPU time per call at 50k/s
 * (getrusage: the pacing thread and the worker; a median of 3 rounds, so a ~0.1 us
 * difference is within its noise).
 *
 * Usage: bench_shared [--smoke]
 */
#include "bench.h"
#include "resilua.h"

#include "../redis_server.h"
#include "lease.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define WINDOW 256
#define ROUNDS 5

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct host {
    rsl_runtime *rt;
    const char *policy;
    long calls;
    _Atomic long done, ok;
    pthread_mutex_t m;
    pthread_cond_t cv;
} host;

static void on_done(const rsl_result *r, void *ud) {
    host *h = ud;
    if (rsl_result_outcome(r) == RSL_OUTCOME_OK) {
        atomic_fetch_add(&h->ok, 1);
    }
    pthread_mutex_lock(&h->m);
    atomic_fetch_add(&h->done, 1);
    pthread_cond_signal(&h->cv);
    pthread_mutex_unlock(&h->m);
}

static void *drive(void *arg) {
    host *h = arg;
    for (long i = 0; i < h->calls; i++) {
        pthread_mutex_lock(&h->m);
        while (i - atomic_load(&h->done) >= WINDOW) {
            pthread_cond_wait(&h->cv, &h->m);
        }
        pthread_mutex_unlock(&h->m);
        if (rsl_call(h->rt, h->policy, NULL, on_done, h) != 0) {
            fprintf(stderr, "bench_shared: rsl_call failed\n");
            exit(1);
        }
    }
    pthread_mutex_lock(&h->m);
    while (atomic_load(&h->done) < h->calls) {
        pthread_cond_wait(&h->cv, &h->m);
    }
    pthread_mutex_unlock(&h->m);
    return NULL;
}

/* Calls/s of `policy` from 2 host threads; the calls answered ok into *ok. */
static double rate(rsl_runtime *rt, const char *policy, long per_host, long *ok) {
    host h[2];
    pthread_t t[2];
    double t0 = now_s();
    for (int i = 0; i < 2; i++) {
        h[i].rt = rt;
        h[i].policy = policy;
        h[i].calls = per_host;
        atomic_init(&h[i].done, 0);
        atomic_init(&h[i].ok, 0);
        pthread_mutex_init(&h[i].m, NULL);
        pthread_cond_init(&h[i].cv, NULL);
        pthread_create(&t[i], NULL, drive, &h[i]);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
    }
    double secs = now_s() - t0;
    *ok = atomic_load(&h[0].ok) + atomic_load(&h[1].ok);
    for (int i = 0; i < 2; i++) {
        pthread_mutex_destroy(&h[i].m);
        pthread_cond_destroy(&h[i].cv);
    }
    return (double)(2 * per_host) / secs;
}

static rsl_runtime *open_rt(const char *dir, int port) {
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    o.redis = addr;
    o.redis_prefix = "bench:";
    o.otlp_endpoint = "";
    rsl_runtime *rt = NULL;
    char err[2048];
    if (rsl_open(&rt, &o, err, sizeof(err)) != 0) {
        fprintf(stderr, "bench_shared: %s\n", err);
        exit(1);
    }
    return rt;
}

static void write_file(const char *dir, const char *text) {
    char path[512];
    snprintf(path, sizeof(path), "%s/p.lua", dir);
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        fprintf(stderr, "bench_shared: cannot write %s\n", path);
        exit(1);
    }
}

/* A field of the guard in /state ("refills", "granted"). */
static long field(rsl_runtime *rt, const char *guard, const char *name) {
    char *st = rsl_state_json(rt);
    char want[128], key[64];
    snprintf(want, sizeof(want), "\"%s\":{", guard);
    snprintf(key, sizeof(key), "\"%s\":", name);
    const char *p = st ? strstr(st, want) : NULL;
    p = p ? strstr(p, key) : NULL;
    long v = p ? atol(p + strlen(key)) : -1;
    rsl_free(st);
    return v;
}

/* ---- Redis commands at a paced 50k calls/s ---- */

#define PACE_RATE     50000.0
#define PACE_INFLIGHT 4096

typedef struct paced {
    _Atomic long done, ok;
} paced;

static void on_paced(const rsl_result *r, void *ud) {
    paced *p = ud;
    if (rsl_result_outcome(r) == RSL_OUTCOME_OK) {
        atomic_fetch_add(&p->ok, 1);
    }
    atomic_fetch_add(&p->done, 1);
}

static double cpu_s(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_utime.tv_sec + (double)u.ru_utime.tv_usec / 1e6 +
           (double)u.ru_stime.tv_sec + (double)u.ru_stime.tv_usec / 1e6;
}

static void sleep_us(long us) {
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

/* What Redis ran so far, from INFO commandstats: EVAL and EVALSHA calls into *eval, every
 * command but INFO into *all (commands that scripts run are counted too). */
static void redis_counts(rsl_redis_server *rs, long *eval, long *all) {
    static char buf[1 << 15];
    *eval = *all = 0;
    if (rsl_redis_cmd(rs, "INFO commandstats", buf, sizeof(buf)) != 0) {
        fprintf(stderr, "bench_shared: INFO commandstats failed\n");
        exit(1);
    }
    for (char *l = strstr(buf, "cmdstat_"); l; l = strstr(l + 1, "cmdstat_")) {
        char name[64];
        long calls;
        if (sscanf(l, "cmdstat_%63[^:]:calls=%ld", name, &calls) != 2) {
            continue;
        }
        if (strcmp(name, "info") != 0) {
            *all += calls;
        }
        if (strcmp(name, "eval") == 0 || strcmp(name, "evalsha") == 0) {
            *eval += calls;
        }
    }
}

/* 1 once guard `name` of rt shows "mode":"joined" in /state (bounded: 10 s).  policy:
 * one call of it per poll (a global limiter asks Redis only after a call), or NULL. */
static int until_joined(rsl_runtime *rt, const char *name, const char *policy) {
    char want[128];
    snprintf(want, sizeof(want), "\"%s\":{", name);
    for (int i = 0; i < 500; i++) {
        rsl_result *r = NULL;
        if (policy && rsl_call_sync(rt, policy, NULL, 1000000000LL, &r) != 0) {
            fprintf(stderr, "bench_shared: rsl_call_sync failed\n");
            exit(1);
        }
        rsl_result_free(r);
        char *st = rsl_state_json(rt);
        const char *p = st ? strstr(st, want) : NULL;
        const char *m = p ? strstr(p, "\"mode\":\"") : NULL;
        int joined = m && strncmp(m + 8, "joined\"", 7) == 0;
        rsl_free(st);
        if (joined) {
            return 1;
        }
        sleep_us(20000);
    }
    char *st = rsl_state_json(rt);
    fprintf(stderr, "bench_shared: %s did not join: %s\n", name, st ? st : "");
    rsl_free(st);
    return 0;
}

typedef struct pace_fig {
    double calls_s, ok_frac, eval_s, all_s, cpu_us;
} pace_fig;

/* `policy` of rt at PACE_RATE calls/s for `secs` from this thread; Redis' counts around
 * it.  Waits (bounded) for every call's answer before it reads them. */
static pace_fig pace(rsl_runtime *rt, rsl_redis_server *rs, const char *policy, double secs) {
    paced p;
    atomic_init(&p.done, 0);
    atomic_init(&p.ok, 0);
    long e0, a0, e1, a1, sent = 0;
    redis_counts(rs, &e0, &a0);
    double c0 = cpu_s(), t0 = now_s(), t;
    long total = (long)(PACE_RATE * secs);
    while (sent < total && (t = now_s() - t0) < 2 * secs) {
        long due = (long)(t * PACE_RATE);
        while (sent < due && sent < total && sent - atomic_load(&p.done) < PACE_INFLIGHT) {
            if (rsl_call(rt, policy, NULL, on_paced, &p) != 0) {
                fprintf(stderr, "bench_shared: rsl_call failed\n");
                exit(1);
            }
            sent++;
        }
        sleep_us(100);
    }
    for (int i = 0; i < 10000 && atomic_load(&p.done) < sent; i++) {
        sleep_us(1000);
    }
    double el = now_s() - t0, cpu = cpu_s() - c0;
    redis_counts(rs, &e1, &a1);
    if (atomic_load(&p.done) != sent) {
        fprintf(stderr, "bench_shared: %ld of %ld paced calls unanswered\n",
                sent - atomic_load(&p.done), sent);
        exit(1);
    }
    /* The INFO that read e0 ran before the calls and the one that read e1 after them:
     * neither is in the difference. */
    pace_fig f = {(double)sent / el, (double)atomic_load(&p.ok) / (double)sent,
                  (double)(e1 - e0) / el, (double)(a1 - a0) / el, 1e6 * cpu / (double)sent};
    return f;
}

static rsl_runtime *open_one(const char *dir, const char *sub, const char *text, int port) {
    char d[512];
    snprintf(d, sizeof(d), "%s/%s", dir, sub);
    mkdir(d, 0700);
    write_file(d, text);
    return open_rt(d, port);
}

static void remove_one(const char *dir, const char *sub) {
    char path[512];
    snprintf(path, sizeof(path), "%s/%s/p.lua", dir, sub);
    remove(path);
    snprintf(path, sizeof(path), "%s/%s", dir, sub);
    rmdir(path);
}

static int paced_section(rsl_redis_server *rs, const char *dir, int smoke) {
    static const char *subs[] = {"lb", "sb", "gl"};
    static const char *texts[] = {
        "local r = require 'resilua'\n"
        "r.breaker 'lb' { }\n"
        "r.policy 'p' { steps = { s = r.stub { guards = { 'lb' } } } }\n",
        "local r = require 'resilua'\n"
        "r.breaker 'sb' { shared = { quorum = 2, flush = '100ms' } }\n"
        "r.policy 'p' { steps = { s = r.stub { guards = { 'sb' } } } }\n",
        "local r = require 'resilua'\n"
        "r.limiter 'gl' { rate = 1e9, burst = 1e7, scope = 'global', lease = 50 }\n"
        "r.policy 'p' { steps = { s = r.stub { guards = { 'gl' } } } }\n",
    };
    static const char *labels[] = {"local breaker", "shared breaker (joined)",
                                   "global limiter, lease 50"};
    double secs = smoke ? 0.3 : 3.0;
    int rounds = smoke ? 1 : 3;
    double cps[3][ROUNDS], okf[3][ROUNDS], ev[3][ROUNDS], all[3][ROUNDS], cpu[3][ROUNDS];
    for (int k = 0; k < rounds; k++) {
        for (int i = 0; i < 3; i++) {
            rsl_runtime *rt = open_one(dir, subs[i], texts[i], rs->port);
            if (i == 1 && !until_joined(rt, "sb", NULL)) {
                fprintf(stderr, "bench_shared: the shared breaker did not join\n");
                return 1;
            }
            if (i == 2) {
                long ok;
                rate(rt, "p", 1000, &ok); /* warm */
                if (!until_joined(rt, "gl", "p")) {
                    fprintf(stderr, "bench_shared: the global limiter did not join\n");
                    return 1;
                }
            }
            pace_fig f = pace(rt, rs, "p", secs);
            cps[i][k] = f.calls_s, okf[i][k] = f.ok_frac, ev[i][k] = f.eval_s;
            all[i][k] = f.all_s, cpu[i][k] = f.cpu_us;
            rsl_close(rt);
        }
    }
    /* The shared breaker with no calls: its idle flushes (every `flush`, 100 ms). */
    rsl_runtime *rt = open_one(dir, "sb", texts[1], rs->port);
    if (!until_joined(rt, "sb", NULL)) {
        fprintf(stderr, "bench_shared: the shared breaker did not join\n");
        return 1;
    }
    long e0, a0, e1, a1;
    redis_counts(rs, &e0, &a0);
    double t0 = now_s();
    sleep_us(smoke ? 300000 : 2000000);
    double el = now_s() - t0;
    redis_counts(rs, &e1, &a1);
    rsl_close(rt);
    printf("bench_shared: Redis commands of one instance (1 worker) paced at %.0f calls/s for "
           "%.1f s, median of %d rounds\n",
           PACE_RATE, secs, rounds);
    for (int i = 0; i < 3; i++) {
        double c = rsl_bench_median(cps[i], rounds), o = rsl_bench_median(okf[i], rounds);
        double e = rsl_bench_median(ev[i], rounds), a = rsl_bench_median(all[i], rounds);
        double u = rsl_bench_median(cpu[i], rounds);
        printf("%-26s %7.0f calls/s (%5.1f%% ok): %6.0f scripts/s sent (%5.1f per 1,000 calls), "
               "%6.0f commands/s run by Redis incl. inside scripts; CPU %.2f us/call\n",
               labels[i], c, 100 * o, e, 1000 * e / c, a, u);
        /* A breaker's stub answers every call; the limiter may refuse a few while a
         * refill is out (shown above). */
        if (i < 2 && o < 1) {
            fprintf(stderr, "bench_shared: %s: not every paced call was ok\n", labels[i]);
            return 1;
        }
    }
    printf("%-26s %7s              %6.0f scripts/s sent, %6.0f commands/s run by Redis "
           "(design: 1 flush per `flush`, 100 ms)\n",
           "shared breaker, idle", "", (double)(e1 - e0) / el, (double)(a1 - a0) / el);
    printf("design expectation for the shared breaker at 50k calls/s: 1 flush per 64 outcomes "
           "= %.0f/s (idle flushes only when `flush` passes without 64)\n",
           PACE_RATE / 64);
    for (int i = 0; i < 3; i++) {
        remove_one(dir, subs[i]);
    }
    return 0;
}

int main(int argc, char **argv) {
    int smoke = argc > 1 && strcmp(argv[1], "--smoke") == 0;
    long per_host = smoke ? 2000 : 100000;
    signal(SIGPIPE, SIG_IGN);
    rsl_redis_server rs;
    if (rsl_redis_start(&rs) != 0) {
        fprintf(stderr, "bench_shared: cannot start redis-server\n");
        return 1;
    }
    char dir[] = "/tmp/rsl-bench-shared-XXXXXX";
    if (!mkdtemp(dir)) {
        return 1;
    }
    /* The script, loaded once, for the EVALSHA-per-call baseline. */
    static char text[8192];
    snprintf(
        text, sizeof(text),
        "local r = require 'resilua'\n"
        "r.policy 'load' { steps = { s = r.redis { cmd = { 'SCRIPT', 'LOAD', [==[%s]==] } } } }\n",
        rsl__lease_script());
    write_file(dir, text);
    rsl_runtime *rt = open_rt(dir, rs.port);
    rsl_result *r = NULL;
    for (int i = 0; i < 100; i++) { /* the connection may still be coming up: "connect" */
        rsl_result_free(r);
        r = NULL;
        if (rsl_call_sync(rt, "load", NULL, 10LL * 1000000000, &r) == 0 &&
            rsl_result_outcome(r) == RSL_OUTCOME_OK) {
            break;
        }
        struct timespec ts = {0, 20 * 1000000};
        nanosleep(&ts, NULL);
    }
    if (!r || rsl_result_outcome(r) != RSL_OUTCOME_OK) {
        fprintf(stderr, "bench_shared: SCRIPT LOAD failed: %s\n",
                r ? rsl_result_body(r, NULL) : "");
        rsl_result_free(r);
        rsl_close(rt);
        rsl_redis_stop(&rs);
        return 1;
    }
    char sha[64];
    snprintf(sha, sizeof(sha), "%s", rsl_result_body(r, NULL));
    rsl_result_free(r);
    rsl_close(rt);

    snprintf(text, sizeof(text),
             "local r = require 'resilua'\n"
             "r.limiter 'local' { rate = 1e9, burst = 1e9 }\n"
             "r.limiter 'global' { rate = 1e9, burst = 1e7, scope = 'global', lease = 50 }\n"
             "r.limiter 'global1000' { rate = 1e9, burst = 1e7, scope = 'global', lease = 1000 }\n"
             "r.policy 'local' { steps = { s = r.stub { guards = { 'local' } } } }\n"
             "r.policy 'global' { steps = { s = r.stub { guards = { 'global' } } } }\n"
             "r.policy 'global1000' { steps = { s = r.stub { guards = { 'global1000' } } } }\n"
             "r.policy 'evalsha' { steps = { s = r.redis { timeout = '5s', cmd = { 'EVALSHA', "
             "'%s', '2', 'bench:{e}:tb', 'bench:{e}:inst', '1000000', '10000000', '1', 'me', "
             "'10000', '100000' } } } }\n",
             sha);
    write_file(dir, text);
    rt = open_rt(dir, rs.port);
    long ok;
    rate(rt, "global", per_host / 10, &ok); /* warm: connections up, joined */
    rate(rt, "global1000", per_host / 10, &ok);
    long n = 2 * per_host;
    /* Rounds of the three, interleaved; medians: 2 cores, 4 busy threads, so single runs
     * swing by 2x with the scheduler. */
    const char *names[] = {"local", "global", "global1000"};
    double cps[3][ROUNDS], adm[3][ROUNDS], tok[3] = {0}, cmd[3] = {0};
    int rounds = smoke ? 1 : ROUNDS;
    for (int k = 0; k < rounds; k++) {
        for (int i = 0; i < 3; i++) {
            long r0 = field(rt, names[i], "refills"), g0 = field(rt, names[i], "granted");
            double t0 = now_s();
            cps[i][k] = rate(rt, names[i], per_host, &ok);
            adm[i][k] = (double)ok / (now_s() - t0);
            if (i) {
                cmd[i] += (double)(field(rt, names[i], "refills") - r0);
                tok[i] += (double)(field(rt, names[i], "granted") - g0);
            }
        }
    }
    double c[3], a[3];
    for (int i = 0; i < 3; i++) {
        c[i] = rsl_bench_median(cps[i], rounds);
        a[i] = rsl_bench_median(adm[i], rounds);
    }
    printf("bench_shared: median of %d rounds x %ld calls (2 host threads, 256 in flight "
           "each, 1 worker, redis-server on loopback)\n",
           rounds, n);
    printf("%-28s %9.0f calls/s, all admitted\n", "local limiter", c[0]);
    const char *labels[] = {NULL, "global limiter, lease 50", "global limiter, lease 1000"};
    for (int i = 1; i < 3; i++) {
        printf("%-28s %9.0f calls/s (%.2f x local), %9.0f admitted/s (%.2f x local); %.0f "
               "tokens a refill: %.0f Redis commands/s at 50k admitted calls/s\n",
               labels[i], c[i], c[i] / c[0], a[i], a[i] / c[0], cmd[i] ? tok[i] / cmd[i] : 0,
               tok[i] ? 50000.0 * cmd[i] / tok[i] : 0);
    }
    double ev = rate(rt, "evalsha", per_host / (smoke ? 1 : 5), &ok);
    long ok_ev = ok;
    printf("%-32s %9.0f calls/s (%ld ok)\n", "one EVALSHA per call (r.redis)", ev, ok_ev);
    printf("admitted/s against one EVALSHA per call: lease 50 %.1fx, lease 1000 %.1fx "
           "(target >= 10x)\n",
           a[1] / ev, a[2] / ev);
    rsl_close(rt);
    int rc = paced_section(&rs, dir, smoke);
    rsl_redis_stop(&rs);
    char path[512];
    snprintf(path, sizeof(path), "%s/p.lua", dir);
    remove(path);
    rmdir(dir);
    return rc;
}
