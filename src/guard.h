/*
 * guard -- the guards (breakers, limiters, bulkheads) behind one interface, acquire and
 * release, and the registry of named guards a runtime owns.
 *
 * Layer: the guards, above clock and window.
 *
 * Guards are keyed by name and outlive policy generations: a reload that declares the
 * same name and kind keeps the object (and its state) and applies the new thresholds in
 * place.  A guard is reference counted: the registry holds one reference, every
 * generation that uses it holds one; it is freed when the last goes.
 *
 * Threads: the registry is changed only by the loader (one at a time, under the runtime's
 * reload lock); guard objects themselves are used from any thread.
 */
#ifndef RSL_GUARD_H
#define RSL_GUARD_H

#include "adaptive.h"
#include "breaker.h"
#include "bulkhead.h"
#include "fleet.h"
#include "lease.h"
#include "limiter.h"
#include "shed.h"
#include "throttle.h"

#include <stdatomic.h>

typedef enum rsl__guard_kind {
    RSL_GUARD_BREAKER,
    RSL_GUARD_LIMITER,
    RSL_GUARD_BULKHEAD,
    RSL_GUARD_THROTTLE,
    RSL_GUARD_ADAPTIVE,
} rsl__guard_kind;

/* "breaker", "limiter", "bulkhead", "throttle", "adaptive" */
const char *rsl__guard_kind_name(rsl__guard_kind k);

/* A keyed guard's table of per-key children (keyed.h). */
typedef struct rsl__keyed rsl__keyed;

typedef struct rsl__guard {
    rsl__guard_kind kind;
    const char *name; /* the underlying object's name */
    union {
        rsl__breaker *breaker;
        rsl__limiter *limiter;
        rsl__bulkhead *bulkhead;
        rsl__throttle *throttle;
        rsl__adaptive *adaptive;
    } u;
    _Atomic int refs;
    /* An admin override of a limiter, bulkhead, throttle or adaptive limit (a breaker keeps its own in its state):
     * RSL_OVERRIDE_AUTO, _FORCE_OPEN or _DISABLE. */
    _Atomic int override;
    /* A bulkhead's, adaptive limit's or limiter's reserve: how much of its capacity a call
     * of each priority may fill, per mille (1000: all; `reserve` keeps the rest for the
     * priorities above), and the calls each priority had refused for it (shed). */
    _Atomic int usable[RSL_PRIORITIES];
    _Atomic uint64_t shed[RSL_PRIORITIES];
    /* A limiter with scope = "global": its lease (lease.h), which decides instead of the
     * local limiter; NULL: local.  Owned by the runtime's lease registry, or (own_lease, a
     * keyed global limiter's child) a reference of the guard's, dropped when it is freed. */
    _Atomic(rsl__lease *) lease;
    int own_lease;
    /* A breaker with `shared`: its fleet (fleet.h), whose verdicts the guard applies to
     * the breaker (fleet_seen: the last one applied); NULL: local.  Owned by the runtime's
     * fleet registry. */
    _Atomic(rsl__fleet *) fleet;
    _Atomic uint64_t fleet_seen;
    /* A breaker or limiter with `key`: its per-key children, which take the calls (the
     * guard's own object then only carries the admin override and the settings); NULL:
     * one guard for every call.  Set before the guard is shared, freed with it. */
    rsl__keyed *keyed;
} rsl__guard;

/* The shared breaker's fleet, or NULL. */
static inline rsl__fleet *rsl__guard_fleet(const rsl__guard *g) {
    return atomic_load_explicit(&g->fleet, memory_order_acquire);
}
/* A shared breaker takes up the fleet's latest verdict at `now` (before a read of its
 * state; acquire does it itself).  Any thread; two loads when there is none new. */
static inline void rsl__guard_sync(rsl__guard *g, int64_t now);
void rsl__guard_sync_apply(rsl__guard *g, int64_t now); /* the verdict, when new */

/* The global limiter's lease, or NULL. */
static inline rsl__lease *rsl__guard_lease(const rsl__guard *g) {
    return atomic_load_explicit(&g->lease, memory_order_acquire);
}

/* One attempt of a call of `priority` through g at `now`: 1 when it may go on (a breaker's
 * permit in *permit, a bulkhead's slot taken), else 0 with why it refused ("is open", "is
 * empty", ...), or -1 when it is shed: g had room, but only in the share its reserve keeps
 * for higher priorities. */
int rsl__guard_acquire(rsl__guard *g, int64_t now, int priority, rsl__permit *permit,
                       const char **why);
/* Sets the per-mille share each priority may fill (usable[0..RSL_PRIORITIES), each in
 * 0..1000; NULL: all of it for every priority).  1 when that changed anything. */
int rsl__guard_reserve_set(rsl__guard *g, const int *usable);
/* 1 when g keeps a reserve (some priority may not fill all of it). */
int rsl__guard_has_reserve(const rsl__guard *g);
/* Per mille of g a call of priority p may fill; the calls of p shed for the reserve. */
int rsl__guard_usable(const rsl__guard *g, int p);
uint64_t rsl__guard_shed(const rsl__guard *g, int p);
/* 1 when an acquired g must be given back (all but limiters: a limiter's
 * token is spent). */
static inline int rsl__guard_holds(const rsl__guard *g) {
    return g->kind != RSL_GUARD_LIMITER;
}
/* Gives an acquired g back: with the attempt's verdict (its outcome, HTTP status (0 for
 * none) and latency, recorded by a breaker, a throttle, an adaptive limit), or without one
 * (canceled, or a later guard refused: nothing recorded). */
void rsl__guard_release(rsl__guard *g, rsl__permit *permit, int verdict, int64_t now,
                        rsl_outcome outcome, int status, int64_t latency_ns);

/* Applies an admin override at `now` (rsl_guard_override's meanings). */
void rsl__guard_override(rsl__guard *g, rsl_override a, int64_t now);
/* The override in force: RSL_OVERRIDE_AUTO (none), _FORCE_OPEN or _DISABLE. */
rsl_override rsl__guard_override_get(const rsl__guard *g);
const char *rsl__override_name(rsl_override a); /* "auto", "force_open", ... */

/* A new guard wrapping a freshly created object (refs = 1). NULL on a bad conf. */
rsl__guard *rsl__guard_new_breaker(const char *name, const rsl__breaker_conf *c);
rsl__guard *rsl__guard_new_limiter(const char *name, const rsl__limiter_conf *c);
rsl__guard *rsl__guard_new_bulkhead(const char *name, int64_t max);
rsl__guard *rsl__guard_new_throttle(const char *name, const rsl__throttle_conf *c);
rsl__guard *rsl__guard_new_adaptive(const char *name, const rsl__adaptive_conf *c);
void rsl__guard_ref(rsl__guard *g);
void rsl__guard_unref(rsl__guard *g); /* frees on the last reference; NULL is a no-op */

typedef struct rsl__guards rsl__guards;

rsl__guards *rsl__guards_new(void);
void rsl__guards_free(rsl__guards *r); /* drops the registry's references */
/* Borrowed; NULL when absent. */
rsl__guard *rsl__guards_find(const rsl__guards *r, const char *name);
/* Adds g (the registry takes a reference). RSL_EEXIST when the name is taken. */
int rsl__guards_add(rsl__guards *r, rsl__guard *g);
/* Removes `name` (drops the registry's reference). */
void rsl__guards_remove(rsl__guards *r, const char *name);
size_t rsl__guards_count(const rsl__guards *r);
/* The i-th guard in name order, borrowed. */
rsl__guard *rsl__guards_at(const rsl__guards *r, size_t i);

static inline void rsl__guard_sync(rsl__guard *g, int64_t now) {
    rsl__fleet *f = rsl__guard_fleet(g);
    if (f && rsl__fleet_pub(f) != atomic_load_explicit(&g->fleet_seen, memory_order_relaxed)) {
        rsl__guard_sync_apply(g, now);
    }
}

#endif
