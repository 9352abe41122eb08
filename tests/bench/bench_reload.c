/*
 * bench_reload -- the time rsl_reload takes on a directory of 100 policy files (each a
 * breaker, a limiter, and a policy with a route, a Lua step behind both guards and a stub),
 * next to a baseline from the same run: the initial load, rsl_open (which also starts the
 * workers).  Reloads measured:
 *   - unchanged: the same files again (every guard kept);
 *   - changed:   every breaker's threshold and every stub's body changed (applied in place),
 *                alternating between two versions;
 * each with 1 and 2 workers (a generation has one Lua state per worker, so the load runs
 * once per worker).  Medians of `runs` reloads; calls keep running meanwhile are not
 * measured here (test_reload's stress covers them).
 *
 * Then the latency of synchronous calls from a host thread, idle and while the directory is
 * reloaded back to back (the load must not stall calls; on a machine with fewer cores than
 * threads, the maximum also shows the reload competing for a CPU).
 *
 * Usage: bench_reload [--smoke]   (--smoke: fewer runs, 1 worker; about a second)
 */
#include "resilua.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define NPOLICIES 100

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *t, int n) {
    qsort(t, (size_t)n, sizeof(*t), cmp);
    return t[n / 2];
}

/* Writes the 100 files; `version` changes thresholds and bodies. */
static void write_dir(const char *dir, int version) {
    for (int i = 0; i < NPOLICIES; i++) {
        char path[512];
        snprintf(path, sizeof(path), "%s/p%03d.lua", dir, i);
        FILE *f = fopen(path, "w");
        if (!f) {
            perror(path);
            exit(2);
        }
        fprintf(f,
                "local r = require 'resilua'\n"
                "r.breaker 'b%03d' { window = '10s', buckets = 10, min_calls = 20,\n"
                "  failure_rate = %d, open_for = '5s' }\n"
                "r.limiter 'l%03d' { rate = 500, per = '1s', burst = 100 }\n"
                "local PATH = { 'primary', 'stub' }\n"
                "r.policy 'p%03d' {\n"
                "  deadline = '300ms',\n"
                "  steps = {\n"
                "    primary = r.lua { run = function(req)\n"
                "        if req.id == nil then return nil, '4xx' end\n"
                "        return { status = 200, body = 'p%03d ' .. req.id } end,\n"
                "      guards = { 'l%03d', 'b%03d' } },\n"
                "    stub = r.stub { status = 503, body = 'later v%d' },\n"
                "  },\n"
                "  chain = { 'primary', 'stub' },\n"
                "  route = function(req, sig)\n"
                "    if sig.state('b%03d') == 'open' then return { 'stub' } end\n"
                "    return PATH\n"
                "  end,\n"
                "}\n",
                i, version ? 40 : 50, i, i, i, i, i, version, i);
        fclose(f);
    }
}

/* ---- calls while reloading ---- */

typedef struct lat {
    rsl_runtime *rt;
    double seconds;
    double *us; /* per call */
    int n, cap;
} lat;

static void *caller(void *arg) {
    lat *l = arg;
    rsl_req *req = rsl_req_new();
    rsl_req_set(req, "id", "7", 1);
    double end = now_ms() + l->seconds * 1e3;
    while (l->n < l->cap && now_ms() < end) {
        rsl_result *r = NULL;
        double a = now_ms();
        if (rsl_call_sync(l->rt, "p000", req, 0, &r) != 0) {
            fprintf(stderr, "call failed\n");
            exit(1);
        }
        l->us[l->n++] = (now_ms() - a) * 1e3;
        rsl_result_free(r);
    }
    rsl_req_free(req);
    return NULL;
}

/* One host thread calls rsl_call_sync for `seconds`, first with nothing else going on, then
 * while this thread reloads the directory back to back: the reload's load must not stall
 * calls (they keep starting on the old generation until the swap). */
static void calls_during_reload(const char *dir, double seconds) {
    write_dir(dir, 0);
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    char err[1024];
    rsl_runtime *rt = NULL;
    if (rsl_open(&rt, &o, err, sizeof(err)) != 0) {
        fprintf(stderr, "rsl_open: %s\n", err);
        exit(1);
    }
    printf("rsl_call_sync latency from 1 host thread, 1 worker, %.1f s each (us):\n", seconds);
    for (int phase = 0; phase < 2; phase++) {
        lat l = {.rt = rt, .seconds = seconds, .cap = 1 << 22};
        l.us = malloc((size_t)l.cap * sizeof(double));
        pthread_t t;
        pthread_create(&t, NULL, caller, &l);
        int reloads = 0;
        if (phase == 1) {
            double end = now_ms() + seconds * 1e3;
            while (now_ms() < end) {
                write_dir(dir, reloads % 2);
                if (rsl_reload(rt, err, sizeof(err)) != 0) {
                    fprintf(stderr, "rsl_reload: %s\n", err);
                    exit(1);
                }
                reloads++;
            }
        }
        pthread_join(t, NULL);
        qsort(l.us, (size_t)l.n, sizeof(double), cmp);
        char what[64];
        snprintf(what, sizeof(what), phase ? "during %d reloads" : "idle (baseline)", reloads);
        printf("  %-40s p50 %7.1f  p99 %7.1f  max %8.1f  (%d calls)\n", what, l.us[l.n / 2],
               l.us[(int)(l.n * 0.99)], l.us[l.n - 1], l.n);
        free(l.us);
    }
    rsl_close(rt);
}

static void run(const char *dir, int workers, int runs) {
    double open_t[16], same_t[16], changed_t[16];
    char err[1024];
    rsl_runtime *rt = NULL;
    for (int r = 0; r < runs; r++) {
        write_dir(dir, 0);
        rsl_options o;
        rsl_options_init(&o);
        o.policy_dir = dir;
        o.workers = workers;
        double a = now_ms();
        int rc = rsl_open(&rt, &o, err, sizeof(err));
        open_t[r] = now_ms() - a;
        if (rc != 0) {
            fprintf(stderr, "rsl_open: %s: %s\n", rsl_strerror(rc), err);
            exit(1);
        }
        a = now_ms();
        rc = rsl_reload(rt, err, sizeof(err));
        same_t[r] = now_ms() - a;
        write_dir(dir, 1);
        a = now_ms();
        rc |= rsl_reload(rt, err, sizeof(err));
        changed_t[r] = now_ms() - a;
        if (rc != 0) {
            fprintf(stderr, "rsl_reload: %s\n", err);
            exit(1);
        }
        rsl_close(rt);
    }
    printf("%d worker%s, %d policies, median of %d:\n", workers, workers > 1 ? "s" : "", NPOLICIES,
           runs);
    printf("  %-40s %8.2f ms   (baseline)\n", "initial load (rsl_open)", median(open_t, runs));
    printf("  %-40s %8.2f ms\n", "reload, unchanged", median(same_t, runs));
    printf("  %-40s %8.2f ms\n", "reload, thresholds and bodies changed", median(changed_t, runs));
}

int main(int argc, char **argv) {
    int smoke = argc > 1 && strcmp(argv[1], "--smoke") == 0;
    char dir[] = "/tmp/rsl-bench-reload-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 2;
    }
    if (smoke) {
        run(dir, 1, 3);
        calls_during_reload(dir, 0.2);
    } else {
        run(dir, 1, 9);
        run(dir, 2, 9);
        calls_during_reload(dir, 2);
    }
    for (int i = 0; i < NPOLICIES; i++) {
        char path[512];
        snprintf(path, sizeof(path), "%s/p%03d.lua", dir, i);
        unlink(path);
    }
    rmdir(dir);
    return 0;
}
