/*
 * adaptive -- the gradient concurrency limit (adaptive.h): admission by a CAS on the
 * in-flight count below an atomic limit; completions add to the open window's atomics;
 * the completion that finds the window due closes it under a trylock and moves the limit.
 *
 * Layer: the guards.  Any thread.  Ownership: rsl__adaptive_new allocates it (name
 * inline); rsl__adaptive_free frees it.
 */
#include "adaptive.h"

#include "clock.h"
#include "lines.h"
#include "resilua.h"

#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>

struct rsl__adaptive {
    /* Written by every admission and completion. */
    alignas(RSL_LINE) _Atomic int64_t inflight;
    _Atomic int64_t peak; /* the open window's highest inflight */
    /* Read by every admission, written when a window closes. */
    alignas(RSL_LINE) _Atomic int64_t limit;
    _Atomic int64_t window_ns;
    /* The open window, written by every completion. */
    alignas(RSL_LINE) _Atomic int64_t w_start; /* -1: not opened yet */
    _Atomic int64_t w_sum_ns;
    _Atomic int64_t w_count;
    _Atomic int64_t w_min_ns;
    _Atomic int64_t w_drops;
    alignas(RSL_LINE) _Atomic uint64_t rejections;
    _Atomic uint64_t drops;
    /* Under mu: the settings and what closing a window learns. */
    alignas(RSL_LINE) pthread_mutex_t mu;
    rsl__adaptive_conf c;
    double est;
    int64_t base_ns;
    int64_t rtt_ns;
    int64_t ring[RSL_ADAPTIVE_BASE_WINDOWS]; /* the windows' minima; 0: none yet */
    int ring_i;
    uint64_t windows;
    char name[];
};

void rsl__adaptive_conf_default(rsl__adaptive_conf *c) {
    c->min = 4;
    c->max = 500;
    c->initial = 20;
    c->tolerance = 1.5;
    c->smoothing = 0.2;
    c->backoff = 0.9;
    c->queue = 4;
    c->window_ns = RSL_NS_PER_S;
    c->min_samples = 10;
}

static int conf_ok(const rsl__adaptive_conf *c) {
    return c->min >= 1 && c->max >= c->min && c->initial >= c->min && c->initial <= c->max &&
           c->tolerance >= 1 && c->smoothing > 0 && c->smoothing <= 1 && c->backoff > 0 &&
           c->backoff < 1 && c->queue >= 0 && c->window_ns >= RSL_NS_PER_MS &&
           c->min_samples >= 1;
}

static int64_t clamp_limit(const rsl__adaptive_conf *c, double *est) {
    if (*est < (double)c->min) {
        *est = (double)c->min;
    } else if (*est > (double)c->max) {
        *est = (double)c->max;
    }
    return (int64_t)*est;
}

static void forget(rsl__adaptive *a) {
    a->est = (double)a->c.initial;
    a->base_ns = a->rtt_ns = 0;
    for (int i = 0; i < RSL_ADAPTIVE_BASE_WINDOWS; i++) {
        a->ring[i] = 0;
    }
    a->ring_i = 0;
    atomic_store(&a->limit, a->c.initial);
    atomic_store(&a->w_start, -1);
    atomic_store(&a->w_sum_ns, 0);
    atomic_store(&a->w_count, 0);
    atomic_store(&a->w_min_ns, INT64_MAX);
    atomic_store(&a->w_drops, 0);
    atomic_store(&a->peak, 0);
}

rsl__adaptive *rsl__adaptive_new(const char *name, const rsl__adaptive_conf *c) {
    if (!name || !c || !conf_ok(c)) {
        return NULL;
    }
    rsl__adaptive *a =
        rsl__lines_named(sizeof(rsl__adaptive), offsetof(rsl__adaptive, name), name);
    if (!a) {
        return NULL;
    }
    if (pthread_mutex_init(&a->mu, NULL) != 0) {
        free(a);
        return NULL;
    }
    a->c = *c;
    atomic_store(&a->window_ns, c->window_ns);
    forget(a);
    return a;
}

void rsl__adaptive_free(rsl__adaptive *a) {
    if (a) {
        pthread_mutex_destroy(&a->mu);
        free(a);
    }
}

const char *rsl__adaptive_name(const rsl__adaptive *a) {
    return a->name;
}

int rsl__adaptive_configure(rsl__adaptive *a, const rsl__adaptive_conf *c) {
    if (!conf_ok(c)) {
        return RSL_EINVAL;
    }
    pthread_mutex_lock(&a->mu);
    a->c = *c;
    atomic_store(&a->window_ns, c->window_ns);
    atomic_store(&a->limit, clamp_limit(c, &a->est));
    pthread_mutex_unlock(&a->mu);
    return 0;
}

void rsl__adaptive_conf_get(const rsl__adaptive *a, rsl__adaptive_conf *c) {
    pthread_mutex_lock((pthread_mutex_t *)&a->mu);
    *c = a->c;
    pthread_mutex_unlock((pthread_mutex_t *)&a->mu);
}

void rsl__adaptive_reset(rsl__adaptive *a) {
    pthread_mutex_lock(&a->mu);
    forget(a);
    pthread_mutex_unlock(&a->mu);
}

static void note_peak(rsl__adaptive *a, int64_t n) {
    /* A racy maximum: two admissions at once may leave the smaller; it is a hint. */
    if (n > atomic_load_explicit(&a->peak, memory_order_relaxed)) {
        atomic_store_explicit(&a->peak, n, memory_order_relaxed);
    }
}

int rsl__adaptive_acquire(rsl__adaptive *a) {
    return rsl__adaptive_acquire_upto(a, 1000);
}

int rsl__adaptive_acquire_upto(rsl__adaptive *a, int usable) {
    int64_t lim = atomic_load_explicit(&a->limit, memory_order_relaxed);
    int64_t cap = usable >= 1000 ? lim : lim * usable / 1000;
    int64_t cur = atomic_load_explicit(&a->inflight, memory_order_relaxed);
    do {
        if (cur >= cap) {
            atomic_fetch_add_explicit(&a->rejections, 1, memory_order_relaxed);
            return cur >= lim ? 0 : -1;
        }
    } while (!atomic_compare_exchange_weak_explicit(&a->inflight, &cur, cur + 1,
                                                    memory_order_relaxed, memory_order_relaxed));
    note_peak(a, cur + 1);
    return 1;
}

void rsl__adaptive_enter(rsl__adaptive *a) {
    note_peak(a, atomic_fetch_add_explicit(&a->inflight, 1, memory_order_relaxed) + 1);
}

void rsl__adaptive_leave(rsl__adaptive *a) {
    atomic_fetch_sub_explicit(&a->inflight, 1, memory_order_relaxed);
}

/* The baseline after a window whose smallest sample was wmin. */
static void rebase(rsl__adaptive *a, int64_t wmin) {
    a->ring[a->ring_i] = wmin;
    a->ring_i = (a->ring_i + 1) % RSL_ADAPTIVE_BASE_WINDOWS;
    int64_t m = INT64_MAX;
    for (int i = 0; i < RSL_ADAPTIVE_BASE_WINDOWS; i++) {
        if (a->ring[i] > 0 && a->ring[i] < m) {
            m = a->ring[i];
        }
    }
    if (a->base_ns == 0 || m <= a->base_ns) {
        a->base_ns = m;
    } else {
        double up = (double)a->base_ns * (1 + RSL_ADAPTIVE_RISE);
        a->base_ns = (double)m < up ? m : (int64_t)up;
    }
}

/* Closes the open window (it is due), when it holds enough to learn from; under mu. */
static void close_window(rsl__adaptive *a, int64_t now) {
    const rsl__adaptive_conf *c = &a->c;
    if (atomic_load(&a->w_drops) == 0 && atomic_load(&a->w_count) < c->min_samples) {
        return; /* too few samples to say anything: the window stays open */
    }
    atomic_store(&a->w_start, now);
    int64_t sum = atomic_exchange(&a->w_sum_ns, 0);
    int64_t n = atomic_exchange(&a->w_count, 0);
    int64_t wmin = atomic_exchange(&a->w_min_ns, INT64_MAX);
    int64_t drops = atomic_exchange(&a->w_drops, 0);
    int64_t peak = atomic_exchange(&a->peak, atomic_load(&a->inflight));
    a->windows++;
    if (n > 0) {
        a->rtt_ns = sum / n;
        rebase(a, wmin > 0 ? wmin : 1);
    }
    if (drops > 0) {
        a->est *= c->backoff;
    } else if ((double)peak * 2 >= a->est) { /* else the application limits: hold */
        double g = a->rtt_ns > 0 ? c->tolerance * (double)a->base_ns / (double)a->rtt_ns : 1;
        g = g < 0.5 ? 0.5 : g > 1 ? 1 : g;
        a->est = (1 - c->smoothing) * a->est + c->smoothing * (a->est * g + c->queue);
    }
    atomic_store(&a->limit, clamp_limit(c, &a->est));
}

void rsl__adaptive_release(rsl__adaptive *a, int64_t now, int64_t latency_ns, int drop) {
    atomic_fetch_sub_explicit(&a->inflight, 1, memory_order_relaxed);
    if (drop) {
        atomic_fetch_add_explicit(&a->w_drops, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&a->drops, 1, memory_order_relaxed);
    } else {
        atomic_fetch_add_explicit(&a->w_sum_ns, latency_ns, memory_order_relaxed);
        atomic_fetch_add_explicit(&a->w_count, 1, memory_order_relaxed);
        int64_t m = atomic_load_explicit(&a->w_min_ns, memory_order_relaxed);
        while (latency_ns < m && !atomic_compare_exchange_weak_explicit(
                                     &a->w_min_ns, &m, latency_ns, memory_order_relaxed,
                                     memory_order_relaxed)) {
        }
    }
    int64_t ws = atomic_load_explicit(&a->w_start, memory_order_relaxed);
    if (ws < 0) {
        atomic_compare_exchange_strong(&a->w_start, &ws, now); /* the first window opens */
        return;
    }
    if (now - ws < atomic_load_explicit(&a->window_ns, memory_order_relaxed)) {
        return;
    }
    if (pthread_mutex_trylock(&a->mu) != 0) {
        return; /* another thread is closing it */
    }
    ws = atomic_load(&a->w_start);
    if (ws >= 0 && now - ws >= a->c.window_ns) {
        close_window(a, now);
    }
    pthread_mutex_unlock(&a->mu);
}

int64_t rsl__adaptive_limit(const rsl__adaptive *a) {
    return atomic_load_explicit(&a->limit, memory_order_relaxed);
}

int64_t rsl__adaptive_inflight(const rsl__adaptive *a) {
    return atomic_load_explicit(&a->inflight, memory_order_relaxed);
}

void rsl__adaptive_stats_get(rsl__adaptive *a, rsl__adaptive_stats *s) {
    pthread_mutex_lock(&a->mu);
    s->est = a->est;
    s->baseline_ns = a->base_ns;
    s->rtt_ns = a->rtt_ns;
    s->windows = a->windows;
    pthread_mutex_unlock(&a->mu);
    s->drops = atomic_load_explicit(&a->drops, memory_order_relaxed);
    s->rejections = atomic_load_explicit(&a->rejections, memory_order_relaxed);
}
