/*
 * bench_guards -- the guard layer's hot paths in ns/op, next to baselines measured in the
 * same run (one clock_gettime, one uncontended atomic fetch_add), and memory per breaker.
 *
 *   bench_guards            full run: median of 9 runs per figure
 *   bench_guards --smoke    a quick pass for ctest (well under a second)
 *   bench_guards --ops NAME N
 *                           just N ops of one benchmark, nothing printed, for
 *                           `valgrind --tool=callgrind` instruction counts (run it with
 *                           N and with 0 and divide the difference by N).  NAME: breaker,
 *                           breaker2, limiter, bulkhead, throttle, adaptive, reserve, shed,
 *                           clock, atomic, gbreaker, sbreaker, kbreaker, kbreaker1k,
 *                           kchurn, glimiter, klimiter, glease.
 *
 * A shared breaker's added cost (`shared = {...}`, fleet.h) is the same attempt through
 * the guard interface on a local breaker and on one with a fleet attached, each followed
 * by chain.c's rsl__fleet_tend for a breaker with a fleet, on a thread in worker 0's slot
 * (its outcome counts are a load and a store, as on a worker).  That fleet has no Redis, so it
 * is in mode "down" after its first flush: each call still pays what it pays joined (the
 * fleet's verdict check in acquire, the atomic outcome count in release, tend's load), and
 * every 64 outcomes the flush takes the counts but sends nothing.  Joined, that flush also
 * formats and queues one EVAL on the worker's Redis connection (bench_shared counts them),
 * and a closed breaker's acquire reads one more relaxed load (the fleet's state).
 *
 * Keyed guards (keyed.h) are timed through the guard interface, next to the plain breaker
 * and limiter through the same interface in the same run: one hot key, 1000 keys in turn
 * (all in the table), and churn (every op a new key through max_keys = 1000: a child made
 * and one evicted per op); and two threads on one hot key (one stripe's lock) and on a key
 * each.
 *
 * The breaker loops read `now` from CLOCK_MONOTONIC_COARSE once per 64 ops, as a worker
 * reading its clock once per loop turn would; the read is inside the timed loop.
 */
#include "bench.h"
#include "adaptive.h"
#include "breaker.h"
#include "bulkhead.h"
#include "clock.h"
#include "guard.h"
#include "fleet.h"
#include "keyed.h"
#include "limiter.h"
#include "shed.h"
#include "throttle.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Runs per figure: the median of 9 shrugs off a preempted run or two. */
#define RUNS       9
#define SMOKE_RUNS 3
/* Ops per run: ~20-60 ms per run at the speeds measured, long enough to swamp timer reads. */
#define OPS       (2 * 1000 * 1000)
#define SMOKE_OPS 20000
/* The memory figure's population, as the issue states it. */
#define NBREAKERS 10000

static int runs = RUNS;
static long ops = OPS;

/* Keeps results alive so the compiler cannot drop the loops (atomic: the pair threads
 * both add to it once at the end). */
static _Atomic uint64_t sink;

static void keep(uint64_t v) {
    atomic_fetch_add_explicit(&sink, v, memory_order_relaxed);
}

/* ---- the loops (each returns after n ops) ---- */

static void loop_breaker(rsl__breaker *b, long n) {
    int64_t now = rsl__clock_coarse();
    uint64_t admitted = 0;
    for (long i = 0; i < n; i++) {
        if ((i & 63) == 0) {
            now = rsl__clock_coarse();
        }
        rsl__permit p;
        if (rsl__breaker_allow(b, now, &p)) {
            /* latencies 0..2.5 ms, so records spread over the histogram's bins */
            rsl__breaker_record(b, &p, now, RSL_OUTCOME_OK, (int64_t)(i & 255) * 10000);
            admitted++;
        }
    }
    keep(admitted);
}

static void loop_limiter(rsl__limiter *l, long n) {
    int64_t now = rsl__clock_coarse();
    uint64_t admitted = 0;
    for (long i = 0; i < n; i++) {
        if ((i & 63) == 0) {
            now = rsl__clock_coarse();
        }
        admitted += (uint64_t)rsl__limiter_allow(l, now);
    }
    keep(admitted);
}

static void loop_bulkhead(rsl__bulkhead *b, long n) {
    uint64_t admitted = 0;
    for (long i = 0; i < n; i++) {
        if (rsl__bulkhead_acquire(b)) {
            admitted++;
            rsl__bulkhead_release(b);
        }
    }
    keep(admitted);
}

/* allow + accept on a healthy upstream: every attempt goes on, so this times the
 * counting (the window sum and two atomic adds), not the random draw. */
static void loop_throttle(rsl__throttle *t, long n) {
    int64_t now = rsl__clock_coarse();
    uint64_t admitted = 0;
    for (long i = 0; i < n; i++) {
        if ((i & 63) == 0) {
            now = rsl__clock_coarse();
        }
        uint32_t tag;
        uint8_t slot;
        if (rsl__throttle_allow(t, now, &tag, &slot)) {
            rsl__throttle_accept(t, tag, slot);
            admitted++;
        }
    }
    keep(admitted);
}

/* acquire + release with a sample: admission's CAS, the window's sums, and a window closed
 * (the trylock and the update) once per second of the coarse clock. */
static void loop_adaptive(rsl__adaptive *a, long n) {
    int64_t now = rsl__clock_coarse();
    uint64_t admitted = 0;
    for (long i = 0; i < n; i++) {
        if ((i & 63) == 0) {
            now = rsl__clock_coarse();
        }
        if (rsl__adaptive_acquire(a)) {
            rsl__adaptive_release(a, now, 2 * RSL_NS_PER_MS, 0);
            admitted++;
        }
    }
    keep(admitted);
}

/* Through the guard interface (what a step's attempt runs): a bulkhead at priority 1, with
 * no reserve and with `reserve = { [0] = 0.3 }` (one more relaxed load: its share). */
static void loop_guard(rsl__guard *g, int prio, long n) {
    uint64_t admitted = 0;
    for (long i = 0; i < n; i++) {
        rsl__permit p;
        const char *why;
        if (rsl__guard_acquire(g, 0, prio, &p, &why) == 1) {
            rsl__guard_release(g, &p, 1, 0, RSL_OUTCOME_OK, 200, 0);
            admitted++;
        }
    }
    keep(admitted);
}

/* Keyed guards: the step's attempt as the chain makes it (the key expanded from the
 * request, the child found, acquire, release), requests reqs[i % nreq]. */
static void loop_keyed(rsl__guard *g, rsl_req **reqs, long nreq, long n) {
    int64_t now = rsl__clock_coarse();
    uint64_t admitted = 0;
    rsl__buf buf = {0};
    for (long i = 0; i < n; i++) {
        if ((i & 63) == 0) {
            now = rsl__clock_coarse();
        }
        rsl__permit p;
        rsl__guard *child;
        const char *why;
        if (rsl__keyed_acquire(g, reqs[i % nreq], &buf, now, 0, NULL, &p, &child, &why) == 1) {
            rsl__keyed_release(child, &p, 1, now, RSL_OUTCOME_OK, 200, 1000);
            admitted++;
        }
    }
    rsl__buf_free(&buf);
    keep(admitted);
}

/* The plain guard through the same interface (a breaker or a limiter), and a breaker with
 * a fleet tends it after each attempt, as chain.c does (no Redis here). */
static void loop_plain_guard(rsl__guard *g, long n) {
    int64_t now = rsl__clock_coarse();
    uint64_t admitted = 0;
    for (long i = 0; i < n; i++) {
        if ((i & 63) == 0) {
            now = rsl__clock_coarse();
        }
        rsl__permit p;
        const char *why;
        if (rsl__guard_acquire(g, now, 0, &p, &why) == 1) {
            if (rsl__guard_holds(g)) {
                rsl__guard_release(g, &p, 1, now, RSL_OUTCOME_OK, 200, 1000);
            }
            rsl__fleet *f = g->kind == RSL_GUARD_BREAKER ? rsl__guard_fleet(g) : NULL;
            if (f) {
                rsl__fleet_tend(f, NULL);
            }
            admitted++;
        }
    }
    keep(admitted);
}

/* The load controller's check at each call's start, nothing being shed: the seen bit and
 * the level, two relaxed loads. */
static void loop_shed(rsl__load *l, long n) {
    uint64_t shed = 0;
    for (long i = 0; i < n; i++) {
        shed += (uint64_t)rsl__load_shed(l, (int)(i & 1));
    }
    keep(shed);
}

static void loop_clock(long n) {
    uint64_t s = 0;
    for (long i = 0; i < n; i++) {
        s += (uint64_t)rsl__clock_now();
    }
    keep(s);
}

static void loop_coarse(long n) {
    uint64_t s = 0;
    for (long i = 0; i < n; i++) {
        s += (uint64_t)rsl__clock_coarse();
    }
    keep(s);
}

static _Atomic uint64_t counter;

static void loop_atomic(long n) {
    for (long i = 0; i < n; i++) {
        atomic_fetch_add(&counter, 1);
    }
}

/* ---- guards under test ---- */

static rsl__breaker *new_breaker(int stripes) {
    rsl__breaker_conf c;
    rsl__breaker_conf_default(&c);
    c.stripes = stripes;
    rsl__breaker *b = rsl__breaker_new("bench", &c);
    if (!b) {
        fprintf(stderr, "bench_guards: breaker_new failed\n");
        exit(1);
    }
    return b;
}

/* The joint trip with the settings (trip.h), the plain rules off. */
static rsl__breaker *new_joint(void) {
    rsl__breaker_conf c;
    rsl__breaker_conf_default(&c);
    c.failure_rate = 0;
    c.slow_rate = 0;
    rsl__trip_conf_default(&c.trip);
    c.trip.periods = 3;
    c.trip.factor = 1.2;
    rsl__breaker *b = rsl__breaker_new("bench-joint", &c);
    if (!b) {
        fprintf(stderr, "bench_guards: breaker_new (joint) failed\n");
        exit(1);
    }
    return b;
}

static rsl__throttle *new_throttle(void) {
    rsl__throttle_conf c;
    rsl__throttle_conf_default(&c); /* k 2, 2 min, min_requests 20, max_p 0.9 */
    return rsl__throttle_new("bench", &c);
}

static rsl__adaptive *new_adaptive(void) {
    rsl__adaptive_conf c;
    rsl__adaptive_conf_default(&c); /* gradient, 4..500 from 20, 1 s windows */
    return rsl__adaptive_new("bench", &c);
}

static rsl__limiter *new_limiter(void) {
    /* 1e9/s with a big burst: every call admitted, so this times the CAS path */
    rsl__limiter_conf c = {1e9, RSL_NS_PER_S, 1e9};
    return rsl__limiter_new("bench", &c);
}

/* ---- timing ---- */
struct guards;
static void new_extras(struct guards *g);
static void free_extras(struct guards *g);

typedef enum {
    B_BREAKER,
    B_JOINT,
    B_LIMITER,
    B_BULKHEAD,
    B_THROTTLE,
    B_ADAPTIVE,
    B_GUARD,
    B_GUARD_RESERVE,
    B_SHED,
    B_CLOCK,
    B_COARSE,
    B_ATOMIC,
    B_GBREAKER,
    B_SBREAKER,
    B_KBREAKER,
    B_KBREAKER1K,
    B_KCHURN,
    B_GLIMITER,
    B_KLIMITER,
    B_LEASE
} bench_id;

typedef struct guards {
    rsl__breaker *b;
    rsl__limiter *l;
    rsl__bulkhead *h;
    rsl__breaker *j;
    rsl__throttle *t;
    rsl__adaptive *a;
    rsl__guard *g0, *gr;
    rsl__load *ld;
    /* keyed: plain breaker and limiter guards, keyed ones (10,000 keys; churn: 1000), and
     * the requests: hot (one tenant), k1 (1000 tenants), many (NCHURN tenants) */
    rsl__guard *gb, *kb, *kc, *gl, *kl;
    rsl_req *hot, **k1, **many;
    /* a breaker guard with a fleet (quorum 2, flush 100 ms), from its registry */
    rsl__guard *gs;
    rsl__fleets *fs;
    /* a global limiter's guard (scope = "global"): its lease holds more tokens than any run
     * spends, so each op is the pool's decision, as when joined */
    rsl__guard *ggl;
    rsl__leases *ls;
} guards;

#define NK1 1000
#define NCHURN 100000

static void run_once(bench_id id, guards *g, long n) {
    switch (id) {
    case B_BREAKER:
        loop_breaker(g->b, n);
        break;
    case B_JOINT:
        loop_breaker(g->j, n);
        break;
    case B_LIMITER:
        loop_limiter(g->l, n);
        break;
    case B_BULKHEAD:
        loop_bulkhead(g->h, n);
        break;
    case B_THROTTLE:
        loop_throttle(g->t, n);
        break;
    case B_ADAPTIVE:
        loop_adaptive(g->a, n);
        break;
    case B_GUARD:
        loop_guard(g->g0, 1, n);
        break;
    case B_GUARD_RESERVE:
        loop_guard(g->gr, 1, n);
        break;
    case B_SHED:
        loop_shed(g->ld, n);
        break;
    case B_CLOCK:
        loop_clock(n);
        break;
    case B_COARSE:
        loop_coarse(n);
        break;
    case B_ATOMIC:
        loop_atomic(n);
        break;
    case B_GBREAKER:
        loop_plain_guard(g->gb, n);
        break;
    case B_SBREAKER:
        loop_plain_guard(g->gs, n);
        break;
    case B_KBREAKER:
        loop_keyed(g->kb, &g->hot, 1, n);
        break;
    case B_KBREAKER1K:
        loop_keyed(g->kb, g->k1, NK1, n);
        break;
    case B_KCHURN:
        loop_keyed(g->kc, g->many, NCHURN, n);
        break;
    case B_GLIMITER:
        loop_plain_guard(g->gl, n);
        break;
    case B_KLIMITER:
        loop_keyed(g->kl, &g->hot, 1, n);
        break;
    case B_LEASE:
        loop_plain_guard(g->ggl, n);
        break;
    }
}

static double time_one(bench_id id, guards *g) {
    double v[RUNS];
    run_once(id, g, ops / 10); /* warm caches and branch predictors */
    for (int r = 0; r < runs; r++) {
        int64_t t0 = rsl__clock_now();
        run_once(id, g, ops);
        v[r] = (double)(rsl__clock_now() - t0) / (double)ops;
    }
    return rsl_bench_median(v, runs);
}

/* A against B run for run, PAIRS times (the order swapped every other pair): the median of
 * the per-pair differences B - A, and each side's median in *a, *b.  A figure smaller than
 * the machine's swings between two medians taken seconds apart survives as a difference
 * taken within one pair of runs. */
#define PAIRS 21
static double time_diff(bench_id ia, bench_id ib, guards *g, double *a, double *b) {
    double va[PAIRS], vb[PAIRS], d[PAIRS];
    int n = runs < 9 ? runs : PAIRS;
    run_once(ia, g, ops / 10);
    run_once(ib, g, ops / 10);
    for (int r = 0; r < n; r++) {
        for (int k = 0; k < 2; k++) {
            bench_id id = (k == 0) == (r % 2 == 0) ? ia : ib;
            int64_t t0 = rsl__clock_now();
            run_once(id, g, ops);
            double ns = (double)(rsl__clock_now() - t0) / (double)ops;
            if (id == ia) {
                va[r] = ns;
            } else {
                vb[r] = ns;
            }
        }
        d[r] = vb[r] - va[r];
    }
    *a = rsl_bench_median(va, n);
    *b = rsl_bench_median(vb, n);
    return rsl_bench_median(d, n);
}

/* Two threads on one breaker (stripes = 2), started together by a barrier. */
typedef struct {
    rsl__breaker *b;
    pthread_barrier_t *bar;
    long n;
    double ns_per_op;
} pair_arg;

static void *pair_thread(void *p) {
    pair_arg *a = p;
    pthread_barrier_wait(a->bar);
    int64_t t0 = rsl__clock_now();
    loop_breaker(a->b, a->n);
    a->ns_per_op = (double)(rsl__clock_now() - t0) / (double)a->n;
    return NULL;
}

static double pair_once(rsl__breaker *b, long n) {
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, 2);
    pair_arg a[2] = {{b, &bar, n, 0}, {b, &bar, n, 0}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        if (pthread_create(&th[i], NULL, pair_thread, &a[i]) != 0) {
            fprintf(stderr, "bench_guards: pthread_create failed\n");
            exit(1);
        }
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
    }
    pthread_barrier_destroy(&bar);
    return (a[0].ns_per_op + a[1].ns_per_op) / 2;
}

static double time_pair(rsl__breaker *b) {
    double v[RUNS];
    pair_once(b, ops / 10);
    for (int r = 0; r < runs; r++) {
        v[r] = pair_once(b, ops);
    }
    return rsl_bench_median(v, runs);
}

/* ---- memory ---- */

static long rss_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, resident = 0;
    if (!f) {
        return 0;
    }
    if (fscanf(f, "%ld %ld", &size, &resident) != 2) {
        resident = 0;
    }
    fclose(f);
    return resident * sysconf(_SC_PAGESIZE);
}

static void memory(int stripes, int n) {
    rsl__breaker **v = calloc((size_t)n, sizeof(*v));
    if (!v) {
        exit(1);
    }
    long before = rss_bytes();
    for (int i = 0; i < n; i++) {
        char name[32];
        snprintf(name, sizeof(name), "upstream-%05d", i);
        rsl__breaker_conf c;
        rsl__breaker_conf_default(&c);
        c.stripes = stripes;
        v[i] = rsl__breaker_new(name, &c);
        if (!v[i]) {
            exit(1);
        }
    }
    long after = rss_bytes();
    size_t own = rsl__breaker_size(v[0]);
    printf("memory per breaker (default conf, stripes=%d)   %zu B (rsl__breaker_size)   %.0f B "
           "(RSS delta / %d)   target <= 4096\n",
           stripes, own, (double)(after - before) / n, n);
    for (int i = 0; i < n; i++) {
        rsl__breaker_free(v[i]);
    }
    free(v);
}

/* Two threads through one keyed guard, started together: on one key (`same`: one
 * stripe's lock and one child) or on a key each. */
typedef struct {
    rsl__guard *g;
    rsl_req *req;
    pthread_barrier_t *bar;
    long n;
    double ns_per_op;
} kpair_arg;

static void *kpair_thread(void *p) {
    kpair_arg *a = p;
    pthread_barrier_wait(a->bar);
    int64_t t0 = rsl__clock_now();
    loop_keyed(a->g, &a->req, 1, a->n);
    a->ns_per_op = (double)(rsl__clock_now() - t0) / (double)a->n;
    return NULL;
}

static double time_kpair(guards *g, int same) {
    double v[RUNS];
    for (int r = 0; r < runs; r++) {
        pthread_barrier_t bar;
        pthread_barrier_init(&bar, NULL, 2);
        kpair_arg a[2] = {{g->kb, g->hot, &bar, ops, 0}, {g->kb, same ? g->hot : g->k1[1], &bar, ops, 0}};
        pthread_t t[2];
        for (int i = 0; i < 2; i++) {
            if (pthread_create(&t[i], NULL, kpair_thread, &a[i]) != 0) {
                fprintf(stderr, "bench_guards: pthread_create failed\n");
                exit(1);
            }
        }
        for (int i = 0; i < 2; i++) {
            pthread_join(t[i], NULL);
        }
        pthread_barrier_destroy(&bar);
        v[r] = (a[0].ns_per_op + a[1].ns_per_op) / 2;
    }
    return rsl_bench_median(v, runs);
}

/* ---- main ---- */

static void print_figure(const char *what, double ns, double clock_ns, const char *target) {
    printf("%-40s %7.1f ns/op   (clock_gettime %.1f ns, ratio %.2f)%s%s\n", what, ns, clock_ns,
           ns / clock_ns, target ? "   target " : "", target ? target : "");
}

static void new_extras(guards *g) {
    static const int usable[RSL_PRIORITIES] = {1000, 700, 700, 700, 700, 700, 700, 700};
    g->g0 = rsl__guard_new_bulkhead("bench-g", 64);
    g->gr = rsl__guard_new_bulkhead("bench-r", 64);
    g->ld = rsl__load_new(1, NULL);
    if (!g->g0 || !g->gr || !g->ld) {
        fprintf(stderr, "bench_guards: out of memory\n");
        exit(1);
    }
    rsl__guard_reserve_set(g->gr, usable);
    /* Breakers that stay closed (successes only); limiters too fast to refuse. */
    rsl__breaker_conf bc;
    rsl__breaker_conf_default(&bc);
    rsl__limiter_conf lc = {1e9, RSL_NS_PER_S, 1e9};
    rsl__keyed_conf big = {10000, 10}, small = {1000, 10};
    char err[256];
    g->gb = rsl__guard_new_breaker("bench-gb", &bc);
    g->kb = rsl__guard_new_breaker("bench-kb", &bc);
    g->kc = rsl__guard_new_breaker("bench-kc", &bc);
    g->gl = rsl__guard_new_limiter("bench-gl", &lc);
    g->kl = rsl__guard_new_limiter("bench-kl", &lc);
    g->hot = rsl_req_new();
    g->k1 = calloc(NK1, sizeof(*g->k1));
    g->many = calloc(NCHURN, sizeof(*g->many));
    if (!g->gb || !g->kb || !g->kc || !g->gl || !g->kl || !g->hot || !g->k1 || !g->many ||
        rsl__keyed_attach(g->kb, "${tenant}", &big, err, sizeof(err)) < 0 ||
        rsl__keyed_attach(g->kc, "${tenant}", &small, err, sizeof(err)) < 0 ||
        rsl__keyed_attach(g->kl, "${tenant}", &big, err, sizeof(err)) < 0) {
        fprintf(stderr, "bench_guards: out of memory\n");
        exit(1);
    }
    rsl_req_set(g->hot, "tenant", "acme-corp", 9);
    for (long i = 0; i < NCHURN; i++) {
        char k[32];
        int n = snprintf(k, sizeof(k), "tenant-%06ld", i);
        g->many[i] = rsl_req_new();
        if (!g->many[i]) {
            fprintf(stderr, "bench_guards: out of memory\n");
            exit(1);
        }
        rsl_req_set(g->many[i], "tenant", k, (size_t)n);
        if (i < NK1) {
            g->k1[i] = rsl_req_new();
            rsl_req_set(g->k1[i], "tenant", k, (size_t)n);
        }
    }
    /* The fleet's conf from the breaker's, as policy_guards.c builds it. */
    rsl__fleet_conf fc = {
        .quorum = 2,
        .flush_ns = 100 * RSL_NS_PER_MS,
        .window_ns = bc.window_ns,
        .buckets = bc.buckets,
        .min_calls = bc.min_calls,
        .failure_rate = bc.failure_rate,
        .slow_rate = bc.slow_rate,
        .open_for_ns = bc.open_for_ns,
        .backoff_factor = bc.backoff_factor,
        .backoff_max_ns = bc.backoff_max_ns,
        .jitter = bc.jitter,
        .probes = bc.probes,
    };
    g->gs = rsl__guard_new_breaker("bench-gs", &bc);
    g->fs = rsl__fleets_new("bench:", "bench", NULL);
    rsl__fleet *f = g->fs && g->gs ? rsl__fleets_get(g->fs, "bench-gs", &fc) : NULL;
    if (!f) {
        fprintf(stderr, "bench_guards: out of memory\n");
        exit(1);
    }
    atomic_store(&g->gs->fleet, f);
    rsl__limiter_conf glc = {.rate = 1e9, .per_ns = RSL_NS_PER_S, .burst = 1e9};
    rsl__lease_conf gc = {.rate = 1e9, .per_ns = RSL_NS_PER_S, .burst = 1e15, .lease = (int64_t)1e15};
    g->ggl = rsl__guard_new_limiter("bench-global", &glc);
    g->ls = rsl__leases_new("bench:", "bench", NULL);
    rsl__lease *l = g->ls && g->ggl ? rsl__leases_get(g->ls, "bench-global", &gc) : NULL;
    if (!l) {
        fprintf(stderr, "bench_guards: out of memory\n");
        exit(1);
    }
    atomic_store(&g->ggl->lease, l);
}

static void free_extras(guards *g) {
    rsl__guard_unref(g->g0);
    rsl__guard_unref(g->gr);
    rsl__load_free(g->ld);
    rsl__guard_unref(g->gb);
    rsl__guard_unref(g->kb);
    rsl__guard_unref(g->kc);
    rsl__guard_unref(g->gl);
    rsl__guard_unref(g->kl);
    rsl_req_free(g->hot);
    for (long i = 0; i < NCHURN; i++) {
        rsl_req_free(g->many[i]);
        if (i < NK1) {
            rsl_req_free(g->k1[i]);
        }
    }
    free(g->k1);
    free(g->many);
    rsl__guard_unref(g->gs);
    rsl__fleets_free(g->fs); /* after the guard that used it */
    rsl__guard_unref(g->ggl);
    rsl__leases_free(g->ls);
}

static int ops_mode(const char *name, long n) {
    guards g = {new_breaker(1), new_limiter(),  rsl__bulkhead_new("bench", 64),
                NULL,           new_throttle(), new_adaptive(),
                NULL,           NULL,           NULL,
                NULL,           NULL,           NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                NULL,           NULL};
    new_extras(&g);
    if (strcmp(name, "breaker") == 0) {
        loop_breaker(g.b, n);
    } else if (strcmp(name, "breaker2") == 0) {
        rsl__breaker *b2 = new_breaker(2);
        pair_once(b2, n);
        rsl__breaker_free(b2);
    } else if (strcmp(name, "limiter") == 0) {
        loop_limiter(g.l, n);
    } else if (strcmp(name, "bulkhead") == 0) {
        loop_bulkhead(g.h, n);
    } else if (strcmp(name, "throttle") == 0) {
        loop_throttle(g.t, n);
    } else if (strcmp(name, "adaptive") == 0) {
        loop_adaptive(g.a, n);
    } else if (strcmp(name, "reserve") == 0) {
        loop_guard(g.gr, 1, n);
    } else if (strcmp(name, "shed") == 0) {
        loop_shed(g.ld, n);
    } else if (strcmp(name, "clock") == 0) {
        loop_clock(n);
    } else if (strcmp(name, "atomic") == 0) {
        loop_atomic(n);
    } else if (strcmp(name, "gbreaker") == 0) {
        run_once(B_GBREAKER, &g, n);
    } else if (strcmp(name, "sbreaker") == 0) {
        run_once(B_SBREAKER, &g, n);
    } else if (strcmp(name, "kbreaker") == 0) {
        run_once(B_KBREAKER, &g, n);
    } else if (strcmp(name, "kbreaker1k") == 0) {
        run_once(B_KBREAKER1K, &g, n);
    } else if (strcmp(name, "kchurn") == 0) {
        run_once(B_KCHURN, &g, n);
    } else if (strcmp(name, "glimiter") == 0) {
        run_once(B_GLIMITER, &g, n);
    } else if (strcmp(name, "klimiter") == 0) {
        run_once(B_KLIMITER, &g, n);
    } else if (strcmp(name, "glease") == 0) {
        run_once(B_LEASE, &g, n);
    } else {
        fprintf(stderr, "bench_guards: unknown benchmark %s\n", name);
        return 2;
    }
    rsl__breaker_free(g.b);
    rsl__limiter_free(g.l);
    rsl__bulkhead_free(g.h);
    rsl__throttle_free(g.t);
    rsl__adaptive_free(g.a);
    free_extras(&g);
    return 0;
}

int main(int argc, char **argv) {
    int nbreakers = NBREAKERS;
    rsl__thread_slot = 1; /* this thread counts as worker 0 (clock.h), as a call's would */
    if (argc == 4 && strcmp(argv[1], "--ops") == 0) {
        return ops_mode(argv[2], atol(argv[3]));
    }
    if (argc == 2 && strcmp(argv[1], "--smoke") == 0) {
        runs = SMOKE_RUNS;
        ops = SMOKE_OPS;
        nbreakers = 1000;
    } else if (argc != 1) {
        fprintf(stderr, "usage: bench_guards [--smoke | --ops NAME N]\n");
        return 2;
    }
    guards g = {new_breaker(1), new_limiter(),  rsl__bulkhead_new("bench", 64),
                new_joint(),    new_throttle(), new_adaptive(),
                NULL,           NULL,           NULL,
                NULL,           NULL,           NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                NULL,           NULL};
    new_extras(&g);
    rsl__breaker *b2 = new_breaker(2);

    double clk = time_one(B_CLOCK, &g);
    double coarse = time_one(B_COARSE, &g);
    double atom = time_one(B_ATOMIC, &g);
    double br = time_one(B_BREAKER, &g);
    double br2 = time_pair(b2);
    double joint = time_one(B_JOINT, &g);
    double lim = time_one(B_LIMITER, &g);
    double bh = time_one(B_BULKHEAD, &g);
    double thr = time_one(B_THROTTLE, &g);
    double ad = time_one(B_ADAPTIVE, &g);
    double gd = time_one(B_GUARD, &g);
    double gres = time_one(B_GUARD_RESERVE, &g);
    double shed = time_one(B_SHED, &g);
    /* Local and shared run for run: the figure is the median of the pairs' differences. */
    double gbr, gsh;
    double gadd = time_diff(B_GBREAKER, B_SBREAKER, &g, &gbr, &gsh);
    rsl__fleet_stats fst;
    rsl__fleet_stats_get(rsl__guard_fleet(g.gs), &fst);
    double kbr = time_one(B_KBREAKER, &g);
    double kbr1k = time_one(B_KBREAKER1K, &g);
    double kchurn = time_one(B_KCHURN, &g);
    double glim = time_one(B_GLIMITER, &g);
    double klim = time_one(B_KLIMITER, &g);
    double glease = time_one(B_LEASE, &g);
    double kpair_same = time_kpair(&g, 1);
    double kpair_two = time_kpair(&g, 0);

    printf("bench_guards: median of %d runs x %ld ops; breaker `now` from the coarse clock "
           "once per 64 ops\n",
           runs, ops);
    print_figure("clock_gettime(CLOCK_MONOTONIC)", clk, clk, NULL);
    print_figure("clock_gettime(CLOCK_MONOTONIC_COARSE)", coarse, clk, NULL);
    print_figure("atomic fetch_add (uncontended)", atom, clk, NULL);
    print_figure("breaker allow+record (1 thread)", br, clk, "<= 20 ns");
    print_figure("breaker allow+record (2 threads, each)", br2, clk, "<= 40 ns");
    print_figure("joint-trip breaker allow+record", joint, clk, NULL);
    printf("%-40s %7.2f x the plain breaker   target <= 2x\n", "joint-trip breaker", joint / br);
    print_figure("limiter allow", lim, clk, NULL);
    print_figure("bulkhead acquire+release", bh, clk, NULL);
    print_figure("throttle allow+accept", thr, clk, NULL);
    printf("%-40s %7.2f x the plain breaker   target <= 2x\n", "throttle", thr / br);
    print_figure("adaptive acquire+release", ad, clk, NULL);
    printf("%-40s %7.2f x the plain breaker   target <= 2x\n", "adaptive", ad / br);
    print_figure("guard: bulkhead, priority 1", gd, clk, NULL);
    print_figure("guard: bulkhead + reserve, priority 1", gres, clk, NULL);
    printf("%-40s %+7.1f ns/op\n", "a reserve's added cost", gres - gd);
    print_figure("load shedding check per call", shed, clk, NULL);
    print_figure("guard: breaker (plain)", gbr, clk, NULL);
    char what[64];
    snprintf(what, sizeof(what), "guard: shared breaker (fleet %s)", rsl__fleet_mode_name(fst.mode));
    print_figure(what, gsh, clk, NULL);
    printf("%-40s %+7.1f ns/op   target <= 10 ns (median of %d run-for-run differences; no "
           "Redis: the flush every 64 outcomes takes the counts and sends nothing)\n",
           "a shared breaker's added cost", gadd, runs < 9 ? runs : PAIRS);
    print_figure("guard: keyed breaker, one hot key", kbr, clk, NULL);
    printf("%-40s %7.2f x the plain breaker guard (%+.1f ns)\n", "keyed breaker, one hot key",
           kbr / gbr, kbr - gbr);
    print_figure("guard: keyed breaker, 1000 keys in turn", kbr1k, clk, NULL);
    printf("%-40s %7.2f x the plain breaker guard (%+.1f ns)\n", "keyed breaker, 1000 keys",
           kbr1k / gbr, kbr1k - gbr);
    print_figure("guard: keyed breaker, a new key per op", kchurn, clk, NULL);
    printf("%-40s %7.2f x the plain breaker guard\n", "keyed breaker, churn (make+evict)",
           kchurn / gbr);
    print_figure("keyed breaker, 2 threads, one key (each)", kpair_same, clk, NULL);
    print_figure("keyed breaker, 2 threads, 2 keys (each)", kpair_two, clk, NULL);
    print_figure("guard: limiter (plain)", glim, clk, NULL);
    print_figure("guard: keyed limiter, one hot key", klim, clk, NULL);
    printf("%-40s %7.2f x the plain limiter guard (%+.1f ns)\n", "keyed limiter, one hot key",
           klim / glim, klim - glim);
    print_figure("guard: global limiter (leased pool)", glease, clk, NULL);
    printf("%-40s %7.2f x the plain limiter guard (%.0f M decisions/s on one thread)\n",
           "global limiter's decision", glease / glim, 1e3 / glease);
    memory(1, nbreakers);
    memory(2, nbreakers);

    /* sanity: every success-path call was admitted and the breakers stayed closed */
    int ok = rsl__breaker_state_get(g.b) == RSL_BREAKER_CLOSED &&
             rsl__breaker_state_get(b2) == RSL_BREAKER_CLOSED && rsl__breaker_rejections(g.b) == 0 &&
             rsl__breaker_state_get(g.gs->u.breaker) == RSL_BREAKER_CLOSED &&
             fst.mode == RSL_FLEET_DOWN;
    rsl__breaker_free(g.b);
    rsl__breaker_free(g.j);
    rsl__breaker_free(b2);
    rsl__limiter_free(g.l);
    rsl__bulkhead_free(g.h);
    rsl__throttle_free(g.t);
    rsl__adaptive_free(g.a);
    free_extras(&g);
    if (!ok) {
        fprintf(stderr, "bench_guards: a success-only breaker left the closed state\n");
        return 1;
    }
    return 0;
}
