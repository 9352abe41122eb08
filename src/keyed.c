/*
 * keyed -- per-key guards (keyed.h): a parent guard's table from key to child guard, split
 * in stripes, each a spinlock over a chained hash (seeded, so clients cannot aim their keys
 * at one chain) and an LRU list; eviction with a second chance, the overflow child, and
 * the snapshot the metrics and /state show.
 *
 * Layer: the guards, beside guard.
 *
 * Threads: every stripe's fields under its lock (a spinlock: see lock()); the table's copy
 * of the children's settings under conf_mu (taken inside a stripe's lock, never the other
 * way round).
 * Children are guards of their own, used outside any lock once a reference is taken.
 * Ownership: the table holds one reference to each child it lists and to the overflow
 * child; it is freed with its parent.
 */
#include "keyed.h"

#include "clock.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct kent {
    struct kent *hnext;       /* hash chain */
    struct kent *prev, *next; /* LRU: head is the most recent */
    rsl__guard *g;            /* the child: one reference is the table's */
    uint64_t hash;
    uint64_t calls;
    size_t klen;
    char key[]; /* klen bytes and a NUL */
} kent;

/* What evicted and cleared children leave to the totals, so that counters never go back. */
typedef struct retired {
    uint64_t calls, rejections;
    uint64_t trans[RSL_BREAKER__COUNT][RSL_BREAKER__COUNT];
} retired;

typedef struct stripe {
    _Atomic int mu; /* lock(): 0 free, 1 held */
    kent **buckets;
    size_t nbuckets; /* a power of two */
    size_t n, cap;
    kent *head, *tail;
    uint64_t evictions;
    retired gone;
    char pad[64]; /* two stripes' locks never share a cache line */
} stripe;

struct rsl__keyed {
    rsl__guard *parent; /* borrowed: the table lives inside it */
    char *text;         /* the template as declared */
    rsl__tmpl *tmpl;
    uint64_t seed;
    _Atomic int64_t max_keys;
    _Atomic int top_k;
    _Atomic uint64_t overrides; /* attempts the parent's force_open refused */
    _Atomic uint64_t overflow_calls;
    rsl__breaker_hook hook;
    void *hook_ud;
    rsl__guard *overflow;
    pthread_mutex_t conf_mu;
    rsl__breaker_conf bconf;
    rsl__limiter_conf lconf;
    int nstripes;
    stripe stripes[];
};

/* ---- small parts ---------------------------------------------------------------------- */

/* A stripe's lock: test-and-test-and-set, yielding the CPU after 128 spins.  What it
 * guards is short: a hash probe and a few pointer moves, at worst a child's creation
 * (~1 us).  A pthread mutex there cost 545 ns per attempt with two workers on one hot key
 * (each hand-off a futex wake-up) against 80 ns on two keys (bench_guards). */
static void lock(stripe *s) {
    int spins = 0;
    while (atomic_exchange_explicit(&s->mu, 1, memory_order_acquire)) {
        while (atomic_load_explicit(&s->mu, memory_order_relaxed)) {
            if (++spins >= 128) {
                sched_yield();
                spins = 0;
            } else {
#if defined(__x86_64__) || defined(__i386__)
                __builtin_ia32_pause();
#endif
            }
        }
    }
}

static void unlock(stripe *s) {
    atomic_store_explicit(&s->mu, 0, memory_order_release);
}

/* FNV-1a from a random basis, then splitmix64's finalizer so both ends of the word mix. */
static uint64_t hash(uint64_t seed, const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ULL ^ seed;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ULL;
    }
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebULL;
    h ^= h >> 31;
    return h;
}

/* 1 stripe below 128 keys (exact LRU for small tables), then one per 64 keys, up to 16: a
 * few workers rarely meet on one lock, and no stripe is too small to hold its share. */
static int stripes_for(int64_t max_keys) {
    int s = 1;
    while (s < 16 && (int64_t)s * 2 * 64 <= max_keys) {
        s *= 2;
    }
    return s;
}

static stripe *stripe_of(rsl__keyed *k, uint64_t h) {
    return &k->stripes[(h >> 60) & (uint64_t)(k->nstripes - 1)];
}

static size_t cap_of(int64_t max_keys, int nstripes, int i) {
    int64_t c = max_keys / nstripes + (i < max_keys % nstripes ? 1 : 0);
    return c < 1 ? 1 : (size_t)c;
}

static void lru_unlink(stripe *s, kent *e) {
    if (e->prev) {
        e->prev->next = e->next;
    } else {
        s->head = e->next;
    }
    if (e->next) {
        e->next->prev = e->prev;
    } else {
        s->tail = e->prev;
    }
    e->prev = e->next = NULL;
}

static void lru_push(stripe *s, kent *e) {
    e->prev = NULL;
    e->next = s->head;
    if (s->head) {
        s->head->prev = e;
    } else {
        s->tail = e;
    }
    s->head = e;
}

static void touch(stripe *s, kent *e) {
    if (s->head != e) {
        lru_unlink(s, e);
        lru_push(s, e);
    }
}

static kent *find(const stripe *s, uint64_t h, const char *key, size_t len) {
    for (kent *e = s->buckets[h & (s->nbuckets - 1)]; e; e = e->hnext) {
        if (e->hash == h && e->klen == len && memcmp(e->key, key, len) == 0) {
            return e;
        }
    }
    return NULL;
}

static void hash_unlink(stripe *s, kent *e) {
    kent **pp = &s->buckets[e->hash & (s->nbuckets - 1)];
    while (*pp != e) {
        pp = &(*pp)->hnext;
    }
    *pp = e->hnext;
}

/* Doubles the buckets when the chains would average over one; out of memory keeps them. */
static void maybe_grow(stripe *s) {
    if (s->n < s->nbuckets) {
        return;
    }
    size_t nb = s->nbuckets * 2;
    kent **b = calloc(nb, sizeof(*b));
    if (!b) {
        return;
    }
    for (size_t i = 0; i < s->nbuckets; i++) {
        for (kent *e = s->buckets[i], *next; e; e = next) {
            next = e->hnext;
            e->hnext = b[e->hash & (nb - 1)];
            b[e->hash & (nb - 1)] = e;
        }
    }
    free(s->buckets);
    s->buckets = b;
    s->nbuckets = nb;
}

/* A limiter child's refusals: its lease's when it is global (keyed global limiter). */
static uint64_t limiter_rejections(const rsl__guard *c) {
    rsl__lease *l = rsl__guard_lease(c);
    if (l) {
        rsl__lease_stats ls;
        rsl__lease_stats_get(l, &ls);
        return ls.rejections;
    }
    return rsl__limiter_rejections(c->u.limiter);
}

static void retire(retired *r, const kent *e, const rsl__guard *c) {
    r->calls += e->calls;
    if (c->kind == RSL_GUARD_BREAKER) {
        r->rejections += rsl__breaker_rejections(c->u.breaker);
        for (int f = 0; f < RSL_BREAKER__COUNT; f++) {
            for (int t = 0; t < RSL_BREAKER__COUNT; t++) {
                r->trans[f][t] += f == t ? 0
                                         : rsl__breaker_transitions(c->u.breaker,
                                                                    (rsl__breaker_state)f,
                                                                    (rsl__breaker_state)t);
            }
        }
    } else {
        r->rejections += limiter_rejections(c);
    }
}

/* Takes e out of s (its counters retired); returns its child, whose table reference the
 * caller drops once the lock is released. */
static rsl__guard *remove_entry(stripe *s, kent *e) {
    rsl__guard *c = e->g;
    retire(&s->gone, e, c);
    hash_unlink(s, e);
    lru_unlink(s, e);
    s->n--;
    free(e);
    return c;
}

/* How much losing a child would change what its key meets: 2 never (a breaker not closed,
 * or one an attempt holds), 1 rather not (a limiter short of a full bucket: its key would
 * start full again), 0 nothing. */
static int keep(const rsl__guard *c, int64_t now) {
    if (atomic_load_explicit(&c->refs, memory_order_acquire) > 1) {
        return 2;
    }
    if (c->kind == RSL_GUARD_BREAKER) {
        return rsl__breaker_state_at(c->u.breaker, now) != RSL_BREAKER_CLOSED ? 2 : 0;
    }
    if (rsl__guard_lease(c)) { /* global: the bucket is in Redis; leased tokens would go */
        return rsl__lease_pool(rsl__guard_lease(c)) > 0;
    }
    rsl__limiter_conf lc;
    rsl__limiter_conf_get(c->u.limiter, &lc);
    return rsl__limiter_tokens(c->u.limiter, now) < lc.burst;
}

/* Evicts one child from s's LRU end, looking at RSL_KEYED_EVICT_SCAN at most: the oldest
 * that costs nothing, else the oldest limiter short of a full bucket; those that must stay
 * move to the head.  The evicted child (to unref after unlocking), or NULL. */
static rsl__guard *evict_one(stripe *s, int64_t now) {
    size_t scan = s->n < RSL_KEYED_EVICT_SCAN ? s->n : RSL_KEYED_EVICT_SCAN;
    kent *e = s->tail, *victim = NULL, *fallback = NULL;
    for (size_t i = 0; i < scan && e; i++) {
        kent *prev = e->prev;
        int k = keep(e->g, now);
        if (k == 0) {
            victim = e;
            break;
        }
        if (k == 1 && !fallback) {
            fallback = e;
        } else if (k == 2) {
            touch(s, e);
        }
        e = prev;
    }
    victim = victim ? victim : fallback;
    if (!victim) {
        return NULL;
    }
    s->evictions++;
    return remove_entry(s, victim);
}

/* A child guard named "PARENT[KEY]" with the table's settings and the parent's reserve. */
static rsl__guard *child_new(rsl__keyed *k, const char *key, size_t len) {
    const rsl__guard *p = k->parent;
    char name[RSL_KEYED_KEY_MAX + 256];
    snprintf(name, sizeof(name), "%s[%.*s]", p->name, (int)len, key);
    pthread_mutex_lock(&k->conf_mu);
    rsl__guard *c = p->kind == RSL_GUARD_BREAKER ? rsl__guard_new_breaker(name, &k->bconf)
                                                 : rsl__guard_new_limiter(name, &k->lconf);
    pthread_mutex_unlock(&k->conf_mu);
    if (!c) {
        return NULL;
    }
    int usable[RSL_PRIORITIES];
    for (int i = 0; i < RSL_PRIORITIES; i++) {
        usable[i] = rsl__guard_usable(p, i);
    }
    rsl__guard_reserve_set(c, usable);
    if (c->kind == RSL_GUARD_BREAKER && k->hook) {
        rsl__breaker_set_hook(c->u.breaker, k->hook, k->hook_ud);
    }
    rsl__lease *pl = c->kind == RSL_GUARD_LIMITER ? rsl__guard_lease(p) : NULL;
    if (pl) { /* a global limiter: the key's own bucket in Redis, and its own lease */
        rsl__lease *l = rsl__lease_new_key(pl, key, len);
        if (!l) {
            rsl__guard_unref(c);
            return NULL;
        }
        atomic_store_explicit(&c->lease, l, memory_order_release);
        c->own_lease = 1;
    }
    return c;
}

/* The child for key (a reference taken): found and touched, or made (evicting one when the
 * stripe is full), else the overflow child. */
static rsl__guard *take(rsl__keyed *k, const char *key, size_t len, int64_t now) {
    uint64_t h = hash(k->seed, key, len);
    stripe *s = stripe_of(k, h);
    rsl__guard *c = NULL, *victim = NULL;
    lock(s);
    kent *e = find(s, h, key, len);
    if (!e) {
        if (s->n >= s->cap) {
            victim = evict_one(s, now);
        }
        if (s->n < s->cap && (e = malloc(sizeof(*e) + len + 1)) != NULL) {
            memset(e, 0, sizeof(*e));
            e->g = child_new(k, key, len);
            if (!e->g) {
                free(e);
                e = NULL;
            } else {
                e->hash = h;
                e->klen = len;
                memcpy(e->key, key, len);
                e->key[len] = 0;
                e->hnext = s->buckets[h & (s->nbuckets - 1)];
                s->buckets[h & (s->nbuckets - 1)] = e;
                lru_push(s, e);
                s->n++;
                maybe_grow(s);
            }
        }
    } else {
        touch(s, e);
    }
    if (e) {
        e->calls++;
        c = e->g;
        rsl__guard_ref(c);
    }
    unlock(s);
    rsl__guard_unref(victim);
    if (!c) {
        atomic_fetch_add_explicit(&k->overflow_calls, 1, memory_order_relaxed);
        c = k->overflow;
        rsl__guard_ref(c);
    }
    return c;
}

/* ---- the table ------------------------------------------------------------------------ */

int rsl__keyed_attach(rsl__guard *g, const char *key, const rsl__keyed_conf *kc, char *err,
                      size_t errlen) {
    if (!g || g->keyed || (g->kind != RSL_GUARD_BREAKER && g->kind != RSL_GUARD_LIMITER) ||
        !key || !kc || kc->max_keys < 1 || kc->top_k < 0 || kc->top_k > RSL_KEYED_TOP_MAX) {
        snprintf(err, errlen, "key: only a breaker or a limiter can be keyed, with max_keys >= 1 "
                              "and top_k in 0..%d",
                 RSL_KEYED_TOP_MAX);
        return RSL_EINVAL;
    }
    char terr[256];
    rsl__tmpl *t = rsl__tmpl_parse(key, strlen(key), terr, sizeof(terr));
    if (!t) {
        snprintf(err, errlen, "key: %s", terr);
        return RSL_EINVAL;
    }
    if (rsl__tmpl_is_literal(t)) {
        rsl__tmpl_free(t);
        snprintf(err, errlen, "key must name a request attribute, like \"${tenant}\"");
        return RSL_EINVAL;
    }
    int n = stripes_for(kc->max_keys);
    rsl__keyed *k = calloc(1, sizeof(*k) + (size_t)n * sizeof(stripe));
    char *text = strdup(key);
    if (!k || !text) {
        rsl__tmpl_free(t);
        free(k);
        free(text);
        snprintf(err, errlen, "out of memory");
        return RSL_ENOMEM;
    }
    k->parent = g;
    k->text = text;
    k->tmpl = t;
    k->seed = rsl__rand64();
    k->nstripes = n;
    atomic_init(&k->max_keys, kc->max_keys);
    atomic_init(&k->top_k, kc->top_k);
    pthread_mutex_init(&k->conf_mu, NULL);
    if (g->kind == RSL_GUARD_BREAKER) {
        rsl__breaker_conf_get(g->u.breaker, &k->bconf);
    } else {
        rsl__limiter_conf_get(g->u.limiter, &k->lconf);
    }
    int ok = 1;
    for (int i = 0; i < n; i++) {
        stripe *s = &k->stripes[i];
        s->cap = cap_of(kc->max_keys, n, i);
        s->nbuckets = 16;
        s->buckets = calloc(s->nbuckets, sizeof(*s->buckets));
        ok &= s->buckets != NULL;
    }
    k->overflow = ok ? child_new(k, "*", 1) : NULL;
    if (!k->overflow) {
        rsl__keyed_free(k);
        snprintf(err, errlen, "out of memory");
        return RSL_ENOMEM;
    }
    g->keyed = k;
    return 0;
}

/* Empties s; the children go into *out (n of them, to unref after unlocking). */
static size_t drain(stripe *s, rsl__guard ***out) {
    size_t n = 0;
    rsl__guard **v = s->n ? malloc(s->n * sizeof(*v)) : NULL;
    while (s->head) {
        rsl__guard *c = remove_entry(s, s->head);
        if (v) {
            v[n++] = c;
        } else {
            rsl__guard_unref(c); /* out of memory: freed under the lock, still correct */
        }
    }
    *out = v;
    return n;
}

void rsl__keyed_free(rsl__keyed *k) {
    if (!k) {
        return;
    }
    for (int i = 0; i < k->nstripes; i++) {
        stripe *s = &k->stripes[i];
        if (s->buckets) {
            rsl__guard **v;
            size_t n = drain(s, &v);
            for (size_t j = 0; j < n; j++) {
                rsl__guard_unref(v[j]);
            }
            free(v);
        }
        free(s->buckets);
    }
    rsl__guard_unref(k->overflow);
    pthread_mutex_destroy(&k->conf_mu);
    rsl__tmpl_free(k->tmpl);
    free(k->text);
    free(k);
}

const char *rsl__keyed_template(const rsl__keyed *k) {
    return k->text;
}

void rsl__keyed_conf_get(const rsl__keyed *k, rsl__keyed_conf *kc) {
    kc->max_keys = atomic_load_explicit(&k->max_keys, memory_order_relaxed);
    kc->top_k = atomic_load_explicit(&k->top_k, memory_order_relaxed);
}

int rsl__keyed_compatible(const rsl__keyed *k, const char *key, const rsl__keyed_conf *kc) {
    return key && strcmp(k->text, key) == 0 && kc->max_keys >= k->nstripes;
}

void rsl__keyed_set_hook(rsl__keyed *k, rsl__breaker_hook fn, void *ud) {
    if (k->hook || !fn) {
        return;
    }
    k->hook = fn;
    k->hook_ud = ud;
    if (k->overflow->kind == RSL_GUARD_BREAKER && !rsl__breaker_hooked(k->overflow->u.breaker)) {
        rsl__breaker_set_hook(k->overflow->u.breaker, fn, ud);
    }
}

/* ---- calls ---------------------------------------------------------------------------- */

/* The parent's override: 1 admit (disabled), 0 refuse (forced open), -1 none. */
static int parent_override(const rsl__guard *g) {
    if (g->kind == RSL_GUARD_BREAKER) {
        rsl__breaker_state st = rsl__breaker_state_get(g->u.breaker);
        return st == RSL_BREAKER_FORCED_OPEN ? 0 : st == RSL_BREAKER_DISABLED ? 1 : -1;
    }
    int o = atomic_load_explicit(&g->override, memory_order_relaxed);
    return o == RSL_OVERRIDE_FORCE_OPEN ? 0 : o == RSL_OVERRIDE_DISABLE ? 1 : -1;
}

int rsl__keyed_acquire(rsl__guard *g, const rsl_req *req, rsl__buf *buf, int64_t now,
                       int priority, rsl__redis *redis, rsl__permit *permit, rsl__guard **child,
                       const char **why) {
    rsl__keyed *k = g->keyed;
    *child = NULL;
    int o = parent_override(g);
    if (o >= 0) {
        if (o == 0) {
            atomic_fetch_add_explicit(&k->overrides, 1, memory_order_relaxed);
            *why = "is forced open";
        }
        return o;
    }
    const char *key = "", *missing;
    size_t len = 0;
    buf->len = 0;
    if (rsl__tmpl_expand(k->tmpl, req, 0, buf, &missing) == 0 && buf->p) {
        key = buf->p;
        len = buf->len < RSL_KEYED_KEY_MAX ? buf->len : RSL_KEYED_KEY_MAX;
    }
    rsl__guard *c = take(k, key, len, now);
    int rc = rsl__guard_acquire(c, now, priority, permit, why);
    if (c->kind == RSL_GUARD_LIMITER && rsl__guard_lease(c)) {
        rsl__lease_tend(rsl__guard_lease(c), redis); /* the key's refill, on our loop */
    }
    if (rc < 0) { /* shed for the reserve: counted on the parent, whose figures show */
        int p = priority < 0 ? 0 : priority > RSL_PRIORITY_LOWEST ? RSL_PRIORITY_LOWEST : priority;
        atomic_fetch_add_explicit(&g->shed[p], 1, memory_order_relaxed);
    }
    if (rc > 0 && rsl__guard_holds(c)) {
        *child = c;
        return rc;
    }
    rsl__guard_unref(c);
    return rc;
}

void rsl__keyed_release(rsl__guard *child, rsl__permit *permit, int verdict, int64_t now,
                        rsl_outcome outcome, int status, int64_t latency_ns) {
    if (child) {
        rsl__guard_release(child, permit, verdict, now, outcome, status, latency_ns);
        rsl__guard_unref(child);
    }
}

rsl__guard *rsl__keyed_lookup(rsl__guard *g, const char *key, size_t len) {
    rsl__keyed *k = g->keyed;
    if (!k || parent_override(g) >= 0) {
        return NULL;
    }
    len = len < RSL_KEYED_KEY_MAX ? len : RSL_KEYED_KEY_MAX;
    uint64_t h = hash(k->seed, key, len);
    stripe *s = stripe_of(k, h);
    lock(s);
    kent *e = find(s, h, key, len);
    rsl__guard *c = e ? e->g : NULL;
    if (c) {
        rsl__guard_ref(c);
    }
    unlock(s);
    return c;
}

/* ---- reloads and resets --------------------------------------------------------------- */

/* The table's settings applied to one child (under its stripe's lock). 1: window reset. */
static int child_configure(rsl__keyed *k, rsl__guard *c, const int *usable, int64_t now) {
    int rc = 0;
    rsl__guard_reserve_set(c, usable);
    if (c->kind == RSL_GUARD_BREAKER) {
        rc = rsl__breaker_configure(c->u.breaker, &k->bconf) == 1;
    } else {
        rsl__limiter_configure(c->u.limiter, &k->lconf, now);
        rsl__lease *pl = rsl__guard_lease(k->parent), *l = rsl__guard_lease(c);
        if (pl && l) {
            rsl__lease_conf lc;
            rsl__lease_conf_get(pl, &lc);
            rsl__lease_configure(l, &lc);
        }
    }
    return rc;
}

int rsl__keyed_configure(rsl__guard *g, const rsl__keyed_conf *kc, int parent_changed,
                         int reset, int64_t now) {
    rsl__keyed *k = g->keyed;
    rsl__keyed_conf cur;
    rsl__keyed_conf_get(k, &cur);
    int changed = cur.max_keys != kc->max_keys || cur.top_k != kc->top_k;
    if (!parent_changed && !changed) {
        return 0;
    }
    atomic_store_explicit(&k->top_k, kc->top_k, memory_order_relaxed);
    atomic_store_explicit(&k->max_keys, kc->max_keys, memory_order_relaxed);
    int usable[RSL_PRIORITIES];
    for (int i = 0; i < RSL_PRIORITIES; i++) {
        usable[i] = rsl__guard_usable(g, i);
    }
    pthread_mutex_lock(&k->conf_mu);
    if (g->kind == RSL_GUARD_BREAKER) {
        rsl__breaker_conf_get(g->u.breaker, &k->bconf);
    } else {
        rsl__limiter_conf_get(g->u.limiter, &k->lconf);
    }
    pthread_mutex_unlock(&k->conf_mu);
    if (parent_changed) {
        child_configure(k, k->overflow, usable, now);
    }
    for (int i = 0; i < k->nstripes; i++) {
        stripe *s = &k->stripes[i];
        rsl__guard *victims[RSL_KEYED_EVICT_SCAN * 4];
        size_t nv = 0;
        lock(s);
        if (parent_changed) {
            for (kent *e = s->head; e; e = e->next) {
                child_configure(k, e->g, usable, now);
            }
        }
        s->cap = cap_of(kc->max_keys, k->nstripes, i);
        /* A smaller bound: what can go goes now (a bounded number per stripe); the rest as
         * new keys come. */
        while (s->n > s->cap && nv < sizeof(victims) / sizeof(*victims)) {
            rsl__guard *v = evict_one(s, now);
            if (!v) {
                break;
            }
            victims[nv++] = v;
        }
        unlock(s);
        for (size_t j = 0; j < nv; j++) {
            rsl__guard_unref(victims[j]);
        }
    }
    return parent_changed && reset ? 2 : 1;
}

void rsl__keyed_clear(rsl__keyed *k) {
    for (int i = 0; i < k->nstripes; i++) {
        stripe *s = &k->stripes[i];
        rsl__guard **v;
        lock(s);
        size_t n = drain(s, &v);
        unlock(s);
        for (size_t j = 0; j < n; j++) {
            rsl__guard_unref(v[j]);
        }
        free(v);
    }
}

/* ---- figures -------------------------------------------------------------------------- */

static void item_of(rsl__keyed_item *it, const rsl__guard *c, uint64_t calls, int64_t now) {
    it->calls = calls;
    if (c->kind == RSL_GUARD_BREAKER) {
        rsl__breaker *b = c->u.breaker;
        it->rejections = rsl__breaker_rejections(b);
        it->state = (int)rsl__breaker_state_at(b, now);
        for (int f = 0; f < RSL_BREAKER__COUNT; f++) {
            for (int t = 0; t < RSL_BREAKER__COUNT; t++) {
                it->trans[f][t] = f == t ? 0
                                         : rsl__breaker_transitions(b, (rsl__breaker_state)f,
                                                                    (rsl__breaker_state)t);
            }
        }
    } else {
        it->rejections = limiter_rejections(c);
        it->state = -1;
        it->tokens = rsl__guard_lease(c) ? (double)rsl__lease_pool(rsl__guard_lease(c))
                                         : rsl__limiter_tokens(c->u.limiter, (int64_t)now);
    }
}

static void item_add(rsl__keyed_item *sum, const rsl__keyed_item *it) {
    sum->calls += it->calls;
    sum->rejections += it->rejections;
    for (int f = 0; f < RSL_BREAKER__COUNT; f++) {
        for (int t = 0; t < RSL_BREAKER__COUNT; t++) {
            sum->trans[f][t] += it->trans[f][t];
        }
    }
}

static void item_sub(rsl__keyed_item *sum, const rsl__keyed_item *it) {
    sum->calls -= it->calls;
    sum->rejections -= it->rejections;
    for (int f = 0; f < RSL_BREAKER__COUNT; f++) {
        for (int t = 0; t < RSL_BREAKER__COUNT; t++) {
            sum->trans[f][t] -= it->trans[f][t];
        }
    }
}

/* 1 when a ranks above b: more calls, or as many and a smaller key. */
static int above(const rsl__keyed_item *a, const rsl__keyed_item *b) {
    if (a->calls != b->calls) {
        return a->calls > b->calls;
    }
    int c = memcmp(a->key, b->key, a->klen < b->klen ? a->klen : b->klen);
    return c != 0 ? c < 0 : a->klen < b->klen;
}

static int nameable(const char *key, size_t len) {
    if (len == 0 || (len == 5 && memcmp(key, "other", 5) == 0)) {
        return 0;
    }
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)key[i] < 0x20 || (unsigned char)key[i] > 0x7e) {
            return 0;
        }
    }
    return 1;
}

/* The top list as a min-heap on `above` (its root the lowest) while collecting. */
static void sift_down(rsl__keyed_item *h, int n, int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && above(&h[m], &h[l])) {
            m = l;
        }
        if (r < n && above(&h[m], &h[r])) {
            m = r;
        }
        if (m == i) {
            return;
        }
        rsl__keyed_item t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

static void sift_up(rsl__keyed_item *h, int i) {
    while (i > 0) {
        int p = (i - 1) / 2;
        if (!above(&h[p], &h[i])) {
            return;
        }
        rsl__keyed_item t = h[i];
        h[i] = h[p];
        h[p] = t;
        i = p;
    }
}

static int cmp_top(const void *a, const void *b) {
    return above(a, b) ? -1 : above(b, a) ? 1 : 0;
}

rsl__keyed_stats *rsl__keyed_stats_get(rsl__guard *g, int64_t now) {
    rsl__keyed *k = g->keyed;
    rsl__keyed_stats *st = calloc(1, sizeof(*st));
    if (!k || !st) {
        free(st);
        return NULL;
    }
    rsl__keyed_conf_get(k, &st->conf);
    int K = st->conf.top_k;
    rsl__keyed_item *all = &st->rest, it;
    uint64_t states[RSL_BREAKER__COUNT] = {0};
    for (int i = 0; i < k->nstripes; i++) {
        stripe *s = &k->stripes[i];
        lock(s);
        st->keys += s->n;
        st->evictions += s->evictions;
        all->calls += s->gone.calls;
        all->rejections += s->gone.rejections;
        for (int f = 0; f < RSL_BREAKER__COUNT; f++) {
            for (int t = 0; t < RSL_BREAKER__COUNT; t++) {
                all->trans[f][t] += s->gone.trans[f][t];
            }
        }
        for (kent *e = s->head; e; e = e->next) {
            item_of(&it, e->g, e->calls, now);
            item_add(all, &it);
            if (it.state >= 0) {
                states[it.state]++;
            }
            if (K == 0 || !nameable(e->key, e->klen)) {
                continue;
            }
            it.klen = e->klen;
            memcpy(it.key, e->key, e->klen + 1);
            if (st->ntop < K) {
                st->top[st->ntop] = it;
                sift_up(st->top, st->ntop++);
            } else if (above(&it, &st->top[0])) {
                st->top[0] = it;
                sift_down(st->top, st->ntop, 0);
            }
        }
        unlock(s);
    }
    item_of(&it, k->overflow, atomic_load_explicit(&k->overflow_calls, memory_order_relaxed), now);
    item_add(all, &it);
    st->overflow_calls = it.calls;
    all->rejections += atomic_load_explicit(&k->overrides, memory_order_relaxed);
    if (g->kind == RSL_GUARD_BREAKER) { /* the parent's own: its overrides coming and going */
        item_of(&it, g, 0, now);
        for (int f = 0; f < RSL_BREAKER__COUNT; f++) {
            for (int t = 0; t < RSL_BREAKER__COUNT; t++) {
                all->trans[f][t] += it.trans[f][t];
            }
        }
    }
    qsort(st->top, (size_t)st->ntop, sizeof(*st->top), cmp_top);
    for (int i = 0; i < st->ntop; i++) {
        item_sub(all, &st->top[i]);
        if (st->top[i].state >= 0) {
            states[st->top[i].state]--;
        }
    }
    memcpy(st->rest_states, states, sizeof(states));
    memcpy(all->key, "other", 6);
    all->klen = 5;
    all->state = g->kind == RSL_GUARD_BREAKER ? (int)RSL_BREAKER_CLOSED : -1;
    return st;
}
