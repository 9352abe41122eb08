/*
 * retry -- backoff, jitter and the retry budget (retry.h).
 *
 * Layer: above the policies, below the chain.  Any thread.
 */
#include "retry.h"

#include "clock.h"

static void budget_slot(rsl__budget *b, int64_t sec, int *slot) {
    int i = (int)(sec % 10);
    int64_t e = atomic_load_explicit(&b->epoch[i], memory_order_acquire);
    if (e != sec && atomic_compare_exchange_strong(&b->epoch[i], &e, sec)) {
        atomic_store_explicit(&b->first[i], 0, memory_order_relaxed);
        atomic_store_explicit(&b->retries[i], 0, memory_order_relaxed);
    }
    *slot = i;
}

void rsl__budget_note_first(rsl__budget *b, int64_t now) {
    int i;
    budget_slot(b, now / RSL_NS_PER_S, &i);
    atomic_fetch_add_explicit(&b->first[i], 1, memory_order_relaxed);
}

/* DESIGN.md: "plus a floor of 10 retries per 10 s so low traffic can still retry". */
int rsl__budget_take_retry(rsl__budget *b, double budget, int64_t now) {
    int64_t sec = now / RSL_NS_PER_S;
    int64_t first = 0, retries = 0;
    for (int i = 0; i < 10; i++) {
        int64_t e = atomic_load_explicit(&b->epoch[i], memory_order_acquire);
        if (e > sec - 10 && e <= sec) {
            first += atomic_load_explicit(&b->first[i], memory_order_relaxed);
            retries += atomic_load_explicit(&b->retries[i], memory_order_relaxed);
        }
    }
    if ((double)retries >= budget * (double)first + 10.0) {
        return 0;
    }
    int i;
    budget_slot(b, sec, &i);
    atomic_fetch_add_explicit(&b->retries[i], 1, memory_order_relaxed);
    return 1;
}

int64_t rsl__backoff_ns(const rsl__retry *r, int attempt, int64_t *last_sleep) {
    int64_t d = r->base_ns;
    if (r->exponential) {
        for (int i = 1; i < attempt && d < r->max_ns; i++) {
            d *= 2;
        }
    }
    if (r->max_ns > 0 && d > r->max_ns) {
        d = r->max_ns;
    }
    double u = rsl__rand01();
    switch (r->jitter) {
    case RSL_JITTER_NONE:
        break;
    case RSL_JITTER_FULL:
        d = (int64_t)(u * (double)d);
        break;
    case RSL_JITTER_EQUAL:
        d = d / 2 + (int64_t)(u * (double)(d / 2));
        break;
    case RSL_JITTER_DECORRELATED: {
        int64_t prev = *last_sleep > 0 ? *last_sleep : r->base_ns;
        int64_t hi = prev * 3;
        d = r->base_ns + (int64_t)(u * (double)(hi - r->base_ns));
        if (r->max_ns > 0 && d > r->max_ns) {
            d = r->max_ns;
        }
        break;
    }
    }
    *last_sleep = d;
    return d;
}
