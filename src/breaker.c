/*
 * breaker -- the circuit breaker of breaker.h: one packed 64-bit state word changed only by
 * CAS, a striped sliding window (window.c) for the closed state's statistics.
 *
 * Layer: the guards, above clock and window.
 *
 * Threads: allow/record/release and every read from any thread without a lock or an
 * allocation; admin overrides and threshold changes from any thread; replacing the window
 * (configure with a new window_ns/buckets/stripes) from one thread at a time (the loader,
 * under the reload lock) while calls go on: the window pointer is published with a release
 * store and read with acquire, and a replaced window is retired, not freed, until the
 * breaker goes (a call that loaded the old pointer may still record into it; its counts are
 * lost with the reset anyway).  A reshape costs one retired window (about 2-4 KB), and
 * reshapes are rare reload events, so retiring beats a grace-period scheme.
 * Decisions load the word with acquire; counters are relaxed atomics on their own line.
 * The thread whose CAS makes a transition counts it and calls the hook.
 * Ownership: rsl__breaker_new allocates one block holding the breaker, its name and its
 * window; rsl__breaker_free frees it (and a window configure put in its place).
 */
#include "breaker.h"
#include "clock.h"
#include "window.h"

#include <math.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A cache line on every x86-64 and most arm64 parts; the unit of false sharing. */
#define LINE 64

/*
 * The state word, low bits first:
 *   state 3 | probes in flight 8 | probe successes 8 | level 5 | cycle 8 | open_until ms 32
 * 8-bit probe fields are why probes <= 255; 5 bits of level are 31 re-trips, far past any
 * backoff cap (2^31 * 5 s).
 */
#define ST_SHIFT    0
#define ST_MASK     UINT64_C(0x7)
#define INF_SHIFT   3
#define SUC_SHIFT   11
#define LVL_SHIFT   19
#define LVL_MASK    UINT64_C(0x1f)
#define CYC_SHIFT   24
#define BYTE_MASK   UINT64_C(0xff)
#define UNTIL_SHIFT 32
#define MAX_LEVEL   31
#define MAX_PROBES  255

/* open_until is compared as a signed 32-bit difference of ms, so periods must stay below
 * 2^31 ms (24.8 days).  7 days, doubled by the largest jitter, stays well inside. */
#define MAX_OPEN_NS (INT64_C(7) * 24 * 3600 * RSL_NS_PER_S)

/* Outcomes that carry no verdict on the upstream: the call never reached it or nobody
 * waited for it.  They are never counted, whatever the mask says. */
#define NO_VERDICT_MASK   ((1u << RSL_OUTCOME_REJECTED) | (1u << RSL_OUTCOME_CANCELED))
#define ALL_OUTCOMES_MASK ((1u << RSL_OUTCOME__COUNT) - 1)

/* Transitions are counted for from != to only: 20 counters, not 25. */
#define NTRANSITIONS (RSL_BREAKER__COUNT * (RSL_BREAKER__COUNT - 1))

/*
 * One 64-byte-aligned block: this struct, the name, padding to a line, then the window
 * (window.h's rsl__window_init).  With the default conf and a name under 32 bytes that is
 * 320 + 64 + stripes * 1792 bytes: 2240 with 1 stripe, 3968 with 2 (one allocation, so
 * malloc adds ~64, not ~180 as two aligned blocks did).
 */
struct rsl__breaker {
    /* Line 0: read by every allow/record, written only on a state change or a half-open
     * admission; the thresholds beside it are written only by configure. */
    alignas(LINE) _Atomic uint64_t word;
    _Atomic(rsl__window *) w; /* the embedded window, or one configure put in its place */
    _Atomic uint32_t count_mask;
    _Atomic int probes;
    _Atomic int64_t min_calls;
    _Atomic int64_t slow_call_ns;
    _Atomic double failure_rate;
    _Atomic double slow_rate;
    _Atomic int64_t open_for_ns;
    /* Line 1: read on trips, written on rejections; off line 0 so a storm of rejections
     * does not slow the readers of `word`. */
    alignas(LINE) _Atomic int64_t backoff_max_ns;
    _Atomic double backoff_factor;
    _Atomic double jitter;
    /* The window's shape: written only by configure with the window, read by conf_get
     * from any thread (describe), so relaxed atomics; a reader racing a reshape may see a
     * mix of old and new, never a torn value. */
    _Atomic int64_t window_ns;
    struct retired *retired; /* replaced windows, freed with the breaker; configure's */
    _Atomic int buckets;
    _Atomic int stripes;
    _Atomic(rsl__trip *) trip; /* the joint trip or NULL; replaced like the window */
    rsl__breaker_hook hook; /* set before the breaker is shared */
    void *hook_ud;
    _Atomic uint64_t rejections;
    /* Lines 2-4: transition counters, then the name. */
    _Atomic uint64_t transitions[NTRANSITIONS];
    char name[];
};

struct retired {
    struct retired *next;
    rsl__window *w;
    rsl__trip *t;
};

/* The current window: acquire pairs with configure's release, so a reader sees the new
 * window's initialised buckets. */
static inline rsl__window *win(const rsl__breaker *b) {
    return atomic_load_explicit(&((rsl__breaker *)b)->w, memory_order_acquire);
}

static inline rsl__trip *trip_of(const rsl__breaker *b) {
    return atomic_load_explicit(&((rsl__breaker *)b)->trip, memory_order_acquire);
}

static int transition_index(rsl__breaker_state from, rsl__breaker_state to) {
    return (int)from * (RSL_BREAKER__COUNT - 1) + (int)(to < from ? to : to - 1);
}

static const char *const state_names[] = {
#define RSL_X_(e, s) s,
    RSL_BREAKER_STATES(RSL_X_)
#undef RSL_X_
};

const char *rsl__breaker_state_name(rsl__breaker_state s) {
    if ((unsigned)s >= RSL_BREAKER__COUNT) {
        return "unknown";
    }
    return state_names[s];
}

/* ---- the state word ---- */

static rsl__breaker_state w_state(uint64_t s) {
    return (rsl__breaker_state)((s >> ST_SHIFT) & ST_MASK);
}
static int w_inflight(uint64_t s) {
    return (int)((s >> INF_SHIFT) & BYTE_MASK);
}
static int w_succ(uint64_t s) {
    return (int)((s >> SUC_SHIFT) & BYTE_MASK);
}
static int w_level(uint64_t s) {
    return (int)((s >> LVL_SHIFT) & LVL_MASK);
}
static uint8_t w_cycle(uint64_t s) {
    return (uint8_t)((s >> CYC_SHIFT) & BYTE_MASK);
}
static uint32_t w_until(uint64_t s) {
    return (uint32_t)(s >> UNTIL_SHIFT);
}

static uint64_t pack(rsl__breaker_state st, int inflight, int succ, int level, uint8_t cycle,
                     uint32_t until) {
    return ((uint64_t)st << ST_SHIFT) | ((uint64_t)inflight << INF_SHIFT) |
           ((uint64_t)succ << SUC_SHIFT) | ((uint64_t)level << LVL_SHIFT) |
           ((uint64_t)cycle << CYC_SHIFT) | ((uint64_t)until << UNTIL_SHIFT);
}

static uint32_t ms32(int64_t now) {
    return (uint32_t)(uint64_t)(now / RSL_NS_PER_MS);
}

static int cas(rsl__breaker *b, uint64_t *expected, uint64_t desired) {
    return atomic_compare_exchange_strong_explicit(&b->word, expected, desired,
                                                   memory_order_acq_rel, memory_order_acquire);
}

static uint64_t load_word(const rsl__breaker *b) {
    return atomic_load_explicit(&b->word, memory_order_acquire);
}

/* ---- conf ---- */

void rsl__breaker_conf_default(rsl__breaker_conf *c) {
    memset(c, 0, sizeof(*c));
    c->window_ns = 10 * RSL_NS_PER_S;
    c->buckets = 10;
    c->stripes = 1;
    c->min_calls = 20;
    c->failure_rate = 50;
    c->slow_call_ns = 60 * RSL_NS_PER_S;
    c->slow_rate = 100;
    c->open_for_ns = 5 * RSL_NS_PER_S;
    c->backoff_factor = 2;
    c->backoff_max_ns = 120 * RSL_NS_PER_S;
    c->jitter = 0;
    c->probes = 1;
    c->count_mask = (1u << RSL_OUTCOME_TIMEOUT) | (1u << RSL_OUTCOME_CONNECT) |
                    (1u << RSL_OUTCOME_5XX) | (1u << RSL_OUTCOME_ERROR);
}

static int percent_ok(double p) {
    return p >= 0 && p <= 100; /* false for NaN too */
}

static int conf_ok(const rsl__breaker_conf *c) {
    return c->window_ns > 0 && c->buckets >= 1 && c->buckets <= RSL_WINDOW_MAX_BUCKETS &&
           c->stripes >= 1 && c->stripes <= RSL_WINDOW_MAX_STRIPES &&
           c->window_ns / c->buckets >= RSL_NS_PER_US && c->min_calls >= 0 &&
           percent_ok(c->failure_rate) && percent_ok(c->slow_rate) && c->slow_call_ns > 0 &&
           c->open_for_ns > 0 && c->open_for_ns <= MAX_OPEN_NS && c->backoff_factor >= 1 &&
           isfinite(c->backoff_factor) && c->backoff_max_ns > 0 &&
           c->backoff_max_ns <= MAX_OPEN_NS && c->jitter >= 0 && c->jitter <= 1 && c->probes >= 1 &&
           c->probes <= MAX_PROBES && (c->count_mask & ~ALL_OUTCOMES_MASK) == 0 &&
           rsl__trip_conf_ok(&c->trip);
}

static void store_thresholds(rsl__breaker *b, const rsl__breaker_conf *c) {
    atomic_store_explicit(&b->count_mask, c->count_mask & ~NO_VERDICT_MASK, memory_order_relaxed);
    atomic_store_explicit(&b->probes, c->probes, memory_order_relaxed);
    atomic_store_explicit(&b->min_calls, c->min_calls, memory_order_relaxed);
    atomic_store_explicit(&b->slow_call_ns, c->slow_call_ns, memory_order_relaxed);
    atomic_store_explicit(&b->failure_rate, c->failure_rate, memory_order_relaxed);
    atomic_store_explicit(&b->slow_rate, c->slow_rate, memory_order_relaxed);
    atomic_store_explicit(&b->open_for_ns, c->open_for_ns, memory_order_relaxed);
    atomic_store_explicit(&b->backoff_max_ns, c->backoff_max_ns, memory_order_relaxed);
    atomic_store_explicit(&b->backoff_factor, c->backoff_factor, memory_order_relaxed);
    atomic_store_explicit(&b->jitter, c->jitter, memory_order_relaxed);
}

void rsl__breaker_conf_get(const rsl__breaker *b, rsl__breaker_conf *c) {
    memset(c, 0, sizeof(*c));
    c->window_ns = atomic_load_explicit(&b->window_ns, memory_order_relaxed);
    c->buckets = atomic_load_explicit(&b->buckets, memory_order_relaxed);
    c->stripes = atomic_load_explicit(&b->stripes, memory_order_relaxed);
    c->min_calls = atomic_load_explicit(&b->min_calls, memory_order_relaxed);
    c->failure_rate = atomic_load_explicit(&b->failure_rate, memory_order_relaxed);
    c->slow_call_ns = atomic_load_explicit(&b->slow_call_ns, memory_order_relaxed);
    c->slow_rate = atomic_load_explicit(&b->slow_rate, memory_order_relaxed);
    c->open_for_ns = atomic_load_explicit(&b->open_for_ns, memory_order_relaxed);
    c->backoff_factor = atomic_load_explicit(&b->backoff_factor, memory_order_relaxed);
    c->backoff_max_ns = atomic_load_explicit(&b->backoff_max_ns, memory_order_relaxed);
    c->jitter = atomic_load_explicit(&b->jitter, memory_order_relaxed);
    c->probes = atomic_load_explicit(&b->probes, memory_order_relaxed);
    c->count_mask = atomic_load_explicit(&b->count_mask, memory_order_relaxed);
    rsl__trip_conf_get(trip_of(b), &c->trip);
}

/* ---- lifecycle ---- */

/* Offset of the embedded window: the struct and its name, rounded up to a line. */
static size_t window_offset(size_t name_len) {
    size_t n = (offsetof(rsl__breaker, name) + name_len + 1 + LINE - 1) / LINE * LINE;
    return n < sizeof(rsl__breaker) ? sizeof(rsl__breaker) : n;
}

static rsl__window *embedded_window(const rsl__breaker *b) {
    return (rsl__window *)((char *)b + window_offset(strlen(b->name)));
}

rsl__breaker *rsl__breaker_new(const char *name, const rsl__breaker_conf *c) {
    if (!name || !c || !conf_ok(c)) {
        return NULL;
    }
    size_t len = strlen(name);
    size_t off = window_offset(len);
    size_t wsize = rsl__window_footprint(c->window_ns, c->buckets, c->stripes);
    if (!wsize) {
        return NULL;
    }
    rsl__trip *t = NULL;
    if (c->trip.periods > 0 && !(t = rsl__trip_new(&c->trip))) {
        return NULL;
    }
    rsl__breaker *b = aligned_alloc(LINE, off + wsize); /* both multiples of LINE */
    if (!b) {
        rsl__trip_free(t);
        return NULL;
    }
    memset(b, 0, off); /* closed, cycle 0, level 0; counters 0 */
    memcpy(b->name, name, len + 1);
    atomic_init(&b->w, rsl__window_init((char *)b + off, c->window_ns, c->buckets, c->stripes));
    atomic_init(&b->window_ns, c->window_ns);
    atomic_init(&b->buckets, c->buckets);
    atomic_init(&b->stripes, c->stripes);
    atomic_init(&b->trip, t);
    store_thresholds(b, c);
    return b;
}

void rsl__breaker_free(rsl__breaker *b) {
    if (!b) {
        return;
    }
    if (win(b) != embedded_window(b)) {
        rsl__window_free(win(b));
    }
    rsl__trip_free(trip_of(b));
    for (struct retired *r = b->retired, *next; r; r = next) {
        next = r->next;
        rsl__window_free(r->w); /* NULL for a retired trip */
        rsl__trip_free(r->t);
        free(r);
    }
    free(b);
}

const char *rsl__breaker_name(const rsl__breaker *b) {
    return b->name;
}

int rsl__breaker_hooked(const rsl__breaker *b) {
    return b->hook != NULL;
}

void rsl__breaker_set_hook(rsl__breaker *b, rsl__breaker_hook fn, void *ud) {
    b->hook = fn;
    b->hook_ud = ud;
}

size_t rsl__breaker_size(const rsl__breaker *b) {
    const rsl__window *e = embedded_window(b);
    size_t n = window_offset(strlen(b->name)) + rsl__window_size(e);
    rsl__window *w = win(b);
    n = w == e ? n : n + rsl__window_size(w);
    n += rsl__trip_size(trip_of(b));
    for (const struct retired *r = b->retired; r; r = r->next) {
        n += (r->w ? rsl__window_size(r->w) : 0) + rsl__trip_size(r->t) + sizeof(*r);
    }
    return n;
}

int rsl__breaker_configure(rsl__breaker *b, const rsl__breaker_conf *c) {
    if (!c || !conf_ok(c)) {
        return RSL_EINVAL;
    }
    int replaced = 0;
    rsl__trip *t = trip_of(b);
    if (t && rsl__trip_same_shape(t, &c->trip)) {
        rsl__trip_configure(t, &c->trip);
    } else if (t || c->trip.periods > 0) {
        /* A new shape (or none): fresh statistics; calls holding the old tags land in the
         * new object's slots with mismatched epochs and count for nothing. */
        rsl__trip *nt = c->trip.periods > 0 ? rsl__trip_new(&c->trip) : NULL;
        struct retired *r = t ? malloc(sizeof(*r)) : NULL;
        if ((c->trip.periods > 0 && !nt) || (t && !r)) {
            rsl__trip_free(nt);
            free(r);
            return RSL_ENOMEM;
        }
        atomic_store_explicit(&b->trip, nt, memory_order_release);
        if (r) {
            r->w = NULL;
            r->t = t;
            r->next = b->retired;
            b->retired = r;
        }
    }
    if (c->window_ns != b->window_ns || c->buckets != b->buckets || c->stripes != b->stripes) {
        rsl__window *nw = rsl__window_new(c->window_ns, c->buckets, c->stripes);
        struct retired *r = malloc(sizeof(*r));
        if (!nw || !r) {
            rsl__window_free(nw);
            free(r);
            return RSL_ENOMEM;
        }
        /* Calls may be recording into the old window right now: publish the new one, keep
         * the old one until the breaker goes (the embedded one stays with the block
         * anyway). */
        rsl__window *old = win(b);
        atomic_store_explicit(&b->w, nw, memory_order_release);
        if (old != embedded_window(b)) {
            r->w = old;
            r->t = NULL;
            r->next = b->retired;
            b->retired = r;
        } else {
            free(r);
        }
        atomic_store_explicit(&b->window_ns, c->window_ns, memory_order_relaxed);
        atomic_store_explicit(&b->buckets, c->buckets, memory_order_relaxed);
        atomic_store_explicit(&b->stripes, c->stripes, memory_order_relaxed);
        replaced = 1;
    }
    store_thresholds(b, c);
    return replaced;
}

/* ---- transitions ---- */

static void note(rsl__breaker *b, rsl__breaker_state from, rsl__breaker_state to,
                 const char *reason) {
    atomic_fetch_add_explicit(&b->transitions[transition_index(from, to)], 1, memory_order_relaxed);
    if (b->hook) {
        b->hook(b->hook_ud, b, from, to, reason);
    }
}

/* open_until (ms, wrapping) for an open period at backoff `level` starting at `now`:
 * open_for * factor^level, capped at max, times 1 + jitter * U(-1, 1); rounded up to the
 * next ms so the breaker never opens for less than the period. */
static uint32_t open_until(rsl__breaker *b, int64_t now, int level) {
    double p = (double)atomic_load_explicit(&b->open_for_ns, memory_order_relaxed) *
               pow(atomic_load_explicit(&b->backoff_factor, memory_order_relaxed), level);
    double max = (double)atomic_load_explicit(&b->backoff_max_ns, memory_order_relaxed);
    if (!(p <= max)) {
        p = max;
    }
    double j = atomic_load_explicit(&b->jitter, memory_order_relaxed);
    if (j > 0) {
        p *= 1 + j * (2 * rsl__rand01() - 1);
    }
    int64_t end = now + (int64_t)p;
    return (uint32_t)(uint64_t)((end + RSL_NS_PER_MS - 1) / RSL_NS_PER_MS);
}

static int should_trip(rsl__breaker *b, int64_t now, char *reason, size_t len) {
    rsl__window_counts c;
    rsl__window_counts_at(win(b), now, &c);
    int64_t min = atomic_load_explicit(&b->min_calls, memory_order_relaxed);
    if (c.calls == 0 || c.calls < min) {
        return 0;
    }
    double fr = atomic_load_explicit(&b->failure_rate, memory_order_relaxed);
    double sr = atomic_load_explicit(&b->slow_rate, memory_order_relaxed);
    double fpct = 100.0 * (double)c.failures / (double)c.calls;
    double spct = 100.0 * (double)c.slow / (double)c.calls;
    const char *what;
    double pct, limit;
    if (fr > 0 && fpct >= fr) {
        what = "failure_rate";
        pct = fpct;
        limit = fr;
    } else if (sr > 0 && spct >= sr) {
        what = "slow_rate";
        pct = spct;
        limit = sr;
    } else {
        return 0;
    }
    if (reason) {
        snprintf(reason, len, "%s %.1f%% >= %g%% over %lld calls", what, pct, limit,
                 (long long)c.calls);
    }
    return 1;
}

/* After a record in closed cycle `s`: trips when the window says so.  Only one CAS: while
 * closed nothing else changes the word without bumping the cycle, so a failed CAS means
 * someone else already changed the state. */
static void maybe_trip(rsl__breaker *b, uint64_t s, int64_t now) {
    char reason[96] = "";
    if (!should_trip(b, now, b->hook ? reason : NULL, sizeof(reason))) {
        return;
    }
    uint64_t n = pack(RSL_BREAKER_OPEN, 0, 0, 0, (uint8_t)(w_cycle(s) + 1), open_until(b, now, 0));
    if (cas(b, &s, n)) {
        rsl__trip *t = trip_of(b);
        if (t) {
            rsl__trip_tripped(t, now);
        }
        note(b, RSL_BREAKER_CLOSED, RSL_BREAKER_OPEN, reason);
    }
}

/* A period boundary passed at `now` in closed word `s`: the joint trip judges the periods
 * that ended; 1 when this call opened the breaker.  Kept out of line: it runs once per
 * period, and the hot path stays a load and a compare. */
__attribute__((noinline)) static int joint(rsl__breaker *b, uint64_t s, int64_t now,
                                           rsl__trip *t) {
    char reason[160] = "";
    int64_t min = atomic_load_explicit(&b->min_calls, memory_order_relaxed);
    if (!rsl__trip_advance(t, now, min, w_state(s) == RSL_BREAKER_CLOSED,
                           b->hook ? reason : NULL, sizeof(reason))) {
        return 0;
    }
    uint64_t n = pack(RSL_BREAKER_OPEN, 0, 0, 0, (uint8_t)(w_cycle(s) + 1), open_until(b, now, 0));
    if (!cas(b, &s, n)) {
        return 0;
    }
    rsl__trip_tripped(t, now);
    note(b, RSL_BREAKER_CLOSED, RSL_BREAKER_OPEN, reason);
    return 1;
}

/* The breaker closed at `now`: the joint trip's statistics restart. */
static void closed_at(rsl__breaker *b, int64_t now) {
    rsl__trip *t = trip_of(b);
    if (t) {
        rsl__trip_closed(t, now);
    }
}

/* ---- hot path ---- */

static int reject(rsl__breaker *b) {
    atomic_fetch_add_explicit(&b->rejections, 1, memory_order_relaxed);
    return 0;
}

int rsl__breaker_allow(rsl__breaker *b, int64_t now, rsl__permit *p) {
    uint64_t s = load_word(b);
    for (;;) {
        switch (w_state(s)) {
        case RSL_BREAKER_CLOSED: {
            rsl__trip *t = trip_of(b);
            p->in_trip = 0;
            if (t) {
                if (rsl__trip_due(t, now) && joint(b, s, now, t)) {
                    s = load_word(b);
                    continue; /* this call tripped it: it meets the open breaker */
                }
                p->in_trip = 1;
                p->start = rsl__trip_start(t);
            }
            p->cycle = w_cycle(s);
            p->probe = 0;
            p->counted = 1;
            return 1;
        }
        case RSL_BREAKER_DISABLED:
            p->cycle = w_cycle(s);
            p->probe = 0;
            p->counted = 0;
            p->in_trip = 0;
            return 1;
        case RSL_BREAKER_OPEN: {
            if ((int32_t)(w_until(s) - ms32(now)) > 0) {
                return reject(b);
            }
            uint8_t cyc = (uint8_t)(w_cycle(s) + 1);
            uint64_t n = pack(RSL_BREAKER_HALF_OPEN, 1, 0, w_level(s), cyc, w_until(s));
            if (!cas(b, &s, n)) {
                continue; /* s reloaded */
            }
            note(b, RSL_BREAKER_OPEN, RSL_BREAKER_HALF_OPEN, "open period elapsed");
            p->cycle = cyc;
            p->probe = 1;
            p->counted = 0;
            p->in_trip = 0;
            return 1;
        }
        case RSL_BREAKER_HALF_OPEN: {
            /* Probes now in flight plus those that already succeeded: admitting more than
             * `probes` of them could not change the verdict, only load the upstream. */
            int probes = atomic_load_explicit(&b->probes, memory_order_relaxed);
            if (w_inflight(s) + w_succ(s) >= probes) {
                return reject(b);
            }
            if (!cas(b, &s, s + (UINT64_C(1) << INF_SHIFT))) {
                continue;
            }
            p->cycle = w_cycle(s);
            p->probe = 1;
            p->counted = 0;
            p->in_trip = 0;
            return 1;
        }
        default: /* forced open */
            return reject(b);
        }
    }
}

static void record_probe(rsl__breaker *b, const rsl__permit *p, int64_t now, int failed) {
    uint64_t s = load_word(b);
    uint32_t until = 0;
    for (;;) {
        if (w_state(s) != RSL_BREAKER_HALF_OPEN || w_cycle(s) != p->cycle || w_inflight(s) == 0) {
            return; /* a verdict from an earlier cycle */
        }
        uint8_t cyc = (uint8_t)(w_cycle(s) + 1);
        if (failed) {
            int level = w_level(s) < MAX_LEVEL ? w_level(s) + 1 : MAX_LEVEL;
            if (!until) {
                until = open_until(b, now, level);
            }
            if (cas(b, &s, pack(RSL_BREAKER_OPEN, 0, 0, level, cyc, until))) {
                note(b, RSL_BREAKER_HALF_OPEN, RSL_BREAKER_OPEN, "probe failed");
                return;
            }
            continue;
        }
        int succ = w_succ(s) + 1;
        if (succ >= atomic_load_explicit(&b->probes, memory_order_relaxed)) {
            if (cas(b, &s, pack(RSL_BREAKER_CLOSED, 0, 0, 0, cyc, 0))) {
                /* Calls admitted in the new cycle may record before this clear and be
                 * wiped with the old counts: a few lost samples, never a wrong total. */
                rsl__window_clear(win(b));
                closed_at(b, now);
                note(b, RSL_BREAKER_HALF_OPEN, RSL_BREAKER_CLOSED, "probes succeeded");
                return;
            }
            continue;
        }
        uint64_t n = s - (UINT64_C(1) << INF_SHIFT) + (UINT64_C(1) << SUC_SHIFT);
        if (cas(b, &s, n)) {
            return;
        }
    }
}

int rsl__breaker_record(rsl__breaker *b, const rsl__permit *p, int64_t now, rsl_outcome o,
                        int64_t latency_ns) {
    if ((unsigned)o >= RSL_OUTCOME__COUNT || ((1u << o) & NO_VERDICT_MASK)) {
        rsl__breaker_release(b, p);
        return -1;
    }
    int failed = (atomic_load_explicit(&b->count_mask, memory_order_relaxed) >> o) & 1;
    int slow = latency_ns >= atomic_load_explicit(&b->slow_call_ns, memory_order_relaxed);
    /* A slow call fails a probe, and is a slow call to the fleet, when slow calls count. */
    int slow_counts = slow && atomic_load_explicit(&b->slow_rate, memory_order_relaxed) > 0;
    int verdict = (failed ? RSL_BREAKER_FAILED : 0) | (slow_counts ? RSL_BREAKER_SLOW : 0);
    if (p->counted) {
        uint64_t s = load_word(b);
        rsl__trip *t = p->in_trip ? trip_of(b) : NULL;
        if (w_state(s) != RSL_BREAKER_CLOSED || w_cycle(s) != p->cycle) {
            if (t) {
                rsl__trip_drop(t, p->start); /* no longer in flight, and no verdict */
            }
            return verdict; /* admitted before a state change: its verdict is about
                             * another era, here; a fleet still counts it */
        }
        if (t) {
            rsl__trip_done(t, p->start, failed, latency_ns);
            if (rsl__trip_due(t, now) && joint(b, s, now, t)) {
                return verdict;
            }
        }
        int64_t r = rsl__window_record(win(b), now, failed, slow, latency_ns);
        /* A plain success can only trip the breaker by bringing calls up to min_calls or
         * right after buckets were evicted; anything else lowers both rates. */
        if (failed || slow || r < 0 ||
            r <= atomic_load_explicit(&b->min_calls, memory_order_relaxed)) {
            maybe_trip(b, s, now);
        }
    } else if (p->probe) {
        record_probe(b, p, now, verdict != 0); /* one probe is the whole sample */
    }
    return verdict;
}

void rsl__breaker_release(rsl__breaker *b, const rsl__permit *p) {
    if (p->counted && p->in_trip) {
        rsl__trip *t = trip_of(b);
        if (t) {
            rsl__trip_drop(t, p->start);
        }
    }
    if (!p->probe) {
        return;
    }
    uint64_t s = load_word(b);
    for (;;) {
        if (w_state(s) != RSL_BREAKER_HALF_OPEN || w_cycle(s) != p->cycle || w_inflight(s) == 0) {
            return;
        }
        if (cas(b, &s, s - (UINT64_C(1) << INF_SHIFT))) {
            return;
        }
    }
}

/* ---- admin ---- */

static void admin(rsl__breaker *b, int64_t now, rsl__breaker_state to, const char *reason) {
    uint64_t s = load_word(b);
    for (;;) {
        rsl__breaker_state from = w_state(s);
        if (from == to && to != RSL_BREAKER_CLOSED) {
            return;
        }
        int level = to == RSL_BREAKER_CLOSED ? 0 : w_level(s);
        if (cas(b, &s, pack(to, 0, 0, level, (uint8_t)(w_cycle(s) + 1), 0))) {
            if (to == RSL_BREAKER_CLOSED) {
                rsl__window_clear(win(b));
                closed_at(b, now);
            }
            if (from != to) {
                note(b, from, to, reason);
            }
            return;
        }
    }
}

void rsl__breaker_force_open(rsl__breaker *b, int64_t now) {
    admin(b, now, RSL_BREAKER_FORCED_OPEN, "forced open");
}

void rsl__breaker_disable(rsl__breaker *b, int64_t now) {
    admin(b, now, RSL_BREAKER_DISABLED, "disabled");
}

void rsl__breaker_reset(rsl__breaker *b, int64_t now) {
    admin(b, now, RSL_BREAKER_CLOSED, "reset");
}

void rsl__breaker_auto(rsl__breaker *b, int64_t now) {
    uint64_t s = load_word(b);
    for (;;) {
        rsl__breaker_state from = w_state(s);
        if (from == RSL_BREAKER_DISABLED) {
            admin(b, now, RSL_BREAKER_CLOSED, "override lifted");
            return;
        }
        if (from != RSL_BREAKER_FORCED_OPEN) {
            return;
        }
        int level = w_level(s);
        uint64_t n = pack(RSL_BREAKER_OPEN, 0, 0, level, (uint8_t)(w_cycle(s) + 1),
                          open_until(b, now, level));
        if (cas(b, &s, n)) {
            note(b, from, RSL_BREAKER_OPEN, "override lifted");
            return;
        }
    }
}

/* ---- the fleet's verdicts (fleet.h) ---- */

int rsl__breaker_fleet_open(rsl__breaker *b, int64_t now, int64_t for_ns, int level,
                            const char *reason) {
    uint64_t s = load_word(b);
    level = level < 0 ? 0 : level > MAX_LEVEL ? MAX_LEVEL : level;
    int64_t end = now + (for_ns > 0 ? for_ns : 0);
    uint32_t until = (uint32_t)(uint64_t)((end + RSL_NS_PER_MS - 1) / RSL_NS_PER_MS);
    for (;;) {
        rsl__breaker_state from = w_state(s);
        if (from != RSL_BREAKER_CLOSED && from != RSL_BREAKER_HALF_OPEN &&
            from != RSL_BREAKER_OPEN) {
            return 0; /* forced open or disabled: the operator's word stands */
        }
        if (from == RSL_BREAKER_OPEN && w_until(s) == until && w_level(s) == level) {
            return 0;
        }
        if (cas(b, &s, pack(RSL_BREAKER_OPEN, 0, 0, level, (uint8_t)(w_cycle(s) + 1), until))) {
            if (from != RSL_BREAKER_OPEN) {
                note(b, from, RSL_BREAKER_OPEN, reason);
            }
            return 1;
        }
    }
}

int rsl__breaker_fleet_close(rsl__breaker *b, int64_t now, const char *reason) {
    uint64_t s = load_word(b);
    for (;;) {
        rsl__breaker_state from = w_state(s);
        if (from != RSL_BREAKER_OPEN && from != RSL_BREAKER_HALF_OPEN) {
            return 0;
        }
        if (cas(b, &s, pack(RSL_BREAKER_CLOSED, 0, 0, 0, (uint8_t)(w_cycle(s) + 1), 0))) {
            rsl__window_clear(win(b));
            closed_at(b, now);
            note(b, from, RSL_BREAKER_CLOSED, reason);
            return 1;
        }
    }
}

/* ---- reads ---- */

rsl__breaker_state rsl__breaker_state_get(const rsl__breaker *b) {
    return w_state(load_word(b));
}

double rsl__breaker_failure_rate(rsl__breaker *b, int64_t now) {
    rsl__window_counts c;
    rsl__window_counts_at(win(b), now, &c);
    return c.calls ? 100.0 * (double)c.failures / (double)c.calls : 0;
}

double rsl__breaker_slow_rate(rsl__breaker *b, int64_t now) {
    rsl__window_counts c;
    rsl__window_counts_at(win(b), now, &c);
    return c.calls ? 100.0 * (double)c.slow / (double)c.calls : 0;
}

int64_t rsl__breaker_calls(rsl__breaker *b, int64_t now) {
    rsl__window_counts c;
    rsl__window_counts_at(win(b), now, &c);
    return c.calls;
}

int64_t rsl__breaker_latency(rsl__breaker *b, int64_t now, double q) {
    return rsl__window_quantile(win(b), now, q);
}

int rsl__breaker_probes_inflight(const rsl__breaker *b) {
    uint64_t s = load_word(b);
    return w_state(s) == RSL_BREAKER_HALF_OPEN ? w_inflight(s) : 0;
}

int rsl__breaker_level(const rsl__breaker *b) {
    return w_level(load_word(b));
}

rsl__breaker_state rsl__breaker_state_at(const rsl__breaker *b, int64_t now) {
    rsl__breaker_state st = rsl__breaker_state_get(b);
    if (st == RSL_BREAKER_OPEN && rsl__breaker_open_remaining(b, now) <= 0) {
        return RSL_BREAKER_HALF_OPEN;
    }
    return st;
}

int64_t rsl__breaker_open_remaining(const rsl__breaker *b, int64_t now) {
    uint64_t s = load_word(b);
    if (w_state(s) != RSL_BREAKER_OPEN) {
        return 0;
    }
    int64_t diff_ms = (int32_t)(w_until(s) - ms32(now));
    return diff_ms * RSL_NS_PER_MS - now % RSL_NS_PER_MS;
}

const rsl__trip *rsl__breaker_trip(const rsl__breaker *b) {
    return trip_of(b);
}

uint64_t rsl__breaker_rejections(const rsl__breaker *b) {
    return atomic_load_explicit(&b->rejections, memory_order_relaxed);
}

uint64_t rsl__breaker_transitions(const rsl__breaker *b, rsl__breaker_state from,
                                  rsl__breaker_state to) {
    if ((unsigned)from >= RSL_BREAKER__COUNT || (unsigned)to >= RSL_BREAKER__COUNT || from == to) {
        return 0;
    }
    return atomic_load_explicit(&b->transitions[transition_index(from, to)], memory_order_relaxed);
}
