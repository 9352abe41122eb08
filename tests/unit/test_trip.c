/* test_trip.c -- the joint error-rate + latency trip (trip.c through breaker.c), one
 * invariant a test, on an injected clock: no sleeps. */
// ctest-labels: tsan
#include "test.h"

#include "breaker.h"
#include "clock.h"
#include "trip.h"

#include <pthread.h>
#include <stdatomic.h>

#define S  RSL_NS_PER_S
#define MS RSL_NS_PER_MS

#define OK   RSL_OUTCOME_OK
#define FAIL RSL_OUTCOME_5XX
#define ST(b) rsl__breaker_state_get(b)

/* The example: failure_rate 20, p90 over 800 ms, 3 periods of 1 s, window 10 s,
 * short window 5 s; the plain rules off so only the joint rule can trip. */
static rsl__breaker_conf conf(void) {
    rsl__breaker_conf c;
    rsl__breaker_conf_default(&c);
    c.min_calls = 10;
    c.failure_rate = 0;
    c.slow_rate = 0;
    c.open_for_ns = 1 * S;
    c.jitter = 0;
    rsl__trip_conf_default(&c.trip);
    c.trip.periods = 3;
    return c;
}

/* n calls at `now`, the first `nfail` failing, each reporting latency `lat` (recorded at
 * `now` too, so it lands in the period it started in before that period is judged). */
static void burst(rsl__breaker *b, int64_t now, int n, int nfail, int64_t lat) {
    for (int i = 0; i < n; i++) {
        rsl__permit p;
        if (rsl__breaker_allow(b, now, &p)) {
            rsl__breaker_record(b, &p, now, i < nfail ? FAIL : OK, lat);
        }
    }
}

/* A call without a verdict at `now`: lets the breaker judge the periods that ended. */
static void tick(rsl__breaker *b, int64_t now) {
    rsl__permit p;
    if (rsl__breaker_allow(b, now, &p)) {
        rsl__breaker_release(b, &p);
    }
}

/* Period k (1 s each, starting at 1 s so the first call starts the clock): 20 calls in
 * its first half. */
static int64_t at(int k) {
    return (int64_t)(k + 1) * S + 100 * MS;
}

TEST(trip_conf) {
    rsl__trip_conf c;
    rsl__trip_conf_default(&c);
    ASSERT_EQ(c.periods, 0);
    ASSERT(rsl__trip_conf_ok(&c));
    ASSERT(!rsl__trip_new(&c)); /* off */
    c.periods = 3;
    ASSERT(rsl__trip_conf_ok(&c));
    c.window_ns = 1500 * MS; /* not a multiple of the period */
    ASSERT(!rsl__trip_conf_ok(&c));
    c.window_ns = 61 * S; /* too many periods */
    ASSERT(!rsl__trip_conf_ok(&c));
    c.window_ns = 10 * S;
    c.short_window_ns = 20 * S;
    ASSERT(!rsl__trip_conf_ok(&c));
    c.short_window_ns = 5 * S;
    c.factor = 1.2;
    c.max_ns = 100 * MS; /* below over */
    ASSERT(!rsl__trip_conf_ok(&c));
    c.max_ns = 1500 * MS;
    c.failure_rate = 0;
    c.over_ns = 0; /* no leg at all */
    ASSERT(!rsl__trip_conf_ok(&c));
    rsl__breaker_conf bc = conf();
    bc.trip.q = 0;
    ASSERT(!rsl__breaker_new("x", &bc));
}

TEST(trip_latency_spike_low_errors_does_not_trip) {
    rsl__breaker_conf c = conf();
    rsl__breaker *b = rsl__breaker_new("x", &c);
    for (int k = 0; k < 20; k++) {
        burst(b, at(k), 20, 1, 1200 * MS); /* 5% errors, every call 1.2 s */
    }
    tick(b, at(20));
    ASSERT_EQ(ST(b), RSL_BREAKER_CLOSED);
    ASSERT_EQ(rsl__trip_streak(rsl__breaker_trip(b)), 0);
    ASSERT_EQ(rsl__trip_bad_periods(rsl__breaker_trip(b)), 0);
    ASSERT(rsl__trip_periods_judged(rsl__breaker_trip(b)) >= 20);
    rsl__breaker_free(b);
}

TEST(trip_error_spike_low_latency_does_not_trip) {
    rsl__breaker_conf c = conf();
    rsl__breaker *b = rsl__breaker_new("x", &c);
    for (int k = 0; k < 20; k++) {
        burst(b, at(k), 20, 10, 10 * MS); /* 50% errors, fast */
    }
    tick(b, at(20));
    ASSERT_EQ(ST(b), RSL_BREAKER_CLOSED);
    ASSERT_EQ(rsl__trip_bad_periods(rsl__breaker_trip(b)), 0);
    rsl__breaker_free(b);
}

TEST(trip_both_two_periods_no_three_yes) {
    rsl__breaker_conf c = conf();
    rsl__breaker *b = rsl__breaker_new("x", &c);
    const rsl__trip *t = rsl__breaker_trip(b);
    /* Two bad periods, then healthy traffic that dilutes the window below both legs. */
    burst(b, at(0), 20, 10, 1200 * MS);
    burst(b, at(1), 20, 10, 1200 * MS);
    tick(b, at(2));
    ASSERT_EQ(rsl__trip_streak(t), 2);
    ASSERT_EQ(ST(b), RSL_BREAKER_CLOSED);
    burst(b, at(2), 400, 0, 10 * MS);
    for (int k = 3; k < 15; k++) {
        burst(b, at(k), 20, 0, 10 * MS);
    }
    ASSERT_EQ(rsl__trip_streak(t), 0);
    ASSERT_EQ(ST(b), RSL_BREAKER_CLOSED);
    ASSERT_EQ(rsl__breaker_transitions(b, RSL_BREAKER_CLOSED, RSL_BREAKER_OPEN), 0);
    rsl__breaker_free(b);

    /* Three in a row: the call that meets the third boundary opens it (and is rejected). */
    b = rsl__breaker_new("x", &c);
    for (int k = 0; k < 3; k++) {
        burst(b, at(k), 20, 10, 1200 * MS);
    }
    ASSERT_EQ(ST(b), RSL_BREAKER_CLOSED);
    rsl__permit p;
    ASSERT(!rsl__breaker_allow(b, at(3), &p));
    ASSERT_EQ(ST(b), RSL_BREAKER_OPEN);
    ASSERT_EQ(rsl__breaker_transitions(b, RSL_BREAKER_CLOSED, RSL_BREAKER_OPEN), 1);
    rsl__breaker_free(b);
}

/* Trips a closed breaker with three bad periods from period k; returns the next period. */
static int trip3(rsl__breaker *b, int k) {
    for (int i = 0; i < 3; i++) {
        burst(b, at(k + i), 20, 10, 1200 * MS);
    }
    tick(b, at(k + 3));
    ASSERT_EQ(ST(b), RSL_BREAKER_OPEN);
    return k + 3;
}

/* From open: waits out open_for (1 s) and closes with one good probe at period k. */
static void recover(rsl__breaker *b, int k) {
    burst(b, at(k) + 500 * MS, 1, 0, 10 * MS);
    ASSERT_EQ(ST(b), RSL_BREAKER_CLOSED);
}

TEST(trip_window_shrinks_after_two_trips_and_returns_after_5m) {
    rsl__breaker_conf c = conf();
    rsl__breaker *b = rsl__breaker_new("x", &c);
    const rsl__trip *t = rsl__breaker_trip(b);
    ASSERT_EQ(rsl__trip_window(t), 10 * S);
    int k = trip3(b, 0);
    ASSERT_EQ(rsl__trip_window(t), 10 * S); /* one trip: no change */
    recover(b, k + 1);
    k = trip3(b, k + 2); /* the second trip, ~6 s later */
    ASSERT_EQ(rsl__trip_window(t), 5 * S);
    recover(b, k + 1);
    /* Closed, 4 minutes later: still short. */
    tick(b, at(k + 1) + 240 * S);
    ASSERT_EQ(rsl__trip_window(t), 5 * S);
    tick(b, at(k + 1) + 301 * S);
    ASSERT_EQ(rsl__trip_window(t), 10 * S);
    rsl__breaker_free(b);

    /* Two trips more than a minute apart: the window stays. */
    b = rsl__breaker_new("x", &c);
    t = rsl__breaker_trip(b);
    k = trip3(b, 0);
    recover(b, k + 1);
    k = trip3(b, k + 70);
    ASSERT_EQ(rsl__trip_window(t), 10 * S);
    rsl__breaker_free(b);
}

TEST(trip_threshold_adapts_and_is_frozen_during_outage) {
    rsl__breaker_conf c = conf();
    c.trip.over_ns = 100 * MS;
    c.trip.factor = 1.2;
    c.trip.max_ns = 1500 * MS;
    rsl__breaker *b = rsl__breaker_new("x", &c);
    const rsl__trip *t = rsl__breaker_trip(b);
    ASSERT_EQ(rsl__trip_threshold(t), 100 * MS);
    int64_t prev = rsl__trip_threshold(t);
    int k = 0;
    for (; k < 30; k++) {
        burst(b, at(k), 20, 0, 200 * MS); /* healthy, 200 ms */
        int64_t thr = rsl__trip_threshold(t);
        ASSERT(thr >= prev && (double)thr <= (double)prev * 1.1 + 1); /* <= 10% a period */
        prev = thr;
    }
    tick(b, at(k)); /* judges the last healthy period */
    int64_t learned = rsl__trip_threshold(t);
    ASSERT(learned > 200 * MS && learned < 400 * MS); /* ~ p90 x 1.2 */
    /* The outage: slow and failing.  Its periods never teach (each fails on its own),
     * the streak freezes the threshold, then the breaker opens (once the window's error
     * rate reaches 20%); nothing it saw moves the threshold. */
    for (int i = 0; i < 15 && ST(b) == RSL_BREAKER_CLOSED; i++, k++) {
        burst(b, at(k), 20, 10, 1400 * MS);
        ASSERT_EQ(rsl__trip_threshold(t), learned);
    }
    ASSERT_EQ(ST(b), RSL_BREAKER_OPEN);
    ASSERT_EQ(rsl__trip_threshold(t), learned);
    rsl__breaker_free(b);

    /* The ceiling: latencies far above max never lift it past max. */
    b = rsl__breaker_new("x", &c);
    t = rsl__breaker_trip(b);
    for (k = 0; k < 60; k++) {
        burst(b, at(k), 20, 0, 5 * S);
    }
    ASSERT_EQ(rsl__trip_threshold(t), 1500 * MS);
    rsl__breaker_free(b);
}

TEST(trip_late_completions_ignored) {
    rsl__breaker_conf c = conf();
    rsl__breaker *b = rsl__breaker_new("x", &c);
    rsl__permit late[30];
    for (int i = 0; i < 30; i++) {
        ASSERT(rsl__breaker_allow(b, at(0), &late[i]));
    }
    int k = trip3(b, 0);
    recover(b, k + 1);
    /* The calls admitted before the trip end now, failing and slow: another era. */
    for (int i = 0; i < 30; i++) {
        rsl__breaker_record(b, &late[i], at(k + 2), FAIL, 5 * S);
    }
    for (int j = k + 2; j < k + 10; j++) {
        burst(b, at(j), 20, 0, 10 * MS);
    }
    ASSERT_EQ(ST(b), RSL_BREAKER_CLOSED);
    ASSERT_EQ(rsl__trip_streak(rsl__breaker_trip(b)), 0);
    ASSERT_EQ(rsl__breaker_transitions(b, RSL_BREAKER_CLOSED, RSL_BREAKER_OPEN), 1);
    rsl__breaker_free(b);
}

TEST(trip_hung_calls_count_as_slow) {
    /* Half the calls fail fast, half never return: the completed ones are all fast, yet
     * the ones in flight past 800 ms make the p90 slow. */
    rsl__breaker_conf c = conf();
    rsl__breaker *b = rsl__breaker_new("x", &c);
    rsl__permit hung[200];
    int nh = 0;
    int k = 0;
    for (; k < 8 && ST(b) == RSL_BREAKER_CLOSED; k++) {
        burst(b, at(k), 10, 10, 10 * MS);
        for (int i = 0; i < 10 && rsl__breaker_allow(b, at(k), &hung[nh]); i++) {
            nh++;
        }
    }
    ASSERT(nh > 0);
    ASSERT_EQ(rsl__breaker_transitions(b, RSL_BREAKER_CLOSED, RSL_BREAKER_OPEN), 1);
    rsl__breaker_free(b);

    /* The same with the slow ones released (canceled) at once: nothing is slow. */
    b = rsl__breaker_new("x", &c);
    for (k = 0; k < 8; k++) {
        burst(b, at(k), 10, 10, 10 * MS);
        for (int i = 0; i < 10; i++) {
            tick(b, at(k));
        }
    }
    ASSERT_EQ(ST(b), RSL_BREAKER_CLOSED);
    rsl__breaker_free(b);
}

/* ---- determinism ---- */

static uint64_t lcg;
static uint32_t next_rand(void) {
    lcg = lcg * UINT64_C(6364136223846793005) + 1442695040888963407u;
    return (uint32_t)(lcg >> 33);
}

#define MAX_LOG 256
typedef struct { int from, to; } trans;
static trans tlog[MAX_LOG];
static int ntlog;

static void log_hook(void *ud, rsl__breaker *b, rsl__breaker_state from, rsl__breaker_state to,
                     const char *reason) {
    (void)ud;
    (void)b;
    (void)reason;
    if (ntlog < MAX_LOG) {
        tlog[ntlog].from = from;
        tlog[ntlog].to = to;
        ntlog++;
    }
}

static int run_seeded(uint64_t seed, trans *out) {
    rsl__breaker_conf c = conf();
    c.jitter = 0.3;
    c.trip.factor = 1.2;
    c.trip.over_ns = 300 * MS;
    rsl__breaker *b = rsl__breaker_new("x", &c);
    rsl__breaker_set_hook(b, log_hook, NULL);
    lcg = seed;
    rsl__rand_seed(seed);
    ntlog = 0;
    int64_t now = S;
    for (int i = 0; i < 20000; i++) {
        now += (int64_t)(next_rand() % 20) * MS;
        int outage = (now / (20 * S)) % 2 == 1;
        int fail = (int)(next_rand() % 100) < (outage ? 50 : 5);
        int64_t lat = (int64_t)(next_rand() % (outage ? 3000 : 300)) * MS;
        rsl__permit p;
        if (rsl__breaker_allow(b, now, &p)) {
            rsl__breaker_record(b, &p, now, fail ? FAIL : OK, lat);
        }
    }
    memcpy(out, tlog, sizeof(tlog));
    rsl__breaker_free(b);
    return ntlog;
}

TEST(trip_deterministic_under_fixed_seed) {
    static trans a[MAX_LOG], b[MAX_LOG];
    int na = run_seeded(42, a);
    int nb = run_seeded(42, b);
    ASSERT(na > 2); /* the outages trip it */
    ASSERT_EQ(na, nb);
    ASSERT(memcmp(a, b, sizeof(trans) * (size_t)na) == 0);
}

/* ---- threads ---- */

static _Atomic int64_t shared_now;

static void *hammer(void *arg) {
    rsl__breaker *b = arg;
    rsl__rand_seed(7);
    for (int i = 0; i < 20000; i++) {
        int64_t now = atomic_fetch_add(&shared_now, 100 * RSL_NS_PER_US);
        rsl__permit p;
        if (rsl__breaker_allow(b, now, &p)) {
            int bad = (now / (5 * S)) % 2;
            if (i % 7 == 0) {
                rsl__breaker_release(b, &p);
            } else {
                rsl__breaker_record(b, &p, now, bad && i % 2 ? FAIL : OK,
                                    bad ? 1500 * MS : 10 * MS);
            }
        }
    }
    return NULL;
}

TEST(trip_threads) {
    rsl__breaker_conf c = conf();
    c.trip.factor = 1.2;
    rsl__breaker *b = rsl__breaker_new("x", &c);
    atomic_store(&shared_now, S);
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
        ASSERT(pthread_create(&th[i], NULL, hammer, b) == 0);
    }
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
    }
    const rsl__trip *t = rsl__breaker_trip(b);
    ASSERT(rsl__trip_periods_judged(t) > 0);
    ASSERT(rsl__trip_threshold(t) >= 800 * MS && rsl__trip_threshold(t) <= 1500 * MS);
    rsl__breaker_free(b);
}

TEST(trip_configure_in_place_and_reshape) {
    rsl__breaker_conf c = conf();
    rsl__breaker *b = rsl__breaker_new("x", &c);
    const rsl__trip *t = rsl__breaker_trip(b);
    burst(b, at(0), 20, 10, 1200 * MS);
    tick(b, at(1));
    ASSERT_EQ(rsl__trip_streak(t), 1);
    c.trip.failure_rate = 30; /* a threshold: in place, the streak kept */
    ASSERT_EQ(rsl__breaker_configure(b, &c), 0);
    ASSERT(rsl__breaker_trip(b) == t);
    ASSERT_EQ(rsl__trip_streak(t), 1);
    rsl__breaker_conf got;
    rsl__breaker_conf_get(b, &got);
    ASSERT(rsl__trip_conf_eq(&got.trip, &c.trip));
    c.trip.window_ns = 20 * S; /* the shape: a fresh trip */
    ASSERT_EQ(rsl__breaker_configure(b, &c), 0);
    ASSERT(rsl__breaker_trip(b) != t);
    ASSERT_EQ(rsl__trip_streak(rsl__breaker_trip(b)), 0);
    c.trip.periods = 0; /* and none */
    ASSERT_EQ(rsl__breaker_configure(b, &c), 0);
    ASSERT(!rsl__breaker_trip(b));
    burst(b, at(3), 20, 10, 1200 * MS);
    ASSERT_EQ(ST(b), RSL_BREAKER_CLOSED);
    ASSERT(rsl__breaker_size(b) > 0);
    rsl__breaker_free(b);
}
