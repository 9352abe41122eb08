/*
 * breaker -- a circuit breaker shared by every worker: lock-free, allocation-free hot path.
 *
 * Layer: the guards, above clock and window.
 *
 * All state that decides admission lives in one 64-bit word changed by CAS:
 *   state (3 bits) | probes in flight (8) | probe successes (8) | backoff level (5) |
 *   cycle (8) | open_until in ms, wrapping 32 bits (compared as a signed difference)
 * so a trip, a half-open admission and a close are each a single atomic step.  `cycle`
 * increments on every state change; a permit remembers the cycle it was admitted in, and a
 * verdict from an older cycle is dropped (a call admitted before a trip cannot close or
 * re-open the breaker later, and a probe from a reset breaker cannot free a slot it never
 * took).
 *
 * Semantics (DESIGN.md): closed counts calls in a time window; when calls >= min_calls and
 * failure rate >= failure_rate or slow rate >= slow_rate, it opens for
 * open_for * factor^level (capped at max, times 1 +/- jitter).  After that, half_open
 * admits at most `probes` calls at once; a failed probe re-opens with level+1; `probes`
 * successful probes close it, reset the level, and clear the window.  A rate of 0 disables
 * that criterion.  Forced open rejects everything; disabled admits everything and records
 * nothing.
 * With a joint trip (conf.trip, trip.h) the breaker also opens on its verdict, judged
 * lazily at period boundaries from allow and record.
 *
 * Threads: allow/record/release/read from any thread; configure/force/reset from any
 * thread.
 */
#ifndef RSL_BREAKER_H
#define RSL_BREAKER_H

#include "resilua.h"
#include "trip.h"
#include <stdint.h>

#define RSL_BREAKER_STATES(X)                                                              \
    X(CLOSED, "closed")                                                                    \
    X(OPEN, "open")                                                                        \
    X(HALF_OPEN, "half_open")                                                              \
    X(FORCED_OPEN, "forced_open")                                                          \
    X(DISABLED, "disabled")

typedef enum rsl__breaker_state {
#define RSL_X_(e, s) RSL_BREAKER_##e,
    RSL_BREAKER_STATES(RSL_X_)
#undef RSL_X_
    RSL_BREAKER__COUNT
} rsl__breaker_state;

const char *rsl__breaker_state_name(rsl__breaker_state s);

typedef struct rsl__breaker_conf {
    int64_t window_ns;     /* default 10 s */
    int buckets;           /* default 10 */
    int stripes;           /* window stripes (see window.h); default 1 */
    int64_t min_calls;     /* default 20 */
    double failure_rate;   /* percent 0..100, 0 = off; default 50 */
    int64_t slow_call_ns;  /* default 60 s */
    double slow_rate;      /* percent 0..100, 0 = off; default 100 */
    int64_t open_for_ns;   /* default 5 s */
    double backoff_factor; /* >= 1; default 2 */
    int64_t backoff_max_ns;/* default 2 min */
    double jitter;         /* 0..1: the period is multiplied by 1 + U(-jitter, +jitter) */
    int probes;            /* 1..255; default 1 */
    uint32_t count_mask;   /* bit (1u << outcome) set: counts as a failure;
                              default timeout|connect|5xx|error */
    rsl__trip_conf trip;   /* the joint trip (trip.h); periods 0 (the default): none */
} rsl__breaker_conf;

void rsl__breaker_conf_default(rsl__breaker_conf *c);

typedef struct rsl__breaker rsl__breaker;

/* What happened, for metrics and event logs: called by the thread that made the change,
 * right after it; `reason` e.g. "failure_rate 60.0% >= 50% over 20 calls", "probe failed",
 * "probes succeeded", "open period elapsed", "forced open", "disabled", "reset". */
typedef void (*rsl__breaker_hook)(void *ud, rsl__breaker *b, rsl__breaker_state from,
                                  rsl__breaker_state to, const char *reason);

/* `name` is copied. NULL on a bad conf or no memory. */
rsl__breaker *rsl__breaker_new(const char *name, const rsl__breaker_conf *c);
void rsl__breaker_free(rsl__breaker *b);
const char *rsl__breaker_name(const rsl__breaker *b);
/* Set it before the breaker is shared: the hook is read without synchronisation. */
void rsl__breaker_set_hook(rsl__breaker *b, rsl__breaker_hook fn, void *ud);
/* 1 when a hook is set. */
int rsl__breaker_hooked(const rsl__breaker *b);
/* Bytes this breaker occupies, its window included. */
size_t rsl__breaker_size(const rsl__breaker *b);

/*
 * Applies new thresholds in place, keeping state.  When window_ns, buckets or stripes
 * change the window is replaced (counts restart) and 1 is returned; else 0.  Safe while
 * calls record (a reload does not wait for the old generation's calls): the replaced
 * window is retired and freed with the breaker.  Calls that replace the window must not
 * run concurrently with each other (the loader's reload lock serializes them).  Negative
 * on a bad conf, RSL_ENOMEM when a new window cannot be had (the old settings stay).
 */
int rsl__breaker_configure(rsl__breaker *b, const rsl__breaker_conf *c);
void rsl__breaker_conf_get(const rsl__breaker *b, rsl__breaker_conf *c);

/* A ticket from allow(): pass it back to record() or release(), exactly once. */
typedef struct rsl__permit {
    uint8_t cycle;
    uint8_t probe;   /* admitted as a half-open probe */
    uint8_t counted; /* its verdict goes into the window (closed state) */
    uint8_t in_trip; /* counted by the joint trip too, as started in period tag `start` */
    uint32_t start;
} rsl__permit;

/* 1: admitted, fill *p; 0: rejected (counted as a rejection). */
int rsl__breaker_allow(rsl__breaker *b, int64_t now, rsl__permit *p);
/* The call admitted with *p ended with `o` after `latency_ns`.  `rejected` (a later guard
 * said no) and `canceled` carry no verdict on the upstream: they act as release() and
 * return -1.  Else the verdict, for a fleet (fleet.h): RSL_BREAKER_FAILED when `count`
 * holds o, | RSL_BREAKER_SLOW when it took slow_call or longer and slow calls count
 * (slow_rate > 0); a probe failed when it is not 0. */
enum { RSL_BREAKER_FAILED = 1, RSL_BREAKER_SLOW = 2 };
int rsl__breaker_record(rsl__breaker *b, const rsl__permit *p, int64_t now, rsl_outcome o,
                        int64_t latency_ns);
/* The call admitted with *p ended without a verdict (canceled): frees a probe slot. */
void rsl__breaker_release(rsl__breaker *b, const rsl__permit *p);

/* Admin overrides. reset: closed, level 0, window cleared. */
void rsl__breaker_force_open(rsl__breaker *b, int64_t now);
void rsl__breaker_disable(rsl__breaker *b, int64_t now);
void rsl__breaker_reset(rsl__breaker *b, int64_t now);
/* Lifts an override (no-op otherwise): forced open -> open for an open period at its
 * level, then probes as usual; disabled -> closed with a fresh window. */
void rsl__breaker_auto(rsl__breaker *b, int64_t now);

/* The fleet's verdicts (fleet.h), applied by the guard that shares this breaker.
 * fleet_open: open (from closed, half_open or open) for for_ns from `now` at backoff
 * `level`, the fleet's period; fleet_close: closed from open or half_open, level 0, window
 * cleared.  Neither touches a forced-open or disabled breaker.  1 when the state changed. */
int rsl__breaker_fleet_open(rsl__breaker *b, int64_t now, int64_t for_ns, int level,
                            const char *reason);
int rsl__breaker_fleet_close(rsl__breaker *b, int64_t now, const char *reason);

/* Reads, cheap, any thread. Rates are percents over the window at `now`. */
rsl__breaker_state rsl__breaker_state_get(const rsl__breaker *b);
/* The state a call would meet at `now`: "open" whose period has run out reads
 * "half_open" (the next admitted call probes), so a route that avoids an open breaker
 * still lets it recover. */
rsl__breaker_state rsl__breaker_state_at(const rsl__breaker *b, int64_t now);
double rsl__breaker_failure_rate(rsl__breaker *b, int64_t now);
double rsl__breaker_slow_rate(rsl__breaker *b, int64_t now);
int64_t rsl__breaker_calls(rsl__breaker *b, int64_t now);
int64_t rsl__breaker_latency(rsl__breaker *b, int64_t now, double q); /* ns */
int rsl__breaker_probes_inflight(const rsl__breaker *b);
int rsl__breaker_level(const rsl__breaker *b);
/* When open: ns until half_open is allowed (<= 0: now); else 0. */
int64_t rsl__breaker_open_remaining(const rsl__breaker *b, int64_t now);
/* The joint trip's statistics (threshold, streak, window), borrowed; NULL without one. */
const rsl__trip *rsl__breaker_trip(const rsl__breaker *b);
/* Counters since creation (survive reload): rejections, transitions[from][to] (0 when
 * from == to: an override to the current state is no transition). */
uint64_t rsl__breaker_rejections(const rsl__breaker *b);
uint64_t rsl__breaker_transitions(const rsl__breaker *b, rsl__breaker_state from,
                                  rsl__breaker_state to);

#endif
