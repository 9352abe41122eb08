/*
 * bench_embed -- the cost of reaching a worker from a host thread:
 *   - a synchronous call (rsl_call_sync of a one-stub policy) from one host thread: median
 *     and p99 latency, next to a bare hand-off measured in the same run (two threads
 *     ping-ponging through a mutex + condition variable, i.e. two kernel wake-ups: the
 *     floor of any blocking request/answer between threads);
 *   - asynchronous calls per second (rsl_call, at most 256 in flight per host thread) from
 *     2 host threads through 1 worker and through 2 workers.
 *
 * Usage: bench_embed [--smoke]
 */
#include "resilua.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int smoke;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int cmp64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* ---- the baseline: a mutex + condvar ping-pong between two threads ------------------- */
static pthread_mutex_t pm = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pc = PTHREAD_COND_INITIALIZER;
static int ball; /* 1: the server's turn, 2: the client's, 0: stop */

static void *server(void *arg) {
    pthread_mutex_lock(&pm);
    for (;;) {
        while (ball == 2) {
            pthread_cond_wait(&pc, &pm);
        }
        if (ball == 0) {
            break;
        }
        ball = 2;
        pthread_cond_broadcast(&pc);
    }
    pthread_mutex_unlock(&pm);
    return NULL;
}

static void pingpong(int n, int64_t *lat) {
    pthread_t t;
    ball = 2;
    pthread_create(&t, NULL, server, NULL);
    for (int i = 0; i < n; i++) {
        int64_t a = now_ns();
        pthread_mutex_lock(&pm);
        ball = 1;
        pthread_cond_broadcast(&pc);
        while (ball != 2) {
            pthread_cond_wait(&pc, &pm);
        }
        pthread_mutex_unlock(&pm);
        lat[i] = now_ns() - a;
    }
    pthread_mutex_lock(&pm);
    ball = 0;
    pthread_cond_broadcast(&pc);
    pthread_mutex_unlock(&pm);
    pthread_join(t, NULL);
}

/* ---- resilua ---------------------------------------------------------------------------- */
static char dir[] = "/tmp/rsl-bench-embed-XXXXXX";

static rsl_runtime *open_rt(int workers) {
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    o.workers = workers;
    rsl_runtime *rt = NULL;
    char err[1024];
    if (rsl_open(&rt, &o, err, sizeof(err)) != 0) {
        fprintf(stderr, "rsl_open: %s\n", err);
        exit(1);
    }
    return rt;
}

typedef struct host {
    rsl_runtime *rt;
    long calls;
    _Atomic long done;
    pthread_mutex_t m;
    pthread_cond_t cv;
} host;

#define WINDOW 256

static void async_cb(const rsl_result *r, void *ud) {
    host *h = ud;
    pthread_mutex_lock(&h->m);
    atomic_fetch_add(&h->done, 1);
    pthread_cond_signal(&h->cv);
    pthread_mutex_unlock(&h->m);
}

static void *async_host(void *arg) {
    host *h = arg;
    for (long i = 0; i < h->calls; i++) {
        pthread_mutex_lock(&h->m);
        while (i - atomic_load(&h->done) >= WINDOW) {
            pthread_cond_wait(&h->cv, &h->m);
        }
        pthread_mutex_unlock(&h->m);
        if (rsl_call(h->rt, "stub", NULL, async_cb, h) != 0) {
            fprintf(stderr, "rsl_call failed\n");
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

static double async_rate(int workers, long per_host) {
    rsl_runtime *rt = open_rt(workers);
    host h[2];
    pthread_t t[2];
    int64_t a = now_ns();
    for (int i = 0; i < 2; i++) {
        h[i].rt = rt;
        h[i].calls = per_host;
        atomic_init(&h[i].done, 0);
        pthread_mutex_init(&h[i].m, NULL);
        pthread_cond_init(&h[i].cv, NULL);
        pthread_create(&t[i], NULL, async_host, &h[i]);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
    }
    double secs = (double)(now_ns() - a) / 1e9;
    rsl_close(rt);
    for (int i = 0; i < 2; i++) {
        pthread_mutex_destroy(&h[i].m);
        pthread_cond_destroy(&h[i].cv);
    }
    return (double)(2 * per_host) / secs;
}

int main(int argc, char **argv) {
    smoke = argc > 1 && !strcmp(argv[1], "--smoke");
    int n = smoke ? 500 : 20000;
    long per_host = smoke ? 2000 : 200000;
    if (!mkdtemp(dir)) {
        return 1;
    }
    char path[128];
    snprintf(path, sizeof(path), "%s/p.lua", dir);
    FILE *f = fopen(path, "w");
    fputs("local r = require 'resilua'\n"
          "r.policy 'stub' { steps = { s = r.stub { body = 'ok' } } }\n",
          f);
    fclose(f);

    int64_t *lat = calloc((size_t)n, sizeof(int64_t));
    pingpong(n, lat);
    qsort(lat, (size_t)n, sizeof(int64_t), cmp64);
    double pp50 = (double)lat[n / 2] / 1e3, pp99 = (double)lat[n * 99 / 100] / 1e3;

    rsl_runtime *rt = open_rt(1);
    for (int i = 0; i < n / 10; i++) { /* warm up */
        rsl_result *r = NULL;
        rsl_call_sync(rt, "stub", NULL, 0, &r);
        rsl_result_free(r);
    }
    for (int i = 0; i < n; i++) {
        rsl_result *r = NULL;
        int64_t a = now_ns();
        if (rsl_call_sync(rt, "stub", NULL, 0, &r) != 0) {
            fprintf(stderr, "rsl_call_sync failed\n");
            return 1;
        }
        lat[i] = now_ns() - a;
        rsl_result_free(r);
    }
    rsl_close(rt);
    qsort(lat, (size_t)n, sizeof(int64_t), cmp64);
    double s50 = (double)lat[n / 2] / 1e3, s99 = (double)lat[n * 99 / 100] / 1e3;

    double r1 = async_rate(1, per_host);
    double r2 = async_rate(2, per_host);

    printf("bench_embed: %d sync calls, %ld async calls per host thread\n", n, per_host);
    printf("  baseline: condvar ping-pong between 2 threads   p50 %7.1f us   p99 %7.1f us\n",
           pp50, pp99);
    printf("  rsl_call_sync from a host thread, 1 worker      p50 %7.1f us   p99 %7.1f us"
           "   (%.2fx the ping-pong)\n",
           s50, s99, s50 / pp50);
    printf("  rsl_call from 2 host threads, 1 worker   %10.0f calls/s\n", r1);
    printf("  rsl_call from 2 host threads, 2 workers  %10.0f calls/s  (%.2fx 1 worker)\n", r2,
           r2 / r1);
    free(lat);
    remove(path);
    rmdir(dir);
    return 0;
}
