/*
 * throttle -- client-side throttling (throttle.h): a ring of epoch-tagged buckets of
 * atomic counters.
 *
 * Layer: the guards.  Any thread.
 */
#include "throttle.h"

#include "clock.h"
#include "lines.h"
#include "resilua.h"

#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef struct bucket {
    _Atomic int64_t epoch; /* now / width; -1: never used */
    _Atomic int64_t requests;
    _Atomic int64_t accepts;
} bucket;

struct rsl__throttle {
    _Atomic double k;
    _Atomic int64_t width_ns; /* window / RSL_THROTTLE_BUCKETS */
    _Atomic int64_t min_requests;
    _Atomic double max_p;
    alignas(64) _Atomic uint64_t rejections;
    alignas(64) bucket b[RSL_THROTTLE_BUCKETS];
    char name[];
};

void rsl__throttle_conf_default(rsl__throttle_conf *c) {
    c->k = 2;
    c->window_ns = 120 * RSL_NS_PER_S;
    c->min_requests = 20;
    c->max_p = 0.9;
}

static int conf_ok(const rsl__throttle_conf *c) {
    return c->k > 1 && c->window_ns >= RSL_THROTTLE_BUCKETS * RSL_NS_PER_MS &&
           c->min_requests >= 0 && c->max_p >= 0 && c->max_p <= 1;
}

static void clear(rsl__throttle *t) {
    for (int i = 0; i < RSL_THROTTLE_BUCKETS; i++) {
        atomic_store(&t->b[i].epoch, -1);
        atomic_store(&t->b[i].requests, 0);
        atomic_store(&t->b[i].accepts, 0);
    }
}

rsl__throttle *rsl__throttle_new(const char *name, const rsl__throttle_conf *c) {
    if (!name || !c || !conf_ok(c)) {
        return NULL;
    }
    rsl__throttle *t =
        rsl__lines_named(sizeof(rsl__throttle), offsetof(rsl__throttle, name), name);
    if (!t) {
        return NULL;
    }
    clear(t);
    rsl__throttle_configure(t, c);
    return t;
}

void rsl__throttle_free(rsl__throttle *t) {
    free(t);
}

const char *rsl__throttle_name(const rsl__throttle *t) {
    return t->name;
}

int rsl__throttle_configure(rsl__throttle *t, const rsl__throttle_conf *c) {
    if (!conf_ok(c)) {
        return RSL_EINVAL;
    }
    int64_t w = c->window_ns / RSL_THROTTLE_BUCKETS;
    if (atomic_exchange(&t->width_ns, w) != w) {
        clear(t); /* epochs of another width mean nothing */
    }
    atomic_store(&t->k, c->k);
    atomic_store(&t->min_requests, c->min_requests);
    atomic_store(&t->max_p, c->max_p);
    return 0;
}

void rsl__throttle_conf_get(const rsl__throttle *t, rsl__throttle_conf *c) {
    c->k = atomic_load(&t->k);
    c->window_ns = atomic_load(&t->width_ns) * RSL_THROTTLE_BUCKETS;
    c->min_requests = atomic_load(&t->min_requests);
    c->max_p = atomic_load(&t->max_p);
}

static int64_t epoch_at(const rsl__throttle *t, int64_t now) {
    int64_t w = atomic_load_explicit(&t->width_ns, memory_order_relaxed);
    return now >= 0 ? now / w : 0;
}

/* The bucket of epoch e, made current (its counts reset if it held an older epoch). */
static bucket *current(rsl__throttle *t, int64_t e) {
    bucket *b = &t->b[e % RSL_THROTTLE_BUCKETS];
    int64_t old = atomic_load_explicit(&b->epoch, memory_order_acquire);
    if (old != e && old < e &&
        atomic_compare_exchange_strong_explicit(&b->epoch, &old, e, memory_order_acq_rel,
                                                memory_order_acquire)) {
        atomic_store_explicit(&b->requests, 0, memory_order_relaxed);
        atomic_store_explicit(&b->accepts, 0, memory_order_relaxed);
    }
    return b;
}

void rsl__throttle_counts(rsl__throttle *t, int64_t now, int64_t *requests, int64_t *accepts) {
    int64_t e = epoch_at(t, now), r = 0, a = 0;
    for (int i = 0; i < RSL_THROTTLE_BUCKETS; i++) {
        const bucket *b = &t->b[i];
        int64_t be = atomic_load_explicit(&b->epoch, memory_order_acquire);
        if (be >= 0 && be <= e && be > e - RSL_THROTTLE_BUCKETS) {
            r += atomic_load_explicit(&b->requests, memory_order_relaxed);
            a += atomic_load_explicit(&b->accepts, memory_order_relaxed);
        }
    }
    *requests = r;
    *accepts = a;
}

static double p_of(const rsl__throttle *t, int64_t requests, int64_t accepts) {
    if (requests < atomic_load_explicit(&t->min_requests, memory_order_relaxed)) {
        return 0;
    }
    double k = atomic_load_explicit(&t->k, memory_order_relaxed);
    double p = ((double)requests - k * (double)accepts) / ((double)requests + 1);
    double max_p = atomic_load_explicit(&t->max_p, memory_order_relaxed);
    return p < 0 ? 0 : p > max_p ? max_p : p;
}

double rsl__throttle_p(rsl__throttle *t, int64_t now) {
    int64_t r, a;
    rsl__throttle_counts(t, now, &r, &a);
    return p_of(t, r, a);
}

int rsl__throttle_allow(rsl__throttle *t, int64_t now, uint32_t *tag, uint8_t *slot) {
    int64_t e = epoch_at(t, now);
    int64_t r, a;
    rsl__throttle_counts(t, now, &r, &a);
    double p = p_of(t, r + 1, a); /* this request counts */
    bucket *b = current(t, e);
    atomic_fetch_add_explicit(&b->requests, 1, memory_order_relaxed);
    *tag = (uint32_t)e;
    *slot = (uint8_t)(e % RSL_THROTTLE_BUCKETS);
    if (p > 0 && rsl__rand01() < p) {
        atomic_fetch_add_explicit(&t->rejections, 1, memory_order_relaxed);
        return 0;
    }
    return 1;
}

void rsl__throttle_accept(rsl__throttle *t, uint32_t tag, uint8_t slot) {
    if (slot >= RSL_THROTTLE_BUCKETS) {
        return;
    }
    bucket *b = &t->b[slot];
    /* Only while that bucket still holds the attempt's epoch (the low 32 bits of it). */
    if ((uint32_t)atomic_load_explicit(&b->epoch, memory_order_acquire) == tag) {
        atomic_fetch_add_explicit(&b->accepts, 1, memory_order_relaxed);
    }
}

uint64_t rsl__throttle_rejections(const rsl__throttle *t) {
    return atomic_load_explicit(&t->rejections, memory_order_relaxed);
}
