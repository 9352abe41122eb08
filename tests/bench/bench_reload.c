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
 * Usage: bench_reload [--smoke]   (--smoke: fewer runs, 1 worker; about a second)
 */
#include "resilua.h"

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
    } else {
        run(dir, 1, 9);
        run(dir, 2, 9);
    }
    for (int i = 0; i < NPOLICIES; i++) {
        char path[512];
        snprintf(path, sizeof(path), "%s/p%03d.lua", dir, i);
        unlink(path);
    }
    rmdir(dir);
    return 0;
}
