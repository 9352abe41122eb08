/*
 * trip -- the joint error-rate + latency trip of trip.h: a ring of period slots, each
 * with the calls that started in it (started, failures, a latency histogram binned as
 * window.c bins), judged lazily when a period boundary passes.
 *
 * Layer: the guards, above clock and window.
 *
 * Threads: start/done/drop touch one slot with relaxed atomics (counts that race with a
 * slot's reuse may be lost: a statistic, never a ledger, as in window.c).  The judge's
 * state (streak, EWMA, threshold, the slot reuse) is written only under `busy`, a try-lock
 * taken by at most one thread per boundary; the thread that fails to take it goes on and a
 * later call judges.  Fields read by others (threshold, streak, window) are atomics.
 * Ownership: rsl__trip_new allocates one aligned block; rsl__trip_free frees it.
 */
#include "trip.h"

#include "clock.h"
#include "window.h"

#include <math.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LINE 64
#define NONE INT64_MIN

/* The EWMA's weight of a new healthy period: 0.2 follows about the last 5 periods, slow
 * enough that a few unlucky periods do not move the threshold, fast enough to follow a
 * deploy within half a minute of 1 s periods. */
#define EWMA_ALPHA 0.2
/* The threshold moves at most 10% per period (the bound). */
#define MAX_STEP 0.10
/* Two trips this close shrink the window; this long closed restores it. */
#define REPEAT_NS  (INT64_C(60) * RSL_NS_PER_S)
#define RESTORE_NS (INT64_C(300) * RSL_NS_PER_S)

typedef struct slot {
    _Atomic int64_t epoch; /* the period this slot counts, NONE before first use */
    _Atomic int32_t started; /* admitted, minus those dropped without a verdict */
    _Atomic uint32_t failures;
    _Atomic uint32_t bins[RSL_WINDOW_BINS]; /* completed calls by latency */
} slot;

struct rsl__trip {
    /* Line 0: read by every call. */
    alignas(LINE) _Atomic int64_t end; /* end of the current period in ns; 0: not started */
    _Atomic int64_t cur;               /* the current period's index (now / period_ns) */
    int64_t period_ns;                 /* shape: fixed for the object's life */
    int64_t window_ns;
    int nlong;  /* window periods */
    int nslots; /* power of two >= nlong + 2 */
    uint32_t mask;
    /* Line 1: the judge's, written under busy. */
    alignas(LINE) _Atomic int busy;
    _Atomic int streak;
    _Atomic int64_t thr;
    double ewma;
    int have_ewma;
    _Atomic int64_t since;  /* first period counted (statistics restart on close) */
    _Atomic int32_t ancient; /* in flight since before their slot was reused */
    _Atomic int shrunk;
    _Atomic int64_t last_trip;
    _Atomic int64_t closed_since;
    _Atomic uint64_t bad;
    _Atomic uint64_t judged;
    /* Thresholds: written by configure, relaxed. */
    _Atomic int periods;
    _Atomic int64_t short_ns;
    _Atomic double failure_rate;
    _Atomic double q;
    _Atomic int64_t over_ns;
    _Atomic double factor;
    _Atomic int64_t max_ns;
    alignas(LINE) slot slots[];
};

void rsl__trip_conf_default(rsl__trip_conf *c) {
    memset(c, 0, sizeof(*c));
    c->periods = 0;
    c->period_ns = RSL_NS_PER_S;
    c->window_ns = 10 * RSL_NS_PER_S;
    c->short_window_ns = 5 * RSL_NS_PER_S;
    c->failure_rate = 20;
    c->q = 0.9;
    c->over_ns = 800 * RSL_NS_PER_MS;
    c->factor = 0;
    c->max_ns = 1500 * RSL_NS_PER_MS;
}

int rsl__trip_conf_ok(const rsl__trip_conf *c) {
    if (c->periods == 0) {
        return 1;
    }
    if (c->periods < 0 || c->periods > 255 || c->period_ns < RSL_NS_PER_MS ||
        c->window_ns < c->period_ns || c->window_ns % c->period_ns != 0 ||
        c->window_ns / c->period_ns > RSL_TRIP_MAX_PERIODS || c->short_window_ns < c->period_ns ||
        c->short_window_ns % c->period_ns != 0 || c->short_window_ns > c->window_ns) {
        return 0;
    }
    if (!(c->failure_rate >= 0 && c->failure_rate <= 100) || !(c->q > 0 && c->q <= 1) ||
        c->over_ns < 0 || (c->failure_rate == 0 && c->over_ns == 0)) {
        return 0;
    }
    if (!(c->factor >= 0) || !isfinite(c->factor) ||
        (c->factor > 0 && (c->over_ns == 0 || c->max_ns < c->over_ns))) {
        return 0;
    }
    return 1;
}

int rsl__trip_conf_eq(const rsl__trip_conf *a, const rsl__trip_conf *b) {
    if (a->periods == 0 || b->periods == 0) {
        return a->periods == b->periods;
    }
    return a->periods == b->periods && a->period_ns == b->period_ns &&
           a->window_ns == b->window_ns && a->short_window_ns == b->short_window_ns &&
           a->failure_rate == b->failure_rate && a->q == b->q && a->over_ns == b->over_ns &&
           a->factor == b->factor && a->max_ns == b->max_ns;
}

static slot *slot_of(const rsl__trip *t, int64_t e) {
    return (slot *)&t->slots[(uint64_t)e & t->mask];
}

static int64_t clamp64(int64_t v, int64_t lo, int64_t hi) {
    return v < lo ? lo : v > hi ? hi : v;
}

static void store_thresholds(rsl__trip *t, const rsl__trip_conf *c) {
    atomic_store_explicit(&t->periods, c->periods, memory_order_relaxed);
    atomic_store_explicit(&t->short_ns, c->short_window_ns, memory_order_relaxed);
    atomic_store_explicit(&t->failure_rate, c->failure_rate, memory_order_relaxed);
    atomic_store_explicit(&t->q, c->q, memory_order_relaxed);
    atomic_store_explicit(&t->over_ns, c->over_ns, memory_order_relaxed);
    atomic_store_explicit(&t->factor, c->factor, memory_order_relaxed);
    atomic_store_explicit(&t->max_ns, c->max_ns, memory_order_relaxed);
    int64_t thr = atomic_load_explicit(&t->thr, memory_order_relaxed);
    int64_t hi = c->factor > 0 ? c->max_ns : c->over_ns;
    atomic_store_explicit(&t->thr, thr ? clamp64(thr, c->over_ns, hi) : c->over_ns,
                          memory_order_relaxed);
}

rsl__trip *rsl__trip_new(const rsl__trip_conf *c) {
    if (!c || c->periods == 0 || !rsl__trip_conf_ok(c)) {
        return NULL;
    }
    int nlong = (int)(c->window_ns / c->period_ns);
    int nslots = 4;
    while (nslots < nlong + 2) {
        nslots *= 2;
    }
    size_t size = sizeof(rsl__trip) + (size_t)nslots * sizeof(slot);
    size = (size + LINE - 1) / LINE * LINE;
    rsl__trip *t = aligned_alloc(LINE, size);
    if (!t) {
        return NULL;
    }
    memset(t, 0, size);
    t->period_ns = c->period_ns;
    t->window_ns = c->window_ns;
    t->nlong = nlong;
    t->nslots = nslots;
    t->mask = (uint32_t)(nslots - 1);
    for (int i = 0; i < nslots; i++) {
        atomic_init(&t->slots[i].epoch, NONE);
    }
    atomic_init(&t->last_trip, NONE);
    atomic_init(&t->closed_since, NONE);
    store_thresholds(t, c);
    return t;
}

void rsl__trip_free(rsl__trip *t) {
    free(t);
}

size_t rsl__trip_size(const rsl__trip *t) {
    return t ? sizeof(rsl__trip) + (size_t)t->nslots * sizeof(slot) : 0;
}

void rsl__trip_conf_get(const rsl__trip *t, rsl__trip_conf *c) {
    rsl__trip_conf_default(c);
    if (!t) {
        return;
    }
    c->periods = atomic_load_explicit(&t->periods, memory_order_relaxed);
    c->period_ns = t->period_ns;
    c->window_ns = t->window_ns;
    c->short_window_ns = atomic_load_explicit(&t->short_ns, memory_order_relaxed);
    c->failure_rate = atomic_load_explicit(&t->failure_rate, memory_order_relaxed);
    c->q = atomic_load_explicit(&t->q, memory_order_relaxed);
    c->over_ns = atomic_load_explicit(&t->over_ns, memory_order_relaxed);
    c->factor = atomic_load_explicit(&t->factor, memory_order_relaxed);
    c->max_ns = atomic_load_explicit(&t->max_ns, memory_order_relaxed);
}

int rsl__trip_same_shape(const rsl__trip *t, const rsl__trip_conf *c) {
    return t && c->periods > 0 && c->period_ns == t->period_ns && c->window_ns == t->window_ns;
}

void rsl__trip_configure(rsl__trip *t, const rsl__trip_conf *c) {
    store_thresholds(t, c);
}

/* ---- the hot path ---- */

static void ancient_done(rsl__trip *t) {
    if (atomic_load_explicit(&t->ancient, memory_order_relaxed) > 0) {
        atomic_fetch_sub_explicit(&t->ancient, 1, memory_order_relaxed);
    }
}

uint32_t rsl__trip_start(rsl__trip *t) {
    int64_t c = atomic_load_explicit(&t->cur, memory_order_relaxed);
    atomic_fetch_add_explicit(&slot_of(t, c)->started, 1, memory_order_relaxed);
    return (uint32_t)(uint64_t)c;
}

void rsl__trip_done(rsl__trip *t, uint32_t start, int failed, int64_t latency_ns) {
    slot *s = slot_of(t, start);
    if ((uint32_t)(uint64_t)atomic_load_explicit(&s->epoch, memory_order_relaxed) != start) {
        ancient_done(t); /* its slot was reused: it was counted as ancient */
        return;
    }
    atomic_fetch_add_explicit(&s->bins[rsl__window_bin(latency_ns)], 1, memory_order_relaxed);
    if (failed) {
        atomic_fetch_add_explicit(&s->failures, 1, memory_order_relaxed);
    }
}

void rsl__trip_drop(rsl__trip *t, uint32_t start) {
    slot *s = slot_of(t, start);
    if ((uint32_t)(uint64_t)atomic_load_explicit(&s->epoch, memory_order_relaxed) != start) {
        ancient_done(t);
        return;
    }
    atomic_fetch_sub_explicit(&s->started, 1, memory_order_relaxed);
}

int rsl__trip_due(const rsl__trip *t, int64_t now) {
    return now >= atomic_load_explicit(&((rsl__trip *)t)->end, memory_order_acquire);
}

/* ---- judging (under busy) ---- */

static uint64_t slot_done(slot *s, uint64_t *bins) {
    uint64_t n = 0;
    for (int j = 0; j < RSL_WINDOW_BINS; j++) {
        uint32_t c = atomic_load_explicit(&s->bins[j], memory_order_relaxed);
        n += c;
        if (bins) {
            bins[j] += c;
        }
    }
    return n;
}

/* Makes slot e's the counts of period e; the calls still in flight from the period it held
 * (when that one still counts) become ancient. */
static void reuse(rsl__trip *t, int64_t e) {
    slot *s = slot_of(t, e);
    int64_t old = atomic_load_explicit(&s->epoch, memory_order_relaxed);
    if (old == e) {
        return;
    }
    if (old != NONE && old >= atomic_load_explicit(&t->since, memory_order_relaxed)) {
        int64_t inflight = atomic_load_explicit(&s->started, memory_order_relaxed) -
                           (int64_t)slot_done(s, NULL);
        if (inflight > 0) {
            atomic_fetch_add_explicit(&t->ancient, (int32_t)inflight, memory_order_relaxed);
        }
    }
    atomic_store_explicit(&s->started, 0, memory_order_relaxed);
    atomic_store_explicit(&s->failures, 0, memory_order_relaxed);
    for (int j = 0; j < RSL_WINDOW_BINS; j++) {
        atomic_store_explicit(&s->bins[j], 0, memory_order_relaxed);
    }
    atomic_store_explicit(&s->epoch, e, memory_order_release);
}

/* The threshold after a healthy period whose P(q) was `pq`. */
static void adapt(rsl__trip *t, int64_t pq) {
    double factor = atomic_load_explicit(&t->factor, memory_order_relaxed);
    if (!(factor > 0) || pq <= 0) {
        return;
    }
    t->ewma = t->have_ewma ? t->ewma + EWMA_ALPHA * ((double)pq - t->ewma) : (double)pq;
    t->have_ewma = 1;
    double over = (double)atomic_load_explicit(&t->over_ns, memory_order_relaxed);
    double max = (double)atomic_load_explicit(&t->max_ns, memory_order_relaxed);
    double cur = (double)atomic_load_explicit(&t->thr, memory_order_relaxed);
    double target = t->ewma * factor;
    double lo = cur * (1 - MAX_STEP), hi = cur * (1 + MAX_STEP);
    target = target < lo ? lo : target > hi ? hi : target;
    target = target < over ? over : target > max ? max : target;
    atomic_store_explicit(&t->thr, (int64_t)target, memory_order_relaxed);
}

/* Judges period p (ended at (p + 1) * period): 1 when this makes `periods` bad in a row. */
static int judge(rsl__trip *t, int64_t p, int64_t min_calls, int closed, char *reason,
                 size_t len) {
    int64_t P = t->period_ns;
    int64_t end = (p + 1) * P;
    int shrunk = atomic_load_explicit(&t->shrunk, memory_order_relaxed);
    int64_t cs = atomic_load_explicit(&t->closed_since, memory_order_relaxed);
    if (shrunk && closed && cs != NONE && end - cs >= RESTORE_NS) {
        atomic_store_explicit(&t->shrunk, 0, memory_order_relaxed);
        shrunk = 0;
    }
    int64_t nwin = shrunk ? atomic_load_explicit(&t->short_ns, memory_order_relaxed) / P : t->nlong;
    int64_t since = atomic_load_explicit(&t->since, memory_order_relaxed);
    int64_t thr = atomic_load_explicit(&t->thr, memory_order_relaxed);
    double q = atomic_load_explicit(&t->q, memory_order_relaxed);
    uint64_t bins[RSL_WINDOW_BINS] = {0};
    uint64_t calls = 0, fails = 0;
    int64_t from = p - nwin + 1 > since ? p - nwin + 1 : since;
    for (int64_t e = from; e <= p; e++) {
        slot *s = slot_of(t, e);
        if (atomic_load_explicit(&s->epoch, memory_order_acquire) == e) {
            calls += slot_done(s, bins);
            fails += atomic_load_explicit(&s->failures, memory_order_relaxed);
        }
    }
    /* The period's own calls, for the EWMA: a period teaches only when it is healthy on
     * its own too, so the first periods of an outage, diluted by a healthy window, do not. */
    uint64_t own_bins[RSL_WINDOW_BINS] = {0};
    uint64_t own_calls = 0, own_fails = 0;
    slot *ps = slot_of(t, p);
    if (p >= since && atomic_load_explicit(&ps->epoch, memory_order_acquire) == p) {
        own_calls = slot_done(ps, own_bins);
        own_fails = atomic_load_explicit(&ps->failures, memory_order_relaxed);
    }
    /* Calls in flight, by start period (any slot still held, window or not): the elapsed
     * time at the period's end of one started mid-period. */
    int64_t oldest = p - t->nslots + 1 > since ? p - t->nslots + 1 : since;
    for (int64_t e = oldest; e <= p; e++) {
        slot *s = slot_of(t, e);
        if (atomic_load_explicit(&s->epoch, memory_order_acquire) != e) {
            continue;
        }
        int64_t inflight = atomic_load_explicit(&s->started, memory_order_relaxed) -
                           (int64_t)slot_done(s, NULL);
        int64_t elapsed = end - e * P - P / 2;
        if (inflight > 0 && elapsed > thr) {
            bins[rsl__window_bin(elapsed)] += (uint64_t)inflight;
        }
    }
    int32_t anc = atomic_load_explicit(&t->ancient, memory_order_relaxed);
    if (anc > 0 && (int64_t)t->nslots * P > thr) {
        bins[rsl__window_bin((int64_t)t->nslots * P)] += (uint64_t)anc;
    }
    int64_t pq = rsl__window_bins_quantile(bins, q, 0);
    double fr = atomic_load_explicit(&t->failure_rate, memory_order_relaxed);
    int64_t over = atomic_load_explicit(&t->over_ns, memory_order_relaxed);
    double fpct = calls ? 100.0 * (double)fails / (double)calls : 0;
    int bad = calls > 0 && (int64_t)calls >= min_calls && (fr <= 0 || fpct >= fr) &&
              (over <= 0 || pq > thr);
    atomic_fetch_add_explicit(&t->judged, 1, memory_order_relaxed);
    int streak = atomic_load_explicit(&t->streak, memory_order_relaxed);
    if (bad) {
        atomic_fetch_add_explicit(&t->bad, 1, memory_order_relaxed);
        int periods = atomic_load_explicit(&t->periods, memory_order_relaxed);
        if (++streak < periods) {
            atomic_store_explicit(&t->streak, streak, memory_order_relaxed);
            return 0;
        }
        atomic_store_explicit(&t->streak, 0, memory_order_relaxed);
        if (reason) {
            snprintf(reason, len,
                     "joint: failure_rate %.1f%% >= %g%% and p%g %.1fms > %.1fms over %llu "
                     "calls, %d periods",
                     fpct, fr, q * 100, (double)pq / 1e6, (double)thr / 1e6,
                     (unsigned long long)calls, periods);
        }
        return 1;
    }
    atomic_store_explicit(&t->streak, 0, memory_order_relaxed);
    /* Healthy: teaches the threshold, unless the period before was bad (a streak was
     * running) or the breaker is not closed, so an outage cannot teach that slow is
     * normal. */
    double own_pct = own_calls ? 100.0 * (double)own_fails / (double)own_calls : 0;
    if (streak == 0 && closed && calls > 0 && (int64_t)calls >= min_calls && own_calls > 0 &&
        (fr <= 0 || own_pct < fr)) {
        adapt(t, rsl__window_bins_quantile(own_bins, q, 0));
    }
    return 0;
}

int rsl__trip_advance(rsl__trip *t, int64_t now, int64_t min_calls, int closed, char *reason,
                      size_t len) {
    if (!rsl__trip_due(t, now)) {
        return 0;
    }
    int unlocked = 0;
    if (!atomic_compare_exchange_strong_explicit(&t->busy, &unlocked, 1, memory_order_acquire,
                                                 memory_order_relaxed)) {
        return 0; /* another thread judges this boundary */
    }
    int trip = 0;
    int64_t end = atomic_load_explicit(&t->end, memory_order_relaxed);
    if (now >= end) {
        int64_t P = t->period_ns;
        int64_t pnow = (now < 0 ? 0 : now) / P;
        if (end == 0) {
            atomic_store_explicit(&t->since, pnow, memory_order_relaxed);
            reuse(t, pnow);
        } else {
            int64_t first = atomic_load_explicit(&t->cur, memory_order_relaxed);
            if (pnow - first > t->nslots) {
                /* Idle longer than the ring: the periods before held no calls. */
                atomic_store_explicit(&t->streak, 0, memory_order_relaxed);
                first = pnow - t->nslots;
            }
            for (int64_t p = first; p < pnow; p++) {
                if (!trip) {
                    trip = judge(t, p, min_calls, closed, reason, len);
                }
                reuse(t, p + 1);
            }
        }
        atomic_store_explicit(&t->cur, pnow, memory_order_release);
        atomic_store_explicit(&t->end, (pnow + 1) * P, memory_order_release);
    }
    atomic_store_explicit(&t->busy, 0, memory_order_release);
    return trip;
}

void rsl__trip_tripped(rsl__trip *t, int64_t now) {
    int64_t last = atomic_load_explicit(&t->last_trip, memory_order_relaxed);
    if (last != NONE && now - last <= REPEAT_NS) {
        atomic_store_explicit(&t->shrunk, 1, memory_order_relaxed);
    }
    atomic_store_explicit(&t->last_trip, now, memory_order_relaxed);
    atomic_store_explicit(&t->closed_since, NONE, memory_order_relaxed);
    atomic_store_explicit(&t->streak, 0, memory_order_relaxed);
}

void rsl__trip_closed(rsl__trip *t, int64_t now) {
    atomic_store_explicit(&t->since, (now < 0 ? 0 : now) / t->period_ns + 1, memory_order_relaxed);
    atomic_store_explicit(&t->ancient, 0, memory_order_relaxed);
    atomic_store_explicit(&t->streak, 0, memory_order_relaxed);
    atomic_store_explicit(&t->closed_since, now, memory_order_relaxed);
}

/* ---- reads ---- */

int64_t rsl__trip_threshold(const rsl__trip *t) {
    return atomic_load_explicit(&((rsl__trip *)t)->thr, memory_order_relaxed);
}

int rsl__trip_streak(const rsl__trip *t) {
    return atomic_load_explicit(&((rsl__trip *)t)->streak, memory_order_relaxed);
}

int64_t rsl__trip_window(const rsl__trip *t) {
    rsl__trip *m = (rsl__trip *)t;
    return atomic_load_explicit(&m->shrunk, memory_order_relaxed)
               ? atomic_load_explicit(&m->short_ns, memory_order_relaxed)
               : t->window_ns;
}

uint64_t rsl__trip_bad_periods(const rsl__trip *t) {
    return atomic_load_explicit(&((rsl__trip *)t)->bad, memory_order_relaxed);
}

uint64_t rsl__trip_periods_judged(const rsl__trip *t) {
    return atomic_load_explicit(&((rsl__trip *)t)->judged, memory_order_relaxed);
}
