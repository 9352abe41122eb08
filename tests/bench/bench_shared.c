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
#include <time.h>

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
    rsl_redis_stop(&rs);
    return 0;
}
