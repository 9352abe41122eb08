/* test_breaker.c -- every breaker transition on an injected clock, stale verdicts, admin
 * overrides, configure, and probes racing between threads. */
// ctest-labels: tsan
#include "test.h"

#include "breaker.h"
#include "clock.h"
#include "window.h"

#include <pthread.h>
#include <stdatomic.h>

#define S  RSL_NS_PER_S
#define MS RSL_NS_PER_MS

#define OK   RSL_OUTCOME_OK
#define FAIL RSL_OUTCOME_5XX

/* A conf small enough to trip in a few calls; no jitter so periods are exact. */
static rsl__breaker_conf conf(void) {
    rsl__breaker_conf c;
    rsl__breaker_conf_default(&c);
    c.min_calls = 10;
    c.failure_rate = 50;
    c.open_for_ns = 1 * S;
    c.backoff_factor = 2;
    c.backoff_max_ns = 60 * S;
    c.jitter = 0;
    return c;
}

/* allow + record; 1 when admitted. */
static int call(rsl__breaker *b, int64_t now, rsl_outcome o, int64_t latency) {
    rsl__permit p;
    if (!rsl__breaker_allow(b, now, &p)) {
        return 0;
    }
    rsl__breaker_record(b, &p, now, o, latency);
    return 1;
}

static void calls(rsl__breaker *b, int64_t now, int n, rsl_outcome o) {
    for (int i = 0; i < n; i++) {
        ASSERT(call(b, now, o, MS));
    }
}

/* Trips a closed breaker at `now` with min_calls failures (min_calls <= 10 here). */
static void trip(rsl__breaker *b, int64_t now) {
    for (int i = 0; i < 100 && rsl__breaker_state_get(b) == RSL_BREAKER_CLOSED; i++) {
        call(b, now, FAIL, MS);
    }
    ASSERT_EQ(rsl__breaker_state_get(b), RSL_BREAKER_OPEN);
}

#define ST(b)       rsl__breaker_state_get(b)
#define TR(b, f, t) rsl__breaker_transitions(b, RSL_BREAKER_##f, RSL_BREAKER_##t)

/* ---- hook recorder ---- */

#define MAX_EVENTS 64
static struct {
    rsl__breaker_state from, to;
    char reason[128];
} events[MAX_EVENTS];
static int nevents;

static void hook(void *ud, rsl__breaker *b, rsl__breaker_state from, rsl__breaker_state to,
                 const char *reason) {
    (void)b;
    ASSERT(ud == (void *)&nevents);
    if (nevents < MAX_EVENTS) {
        events[nevents].from = from;
        events[nevents].to = to;
        snprintf(events[nevents].reason, sizeof(events[nevents].reason), "%s", reason);
        nevents++;
    }
}

/* ---- basics ---- */

TEST(breaker_names_and_defaults) {
    ASSERT_STR_EQ(rsl__breaker_state_name(RSL_BREAKER_CLOSED), "closed");
    ASSERT_STR_EQ(rsl__breaker_state_name(RSL_BREAKER_OPEN), "open");
    ASSERT_STR_EQ(rsl__breaker_state_name(RSL_BREAKER_HALF_OPEN), "half_open");
    ASSERT_STR_EQ(rsl__breaker_state_name(RSL_BREAKER_FORCED_OPEN), "forced_open");
    ASSERT_STR_EQ(rsl__breaker_state_name(RSL_BREAKER_DISABLED), "disabled");
    ASSERT_STR_EQ(rsl__breaker_state_name((rsl__breaker_state)99), "unknown");
    rsl__breaker_conf c;
    rsl__breaker_conf_default(&c);
    ASSERT_EQ(c.window_ns, 10 * S);
    ASSERT_EQ(c.buckets, 10);
    ASSERT_EQ(c.stripes, 1);
    ASSERT_EQ(c.min_calls, 20);
    ASSERT_EQ(c.probes, 1);
    ASSERT_EQ(c.count_mask, (1u << RSL_OUTCOME_TIMEOUT) | (1u << RSL_OUTCOME_CONNECT) |
                                (1u << RSL_OUTCOME_5XX) | (1u << RSL_OUTCOME_ERROR));
    rsl__breaker *b = rsl__breaker_new("users-api", &c);
    ASSERT(b);
    ASSERT_STR_EQ(rsl__breaker_name(b), "users-api");
    ASSERT_EQ(ST(b), RSL_BREAKER_CLOSED);
    ASSERT_EQ(rsl__breaker_level(b), 0);
    ASSERT_EQ(rsl__breaker_calls(b, 0), 0);
    ASSERT_EQ(rsl__breaker_failure_rate(b, 0), 0);
    ASSERT_EQ(rsl__breaker_open_remaining(b, 0), 0);
    rsl__breaker_free(b);
    rsl__breaker_free(NULL);
}

TEST(breaker_bad_conf) {
    rsl__breaker_conf c = conf();
    ASSERT(rsl__breaker_new(NULL, &c) == NULL);
    ASSERT(rsl__breaker_new("x", NULL) == NULL);
#define BAD(field, value)                                                                          \
    do {                                                                                           \
        rsl__breaker_conf d = conf();                                                              \
        d.field = value;                                                                           \
        ASSERT(rsl__breaker_new("x", &d) == NULL);                                                 \
    } while (0)
    BAD(failure_rate, 150);
    BAD(failure_rate, -1);
    BAD(slow_rate, 101);
    BAD(failure_rate, NAN);
    BAD(probes, 0);
    BAD(probes, 256);
    BAD(jitter, 1.5);
    BAD(jitter, -0.1);
    BAD(buckets, 0);
    BAD(buckets, RSL_WINDOW_MAX_BUCKETS + 1);
    BAD(stripes, 0);
    BAD(stripes, 9);
    BAD(window_ns, 0);
    BAD(open_for_ns, 0);
    BAD(open_for_ns, INT64_C(30) * 24 * 3600 * S);
    BAD(backoff_factor, 0.5);
    BAD(backoff_max_ns, 0);
    BAD(slow_call_ns, 0);
    BAD(min_calls, -1);
    BAD(count_mask, 1u << RSL_OUTCOME__COUNT);
#undef BAD
}

TEST(breaker_memory_target) {
    rsl__breaker_conf c;
    rsl__breaker_conf_default(&c);
    rsl__breaker *b1 = rsl__breaker_new("users-api", &c);
    c.stripes = 2;
    rsl__breaker *b2 = rsl__breaker_new("users-api", &c);
    ASSERT(rsl__breaker_size(b1) <= 4096);
    ASSERT(rsl__breaker_size(b2) <= 4096);
    rsl__breaker_free(b1);
    rsl__breaker_free(b2);
}

/* ---- closed -> open ---- */

TEST(breaker_trips_on_failure_rate) {
    rsl__breaker_conf c = conf();
    rsl__breaker *b = rsl__breaker_new("b", &c);
    nevents = 0;
    rsl__breaker_set_hook(b, hook, &nevents);
    calls(b, 0, 5, OK);
    calls(b, 0, 4, FAIL);
    ASSERT_EQ(ST(b), RSL_BREAKER_CLOSED); /* 9 calls < min_calls */
    ASSERT_NEAR(rsl__breaker_failure_rate(b, 0), 400.0 / 9, 1e-9);
    calls(b, 0, 1, FAIL); /* 5 of 10: 50% >= 50% */
    ASSERT_EQ(ST(b), RSL_BREAKER_OPEN);
    ASSERT_EQ(TR(b, CLOSED, OPEN), 1);
    ASSERT_EQ(nevents, 1);
    ASSERT_EQ(events[0].from, RSL_BREAKER_CLOSED);
    ASSERT_EQ(events[0].to, RSL_BREAKER_OPEN);
    ASSERT_STR_EQ(events[0].reason, "failure_rate 50.0% >= 50% over 10 calls");
    ASSERT_EQ(rsl__breaker_rejections(b), 0);
    ASSERT(!call(b, 1, OK, MS));
    ASSERT(!call(b, 2, OK, MS));
    ASSERT_EQ(rsl__breaker_rejections(b), 2);
    /* the window keeps its counts while open: signals still show why */
    ASSERT_EQ(rsl__breaker_calls(b, 3), 10);
    ASSERT_NEAR(rsl__breaker_failure_rate(b, 3), 50, 1e-9);
    rsl__breaker_free(b);
}

TEST(breaker_min_calls_respected) {
    rsl__breaker_conf c = conf();
    c.min_calls = 20;
    rsl__breaker *b = rsl__breaker_new("b", &c);
    calls(b, 0, 19, FAIL); /* 100% failures, but too few calls */
    ASSERT_EQ(ST(b), RSL_BREAKER_CLOSED);
    calls(b, 0, 1, FAIL);
    ASSERT_EQ(ST(b), RSL_BREAKER_OPEN);
    rsl__breaker_free(b);
}

TEST(breaker_success_reaching_min_calls_trips) {
    rsl__breaker_conf c = conf();
    rsl__breaker *b = rsl__breaker_new("b", &c);
    calls(b, 0, 9, FAIL);
    ASSERT_EQ(ST(b), RSL_BREAKER_CLOSED);
    calls(b, 0, 1, OK); /* 9 of 10 failed once min_calls is reached */
    ASSERT_EQ(ST(b), RSL_BREAKER_OPEN);
    rsl__breaker_free(b);
}

TEST(breaker_trips_after_eviction) {
    /* Old successes age out, leaving mostly failures: the next success sees it. */
    rsl__breaker_conf c = conf();
    rsl__breaker *b = rsl__breaker_new("b", &c);
    calls(b, 0, 20, OK);
    calls(b, 5 * S, 8, FAIL); /* 8 of 28 */
    ASSERT_EQ(ST(b), RSL_BREAKER_CLOSED);
    calls(b, 10 * S, 2, OK); /* the 20 successes fell out: 8 of 10 */
    ASSERT_EQ(ST(b), RSL_BREAKER_OPEN);
    rsl__breaker_free(b);
}

TEST(breaker_trips_on_slow_rate) {
    rsl__breaker_conf c = conf();
    c.failure_rate = 0;
    c.slow_call_ns = 100 * MS;
    c.slow_rate = 80;
    rsl__breaker *b = rsl__breaker_new("b", &c);
    nevents = 0;
    rsl__breaker_set_hook(b, hook, &nevents);
    for (int i = 0; i < 2; i++) {
        ASSERT(call(b, 0, OK, 10 * MS));
    }
    for (int i = 0; i < 7; i++) {
        ASSERT(call(b, 0, OK, 200 * MS));
    }
    ASSERT_EQ(ST(b), RSL_BREAKER_CLOSED);
    ASSERT(call(b, 0, OK, 100 * MS)); /* slow_call is inclusive: 8 of 10 */
    ASSERT_EQ(ST(b), RSL_BREAKER_OPEN);
    ASSERT_STR_EQ(events[0].reason, "slow_rate 80.0% >= 80% over 10 calls");
    rsl__breaker_free(b);
}

TEST(breaker_rate_zero_disables_criterion) {
    rsl__breaker_conf c = conf();
    c.failure_rate = 0;
    c.slow_rate = 0;
    c.slow_call_ns = MS;
    rsl__breaker *b = rsl__breaker_new("b", &c);
    for (int i = 0; i < 100; i++) {
        ASSERT(call(b, 0, FAIL, 10 * MS)); /* failed and slow */
    }
    ASSERT_EQ(ST(b), RSL_BREAKER_CLOSED);
    ASSERT_NEAR(rsl__breaker_failure_rate(b, 0), 100, 1e-9);
    ASSERT_NEAR(rsl__breaker_slow_rate(b, 0), 100, 1e-9);
    rsl__breaker_free(b);
}

TEST(breaker_count_mask) {
    rsl__breaker_conf c = conf();
    rsl__breaker *b = rsl__breaker_new("b", &c);
    calls(b, 0, 30, RSL_OUTCOME_4XX); /* a business error, not an upstream failure */
    ASSERT_EQ(ST(b), RSL_BREAKER_CLOSED);
    ASSERT_EQ(rsl__breaker_calls(b, 0), 30);
    ASSERT_EQ(rsl__breaker_failure_rate(b, 0), 0);
    rsl__breaker_free(b);

    c.count_mask |= 1u << RSL_OUTCOME_4XX;
    b = rsl__breaker_new("b", &c);
    calls(b, 0, 10, RSL_OUTCOME_4XX);
    ASSERT_EQ(ST(b), RSL_BREAKER_OPEN);
    rsl__breaker_free(b);

    /* only timeouts count: 5xx is a success for this breaker */
    c.count_mask = 1u << RSL_OUTCOME_TIMEOUT;
    b = rsl__breaker_new("b", &c);
    calls(b, 0, 20, RSL_OUTCOME_5XX);
    ASSERT_EQ(ST(b), RSL_BREAKER_CLOSED);
    calls(b, 0, 20, RSL_OUTCOME_TIMEOUT);
    ASSERT_EQ(ST(b), RSL_BREAKER_OPEN);
    rsl__breaker_free(b);
}

TEST(breaker_rejected_and_canceled_never_counted) {
    rsl__breaker_conf c = conf();
    c.count_mask = (1u << RSL_OUTCOME__COUNT) - 1; /* "everything", rejected included */
    rsl__breaker *b = rsl__breaker_new("b", &c);
    calls(b, 0, 50, RSL_OUTCOME_REJECTED);
    calls(b, 0, 50, RSL_OUTCOME_CANCELED);
    ASSERT_EQ(ST(b), RSL_BREAKER_CLOSED);
    ASSERT_EQ(rsl__breaker_calls(b, 0), 0);
    rsl__breaker_conf got;
    rsl__breaker_conf_get(b, &got);
    ASSERT_EQ(got.count_mask & (1u << RSL_OUTCOME_REJECTED), 0);
    rsl__breaker_free(b);
}

/* ---- open -> half_open -> ... ---- */

TEST(breaker_open_to_half_open_after_period) {
    rsl__breaker_conf c = conf();
    rsl__breaker *b = rsl__breaker_new("b", &c);
    nevents = 0;
    rsl__breaker_set_hook(b, hook, &nevents);
    int64_t t0 = 100 * S + 250 * RSL_NS_PER_US; /* not on a ms boundary */
    trip(b, t0);
    ASSERT_EQ(rsl__breaker_open_remaining(b, t0), 1 * S - 250 * RSL_NS_PER_US + MS);
    ASSERT_EQ(rsl__breaker_open_remaining(b, t0 + 500 * MS), 500 * MS - 250 * RSL_NS_PER_US + MS);
    rsl__permit p;
    ASSERT(!rsl__breaker_allow(b, t0 + 999 * MS, &p));
    ASSERT(!rsl__breaker_allow(b, t0 + S - 1, &p));
    ASSERT_EQ(ST(b), RSL_BREAKER_OPEN);
    ASSERT(rsl__breaker_open_remaining(b, t0 + S + MS) <= 0);
    ASSERT(rsl__breaker_allow(b, t0 + S + MS, &p));
    ASSERT(p.probe);
    ASSERT(!p.counted);
    ASSERT_EQ(ST(b), RSL_BREAKER_HALF_OPEN);
    ASSERT_EQ(rsl__breaker_probes_inflight(b), 1);
    ASSERT_EQ(rsl__breaker_open_remaining(b, t0 + S + MS), 0);
    ASSERT_EQ(TR(b, OPEN, HALF_OPEN), 1);
    ASSERT_EQ(nevents, 2);
    ASSERT_EQ(events[1].to, RSL_BREAKER_HALF_OPEN);
    ASSERT_STR_EQ(events[1].reason, "open period elapsed");
    rsl__breaker_free(b);
}

TEST(breaker_half_open_admits_exactly_probes) {
    rsl__breaker_conf c = conf();
    c.probes = 3;
    rsl__breaker *b = rsl__breaker_new("b", &c);
    trip(b, 0);
    rsl__permit p[5];
    ASSERT(rsl__breaker_allow(b, 2 * S, &p[0]));
    ASSERT(rsl__breaker_allow(b, 2 * S, &p[1]));
    ASSERT(rsl__breaker_allow(b, 2 * S, &p[2]));
    uint64_t rej = rsl__breaker_rejections(b);
    ASSERT(!rsl__breaker_allow(b, 2 * S, &p[3]));
    ASSERT(!rsl__breaker_allow(b, 3 * S, &p[4]));
    ASSERT_EQ(rsl__breaker_rejections(b), rej + 2);
    ASSERT_EQ(rsl__breaker_probes_inflight(b), 3);
    /* a success frees no new slot: the two in flight decide */
    rsl__breaker_record(b, &p[0], 2 * S, OK, MS);
    ASSERT_EQ(ST(b), RSL_BREAKER_HALF_OPEN);
    ASSERT_EQ(rsl__breaker_probes_inflight(b), 2);
    ASSERT(!rsl__breaker_allow(b, 2 * S, &p[3]));
    rsl__breaker_record(b, &p[1], 2 * S, OK, MS);
    ASSERT_EQ(ST(b), RSL_BREAKER_HALF_OPEN);
    rsl__breaker_record(b, &p[2], 2 * S, OK, MS);
    ASSERT_EQ(ST(b), RSL_BREAKER_CLOSED);
    rsl__breaker_free(b);
}

TEST(breaker_failed_probe_reopens_longer) {
    rsl__breaker_conf c = conf(); /* open_for 1 s, factor 2 */
    rsl__breaker *b = rsl__breaker_new("b", &c);
    nevents = 0;
    rsl__breaker_set_hook(b, hook, &nevents);
    int64_t t = 0;
    trip(b, t);
    ASSERT_EQ(rsl__breaker_level(b), 0);
    ASSERT_EQ(rsl__breaker_open_remaining(b, t), 1 * S);
    for (int level = 1; level <= 5; level++) {
        t += rsl__breaker_open_remaining(b, t);
        rsl__permit p;
        ASSERT(rsl__breaker_allow(b, t, &p));
        ASSERT(p.probe);
        rsl__breaker_record(b, &p, t + 10 * MS, RSL_OUTCOME_TIMEOUT, 10 * MS);
        t += 10 * MS;
        ASSERT_EQ(ST(b), RSL_BREAKER_OPEN);
        ASSERT_EQ(rsl__breaker_level(b), level);
        ASSERT_EQ(rsl__breaker_open_remaining(b, t), (S << level));
    }
    ASSERT_EQ(TR(b, HALF_OPEN, OPEN), 5);
    ASSERT_EQ(TR(b, OPEN, HALF_OPEN), 5);
    ASSERT_EQ(TR(b, CLOSED, OPEN), 1);
    ASSERT_EQ(nevents, 11);
    ASSERT_STR_EQ(events[2].reason, "probe failed");
    rsl__breaker_free(b);
}

TEST(breaker_slow_probe_fails_when_slow_counts) {
    rsl__breaker_conf c = conf();
    c.slow_call_ns = 100 * MS;
    c.slow_rate = 50;
    rsl__breaker *b = rsl__breaker_new("b", &c);
    trip(b, 0);
    rsl__permit p;
    ASSERT(rsl__breaker_allow(b, 2 * S, &p));
    rsl__breaker_record(b, &p, 3 * S, OK, S);
    ASSERT_EQ(ST(b), RSL_BREAKER_OPEN);
    ASSERT_EQ(rsl__breaker_level(b), 1);
    rsl__breaker_free(b);
}

/* The verdict record hands a shared breaker's fleet agrees with the breaker's own: slow
 * only when slow calls count, so a slow probe fails the fleet's probe as the local one. */
TEST(breaker_record_returns_the_verdict) {
    rsl__breaker_conf c = conf();
    c.slow_call_ns = 100 * MS;
    c.slow_rate = 50;
    rsl__breaker *b = rsl__breaker_new("b", &c);
    rsl__permit p;
    ASSERT(rsl__breaker_allow(b, 0, &p));
    ASSERT_EQ(rsl__breaker_record(b, &p, 0, OK, S), RSL_BREAKER_SLOW);
    ASSERT(rsl__breaker_allow(b, 0, &p));
    ASSERT_EQ(rsl__breaker_record(b, &p, 0, FAIL, MS), RSL_BREAKER_FAILED);
    ASSERT(rsl__breaker_allow(b, 0, &p));
    ASSERT_EQ(rsl__breaker_record(b, &p, 0, FAIL, S), RSL_BREAKER_FAILED | RSL_BREAKER_SLOW);
    ASSERT(rsl__breaker_allow(b, 0, &p));
    ASSERT_EQ(rsl__breaker_record(b, &p, 0, RSL_OUTCOME_REJECTED, S), -1);
    c.slow_rate = 0;
    ASSERT(rsl__breaker_configure(b, &c) >= 0);
    ASSERT(rsl__breaker_allow(b, 0, &p));
    ASSERT_EQ(rsl__breaker_record(b, &p, 0, OK, S), 0);
    rsl__breaker_free(b);
}

TEST(breaker_backoff_capped_at_max) {
    rsl__breaker_conf c = conf();
    c.open_for_ns = 1 * S;
    c.backoff_factor = 10;
    c.backoff_max_ns = 30 * S;
    rsl__breaker *b = rsl__breaker_new("b", &c);
    int64_t t = 0;
    trip(b, t);
    static const int64_t want[] = {10 * S, 30 * S, 30 * S, 30 * S};
    for (int i = 0; i < 40; i++) { /* level runs into its 5-bit ceiling: still capped */
        t += rsl__breaker_open_remaining(b, t);
        rsl__permit p;
        ASSERT(rsl__breaker_allow(b, t, &p));
        rsl__breaker_record(b, &p, t, FAIL, 0);
        ASSERT_EQ(rsl__breaker_open_remaining(b, t), want[i < 3 ? i : 3]);
    }
    ASSERT_EQ(rsl__breaker_level(b), 31);
    rsl__breaker_free(b);
}

TEST(breaker_backoff_jitter_bounds) {
    rsl__rand_seed(12345);
    rsl__breaker_conf c = conf();
    c.open_for_ns = 5 * S;
    c.backoff_factor = 1; /* every period is open_for, jittered */
    c.jitter = 0.2;
    rsl__breaker *b = rsl__breaker_new("b", &c);
    int64_t t = 1000 * S, lo = INT64_MAX, hi = 0;
    trip(b, t);
    for (int i = 0; i < 1000; i++) {
        int64_t rem = rsl__breaker_open_remaining(b, t);
        /* ceil to the ms adds < 1 ms above the jittered period */
        ASSERT(rem >= 4 * S);
        ASSERT(rem <= 6 * S + MS);
        lo = rem < lo ? rem : lo;
        hi = rem > hi ? rem : hi;
        t += rem;
        rsl__permit p;
        ASSERT(rsl__breaker_allow(b, t, &p));
        rsl__breaker_record(b, &p, t, FAIL, 0);
    }
    ASSERT(hi - lo > S); /* spread over most of the +/-20% band, not all equal */
    rsl__breaker_free(b);
}

TEST(breaker_probes_succeed_close_and_reset) {
    rsl__breaker_conf c = conf();
    c.probes = 2;
    rsl__breaker *b = rsl__breaker_new("b", &c);
    nevents = 0;
    rsl__breaker_set_hook(b, hook, &nevents);
    int64_t t = 0;
    trip(b, t);
    t += S;
    rsl__permit p1, p2;
    ASSERT(rsl__breaker_allow(b, t, &p1));
    rsl__breaker_record(b, &p1, t, FAIL, MS); /* level 1 */
    ASSERT_EQ(rsl__breaker_level(b), 1);
    t += 2 * S;
    ASSERT(rsl__breaker_allow(b, t, &p1));
    ASSERT(rsl__breaker_allow(b, t, &p2));
    ASSERT_EQ(rsl__breaker_calls(b, t), 10); /* still the tripping calls */
    rsl__breaker_record(b, &p1, t, OK, MS);
    ASSERT_EQ(ST(b), RSL_BREAKER_HALF_OPEN);
    rsl__breaker_record(b, &p2, t, RSL_OUTCOME_4XX, MS); /* a 4xx is the upstream answering */
    ASSERT_EQ(ST(b), RSL_BREAKER_CLOSED);
    ASSERT_EQ(rsl__breaker_level(b), 0);
    ASSERT_EQ(rsl__breaker_calls(b, t), 0);
    ASSERT_EQ(rsl__breaker_probes_inflight(b), 0);
    ASSERT_EQ(TR(b, HALF_OPEN, CLOSED), 1);
    ASSERT_STR_EQ(events[nevents - 1].reason, "probes succeeded");
    /* counting afresh; the next trip starts again at open_for */
    trip(b, t);
    ASSERT_EQ(rsl__breaker_open_remaining(b, t), S);
    rsl__breaker_free(b);
}

/* ---- stale verdicts ---- */

TEST(breaker_stale_closed_verdict_ignored) {
    rsl__breaker_conf c = conf();
    rsl__breaker *b = rsl__breaker_new("b", &c);
    rsl__permit old;
    ASSERT(rsl__breaker_allow(b, 0, &old)); /* admitted while closed */
    ASSERT(old.counted);
    trip(b, 0);
    rsl__breaker_record(b, &old, MS, FAIL, MS);
    ASSERT_EQ(ST(b), RSL_BREAKER_OPEN);
    ASSERT_EQ(rsl__breaker_calls(b, MS), 10);
    ASSERT_EQ(rsl__breaker_level(b), 0);
    /* half-open: the old success must not count as a probe */
    rsl__permit probe;
    ASSERT(rsl__breaker_allow(b, 2 * S, &probe));
    rsl__breaker_record(b, &old, 2 * S, OK, MS);
    ASSERT_EQ(ST(b), RSL_BREAKER_HALF_OPEN);
    ASSERT_EQ(rsl__breaker_probes_inflight(b), 1);
    rsl__breaker_record(b, &old, 2 * S, FAIL, MS);
    ASSERT_EQ(ST(b), RSL_BREAKER_HALF_OPEN);
    rsl__breaker_record(b, &probe, 2 * S, OK, MS);
    ASSERT_EQ(ST(b), RSL_BREAKER_CLOSED);
    /* closed again, a new cycle: the old call still does not count */
    rsl__breaker_record(b, &old, 2 * S, FAIL, MS);
    ASSERT_EQ(rsl__breaker_calls(b, 2 * S), 0);
    rsl__breaker_release(b, &old);
    ASSERT_EQ(ST(b), RSL_BREAKER_CLOSED);
    rsl__breaker_free(b);
}

TEST(breaker_stale_probe_release_after_reset) {
    rsl__breaker_conf c = conf();
    rsl__breaker *b = rsl__breaker_new("b", &c);
    trip(b, 0);
    rsl__permit old, probe, other;
    ASSERT(rsl__breaker_allow(b, 2 * S, &old));
    ASSERT(old.probe);
    rsl__breaker_reset(b, 2 * S);
    ASSERT_EQ(ST(b), RSL_BREAKER_CLOSED);
    trip(b, 3 * S);
    ASSERT(rsl__breaker_allow(b, 5 * S, &probe));
    ASSERT_EQ(rsl__breaker_probes_inflight(b), 1);
    rsl__breaker_release(b, &old); /* must not free the new probe's slot */
    ASSERT_EQ(rsl__breaker_probes_inflight(b), 1);
    ASSERT(!rsl__breaker_allow(b, 5 * S, &other));
    rsl__breaker_record(b, &old, 5 * S, OK, MS); /* nor close it */
    ASSERT_EQ(ST(b), RSL_BREAKER_HALF_OPEN);
    rsl__breaker_record(b, &old, 5 * S, FAIL, MS); /* nor re-open it */
    ASSERT_EQ(ST(b), RSL_BREAKER_HALF_OPEN);
    ASSERT_EQ(rsl__breaker_probes_inflight(b), 1);
    rsl__breaker_record(b, &probe, 5 * S, OK, MS);
    ASSERT_EQ(ST(b), RSL_BREAKER_CLOSED);
    rsl__breaker_free(b);
}

TEST(breaker_release_frees_probe_slot) {
    rsl__breaker_conf c = conf();
    rsl__breaker *b = rsl__breaker_new("b", &c);
    trip(b, 0);
    rsl__permit p1, p2, p3;
    ASSERT(rsl__breaker_allow(b, 2 * S, &p1));
    ASSERT(!rsl__breaker_allow(b, 2 * S, &p2));
    rsl__breaker_release(b, &p1);
    ASSERT_EQ(rsl__breaker_probes_inflight(b), 0);
    ASSERT_EQ(ST(b), RSL_BREAKER_HALF_OPEN);
    ASSERT(rsl__breaker_allow(b, 2 * S, &p2));
    /* a canceled or rejected-downstream probe also gives its slot back */
    rsl__breaker_record(b, &p2, 2 * S, RSL_OUTCOME_CANCELED, MS);
    ASSERT_EQ(rsl__breaker_probes_inflight(b), 0);
    ASSERT(rsl__breaker_allow(b, 2 * S, &p3));
    rsl__breaker_record(b, &p3, 2 * S, RSL_OUTCOME_REJECTED, 0);
    ASSERT_EQ(rsl__breaker_probes_inflight(b), 0);
    ASSERT_EQ(ST(b), RSL_BREAKER_HALF_OPEN);
    ASSERT(rsl__breaker_allow(b, 2 * S, &p3));
    rsl__breaker_record(b, &p3, 2 * S, OK, MS);
    ASSERT_EQ(ST(b), RSL_BREAKER_CLOSED);
    rsl__breaker_free(b);
}

/* ---- admin ---- */

TEST(breaker_admin_overrides) {
    rsl__breaker_conf c = conf();
    rsl__breaker *b = rsl__breaker_new("b", &c);
    nevents = 0;
    rsl__breaker_set_hook(b, hook, &nevents);
    calls(b, 0, 5, OK);
    rsl__permit p;
    ASSERT(rsl__breaker_allow(b, 0, &p));

    rsl__breaker_force_open(b, 0);
    ASSERT_EQ(ST(b), RSL_BREAKER_FORCED_OPEN);
    ASSERT(!call(b, 0, OK, MS));
    ASSERT(!call(b, 1000 * S, OK, MS)); /* no period: stays open until told */
    ASSERT_EQ(rsl__breaker_rejections(b), 2);
    ASSERT_EQ(rsl__breaker_open_remaining(b, 0), 0);
    rsl__breaker_force_open(b, 0); /* again: no transition */
    ASSERT_EQ(TR(b, CLOSED, FORCED_OPEN), 1);
    ASSERT_EQ(TR(b, FORCED_OPEN, FORCED_OPEN), 0);
    rsl__breaker_record(b, &p, 0, FAIL, MS); /* admitted before: dropped */

    rsl__breaker_disable(b, 0);
    ASSERT_EQ(ST(b), RSL_BREAKER_DISABLED);
    ASSERT_EQ(TR(b, FORCED_OPEN, DISABLED), 1);
    for (int i = 0; i < 100; i++) {
        ASSERT(call(b, 0, FAIL, MS)); /* admits everything, records nothing */
    }
    ASSERT_EQ(ST(b), RSL_BREAKER_DISABLED);
    ASSERT_EQ(rsl__breaker_calls(b, 0), 5);

    rsl__breaker_reset(b, 0);
    ASSERT_EQ(ST(b), RSL_BREAKER_CLOSED);
    ASSERT_EQ(rsl__breaker_calls(b, 0), 0);
    ASSERT_EQ(TR(b, DISABLED, CLOSED), 1);
    ASSERT_EQ(nevents, 3);
    ASSERT_STR_EQ(events[0].reason, "forced open");
    ASSERT_STR_EQ(events[1].reason, "disabled");
    ASSERT_STR_EQ(events[2].reason, "reset");

    /* reset from open (level > 0): closed, level 0 */
    trip(b, 0);
    ASSERT(rsl__breaker_allow(b, 2 * S, &p));
    rsl__breaker_record(b, &p, 2 * S, FAIL, MS);
    ASSERT_EQ(rsl__breaker_level(b), 1);
    rsl__breaker_reset(b, 2 * S);
    ASSERT_EQ(ST(b), RSL_BREAKER_CLOSED);
    ASSERT_EQ(rsl__breaker_level(b), 0);
    ASSERT_EQ(TR(b, OPEN, CLOSED), 1);
    /* reset while closed: counts restart, no transition */
    calls(b, 3 * S, 3, OK);
    rsl__breaker_reset(b, 3 * S);
    ASSERT_EQ(rsl__breaker_calls(b, 3 * S), 0);
    ASSERT_EQ(TR(b, CLOSED, CLOSED), 0);
    /* force open from half_open drops the probe */
    trip(b, 4 * S);
    ASSERT(rsl__breaker_allow(b, 6 * S, &p));
    rsl__breaker_force_open(b, 6 * S);
    rsl__breaker_record(b, &p, 6 * S, OK, MS);
    ASSERT_EQ(ST(b), RSL_BREAKER_FORCED_OPEN);
    ASSERT_EQ(TR(b, HALF_OPEN, FORCED_OPEN), 1);
    rsl__breaker_free(b);
}

TEST(breaker_transition_counters_and_hook_full_cycle) {
    rsl__breaker_conf c = conf();
    rsl__breaker *b = rsl__breaker_new("b", &c);
    nevents = 0;
    rsl__breaker_set_hook(b, hook, &nevents);
    int64_t t = 0;
    for (int round = 0; round < 3; round++) {
        trip(b, t);
        t += 2 * S;
        rsl__permit p;
        ASSERT(rsl__breaker_allow(b, t, &p));
        rsl__breaker_record(b, &p, t, OK, MS);
        ASSERT_EQ(ST(b), RSL_BREAKER_CLOSED);
    }
    ASSERT_EQ(TR(b, CLOSED, OPEN), 3);
    ASSERT_EQ(TR(b, OPEN, HALF_OPEN), 3);
    ASSERT_EQ(TR(b, HALF_OPEN, CLOSED), 3);
    ASSERT_EQ(TR(b, HALF_OPEN, OPEN), 0);
    ASSERT_EQ(rsl__breaker_transitions(b, (rsl__breaker_state)7, RSL_BREAKER_OPEN), 0);
    ASSERT_EQ(nevents, 9);
    static const rsl__breaker_state seq[] = {RSL_BREAKER_OPEN, RSL_BREAKER_HALF_OPEN,
                                             RSL_BREAKER_CLOSED};
    for (int i = 0; i < 9; i++) {
        ASSERT_EQ(events[i].to, seq[i % 3]);
        ASSERT_EQ(events[i].from, seq[(i + 2) % 3]);
    }
    rsl__breaker_free(b);
}

/* ---- configure ---- */

TEST(breaker_configure_in_place) {
    rsl__breaker_conf c = conf();
    rsl__breaker *b = rsl__breaker_new("b", &c);
    calls(b, 0, 8, OK);
    calls(b, 0, 1, FAIL);
    /* thresholds only: counts and state stay */
    rsl__breaker_conf d = c;
    d.failure_rate = 10;
    d.open_for_ns = 3 * S;
    d.probes = 4;
    ASSERT_EQ(rsl__breaker_configure(b, &d), 0);
    ASSERT_EQ(rsl__breaker_calls(b, 0), 9);
    rsl__breaker_conf got;
    rsl__breaker_conf_get(b, &got);
    ASSERT_EQ(got.failure_rate, 10);
    ASSERT_EQ(got.open_for_ns, 3 * S);
    ASSERT_EQ(got.probes, 4);
    ASSERT_EQ(got.window_ns, c.window_ns);
    calls(b, 0, 1, OK); /* 10 calls, 10% failed >= 10% */
    ASSERT_EQ(ST(b), RSL_BREAKER_OPEN);
    ASSERT_EQ(rsl__breaker_open_remaining(b, 0), 3 * S);
    /* while open: the state survives a threshold change */
    d.open_for_ns = 7 * S;
    ASSERT_EQ(rsl__breaker_configure(b, &d), 0);
    ASSERT_EQ(ST(b), RSL_BREAKER_OPEN);
    ASSERT_EQ(rsl__breaker_open_remaining(b, 0), 3 * S);
    /* a new window: counts restart, state stays, 1 returned */
    d.window_ns = 30 * S;
    d.buckets = 30;
    d.stripes = 2;
    size_t before = rsl__breaker_size(b);
    ASSERT_EQ(rsl__breaker_configure(b, &d), 1);
    ASSERT(rsl__breaker_size(b) > before);
    ASSERT_EQ(ST(b), RSL_BREAKER_OPEN);
    ASSERT_EQ(rsl__breaker_calls(b, 0), 0);
    rsl__breaker_conf_get(b, &got);
    ASSERT_EQ(got.window_ns, 30 * S);
    ASSERT_EQ(got.buckets, 30);
    ASSERT_EQ(got.stripes, 2);
    /* bad conf: refused, nothing changes */
    d.failure_rate = 200;
    ASSERT(rsl__breaker_configure(b, &d) < 0);
    rsl__breaker_conf_get(b, &got);
    ASSERT_EQ(got.failure_rate, 10);
    /* the rest of the cycle works with the new window */
    rsl__permit p;
    ASSERT(rsl__breaker_allow(b, 10 * S, &p));
    rsl__breaker_record(b, &p, 10 * S, OK, MS);
    ASSERT_EQ(ST(b), RSL_BREAKER_HALF_OPEN); /* probes = 4 now */
    rsl__breaker_free(b);
}

TEST(breaker_latency_signal) {
    rsl__breaker_conf c = conf();
    c.min_calls = 1000;
    rsl__breaker *b = rsl__breaker_new("b", &c);
    for (int i = 1; i <= 100; i++) {
        ASSERT(call(b, 0, OK, i * MS));
    }
    int64_t p50 = rsl__breaker_latency(b, 0, 0.5);
    ASSERT(p50 > 40 * MS && p50 < 60 * MS);
    rsl__breaker_free(b);
}

/* ---- threads ---- */

enum { RACE_ROUNDS = 2000 };

typedef struct {
    rsl__breaker *b;
    pthread_barrier_t *bar;
    int id;
    int won[RACE_ROUNDS];
    rsl__permit permit[RACE_ROUNDS];
} race_arg;

static int64_t round_time(int r) {
    return (int64_t)(r + 1) * 100 * S;
}

static void *racer(void *p) {
    race_arg *a = p;
    for (int r = 0; r < RACE_ROUNDS; r++) {
        pthread_barrier_wait(a->bar); /* the breaker is set up for this round */
        a->won[r] = rsl__breaker_allow(a->b, round_time(r) + 50 * S, &a->permit[r]);
        pthread_barrier_wait(a->bar); /* round done */
        pthread_barrier_wait(a->bar); /* checked */
    }
    return NULL;
}

TEST(breaker_probe_race_two_threads) {
    rsl__breaker_conf c = conf();
    c.min_calls = 1;
    c.failure_rate = 100;
    c.probes = 1;
    rsl__breaker *b = rsl__breaker_new("b", &c);
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, 3);
    static race_arg a[2];
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        a[i].b = b;
        a[i].bar = &bar;
        a[i].id = i;
        ASSERT(pthread_create(&th[i], NULL, racer, &a[i]) == 0);
    }
    for (int r = 0; r < RACE_ROUNDS; r++) {
        int64_t t = round_time(r);
        rsl__breaker_reset(b, t);
        trip(b, t);
        if (r % 2) {
            /* odd rounds race on the half-open slot itself, not on the open->half_open CAS */
            rsl__permit p;
            ASSERT(rsl__breaker_allow(b, t + 50 * S, &p));
            rsl__breaker_release(b, &p);
            ASSERT_EQ(ST(b), RSL_BREAKER_HALF_OPEN);
            ASSERT_EQ(rsl__breaker_probes_inflight(b), 0);
        }
        pthread_barrier_wait(&bar);
        pthread_barrier_wait(&bar);
        if (a[0].won[r] + a[1].won[r] != 1) {
            rsl_test_fail(__FILE__, __LINE__, "round %d: %d probes admitted", r,
                          a[0].won[r] + a[1].won[r]);
        }
        ASSERT_EQ(rsl__breaker_probes_inflight(b), 1);
        race_arg *w = a[0].won[r] ? &a[0] : &a[1];
        ASSERT(w->permit[r].probe);
        if (r % 3 == 0) {
            rsl__breaker_record(b, &w->permit[r], t + 51 * S, OK, MS);
            ASSERT_EQ(ST(b), RSL_BREAKER_CLOSED);
        } else {
            rsl__breaker_release(b, &w->permit[r]);
            ASSERT_EQ(ST(b), RSL_BREAKER_HALF_OPEN);
        }
        pthread_barrier_wait(&bar);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
    }
    pthread_barrier_destroy(&bar);
    ASSERT_EQ(TR(b, OPEN, HALF_OPEN), RACE_ROUNDS);
    rsl__breaker_free(b);
}

enum { STRESS_OPS = 200000, STRESS_PROBES = 2 };

typedef struct {
    rsl__breaker *b;
    _Atomic int64_t *clock;
    _Atomic int *max_inflight;
    uint64_t seed;
    uint64_t admitted, rejected, probes;
} stress_arg;

static void *stresser(void *p) {
    stress_arg *a = p;
    uint64_t x = a->seed;
    for (int i = 0; i < STRESS_OPS; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        int64_t now = atomic_fetch_add(a->clock, 2 * RSL_NS_PER_US);
        rsl__permit pm;
        if (!rsl__breaker_allow(a->b, now, &pm)) {
            a->rejected++;
            continue;
        }
        a->admitted++;
        int inflight = rsl__breaker_probes_inflight(a->b);
        int m = atomic_load(a->max_inflight);
        while (inflight > m && !atomic_compare_exchange_weak(a->max_inflight, &m, inflight)) {
        }
        if (pm.probe) {
            a->probes++;
        }
        /* 20 ms of a failing upstream (70% failures), 20 ms of a healthy one (5%) */
        unsigned r = (unsigned)(x % 100);
        unsigned fail_pct = (now / (20 * MS)) % 2 ? 75 : 10;
        if (r < 5) {
            rsl__breaker_release(a->b, &pm);
        } else {
            rsl__breaker_record(a->b, &pm, now + RSL_NS_PER_US, r < fail_pct ? FAIL : OK,
                                (int64_t)(x % 2000) * RSL_NS_PER_US);
        }
    }
    return NULL;
}

TEST(breaker_stress_two_threads) {
    rsl__breaker_conf c = conf();
    c.window_ns = 10 * MS;
    c.stripes = 2;
    c.min_calls = 20;
    c.failure_rate = 50; /* the upstream alternates 70% and 5% failures: trips, recovers */
    c.slow_call_ns = 1900 * RSL_NS_PER_US;
    c.slow_rate = 60;
    c.open_for_ns = 2 * MS; /* periods well inside a 20 ms phase: it can recover in each */
    c.backoff_max_ns = 8 * MS;
    c.jitter = 0.5;
    c.probes = STRESS_PROBES;
    rsl__breaker *b = rsl__breaker_new("b", &c);
    _Atomic int64_t clock = S;
    _Atomic int max_inflight = 0;
    stress_arg a[2] = {{b, &clock, &max_inflight, 0x1234567u, 0, 0, 0},
                       {b, &clock, &max_inflight, 0x89abcdefu, 0, 0, 0}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        ASSERT(pthread_create(&th[i], NULL, stresser, &a[i]) == 0);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
    }
    ASSERT(atomic_load(&max_inflight) <= STRESS_PROBES);
    ASSERT_EQ(a[0].admitted + a[0].rejected + a[1].admitted + a[1].rejected, 2 * STRESS_OPS);
    ASSERT_EQ(rsl__breaker_rejections(b), a[0].rejected + a[1].rejected);
    /* it did go round the cycle, many times */
    ASSERT(TR(b, CLOSED, OPEN) > 10);
    ASSERT(TR(b, HALF_OPEN, CLOSED) > 10);
    ASSERT(TR(b, HALF_OPEN, OPEN) > 0);
    /* transitions balance: every state but the current one was left as often as entered */
    rsl__breaker_state now = ST(b);
    for (int s = 0; s < RSL_BREAKER__COUNT; s++) {
        int64_t in = 0, out = 0;
        for (int o = 0; o < RSL_BREAKER__COUNT; o++) {
            in +=
                (int64_t)rsl__breaker_transitions(b, (rsl__breaker_state)o, (rsl__breaker_state)s);
            out +=
                (int64_t)rsl__breaker_transitions(b, (rsl__breaker_state)s, (rsl__breaker_state)o);
        }
        int64_t start = s == RSL_BREAKER_CLOSED;
        ASSERT_EQ(start + in - out, (int64_t)(s == (int)now));
    }
    /* each half-open period began with the probe that moved it there */
    ASSERT((int64_t)(a[0].probes + a[1].probes) >= (int64_t)TR(b, OPEN, HALF_OPEN));
    /* quiet now: every probe slot came back, so the breaker cannot be wedged: at most
     * open -> half_open (1 success) -> closed (2 successes) */
    ASSERT_EQ(rsl__breaker_probes_inflight(b), 0);
    int64_t t = atomic_load(&clock);
    rsl__permit p;
    for (int i = 0; i < 3 && ST(b) != RSL_BREAKER_CLOSED; i++) {
        t += S;
        ASSERT(rsl__breaker_allow(b, t, &p));
        rsl__breaker_record(b, &p, t, OK, MS);
    }
    ASSERT_EQ(ST(b), RSL_BREAKER_CLOSED);
    rsl__breaker_free(b);
}
