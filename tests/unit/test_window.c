/* test_window.c -- the striped sliding window: counts, eviction, quantiles, clear, threads.
 * Every test passes `now` itself; none sleeps. */
// ctest-labels: tsan
#include "test.h"

#include "clock.h"
#include "window.h"

#include <pthread.h>
#include <stdatomic.h>

#define S  RSL_NS_PER_S
#define MS RSL_NS_PER_MS

static rsl__window_counts counts(rsl__window *w, int64_t now) {
    rsl__window_counts c;
    rsl__window_counts_at(w, now, &c);
    return c;
}

/* A deterministic generator for test data (not the library's). */
static uint64_t lcg_state = 88172645463325252ull;
static double urand(void) {
    lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(lcg_state >> 11) * (1.0 / 9007199254740992.0);
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

TEST(window_bad_args) {
    ASSERT(rsl__window_new(0, 10, 1) == NULL);
    ASSERT(rsl__window_new(10 * S, 0, 1) == NULL);
    ASSERT(rsl__window_new(10 * S, RSL_WINDOW_MAX_BUCKETS + 1, 1) == NULL);
    ASSERT(rsl__window_new(10 * S, 10, 0) == NULL);
    ASSERT(rsl__window_new(10 * S, 10, RSL_WINDOW_MAX_STRIPES + 1) == NULL);
    ASSERT(rsl__window_new(100, 10, 1) == NULL); /* 10 ns buckets: below 1 us */
    rsl__window *w = rsl__window_new(10 * S, RSL_WINDOW_MAX_BUCKETS, RSL_WINDOW_MAX_STRIPES);
    ASSERT(w != NULL);
    rsl__window_free(w);
    rsl__window_free(NULL);
}

TEST(window_size_default) {
    rsl__window *w1 = rsl__window_new(10 * S, 10, 1);
    rsl__window *w2 = rsl__window_new(10 * S, 10, 2);
    /* 64-byte header + per stripe (32 + 10 * 172) rounded up to 64 = 1792 */
    ASSERT_EQ(rsl__window_size(w1), 64 + 1792);
    ASSERT_EQ(rsl__window_size(w2), 64 + 2 * 1792);
    rsl__window_free(w1);
    rsl__window_free(w2);
}

TEST(window_counts) {
    rsl__window *w = rsl__window_new(10 * S, 10, 1);
    rsl__window_counts c = counts(w, 0);
    ASSERT_EQ(c.calls, 0);
    rsl__window_record(w, 100, 0, 0, MS);
    rsl__window_record(w, 200, 1, 0, MS);
    rsl__window_record(w, 300, 0, 1, MS);
    rsl__window_record(w, 400, 1, 1, MS);
    c = counts(w, 500);
    ASSERT_EQ(c.calls, 4);
    ASSERT_EQ(c.failures, 2);
    ASSERT_EQ(c.slow, 2);
    rsl__window_free(w);
}

TEST(window_record_return) {
    rsl__window *w = rsl__window_new(10 * S, 10, 1);
    ASSERT_EQ(rsl__window_record(w, 100, 0, 0, MS), 1);
    ASSERT_EQ(rsl__window_record(w, 200, 0, 0, MS), 2);
    /* the next bucket: this record moved the head */
    ASSERT_EQ(rsl__window_record(w, S + 1, 0, 0, MS), -1);
    ASSERT_EQ(rsl__window_record(w, S + 2, 0, 0, MS), 4);
    rsl__window_free(w);
}

TEST(window_eviction) {
    rsl__window *w = rsl__window_new(10 * S, 10, 1);
    /* bucket k (1 s wide) gets k + 1 calls, the even ones failed */
    int64_t total = 0;
    for (int k = 0; k < 10; k++) {
        for (int i = 0; i <= k; i++) {
            rsl__window_record(w, k * S + 500 * MS, k % 2 == 0, 0, MS);
        }
        total += k + 1;
    }
    ASSERT_EQ(counts(w, 9 * S + 999 * MS).calls, total);
    ASSERT_EQ(counts(w, 9 * S + 999 * MS).failures, 1 + 3 + 5 + 7 + 9);
    /* at 10 s bucket 0 falls out, at 11 s bucket 1, ... */
    ASSERT_EQ(counts(w, 10 * S).calls, total - 1);
    ASSERT_EQ(counts(w, 10 * S).failures, 3 + 5 + 7 + 9);
    ASSERT_EQ(counts(w, 11 * S).calls, total - 1 - 2);
    ASSERT_EQ(counts(w, 15 * S + 1).calls, 7 + 8 + 9 + 10);
    ASSERT_EQ(counts(w, 19 * S - 1).calls, 10);
    ASSERT_EQ(counts(w, 19 * S).calls, 0);
    ASSERT_EQ(rsl__window_quantile(w, 19 * S, 0.5), 0);
    rsl__window_free(w);
}

TEST(window_idle_gap_reads_empty) {
    rsl__window *w = rsl__window_new(10 * S, 10, 2);
    for (int i = 0; i < 100; i++) {
        rsl__window_record(w, 3 * S, 1, 1, 5 * MS);
    }
    ASSERT_EQ(counts(w, 3 * S).calls, 100);
    ASSERT_EQ(counts(w, 3600 * S).calls, 0);
    ASSERT_EQ(counts(w, 3600 * S).failures, 0);
    ASSERT_EQ(counts(w, 3600 * S).slow, 0);
    ASSERT_EQ(rsl__window_quantile(w, 3600 * S, 0.99), 0);
    /* and it records afresh after the gap */
    rsl__window_record(w, 3600 * S + 1, 0, 0, MS);
    ASSERT_EQ(counts(w, 3600 * S + 2).calls, 1);
    rsl__window_free(w);
}

TEST(window_late_record) {
    rsl__window *w = rsl__window_new(10 * S, 10, 1);
    rsl__window_record(w, 20 * S, 0, 0, MS);
    rsl__window_record(w, 15 * S, 1, 0, MS); /* late but inside the window: counted */
    rsl__window_record(w, 5 * S, 1, 0, MS);  /* older than the window: dropped */
    ASSERT_EQ(counts(w, 20 * S).calls, 2);
    ASSERT_EQ(counts(w, 20 * S).failures, 1);
    ASSERT_EQ(counts(w, 25 * S).calls, 1); /* the 15 s one aged out */
    rsl__window_free(w);
}

/* Totals (subtract-on-evict) against a brute-force recount of every event in the window. */
TEST(window_totals_match_model) {
    enum { N = 20000 };
    static int64_t t[N];
    static int f[N], sl[N];
    const int64_t width = 2 * S;
    const int buckets = 8;
    const int64_t bw = width / buckets;
    rsl__window *w = rsl__window_new(width, buckets, 1);
    int64_t now = 0;
    for (int i = 0; i < N; i++) {
        /* mostly small steps, sometimes a gap of several buckets or a whole window */
        double u = urand();
        now += u < 0.9 ? (int64_t)(urand() * 2 * MS) : u < 0.99 ? (int64_t)(urand() * S) : 3 * S;
        t[i] = now;
        f[i] = urand() < 0.3;
        sl[i] = urand() < 0.2;
        rsl__window_record(w, now, f[i], sl[i], MS);
        if (i % 97 == 0) {
            int64_t e = now / bw, calls = 0, fails = 0, slow = 0;
            for (int j = 0; j <= i; j++) {
                if (t[j] / bw > e - buckets) {
                    calls++;
                    fails += f[j];
                    slow += sl[j];
                }
            }
            rsl__window_counts c = counts(w, now);
            ASSERT_EQ(c.calls, calls);
            ASSERT_EQ(c.failures, fails);
            ASSERT_EQ(c.slow, slow);
        }
    }
    rsl__window_free(w);
}

static void check_quantiles(int64_t *lat, int n, const char *what) {
    rsl__window *w = rsl__window_new(10 * S, 10, 1);
    for (int i = 0; i < n; i++) {
        rsl__window_record(w, 5 * S, 0, 0, lat[i]);
    }
    qsort(lat, (size_t)n, sizeof(*lat), cmp_i64);
    static const double qs[] = {0.5, 0.9, 0.99};
    for (int k = 0; k < 3; k++) {
        double truth = (double)lat[(int)(qs[k] * n) - 1];
        double got = (double)rsl__window_quantile(w, 5 * S, qs[k]);
        if (fabs(got - truth) > 0.2 * truth) {
            rsl_test_fail(__FILE__, __LINE__, "%s p%g: got %.0f ns, truth %.0f ns", what,
                          qs[k] * 100, got, truth);
        }
    }
    rsl__window_free(w);
}

TEST(window_quantiles) {
    enum { N = 20000 };
    static int64_t lat[N];
    for (int i = 0; i < N; i++) { /* uniform 1..100 ms */
        lat[i] = (int64_t)((1 + 99 * urand()) * MS);
    }
    check_quantiles(lat, N, "uniform");
    for (int i = 0; i < N; i++) { /* exponential, mean 20 ms */
        lat[i] = (int64_t)(-log(1 - urand()) * 20 * MS);
    }
    check_quantiles(lat, N, "exponential");
    for (int i = 0; i < N; i++) { /* log-normal around 300 us, sigma 1 */
        double g = sqrt(-2 * log(1 - urand())) * cos(2 * M_PI * urand());
        lat[i] = (int64_t)(300 * RSL_NS_PER_US * exp(g));
    }
    check_quantiles(lat, N, "lognormal");
    for (int i = 0; i < N; i++) { /* bimodal: 90% around 2 ms, 10% around 400 ms */
        lat[i] = (int64_t)((urand() < 0.9 ? 1.5 + urand() : 300 + 200 * urand()) * MS);
    }
    check_quantiles(lat, N, "bimodal");
}

TEST(window_quantile_edges) {
    rsl__window *w = rsl__window_new(10 * S, 10, 1);
    ASSERT_EQ(rsl__window_quantile(w, 0, 0.5), 0);
    rsl__window_record(w, 0, 0, 0, 0);
    rsl__window_record(w, 0, 0, 0, 100 * S); /* past the last bin's bound */
    ASSERT(rsl__window_quantile(w, 0, 0) < 32 * RSL_NS_PER_US);
    ASSERT(rsl__window_quantile(w, 0, 1) >= 16 * S);
    ASSERT(rsl__window_quantile(w, 0, -1) < 32 * RSL_NS_PER_US);
    ASSERT(rsl__window_quantile(w, 0, 2) >= 16 * S);
    rsl__window_free(w);
}

TEST(window_clear) {
    rsl__window *w = rsl__window_new(10 * S, 10, 4);
    for (int i = 0; i < 50; i++) {
        rsl__window_record(w, i * 100 * MS, i % 2, i % 3 == 0, 10 * MS);
    }
    ASSERT_EQ(counts(w, 5 * S).calls, 50);
    rsl__window_clear(w);
    ASSERT_EQ(counts(w, 5 * S).calls, 0);
    ASSERT_EQ(counts(w, 5 * S).failures, 0);
    ASSERT_EQ(counts(w, 5 * S).slow, 0);
    ASSERT_EQ(rsl__window_quantile(w, 5 * S, 0.5), 0);
    rsl__window_record(w, 5 * S, 1, 0, 10 * MS);
    ASSERT_EQ(counts(w, 5 * S).calls, 1);
    ASSERT_EQ(counts(w, 5 * S).failures, 1);
    /* nothing goes negative when the cleared buckets age out */
    ASSERT_EQ(counts(w, 14 * S).calls, 1);
    ASSERT_EQ(counts(w, 16 * S).calls, 0);
    rsl__window_free(w);
}

/* ---- threads ---- */

typedef struct {
    rsl__window *w;
    int n;
    _Atomic int64_t *clock; /* NULL: every record at the same time */
} rec_arg;

static void *recorder(void *p) {
    rec_arg *a = p;
    for (int i = 0; i < a->n; i++) {
        int64_t now = a->clock ? atomic_fetch_add(a->clock, 10 * RSL_NS_PER_US) : S;
        rsl__window_record(a->w, now, i % 4 == 0, i % 8 == 0, (i % 100 + 1) * MS);
    }
    return NULL;
}

static void run_recorders(rsl__window *w, int threads, int n, _Atomic int64_t *clock) {
    pthread_t th[8];
    rec_arg a = {w, n, clock};
    for (int i = 0; i < threads; i++) {
        ASSERT(pthread_create(&th[i], NULL, recorder, &a) == 0);
    }
    for (int i = 0; i < threads; i++) {
        pthread_join(th[i], NULL);
    }
}

TEST(window_threads_exact_without_eviction) {
    static const int stripes[] = {1, 2, 8};
    for (int k = 0; k < 3; k++) {
        rsl__window *w = rsl__window_new(10 * S, 10, stripes[k]);
        /* Move every head to the threads' bucket first: recorders racing the move into a
         * bucket may lose counts by design (window.h), and this test counts exactly. */
        ASSERT_EQ(counts(w, S).calls, 0);
        run_recorders(w, 4, 50000, NULL);
        rsl__window_counts c = counts(w, S);
        ASSERT_EQ(c.calls, 4 * 50000);
        ASSERT_EQ(c.failures, 4 * 50000 / 4);
        ASSERT_EQ(c.slow, 4 * 50000 / 8);
        rsl__window_free(w);
    }
}

TEST(window_threads_with_eviction_stay_consistent) {
    /* Time moves while 2 threads record: counts may be lost at bucket boundaries, but the
     * totals never drift: once the window ages out they read exactly 0. */
    _Atomic int64_t clock = 0;
    rsl__window *w = rsl__window_new(100 * MS, 10, 2);
    run_recorders(w, 2, 100000, &clock);
    rsl__window_counts c = counts(w, atomic_load(&clock));
    ASSERT(c.calls > 0 && c.calls <= 100 * MS / (10 * RSL_NS_PER_US) + 1);
    ASSERT(c.failures <= c.calls && c.slow <= c.calls);
    c = counts(w, atomic_load(&clock) + S);
    ASSERT_EQ(c.calls, 0);
    ASSERT_EQ(c.failures, 0);
    ASSERT_EQ(c.slow, 0);
    rsl__window_free(w);
}
