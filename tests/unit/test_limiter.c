/* test_limiter.c -- GCRA rate and burst on an injected clock; configure; two threads
 * draining one bucket on the real clock. */
// ctest-labels: tsan
#include "test.h"

#include "clock.h"
#include "limiter.h"

#include <pthread.h>

#define S  RSL_NS_PER_S
#define MS RSL_NS_PER_MS

static rsl__limiter *mk(double rate, int64_t per, double burst) {
    rsl__limiter_conf c = {rate, per, burst};
    rsl__limiter *l = rsl__limiter_new("l", &c);
    ASSERT(l);
    return l;
}

TEST(limiter_bad_conf_and_defaults) {
    rsl__limiter_conf c = {0, S, 1};
    ASSERT(rsl__limiter_new("l", &c) == NULL);
    c = (rsl__limiter_conf){-5, S, 1};
    ASSERT(rsl__limiter_new("l", &c) == NULL);
    c = (rsl__limiter_conf){NAN, S, 1};
    ASSERT(rsl__limiter_new("l", &c) == NULL);
    c = (rsl__limiter_conf){10, -S, 1};
    ASSERT(rsl__limiter_new("l", &c) == NULL);
    c = (rsl__limiter_conf){10, S, 0.5};
    ASSERT(rsl__limiter_new("l", &c) == NULL);
    c = (rsl__limiter_conf){1, 3600 * S, 1e9}; /* tau = 1e9 hours: overflows */
    ASSERT(rsl__limiter_new("l", &c) == NULL);
    ASSERT(rsl__limiter_new(NULL, &c) == NULL);
    ASSERT(rsl__limiter_new("l", NULL) == NULL);
    /* per 0: 1 s; burst 0: the rate */
    c = (rsl__limiter_conf){50, 0, 0};
    rsl__limiter *l = rsl__limiter_new("users-rps", &c);
    ASSERT(l);
    ASSERT_STR_EQ(rsl__limiter_name(l), "users-rps");
    rsl__limiter_conf got;
    rsl__limiter_conf_get(l, &got);
    ASSERT_EQ(got.per_ns, S);
    ASSERT_EQ(got.burst, 50);
    ASSERT_EQ(got.rate, 50);
    ASSERT_NEAR(rsl__limiter_tokens(l, 0), 50, 1e-9);
    rsl__limiter_free(l);
    rsl__limiter_free(NULL);
}

TEST(limiter_burst_then_steady_rate) {
    rsl__limiter *l = mk(10, S, 5); /* one call per 100 ms, 5 at once */
    int64_t t0 = 1000 * S;
    for (int i = 0; i < 5; i++) {
        ASSERT(rsl__limiter_allow(l, t0));
    }
    ASSERT(!rsl__limiter_allow(l, t0));
    ASSERT(!rsl__limiter_allow(l, t0 + 99 * MS));
    ASSERT_EQ(rsl__limiter_rejections(l), 2);
    ASSERT(rsl__limiter_allow(l, t0 + 100 * MS));
    ASSERT(!rsl__limiter_allow(l, t0 + 100 * MS));
    /* trying every ms for 10 s: exactly one per 100 ms, spaced exactly 100 ms */
    int admitted = 0;
    int64_t last = t0 + 100 * MS;
    for (int64_t t = t0 + 101 * MS; t <= t0 + 10100 * MS; t += MS) {
        if (rsl__limiter_allow(l, t)) {
            admitted++;
            ASSERT_EQ(t - last, 100 * MS);
            last = t;
        }
    }
    ASSERT_EQ(admitted, 100);
    rsl__limiter_free(l);
}

TEST(limiter_refills_to_burst_only) {
    rsl__limiter *l = mk(10, S, 5);
    for (int i = 0; i < 5; i++) {
        ASSERT(rsl__limiter_allow(l, 0));
    }
    /* idle for a minute: back to 5, not 600 */
    int n = 0;
    while (rsl__limiter_allow(l, 60 * S)) {
        n++;
    }
    ASSERT_EQ(n, 5);
    rsl__limiter_free(l);
}

TEST(limiter_tokens) {
    rsl__limiter *l = mk(10, S, 5);
    ASSERT_NEAR(rsl__limiter_tokens(l, 0), 5, 1e-9);
    ASSERT(rsl__limiter_allow(l, 0));
    ASSERT(rsl__limiter_allow(l, 0));
    ASSERT_NEAR(rsl__limiter_tokens(l, 0), 3, 1e-9);
    for (int i = 0; i < 3; i++) {
        ASSERT(rsl__limiter_allow(l, 0));
    }
    ASSERT_NEAR(rsl__limiter_tokens(l, 0), 0, 1e-9);
    ASSERT_NEAR(rsl__limiter_tokens(l, 50 * MS), 0.5, 1e-9);
    ASSERT(!rsl__limiter_allow(l, 50 * MS)); /* half a token is not a call */
    ASSERT_NEAR(rsl__limiter_tokens(l, 250 * MS), 2.5, 1e-9);
    ASSERT_NEAR(rsl__limiter_tokens(l, 10 * S), 5, 1e-9);
    rsl__limiter_free(l);
}

TEST(limiter_fractional_rate_and_per) {
    rsl__limiter *l = mk(3, 2 * S, 1); /* 3 calls per 2 s: one per 666.67 ms */
    ASSERT(rsl__limiter_allow(l, 0));
    ASSERT(!rsl__limiter_allow(l, 666 * MS));
    ASSERT(rsl__limiter_allow(l, 667 * MS));
    int n = 0;
    for (int64_t t = 668 * MS; t < 60 * S + 668 * MS; t += MS) {
        n += rsl__limiter_allow(l, t);
    }
    ASSERT(n == 90 || n == 89); /* 60 s at 1.5/s */
    rsl__limiter_free(l);
}

TEST(limiter_configure_keeps_fill) {
    rsl__limiter *l = mk(10, S, 10);
    for (int i = 0; i < 4; i++) {
        ASSERT(rsl__limiter_allow(l, 0));
    }
    ASSERT_NEAR(rsl__limiter_tokens(l, 0), 6, 1e-9);
    /* a higher rate and burst: still 6 now, refilling at 20/s */
    rsl__limiter_conf c = {20, S, 20};
    ASSERT_EQ(rsl__limiter_configure(l, &c, 0), 0);
    ASSERT_NEAR(rsl__limiter_tokens(l, 0), 6, 1e-9);
    ASSERT_NEAR(rsl__limiter_tokens(l, 50 * MS), 7, 1e-9);
    ASSERT_NEAR(rsl__limiter_tokens(l, 10 * S), 20, 1e-9);
    rsl__limiter_conf got;
    rsl__limiter_conf_get(l, &got);
    ASSERT_EQ(got.rate, 20);
    ASSERT_EQ(got.burst, 20);
    /* a smaller burst caps the fill */
    c = (rsl__limiter_conf){20, S, 3};
    ASSERT_EQ(rsl__limiter_configure(l, &c, 0), 0);
    ASSERT_NEAR(rsl__limiter_tokens(l, 0), 3, 1e-9);
    for (int i = 0; i < 3; i++) {
        ASSERT(rsl__limiter_allow(l, 0));
    }
    ASSERT(!rsl__limiter_allow(l, 0));
    /* an empty bucket stays empty across a change */
    c = (rsl__limiter_conf){5, S, 3};
    ASSERT_EQ(rsl__limiter_configure(l, &c, 0), 0);
    ASSERT_NEAR(rsl__limiter_tokens(l, 0), 0, 1e-9);
    ASSERT(!rsl__limiter_allow(l, 199 * MS));
    ASSERT(rsl__limiter_allow(l, 200 * MS));
    /* a bad conf changes nothing */
    c = (rsl__limiter_conf){-1, S, 3};
    ASSERT(rsl__limiter_configure(l, &c, 0) < 0);
    rsl__limiter_conf_get(l, &got);
    ASSERT_EQ(got.rate, 5);
    rsl__limiter_free(l);
}

/* ---- threads ---- */

typedef struct {
    rsl__limiter *l;
    pthread_barrier_t *start; /* both threads drain at once */
    int64_t until;
    long admitted;
} drain_arg;

static void *drainer(void *p) {
    drain_arg *a = p;
    pthread_barrier_wait(a->start);
    a->until = rsl__clock_now() + 200 * MS;
    for (;;) {
        int64_t now = rsl__clock_now();
        if (now >= a->until) {
            break;
        }
        a->admitted += rsl__limiter_allow(a->l, now);
    }
    return NULL;
}

TEST(limiter_two_threads_never_exceed) {
    const double rate = 20000, burst = 50;
    rsl__limiter *l = mk(rate, S, burst);
    pthread_barrier_t start;
    ASSERT(pthread_barrier_init(&start, NULL, 2) == 0);
    int64_t t0 = rsl__clock_now(); /* before any call: the bound covers them all */
    drain_arg a[2] = {{l, &start, 0, 0}, {l, &start, 0, 0}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        ASSERT(pthread_create(&th[i], NULL, drainer, &a[i]) == 0);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
    }
    pthread_barrier_destroy(&start);
    double elapsed = (double)(rsl__clock_now() - t0) / (double)S;
    long admitted = a[0].admitted + a[1].admitted;
    double bound = burst + rate * elapsed + 1;
    printf("    admitted %ld + %ld in %.0f ms (bound %g)\n", a[0].admitted, a[1].admitted,
           elapsed * 1e3, bound);
    if ((double)admitted > bound) {
        rsl_test_fail(__FILE__, __LINE__, "admitted %ld > %g", admitted, bound);
    }
    ASSERT(admitted >= (long)burst);
    rsl__limiter_free(l);
}
