/*
 * bench_call -- the policy engine's costs, measured on the worker's own loop thread:
 *   - the route decision reading 3 signals (sig.state, sig.load, sig.tokens), returning a
 *     module-level path table (no table built per call);
 *   - the same route building a fresh table per call (what reuse saves);
 *   - a whole in-process call: route + one r.lua step (answers 5xx) behind a breaker +
 *     a stub fallback + the breaker's record + the result, on the worker's loop;
 * next to baselines from the same run: one clock_gettime, and one lua_pcall of an empty
 * Lua function in the same state (the floor of any entry into Lua).
 *
 * The measuring code runs inside a host C step (r.c "bench"), i.e. on the worker thread,
 * where calls run: no cross-thread hand-off is timed.
 *
 * Usage: bench_call [--smoke] [--ops route|fresh|call|empty N]   (--ops: for callgrind)
 */
#include "runtime.h"

#include "clock.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *policy =
    "local r = require 'resilua'\n"
    "r.breaker 'b' { failure_rate = 0, slow_rate = 0 }  -- records, never trips\n"
    "r.limiter 'l' { rate = 1e12, burst = 1e12 }\n"
    "r.bulkhead 'h' { max = 1000000 }\n"
    "local PRIMARY, FALLBACK = { 'a' }, { 'b' }\n"
    "r.policy 'route3' { steps = { a = r.stub {}, b = r.stub {} }, chain = { 'a' },\n"
    "  route = function(req, sig)\n"
    "    if sig.state('b') == 'open' or sig.load('h') > 0.8 or sig.tokens('l') < 1 then\n"
    "      return FALLBACK end\n"
    "    return PRIMARY end }\n"
    "r.policy 'fresh' { steps = { a = r.stub {}, b = r.stub {} }, chain = { 'a' },\n"
    "  route = function(req, sig)\n"
    "    if sig.state('b') == 'open' or sig.load('h') > 0.8 or sig.tokens('l') < 1 then\n"
    "      return { 'b' } end\n"
    "    return { 'a' } end }\n"
    "local PATH = { 'primary', 'stub' }\n"
    "r.policy 'call' {\n"
    "  steps = { primary = r.lua { run = function(req) return nil, '5xx' end, guards = { 'b' } },\n"
    "            stub = r.stub { status = 200, body = 'stub' } },\n"
    "  chain = { 'primary', 'stub' },\n"
    "  route = function(req, sig) return PATH end }\n"
    "r.policy 'driver' { steps = { h = r.c 'bench' } }\n";

static rsl_runtime *rt;
static long n_ops = 200000;
static int runs = 7;
static const char *only;
static double results[8];

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void done_cb(const rsl_result *r, void *ud) {
    (*(long *)ud)++;
}

typedef void (*loop_fn)(long n, void *arg);

static double median_ns(loop_fn fn, void *arg) {
    double t[16];
    fn(n_ops / 10 + 1, arg); /* warm up: JIT traces, caches */
    for (int i = 0; i < runs; i++) {
        double a = now_s();
        fn(n_ops, arg);
        t[i] = (now_s() - a) * 1e9 / (double)n_ops;
    }
    qsort(t, (size_t)runs, sizeof(double), cmp);
    return t[runs / 2];
}

static void loop_clock(long n, void *arg) {
    volatile int64_t sink = 0;
    for (long i = 0; i < n; i++) {
        sink += rsl__clock_now();
    }
    (void)sink;
}

static void loop_empty_pcall(long n, void *arg) {
    lua_State *L = arg;
    luaL_loadstring(L, "return function() end");
    lua_call(L, 0, 1);
    int ref = luaL_ref(L, LUA_REGISTRYINDEX);
    for (long i = 0; i < n; i++) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
        lua_pcall(L, 0, 0, 0);
    }
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
}

static void loop_route(long n, void *arg) {
    rsl__call *c = arg;
    char err[256];
    rsl__lcall lc = {c->id, c->start, c->req, c->p, c->pidx};
    for (long i = 0; i < n; i++) {
        if (rsl__lapi_route(c->G->api[c->w->index], &lc, c->path, &c->npath, &c->priority,
                            err, sizeof(err)) < 0) {
            fprintf(stderr, "route failed: %s\n", err);
            exit(1);
        }
    }
}

static void loop_call(long n, void *arg) {
    rsl_req *req = arg;
    long done = 0;
    for (long i = 0; i < n; i++) {
        rsl__call *c = NULL;
        if (rsl__call_new(rt, "call", req, done_cb, &done, &c) < 0) {
            fprintf(stderr, "call failed\n");
            exit(1);
        }
        c->w = rsl__worker_self();
        rsl__call_start(c);
    }
    if (done != n) {
        fprintf(stderr, "lost calls: %ld of %ld\n", n - done, n);
        exit(1);
    }
}

static rsl__call *route_call(const char *name, rsl_req *req) {
    rsl__call *c = NULL;
    if (rsl__call_new(rt, name, req, done_cb, NULL, &c) < 0) {
        exit(1);
    }
    c->w = rsl__worker_self();
    c->start = rsl__rt_now(rt);
    return c;
}

/* Runs on the worker thread. */
static void bench_step(rsl_step_call *sc, const rsl_req *unused, void *ud) {
    rsl__worker *w = rsl__worker_self();
    rsl__genr *G = rt->cur;
    lua_State *L = G->g->states[w->index];
    rsl_req *req = rsl_req_new();
    rsl_req_set(req, "id", "42", 2);
    rsl_req_set(req, "tier", "vip", 3);
    rsl__call *c3 = route_call("route3", req);
    rsl__call *cf = route_call("fresh", req);

    if (only) {
        if (!strcmp(only, "route")) {
            loop_route(n_ops, c3);
        } else if (!strcmp(only, "fresh")) {
            loop_route(n_ops, cf);
        } else if (!strcmp(only, "call")) {
            loop_call(n_ops, req);
        } else if (!strcmp(only, "empty")) {
            loop_empty_pcall(n_ops, L);
        }
    } else {
        results[0] = median_ns(loop_clock, NULL);
        results[1] = median_ns(loop_empty_pcall, L);
        results[2] = median_ns(loop_route, c3);
        results[3] = median_ns(loop_route, cf);
        results[4] = median_ns(loop_call, req);
    }
    rsl__call_free(c3);
    rsl__call_free(cf);
    rsl_req_free(req);
    rsl_step_answer(sc, 200, "", 0);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--smoke")) {
            n_ops = 2000;
            runs = 3;
        } else if (!strcmp(argv[i], "--ops") && i + 2 < argc) {
            only = argv[i + 1];
            n_ops = atol(argv[i + 2]);
            i += 2;
        } else {
            fprintf(stderr, "usage: %s [--smoke] [--ops route|fresh|call|empty N]\n", argv[0]);
            return 2;
        }
    }
    char dir[] = "/tmp/rsl-bench-XXXXXX";
    if (!mkdtemp(dir)) {
        return 1;
    }
    char path[256];
    snprintf(path, sizeof(path), "%s/bench.lua", dir);
    FILE *f = fopen(path, "w");
    fputs(policy, f);
    fclose(f);

    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    char err[1024];
    if (rsl_open(&rt, &o, err, sizeof(err)) != 0) {
        fprintf(stderr, "rsl_open: %s\n", err);
        return 1;
    }
    rsl_register_step(rt, "bench", bench_step, NULL);
    rsl_result *r = NULL;
    if (rsl_call_sync(rt, "driver", NULL, 0, &r) != 0 || rsl_result_outcome(r) != RSL_OUTCOME_OK) {
        fprintf(stderr, "bench call failed\n");
        return 1;
    }
    rsl_result_free(r);
    rsl_close(rt);
    remove(path);
    rmdir(dir);
    if (only) {
        return 0;
    }
    printf("bench_call: %ld ops x %d runs, median, on the worker thread\n", n_ops, runs);
    printf("  baseline clock_gettime                    %8.1f ns/op\n", results[0]);
    printf("  baseline lua_pcall(empty function)        %8.1f ns/op\n", results[1]);
    printf("  route decision, 3 signals                 %8.1f ns/op  (%.2fx empty pcall)\n",
           results[2], results[2] / results[1]);
    printf("  route decision, fresh table per call      %8.1f ns/op  (%.2fx empty pcall)\n",
           results[3], results[3] / results[1]);
    printf("  whole call: route + lua + stub + record   %8.1f ns/op  (%.2fx empty pcall)\n",
           results[4], results[4] / results[1]);
    return 0;
}
