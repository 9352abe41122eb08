/*
 * keyed -- per-key guards: a breaker or a limiter declared with `key = "${tenant}"` is one
 * named guard (the parent, in the registry, with its admin override) holding a bounded
 * table from the key's value to a child guard of the same kind and settings, made the
 * first time the key is seen.
 *
 * Layer: the guards, beside guard (the table makes child guards; guard frees a parent's
 * table with the parent).
 *
 * Bound: at most max_keys children.  The table is split in 1..16 stripes by hash (one
 * stripe below 128 keys, so small tables are exactly LRU), each a spinlock over a chained
 * hash and an LRU list, with max_keys / stripes of the room.  A new key in a full stripe evicts
 * from its LRU end, looking at RSL_KEYED_EVICT_SCAN children at most: the oldest that
 * costs nothing (a closed breaker, a limiter with a full bucket), else the oldest limiter
 * short of a full bucket (its key starts full again if it comes back: the price of the
 * bound, paid by the least recent key).  A breaker that is not closed (open, half_open)
 * is never evicted, nor one an attempt holds: those looked at move to the head (a second
 * chance).  When nothing can go, the key is served by the guard's one overflow child,
 * shared by every such key: memory stays bounded and no call goes unguarded.
 *
 * Global: a keyed limiter with scope = "global" gives each child a lease of its own
 * (rsl__lease_new_key: one bucket in Redis per key value, counted on the parent's lease),
 * freed with the child; such a child costs nothing to evict but its leased tokens.
 *
 * Lifetime: a child is reference counted (rsl__guard.refs): the table holds one, an
 * attempt that holds the child (a breaker's permit) holds one, so an evicted child lives
 * until its last attempt gives it back.
 *
 * Threads: acquire, release, lookup and stats from any thread (a short critical section on
 * one stripe); configure from the loader under the reload lock; clear from any thread.
 */
#ifndef RSL_KEYED_H
#define RSL_KEYED_H

#include "guard.h"
#include "tmpl.h"

#include <stddef.h>
#include <stdint.h>

/* A key longer than this is its first RSL_KEYED_KEY_MAX bytes: a table of max_keys
 * children holds at most max_keys * 256 bytes of keys, whatever clients send. */
#define RSL_KEYED_KEY_MAX 256
/* top_k is at most this (metrics series per keyed guard and metric). */
#define RSL_KEYED_TOP_MAX 100
/* Children an insertion into a full stripe looks at, from its LRU tail: bounded work
 * under the stripe's lock even when every child is open. */
#define RSL_KEYED_EVICT_SCAN 16

typedef struct rsl__keyed_conf {
    int64_t max_keys; /* >= 1 */
    int top_k;        /* 0..RSL_KEYED_TOP_MAX */
} rsl__keyed_conf;

/* Makes g (a fresh breaker or limiter guard, nobody's yet) keyed on the template `key`.
 * 0, or RSL_EINVAL with a message in err (a malformed template, a bad kind or conf), or
 * RSL_ENOMEM. */
int rsl__keyed_attach(rsl__guard *g, const char *key, const rsl__keyed_conf *kc, char *err,
                      size_t errlen);
void rsl__keyed_free(rsl__keyed *k); /* NULL is a no-op; drops the table's references */

const char *rsl__keyed_template(const rsl__keyed *k);
void rsl__keyed_conf_get(const rsl__keyed *k, rsl__keyed_conf *kc);
/* 1 when a reload declaring template `key` with `kc` can keep k (same template, and a
 * max_keys no smaller than k's stripe count); else the guard is made afresh. */
int rsl__keyed_compatible(const rsl__keyed *k, const char *key, const rsl__keyed_conf *kc);
/* The breaker hook for children made from now on (and the overflow child), when none is
 * set yet.  Before the guard is shared, as rsl__breaker_set_hook. */
void rsl__keyed_set_hook(rsl__keyed *k, rsl__breaker_hook fn, void *ud);

/*
 * One attempt through the keyed guard g of a call with request req at `now`: the parent's
 * override first (force_open refuses, disable admits holding nothing), then the key
 * expanded from req into buf (a missing attribute is the key ""), its child found or made,
 * and rsl__guard_acquire on it (a global limiter's child then tends its lease on redis,
 * the calling worker's connection or NULL).  Returns as rsl__guard_acquire; when admitted, *child is
 * the child to hand to rsl__keyed_release (a reference), or NULL when nothing is held (a
 * limiter's token is spent, or the guard is disabled).
 */
int rsl__keyed_acquire(rsl__guard *g, const rsl_req *req, rsl__buf *buf, int64_t now,
                       int priority, rsl__redis *redis, rsl__permit *permit, rsl__guard **child,
                       const char **why);
/* Gives an acquired child back (rsl__guard_release) and drops its reference. */
void rsl__keyed_release(rsl__guard *child, rsl__permit *permit, int verdict, int64_t now,
                        rsl_outcome outcome, int status, int64_t latency_ns);

/* The child for `key` (a reference: rsl__guard_unref it), or NULL when the key has none or
 * the parent is overridden (read the parent then: an unseen key reads as a fresh guard).
 * Neither makes a child nor counts as a use. */
rsl__guard *rsl__keyed_lookup(rsl__guard *g, const char *key, size_t len);

/*
 * After a reload reconfigured the parent in place (parent_changed: its settings or its
 * reserve changed; reset: its window was replaced): the parent's settings and reserve go
 * to every child and kc applies (a smaller max_keys evicts what it can at once).  0 kept,
 * 1 changed, 2 changed with the children's windows restarted.
 */
int rsl__keyed_configure(rsl__guard *g, const rsl__keyed_conf *kc, int parent_changed,
                         int reset, int64_t now);
/* Forgets every key (an admin reset of the parent). */
void rsl__keyed_clear(rsl__keyed *k);

/* One key's figures (or a sum of several). */
typedef struct rsl__keyed_item {
    char key[RSL_KEYED_KEY_MAX + 1]; /* NUL-terminated */
    size_t klen;
    uint64_t calls;      /* attempts that reached the key's child */
    uint64_t rejections; /* of those, refused */
    int state;           /* a breaker's rsl__breaker_state at `now`; -1 for a limiter */
    double tokens;       /* a limiter's */
    uint64_t trans[RSL_BREAKER__COUNT][RSL_BREAKER__COUNT];
} rsl__keyed_item;

typedef struct rsl__keyed_stats {
    size_t keys;                 /* children in the table */
    rsl__keyed_conf conf;
    uint64_t evictions;
    uint64_t overflow_calls;     /* attempts served by the overflow child */
    int ntop;
    /* The top_k keys by calls since each was made, most first (ties by key).  Only keys of
     * printable ASCII other than "" and "other" are shown by name: any other key folds
     * into rest (a label and a JSON string must be valid text; an empty label is no label,
     * and "other" is taken). */
    rsl__keyed_item top[RSL_KEYED_TOP_MAX];
    /* Everything else summed: the other keys, evicted ones, the overflow child and the
     * parent's own override refusals.  rest.key is "other". */
    rsl__keyed_item rest;
    uint64_t rest_states[RSL_BREAKER__COUNT]; /* a breaker's other keys in each state */
} rsl__keyed_stats;

/* A malloc'd snapshot of k at `now`; NULL when out of memory. */
rsl__keyed_stats *rsl__keyed_stats_get(rsl__guard *g, int64_t now);

#endif
