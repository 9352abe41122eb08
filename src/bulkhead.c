/*
 * bulkhead -- at most `max` calls at once (bulkhead.h): one atomic in-flight counter on a
 * cache line of its own, taken by a CAS loop so it never exceeds max, even for a moment
 * (fetch_add-then-undo would let readers of load() see max + k and reject calls spuriously).
 *
 * Layer: the guards.
 *
 * Threads: any thread, no lock, no allocation.  Ownership: rsl__bulkhead_new allocates it
 * (name inline); rsl__bulkhead_free frees it.
 */
#include "bulkhead.h"
#include "lines.h"
#include "resilua.h"

#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* A cache line on every x86-64 and most arm64 parts; the unit of false sharing. */
#define LINE 64

struct rsl__bulkhead {
    alignas(LINE) _Atomic int64_t inflight; /* written by every acquire and release */
    alignas(LINE) _Atomic int64_t max;      /* read by every acquire, written by configure */
    alignas(LINE) _Atomic uint64_t rejections;
    char name[];
};

rsl__bulkhead *rsl__bulkhead_new(const char *name, int64_t max) {
    if (!name || max < 1) {
        return NULL;
    }
    rsl__bulkhead *b =
        rsl__lines_named(sizeof(rsl__bulkhead), offsetof(rsl__bulkhead, name), name);
    if (!b) {
        return NULL;
    }
    atomic_init(&b->max, max);
    return b;
}

void rsl__bulkhead_free(rsl__bulkhead *b) {
    free(b);
}

const char *rsl__bulkhead_name(const rsl__bulkhead *b) {
    return b->name;
}

int rsl__bulkhead_configure(rsl__bulkhead *b, int64_t max) {
    if (max < 1) {
        return RSL_EINVAL;
    }
    atomic_store_explicit(&b->max, max, memory_order_relaxed);
    return 0;
}

int64_t rsl__bulkhead_max(const rsl__bulkhead *b) {
    return atomic_load_explicit(&b->max, memory_order_relaxed);
}

int rsl__bulkhead_acquire(rsl__bulkhead *b) {
    return rsl__bulkhead_acquire_upto(b, 1000);
}

int rsl__bulkhead_acquire_upto(rsl__bulkhead *b, int usable) {
    int64_t max = atomic_load_explicit(&b->max, memory_order_relaxed);
    int64_t cap = usable >= 1000 ? max : max * usable / 1000;
    int64_t n = atomic_load_explicit(&b->inflight, memory_order_relaxed);
    for (;;) {
        if (n >= cap) {
            atomic_fetch_add_explicit(&b->rejections, 1, memory_order_relaxed);
            return n >= max ? 0 : -1;
        }
        if (atomic_compare_exchange_weak_explicit(&b->inflight, &n, n + 1, memory_order_acquire,
                                                  memory_order_relaxed)) {
            return 1;
        }
    }
}

void rsl__bulkhead_enter(rsl__bulkhead *b) {
    atomic_fetch_add_explicit(&b->inflight, 1, memory_order_acquire);
}

void rsl__bulkhead_release(rsl__bulkhead *b) {
    atomic_fetch_sub_explicit(&b->inflight, 1, memory_order_release);
}

int64_t rsl__bulkhead_inflight(const rsl__bulkhead *b) {
    return atomic_load_explicit(&b->inflight, memory_order_acquire);
}

double rsl__bulkhead_load(const rsl__bulkhead *b) {
    return (double)rsl__bulkhead_inflight(b) / (double)rsl__bulkhead_max(b);
}

uint64_t rsl__bulkhead_rejections(const rsl__bulkhead *b) {
    return atomic_load_explicit(&b->rejections, memory_order_relaxed);
}
