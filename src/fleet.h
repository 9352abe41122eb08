/*
 * fleet -- a circuit breaker shared by every instance through Redis: each instance keeps
 * deciding on its own atomic breaker, counts its outcomes in one atomic word, and in the
 * background adds them to the fleet's per-bucket counts in Redis, reading back the fleet's
 * verdict, in one script call per flush.  Nothing on the call path waits for Redis.
 *
 * Layer: the guards' level, above redis (the I/O) and breaker (whose rule it applies to
 * the whole fleet); the guard layer applies its verdicts to the breaker it shares.
 *
 * The verdict lives in Redis (PREFIX{NAME}:fb, a hash: state, until, level, cycle, since,
 * reason, and the epoch: when the hash was made, so a Redis restarted empty, whose cycles
 * count from 0 again, publishes its first verdict however its cycle compares), judged by the script on Redis' clock:
 *   closed -> open when the fleet's counts over the breaker's window trip its own rule
 *     (min_calls, failure_rate, slow_rate) AND at least `quorum` distinct instances saw
 *     failures in that window (one sick instance, or one bad client, cannot open the
 *     fleet).  Counts are per time bucket (PREFIX{NAME}:fb:BUCKET, with a TTL, and the
 *     failing instances in PREFIX{NAME}:fb:BUCKET:i), so nothing is reset on expiry;
 *   open -> half_open once the fleet's open period (open_for x backoff^level, capped,
 *     jittered by the instance that opened it) has run out;
 *   half_open: the right to probe is a lease (PREFIX{NAME}:fb:p1..pN, SET NX PX), so at
 *     most `probes` calls probe across the fleet, and a lease whose holder died expires
 *     by itself.  A failed probe re-opens at level + 1; `probes` successes close it, with
 *     the counts before the close left out of the window.
 * An instance that trips on its local rule alone opens itself only.
 *
 * Flushes: from worker 0's heartbeat once `flush` has passed since the last one, and from
 * any worker after a call once 64 outcomes are waiting; one flush out at a time.  A flush
 * that has no answer in RSL_FLEET_TIMEOUT_NS (or an error, a lost or absent connection)
 * puts the fleet down: the breaker then decides alone (probes are local again), its counts
 * wait (up to a window's worth of time) and go with the first flush that is answered,
 * which rejoins.  Each change of mode is logged once.
 *
 * Threads: count and probe from any thread (atomics); a flush runs on the worker that won
 * the `flushing` flag, and its reply on that worker's loop.  Fleets are owned by the
 * runtime's registry and live until it is freed, after the workers stopped.
 */
#ifndef RSL_FLEET_H
#define RSL_FLEET_H

#include "env.h"
#include "redis.h"

#include <stdatomic.h>
#include <stdint.h>

#define RSL_FLEET_TIMEOUT_NS (250 * 1000000LL)
/* A flush goes out after a call once this many outcomes wait. */
#define RSL_FLEET_FLUSH_CALLS 64
/* Fleet states, as published */
enum { RSL_FLEET_CLOSED, RSL_FLEET_OPEN, RSL_FLEET_HALF_OPEN };
/* Modes, as leases have */
enum { RSL_FLEET_STARTING, RSL_FLEET_JOINED, RSL_FLEET_DOWN };

typedef struct rsl__fleet_conf {
    int quorum;       /* distinct failing instances needed to open the fleet, >= 1 */
    int64_t flush_ns; /* > 0 */
    /* The breaker's own rule, applied to the fleet's counts. */
    int64_t window_ns;
    int buckets;
    int64_t min_calls;
    double failure_rate, slow_rate; /* percents, 0: off */
    int64_t open_for_ns;
    double backoff_factor;
    int64_t backoff_max_ns;
    double jitter;
    int probes;
} rsl__fleet_conf;

typedef struct rsl__fleet rsl__fleet;
typedef struct rsl__fleets rsl__fleets;

/* prefix: the keys' ("resilua:" when NULL); instance: this process's id; env: the log. */
rsl__fleets *rsl__fleets_new(const char *prefix, const char *instance, const rsl__env *env);
void rsl__fleets_free(rsl__fleets *fs);
/* The fleet of breaker `name`, found (unchanged) or made with c.  NULL when out of memory
 * or on a bad conf.  The loader's thread. */
rsl__fleet *rsl__fleets_get(rsl__fleets *fs, const char *name, const rsl__fleet_conf *c);
/* New settings: 1 when they changed anything. */
int rsl__fleet_configure(rsl__fleet *f, const rsl__fleet_conf *c);
void rsl__fleet_conf_get(rsl__fleet *f, rsl__fleet_conf *c);

/* A call's verdict (counted: it was counted by the closed breaker): one atomic add. */
static inline void rsl__fleet_count(rsl__fleet *f, int failed, int slow);
/* A half-open probe's verdict. */
void rsl__fleet_probe_done(rsl__fleet *f, int failed);
/* After a call, on its worker: a flush when RSL_FLEET_FLUSH_CALLS outcomes or a probe's
 * verdict wait (r NULL: no Redis).  Inline and cheap otherwise: loads of one line. */
static inline void rsl__fleet_tend(rsl__fleet *f, rsl__redis *r);
void rsl__fleet_tend_due(rsl__fleet *f, rsl__redis *r); /* the flush, unless one is out */
/* Worker 0's heartbeat: each fleet whose `flush` is due flushes; flights that timed out
 * put their fleet down. */
void rsl__fleets_tick(rsl__fleets *fs, rsl__redis *r);

/* The published verdict.  pub changes with each one the fleet made (a new cycle in Redis);
 * 0 before the first (a new epoch in Redis, a restart, counts as a new cycle).  Down,
 * nothing is published and gated reads 0. */
typedef struct rsl__fleet_verdict {
    uint64_t pub;
    int state;          /* RSL_FLEET_* */
    int64_t remaining;  /* open: ns of the fleet's open period left (real time) */
    int level;
    int closing;        /* closed after being open: the fleet closes every instance */
    char reason[160];
} rsl__fleet_verdict;
static inline uint64_t rsl__fleet_pub(const rsl__fleet *f);
void rsl__fleet_verdict_get(rsl__fleet *f, rsl__fleet_verdict *v);
/* 1 when half-open probes need the fleet's leave (joined, and open or half_open). */
int rsl__fleet_gated(const rsl__fleet *f);
/* Takes one probe right (leased from Redis): 1, or 0 when this instance holds none. */
int rsl__fleet_take_right(rsl__fleet *f);
void rsl__fleet_give_right(rsl__fleet *f);

const char *rsl__fleet_mode_name(int mode);   /* "starting", "joined", "down" */
const char *rsl__fleet_state_name(int state); /* "closed", "open", "half_open" */
/* The flush script's text (benchmarks). */
const char *rsl__fleet_script(void);

typedef struct rsl__fleet_stats {
    int mode, state, quorum;
    int64_t calls, failures, instances; /* the fleet's window, as last read */
    int rights;
    uint64_t flushes, errors;
} rsl__fleet_stats;
void rsl__fleet_stats_get(rsl__fleet *f, rsl__fleet_stats *s);

/* ---- inline ---- */

/* Outcomes counted per thread slot (clock.h), monotonic: a worker's slot has one writer,
 * which adds with a load and a store (an atomic read-modify-write cost 6-7 ns here, most
 * of a shared breaker's added cost); slot 0, every other thread's, adds atomically. */
struct rsl__fleet_slot {
    _Atomic uint64_t calls, failures, slow;
    char pad[64 - 3 * sizeof(uint64_t)];
};

/* Announced to `waiting` once per this many outcomes of a worker's slot (each outcome of
 * slot 0): the flush trigger counts in these steps. */
#define RSL_FLEET_BATCH 8

struct rsl__fleet_hot {
    /* Outcomes announced, and announced at the last take (the flusher's store): a flush is
     * due once RSL_FLEET_FLUSH_CALLS more are, or at the heartbeat (every one while down). */
    _Atomic uint64_t waiting, taken;
    _Atomic uint64_t pub;
    _Atomic int probe_ok, probe_fail; /* probes' verdicts waiting for the next flush */
    char pad[64 - 3 * sizeof(uint64_t) - 2 * sizeof(int)];
    struct rsl__fleet_slot slot[RSL_THREAD_SLOTS];
};

static inline void rsl__fleet_add(_Atomic uint64_t *c, int shared) {
    if (shared) {
        atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
    } else { /* the slot's one writer */
        atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + 1,
                              memory_order_relaxed);
    }
}

static inline void rsl__fleet_count(rsl__fleet *f, int failed, int slow) {
    struct rsl__fleet_hot *h = (struct rsl__fleet_hot *)f;
    int i = rsl__thread_slot;
    struct rsl__fleet_slot *s = &h->slot[i];
    uint64_t n = atomic_load_explicit(&s->calls, memory_order_relaxed) + 1;
    if (i == 0) {
        atomic_fetch_add_explicit(&s->calls, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&h->waiting, 1, memory_order_relaxed);
    } else {
        atomic_store_explicit(&s->calls, n, memory_order_relaxed);
        if (n % RSL_FLEET_BATCH == 0) {
            atomic_fetch_add_explicit(&h->waiting, RSL_FLEET_BATCH, memory_order_relaxed);
        }
    }
    if (failed) {
        rsl__fleet_add(&s->failures, i == 0);
    }
    if (slow) {
        rsl__fleet_add(&s->slow, i == 0);
    }
}

static inline void rsl__fleet_tend(rsl__fleet *f, rsl__redis *r) {
    struct rsl__fleet_hot *h = (struct rsl__fleet_hot *)f;
    if (atomic_load_explicit(&h->waiting, memory_order_relaxed) -
                atomic_load_explicit(&h->taken, memory_order_relaxed) >=
            RSL_FLEET_FLUSH_CALLS ||
        atomic_load_explicit(&h->probe_ok, memory_order_relaxed) ||
        atomic_load_explicit(&h->probe_fail, memory_order_relaxed)) {
        rsl__fleet_tend_due(f, r);
    }
}

static inline uint64_t rsl__fleet_pub(const rsl__fleet *f) {
    return atomic_load_explicit(&((const struct rsl__fleet_hot *)f)->pub, memory_order_acquire);
}

#endif
