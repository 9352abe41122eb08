/*
 * trip -- the joint trip rule of a breaker: error rate AND a latency quantile, judged once
 * per period over a window of periods, with a latency threshold that adapts to healthy
 * traffic.  A breaker (breaker.c) owns at most one; this file owns the statistics and the
 * verdict, the breaker owns the state word and makes the transition.
 *
 * Layer: the guards, above clock and window (it bins latencies as window.c does).
 *
 * Definition (README "Joint trip"):
 *   - time is cut into periods of period_ns; a call is credited to the period it started
 *     in (its start tag), whenever it ends;
 *   - when a period ends, it is bad when, over the last window_ns (short_window_ns after
 *     two trips within a minute), calls >= min_calls AND error rate >= failure_rate AND
 *     P(q) > threshold.  Calls still in flight whose elapsed time is past the threshold
 *     join the latency sample at that elapsed time, so a hung upstream cannot hide;
 *   - `periods` consecutive bad periods trip; one good period resets the streak;
 *   - the threshold starts at `over`; with factor > 0 each healthy period (good, closed,
 *     streak 0, >= min_calls in the window, its own error rate below failure_rate) feeds
 *     the P(q) of its own calls into an EWMA (alpha 0.2) and the threshold
 *     moves toward EWMA x factor, at most 10% per period, clamped to [over, max]; it is
 *     frozen while the streak is > 0 or the breaker is not closed;
 *   - two trips within 60 s shrink the window to short_window_ns; 5 minutes closed restore
 *     window_ns.
 * A leg whose setting is 0 (failure_rate 0, over 0) is left out of the conjunction.
 *
 * Evaluation is lazy: allow/record call rsl__trip_due(now) (one load and a compare) and,
 * past a boundary, rsl__trip_advance, which one thread at a time (a try-lock) runs for
 * every period that ended; the others go on.  Everything runs on the `now` passed in, so
 * tests drive it on an injected clock.
 *
 * Threads: start/done/drop/due/advance and the reads from any thread, lock-free;
 * configure from one thread at a time (the loader).  Memory: one block, 64-byte aligned,
 * (next power of two >= window periods + 2) slots of 176 bytes: 2.9 KB for 10 periods.
 */
#ifndef RSL_TRIP_H
#define RSL_TRIP_H

#include <stddef.h>
#include <stdint.h>

/* Most periods in a window: 60 (a minute of 1 s periods) keeps the slot ring at 64. */
#define RSL_TRIP_MAX_PERIODS 60

typedef struct rsl__trip_conf {
    int periods;             /* consecutive bad periods that trip; 0: no joint trip */
    int64_t period_ns;       /* default 1 s */
    int64_t window_ns;       /* a multiple of period_ns, <= RSL_TRIP_MAX_PERIODS of them */
    int64_t short_window_ns; /* a multiple of period_ns, <= window_ns; default window / 2 */
    double failure_rate;     /* percent 0..100, at or above is bad; 0: leg off */
    double q;                /* the quantile, (0, 1]; default 0.9 */
    int64_t over_ns;         /* the threshold, or its floor when adapting; 0: leg off */
    double factor;           /* 0: fixed threshold; else EWMA(P(q)) x factor (> 0) */
    int64_t max_ns;          /* the adaptive threshold's ceiling (>= over_ns) */
} rsl__trip_conf;

/* Off (periods 0); the other fields hold the defaults used when a trip is declared:
 * period 1 s, window 10 s, short window 5 s, failure_rate 20, q 0.9, over 800 ms, factor
 * 0, max 1500 ms, periods 3 once enabled. */
void rsl__trip_conf_default(rsl__trip_conf *c);
/* 1 when c is usable (periods 0 is always usable: off). */
int rsl__trip_conf_ok(const rsl__trip_conf *c);
int rsl__trip_conf_eq(const rsl__trip_conf *a, const rsl__trip_conf *b);

typedef struct rsl__trip rsl__trip;

/* NULL on a bad or off conf, or no memory. */
rsl__trip *rsl__trip_new(const rsl__trip_conf *c);
void rsl__trip_free(rsl__trip *t);
size_t rsl__trip_size(const rsl__trip *t);
void rsl__trip_conf_get(const rsl__trip *t, rsl__trip_conf *c);
/* 1 when c keeps t's slot layout (period and window lengths), so configure can apply it. */
int rsl__trip_same_shape(const rsl__trip *t, const rsl__trip_conf *c);
/* Applies thresholds (periods, failure_rate, q, over, factor, max, short window) in place;
 * the threshold is clamped into the new [over, max]. */
void rsl__trip_configure(rsl__trip *t, const rsl__trip_conf *c);

/* ---- the hot path ---- */

/* A call admitted at `now` (closed state): returns its start tag for done/drop. */
uint32_t rsl__trip_start(rsl__trip *t);
/* The call tagged `start` ended with a verdict. */
void rsl__trip_done(rsl__trip *t, uint32_t start, int failed, int64_t latency_ns);
/* The call tagged `start` ended without one (canceled, rejected later, stale cycle). */
void rsl__trip_drop(rsl__trip *t, uint32_t start);
/* 1 when a period boundary has passed at `now` and advance should run. */
int rsl__trip_due(const rsl__trip *t, int64_t now);
/*
 * Judges every period that ended by `now` (one thread at a time; 0 at once for the others)
 * and returns 1 when the breaker should trip now, with why in `reason` (may be NULL).
 * `closed`: the breaker is closed (else the threshold stays frozen).
 */
int rsl__trip_advance(rsl__trip *t, int64_t now, int64_t min_calls, int closed, char *reason,
                      size_t len);
/* The breaker opened at `now` (any rule): the streak restarts; a second trip within 60 s
 * shrinks the window. */
void rsl__trip_tripped(rsl__trip *t, int64_t now);
/* The breaker closed at `now`: statistics restart at the next period; the 5 minutes that
 * restore the window start counting. */
void rsl__trip_closed(rsl__trip *t, int64_t now);

/* ---- reads, any thread ---- */

int64_t rsl__trip_threshold(const rsl__trip *t); /* ns */
int rsl__trip_streak(const rsl__trip *t);
int64_t rsl__trip_window(const rsl__trip *t);   /* the window in use, ns */
uint64_t rsl__trip_bad_periods(const rsl__trip *t);
uint64_t rsl__trip_periods_judged(const rsl__trip *t);

#endif
