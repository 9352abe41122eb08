/*
 * limiter -- a GCRA rate limiter (limiter.h): one atomic "theoretical arrival time" (tat,
 * ns) moved by CAS on every admission; the token bucket without a refill timer.
 *
 * Layer: the guards, above clock.
 *
 * Threads: allow/tokens/configure from any thread; no lock, no allocation.  tat lives on a
 * cache line of its own with the two numbers allow reads (the emission interval T and the
 * burst tolerance tau = burst * T), so an admission touches one line.
 * Ownership: rsl__limiter_new allocates it (name inline); rsl__limiter_free frees it.
 */
#include "limiter.h"
#include "lines.h"
#include "clock.h"
#include "resilua.h"

#include <math.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* A cache line on every x86-64 and most arm64 parts; the unit of false sharing. */
#define LINE 64

/* tau = burst * T must leave room for now + tau in int64 ns: 2^60 ns is 36 years. */
#define MAX_TAU_NS (INT64_C(1) << 60)

struct rsl__limiter {
    alignas(LINE) _Atomic int64_t tat; /* INT64_MIN: never used, the bucket is full */
    _Atomic int64_t t_ns;              /* emission interval per / rate, >= 1 ns */
    _Atomic int64_t tau_ns;            /* burst * T: how far tat may run ahead of now */
    /* Cold: the conf as given, for conf_get; rejections off the admission line. */
    alignas(LINE) _Atomic double rate;
    _Atomic double burst;
    _Atomic int64_t per_ns;
    _Atomic uint64_t rejections;
    char name[];
};

/* Fills in the defaults (per 1 s, burst = rate but at least 1) and checks; 0 when valid. */
static int resolve(const rsl__limiter_conf *in, rsl__limiter_conf *c, int64_t *t, int64_t *tau) {
    if (!in) {
        return RSL_EINVAL;
    }
    *c = *in;
    if (c->per_ns == 0) {
        c->per_ns = RSL_NS_PER_S;
    }
    if (c->burst == 0) {
        c->burst = c->rate < 1 ? 1 : c->rate;
    }
    if (!(c->rate > 0) || !isfinite(c->rate) || c->per_ns < 0 || !(c->burst >= 1) ||
        !isfinite(c->burst)) {
        return RSL_EINVAL;
    }
    double td = round((double)c->per_ns / c->rate);
    if (td < 1) {
        td = 1; /* above 1e9 calls/s: no finer time unit to spend */
    }
    double taud = round(c->burst * td);
    if (!(taud <= (double)MAX_TAU_NS)) {
        return RSL_EINVAL;
    }
    *t = (int64_t)td;
    *tau = (int64_t)taud;
    return 0;
}

rsl__limiter *rsl__limiter_new(const char *name, const rsl__limiter_conf *in) {
    rsl__limiter_conf c;
    int64_t t, tau;
    if (!name || resolve(in, &c, &t, &tau) != 0) {
        return NULL;
    }
    rsl__limiter *l = rsl__lines_named(sizeof(rsl__limiter), offsetof(rsl__limiter, name), name);
    if (!l) {
        return NULL;
    }
    atomic_init(&l->tat, INT64_MIN);
    atomic_init(&l->t_ns, t);
    atomic_init(&l->tau_ns, tau);
    atomic_init(&l->rate, c.rate);
    atomic_init(&l->burst, c.burst);
    atomic_init(&l->per_ns, c.per_ns);
    return l;
}

void rsl__limiter_free(rsl__limiter *l) {
    free(l);
}

const char *rsl__limiter_name(const rsl__limiter *l) {
    return l->name;
}

/* Tokens at `now` given tat and the interval/tolerance in force, in [0, burst]. */
static double tokens_of(int64_t tat, int64_t now, int64_t t, int64_t tau) {
    int64_t ahead = tat > now ? tat - now : 0;
    double tok = (double)(tau - ahead) / (double)t;
    return tok < 0 ? 0 : tok;
}

int rsl__limiter_configure(rsl__limiter *l, const rsl__limiter_conf *in, int64_t now) {
    rsl__limiter_conf c;
    int64_t t, tau;
    int rc = resolve(in, &c, &t, &tau);
    if (rc != 0) {
        return rc;
    }
    int64_t old_t = atomic_load_explicit(&l->t_ns, memory_order_relaxed);
    int64_t old_tau = atomic_load_explicit(&l->tau_ns, memory_order_relaxed);
    int64_t tat = atomic_load_explicit(&l->tat, memory_order_acquire);
    for (;;) {
        /* Same tokens as now, at most the new burst, expressed in the new interval. */
        double tok = tokens_of(tat, now, old_t, old_tau);
        double debt = (double)tau - (tok * (double)t);
        int64_t ntat = debt > 0 ? now + (int64_t)debt : INT64_MIN;
        if (atomic_compare_exchange_weak_explicit(&l->tat, &tat, ntat, memory_order_acq_rel,
                                                  memory_order_acquire)) {
            break;
        }
    }
    atomic_store_explicit(&l->t_ns, t, memory_order_relaxed);
    atomic_store_explicit(&l->tau_ns, tau, memory_order_relaxed);
    atomic_store_explicit(&l->rate, c.rate, memory_order_relaxed);
    atomic_store_explicit(&l->burst, c.burst, memory_order_relaxed);
    atomic_store_explicit(&l->per_ns, c.per_ns, memory_order_relaxed);
    return 0;
}

void rsl__limiter_reset(rsl__limiter *l) {
    atomic_store_explicit(&l->tat, INT64_MIN, memory_order_release);
}

void rsl__limiter_conf_get(const rsl__limiter *l, rsl__limiter_conf *c) {
    c->rate = atomic_load_explicit(&l->rate, memory_order_relaxed);
    c->burst = atomic_load_explicit(&l->burst, memory_order_relaxed);
    c->per_ns = atomic_load_explicit(&l->per_ns, memory_order_relaxed);
}

int rsl__limiter_allow(rsl__limiter *l, int64_t now) {
    return rsl__limiter_allow_upto(l, now, 1000);
}

int rsl__limiter_allow_upto(rsl__limiter *l, int64_t now, int usable) {
    int64_t t = atomic_load_explicit(&l->t_ns, memory_order_relaxed);
    int64_t tau = atomic_load_explicit(&l->tau_ns, memory_order_relaxed);
    int64_t cap = usable >= 1000 ? tau : (int64_t)((double)tau * usable / 1000);
    int64_t tat = atomic_load_explicit(&l->tat, memory_order_acquire);
    for (;;) {
        int64_t ntat = (tat > now ? tat : now) + t;
        if (ntat - now > cap) {
            atomic_fetch_add_explicit(&l->rejections, 1, memory_order_relaxed);
            return ntat - now > tau ? 0 : -1;
        }
        if (atomic_compare_exchange_weak_explicit(&l->tat, &tat, ntat, memory_order_acq_rel,
                                                  memory_order_acquire)) {
            return 1;
        }
    }
}

double rsl__limiter_tokens(rsl__limiter *l, int64_t now) {
    return tokens_of(atomic_load_explicit(&l->tat, memory_order_acquire), now,
                     atomic_load_explicit(&l->t_ns, memory_order_relaxed),
                     atomic_load_explicit(&l->tau_ns, memory_order_relaxed));
}

uint64_t rsl__limiter_rejections(const rsl__limiter *l) {
    return atomic_load_explicit(&l->rejections, memory_order_relaxed);
}
