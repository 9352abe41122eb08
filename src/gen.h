/*
 * gen -- a generation as the calls run on it: a loaded rsl__gen plus what the runtime
 * binds to it (each state's Lua binding, each step's retry budget, its metrics views, the
 * local caches), reference counted.
 *
 * Layer: above the Lua binding and the policies, below the calls.  Ownership: the runtime's
 * current pointer holds one reference, every call running on the generation one, every
 * result that could not copy its names one.  The caches outlive generations: they live in
 * an rsl__caches the runtime owns, by "policy/step".
 *
 * Threads: any (references are atomic; the last one frees, on whichever thread that is).
 */
#ifndef RSL_GEN_H
#define RSL_GEN_H

#include "breaker.h"
#include "cache.h"
#include "lua_api.h"
#include "metrics.h"
#include "policy.h"
#include "retry.h"
#include "shed.h"

#include <pthread.h>
#include <stdatomic.h>

/* The local caches of every generation, by "policy/step". */
typedef struct rsl__caches {
    struct rsl__cache_slot {
        char *name;
        rsl__cache *cache;
    } *v;
    int n;
} rsl__caches;

void rsl__caches_free(rsl__caches *c);

/* What a new generation binds to, that outlives it. */
typedef struct rsl__genr_conf {
    rsl__lapi_conf lapi;
    pthread_mutex_t *lock;      /* held while caches and metrics change */
    rsl__caches *caches;
    rsl__metrics *metrics;
    rsl__breaker_hook on_breaker; /* given to the breakers this load created; NULL: none */
    void *on_breaker_ud;
} rsl__genr_conf;

typedef struct rsl__genr {
    rsl__gen *g;
    rsl__lapi **api;        /* per state */
    rsl__budget **budgets;  /* [policy][step] */
    rsl__median **medians;  /* [policy][step]: the step's recent median duration */
    _Atomic int refs;
} rsl__genr;

/* Wraps g (taken: freed on failure) with refs = 1; NULL when out of memory. */
rsl__genr *rsl__genr_new(const rsl__genr_conf *conf, rsl__gen *g);
void rsl__genr_ref(rsl__genr *G);
void rsl__genr_unref(rsl__genr *G);
/* Generations alive in this process (every runtime's current one plus the ones draining):
 * lets tests see that an old generation is freed when its last call ends. */
extern _Atomic int rsl__genr_live;

#endif
