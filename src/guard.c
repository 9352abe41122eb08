/*
 * guard -- one interface over the guard kinds (acquire, release), and the registry of
 * named guards (guard.h): a dynamic array of guard pointers kept sorted by name, found by
 * binary search; each guard is reference counted and frees its breaker, limiter or
 * bulkhead at the last unref.
 *
 * Layer: the guards, above breaker, limiter and bulkhead.
 *
 * Threads: the registry is changed by one loader at a time (the runtime's reload lock) and
 * read by it; refs are atomic because generations on other threads drop theirs.
 * Ownership: the registry holds one reference per guard it lists.
 */
#include "guard.h"

#include "keyed.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

struct rsl__guards {
    rsl__guard **v; /* sorted by name */
    size_t n;
    size_t cap;
};

const char *rsl__guard_kind_name(rsl__guard_kind k) {
    switch (k) {
    case RSL_GUARD_BREAKER:
        return "breaker";
    case RSL_GUARD_LIMITER:
        return "limiter";
    case RSL_GUARD_BULKHEAD:
        return "bulkhead";
    case RSL_GUARD_THROTTLE:
        return "throttle";
    case RSL_GUARD_ADAPTIVE:
        return "adaptive";
    }
    return "unknown";
}

/* A limiter's or bulkhead's override: 1 pass, 0 refuse, -1 none (its rules decide). */
static int overridden(rsl__guard *g, const char **why) {
    int o = atomic_load_explicit(&g->override, memory_order_relaxed);
    if (o == RSL_OVERRIDE_AUTO) {
        return -1;
    }
    if (o == RSL_OVERRIDE_FORCE_OPEN) {
        *why = "is forced open";
        return 0;
    }
    if (g->kind == RSL_GUARD_BULKHEAD) {
        rsl__bulkhead_enter(g->u.bulkhead); /* counted, so that its release balances */
    } else if (g->kind == RSL_GUARD_ADAPTIVE) {
        rsl__adaptive_enter(g->u.adaptive);
    }
    return 1;
}

/* A refusal for the reserve: counted per priority, with its reason. */
static int shed(rsl__guard *g, int priority, const char **why) {
    atomic_fetch_add_explicit(&g->shed[priority], 1, memory_order_relaxed);
    *why = "keeps the rest for higher priorities (shed)";
    return -1;
}

int rsl__guard_acquire(rsl__guard *g, int64_t now, int priority, rsl__permit *permit,
                       const char **why) {
    int o, u;
    if (priority < 0 || priority > RSL_PRIORITY_LOWEST) {
        priority = priority < 0 ? 0 : RSL_PRIORITY_LOWEST;
    }
    switch (g->kind) {
    case RSL_GUARD_LIMITER:
        if ((o = overridden(g, why)) >= 0) {
            return o;
        }
        if (rsl__guard_lease(g)) {
            return rsl__lease_acquire(rsl__guard_lease(g), now, why);
        }
        *why = "is empty";
        u = atomic_load_explicit(&g->usable[priority], memory_order_relaxed);
        o = rsl__limiter_allow_upto(g->u.limiter, now, u);
        return o < 0 ? shed(g, priority, why) : o;
    case RSL_GUARD_BULKHEAD:
        if ((o = overridden(g, why)) >= 0) {
            return o;
        }
        *why = "is full";
        u = atomic_load_explicit(&g->usable[priority], memory_order_relaxed);
        o = rsl__bulkhead_acquire_upto(g->u.bulkhead, u);
        return o < 0 ? shed(g, priority, why) : o;
    case RSL_GUARD_ADAPTIVE:
        if ((o = overridden(g, why)) >= 0) {
            return o;
        }
        *why = "is at its limit";
        u = atomic_load_explicit(&g->usable[priority], memory_order_relaxed);
        o = rsl__adaptive_acquire_upto(g->u.adaptive, u);
        return o < 0 ? shed(g, priority, why) : o;
    case RSL_GUARD_THROTTLE:
        permit->counted = 0; /* no verdict owed unless the upstream is asked */
        if ((o = overridden(g, why)) >= 0) {
            return o;
        }
        *why = "refused it locally (client-side throttling)";
        if (!rsl__throttle_allow(g->u.throttle, now, &permit->start, &permit->cycle)) {
            return 0;
        }
        permit->counted = 1;
        return 1;
    case RSL_GUARD_BREAKER: {
        rsl__fleet *f = rsl__guard_fleet(g);
        int right = 0;
        if (f) {
            rsl__guard_sync(g, now);
            /* The fleet opened it: a probe needs one of the fleet's probe leases. */
            if (rsl__fleet_gated(f) &&
                rsl__breaker_state_at(g->u.breaker, now) == RSL_BREAKER_HALF_OPEN) {
                if (!rsl__fleet_take_right(f)) {
                    *why = "is open (shared: the fleet's probes are elsewhere)";
                    return 0;
                }
                right = 1;
            }
        }
        if (rsl__breaker_allow(g->u.breaker, now, permit)) {
            return 1;
        }
        if (right) {
            rsl__fleet_give_right(f);
        }
        switch (rsl__breaker_state_get(g->u.breaker)) {
        case RSL_BREAKER_HALF_OPEN:
            *why = "is half_open with every probe slot taken";
            break;
        case RSL_BREAKER_FORCED_OPEN:
            *why = "is forced open";
            break;
        default:
            *why = "is open";
        }
        return 0;
    }
    }
    *why = "is of an unknown kind";
    return 0;
}

void rsl__guard_release(rsl__guard *g, rsl__permit *permit, int verdict, int64_t now,
                        rsl_outcome outcome, int status, int64_t latency_ns) {
    if (g->kind == RSL_GUARD_BULKHEAD) {
        rsl__bulkhead_release(g->u.bulkhead);
    } else if (g->kind == RSL_GUARD_ADAPTIVE) {
        if (!verdict || outcome == RSL_OUTCOME_CANCELED) {
            rsl__adaptive_leave(g->u.adaptive);
        } else {
            /* A drop: the upstream saying "too much" (a timeout, a refused connection, a
             * 429 or a 503).  Any other answer is a latency sample. */
            int drop = outcome == RSL_OUTCOME_TIMEOUT || outcome == RSL_OUTCOME_CONNECT ||
                       status == 429 || status == 503;
            rsl__adaptive_release(g->u.adaptive, now, latency_ns, drop);
        }
    } else if (g->kind == RSL_GUARD_THROTTLE) {
        /* An accept: the upstream served it (a 4xx is its answer too).  An overload sign
         * (a 5xx, a timeout, a refused connection) or no verdict is none. */
        if (verdict && permit->counted &&
            (outcome == RSL_OUTCOME_OK || outcome == RSL_OUTCOME_4XX)) {
            rsl__throttle_accept(g->u.throttle, permit->start, permit->cycle);
        }
    } else if (g->kind == RSL_GUARD_BREAKER) {
        if (verdict) {
            int v = rsl__breaker_record(g->u.breaker, permit, now, outcome, latency_ns);
            rsl__fleet *f;
            if (v >= 0 && (f = rsl__guard_fleet(g))) {
                if (permit->counted) {
                    rsl__fleet_count(f, v & RSL_BREAKER_FAILED, v & RSL_BREAKER_SLOW);
                } else if (permit->probe) {
                    rsl__fleet_probe_done(f, v != 0);
                }
            }
        } else {
            rsl__breaker_release(g->u.breaker, permit);
        }
    }
}

void rsl__guard_sync_apply(rsl__guard *g, int64_t now) {
    rsl__fleet *f = rsl__guard_fleet(g);
    uint64_t seen = atomic_load_explicit(&g->fleet_seen, memory_order_relaxed);
    if (!f || rsl__fleet_pub(f) == seen) {
        return;
    }
    rsl__fleet_verdict v;
    rsl__fleet_verdict_get(f, &v);
    if (!atomic_compare_exchange_strong_explicit(&g->fleet_seen, &seen, v.pub,
                                                 memory_order_relaxed, memory_order_relaxed)) {
        return; /* another thread applies it */
    }
    rsl__breaker *b = g->u.breaker;
    if (v.state == RSL_FLEET_OPEN) {
        rsl__breaker_fleet_open(b, now, v.remaining, v.level, v.reason);
    } else if (v.state == RSL_FLEET_HALF_OPEN) {
        /* Probing: a breaker already open or probing keeps its probes' cycle. */
        if (rsl__breaker_state_get(b) == RSL_BREAKER_CLOSED) {
            rsl__breaker_fleet_open(b, now, 0, v.level, v.reason);
        }
    } else if (v.closing) {
        rsl__breaker_fleet_close(b, now, v.reason);
    }
}

const char *rsl__override_name(rsl_override a) {
    switch (a) {
    case RSL_OVERRIDE_AUTO:
        return "auto";
    case RSL_OVERRIDE_FORCE_OPEN:
        return "force_open";
    case RSL_OVERRIDE_DISABLE:
        return "disable";
    case RSL_OVERRIDE_RESET:
        return "reset";
    }
    return "unknown";
}

void rsl__guard_override(rsl__guard *g, rsl_override a, int64_t now) {
    if (g->keyed && g->kind == RSL_GUARD_BREAKER) {
        /* The parent's breaker takes no calls: its state is the override alone.  Lifting
         * one closes it (the keys keep their own states); a reset forgets every key. */
        if (a == RSL_OVERRIDE_FORCE_OPEN) {
            rsl__breaker_force_open(g->u.breaker, now);
        } else if (a == RSL_OVERRIDE_DISABLE) {
            rsl__breaker_disable(g->u.breaker, now);
        } else {
            rsl__breaker_reset(g->u.breaker, now);
        }
        if (a == RSL_OVERRIDE_RESET) {
            rsl__keyed_clear(g->keyed);
        }
        return;
    }
    if (g->kind == RSL_GUARD_BREAKER) {
        rsl__breaker *b = g->u.breaker;
        switch (a) {
        case RSL_OVERRIDE_FORCE_OPEN:
            rsl__breaker_force_open(b, now);
            break;
        case RSL_OVERRIDE_DISABLE:
            rsl__breaker_disable(b, now);
            break;
        case RSL_OVERRIDE_AUTO:
            rsl__breaker_auto(b, now);
            break;
        case RSL_OVERRIDE_RESET:
            rsl__breaker_reset(b, now);
            break;
        }
        return;
    }
    atomic_store_explicit(&g->override, a == RSL_OVERRIDE_RESET ? RSL_OVERRIDE_AUTO : (int)a,
                          memory_order_relaxed);
    if (a == RSL_OVERRIDE_RESET && g->keyed) {
        rsl__keyed_clear(g->keyed);
    } else if (a == RSL_OVERRIDE_RESET && g->kind == RSL_GUARD_LIMITER) {
        rsl__limiter_reset(g->u.limiter);
    } else if (a == RSL_OVERRIDE_RESET && g->kind == RSL_GUARD_ADAPTIVE) {
        rsl__adaptive_reset(g->u.adaptive);
    }
}

rsl_override rsl__guard_override_get(const rsl__guard *g) {
    if (g->kind == RSL_GUARD_BREAKER) {
        rsl__breaker_state s = rsl__breaker_state_get(g->u.breaker);
        return s == RSL_BREAKER_FORCED_OPEN ? RSL_OVERRIDE_FORCE_OPEN
               : s == RSL_BREAKER_DISABLED  ? RSL_OVERRIDE_DISABLE
                                            : RSL_OVERRIDE_AUTO;
    }
    return (rsl_override)atomic_load_explicit(&g->override, memory_order_relaxed);
}

static rsl__guard *wrap(rsl__guard_kind kind, void *obj) {
    if (!obj) {
        return NULL;
    }
    rsl__guard *g = calloc(1, sizeof(*g));
    if (!g) {
        return NULL;
    }
    g->kind = kind;
    atomic_init(&g->refs, 1);
    for (int i = 0; i < RSL_PRIORITIES; i++) {
        atomic_init(&g->usable[i], 1000);
    }
    return g;
}

int rsl__guard_reserve_set(rsl__guard *g, const int *usable) {
    int changed = 0;
    for (int i = 0; i < RSL_PRIORITIES; i++) {
        int u = usable ? usable[i] : 1000;
        u = u < 0 ? 0 : u > 1000 ? 1000 : u;
        if (atomic_exchange_explicit(&g->usable[i], u, memory_order_relaxed) != u) {
            changed = 1;
        }
    }
    return changed;
}

int rsl__guard_usable(const rsl__guard *g, int p) {
    return atomic_load_explicit(&g->usable[p], memory_order_relaxed);
}

uint64_t rsl__guard_shed(const rsl__guard *g, int p) {
    return atomic_load_explicit(&g->shed[p], memory_order_relaxed);
}

int rsl__guard_has_reserve(const rsl__guard *g) {
    for (int i = 0; i < RSL_PRIORITIES; i++) {
        if (atomic_load_explicit(&g->usable[i], memory_order_relaxed) < 1000) {
            return 1;
        }
    }
    return 0;
}

rsl__guard *rsl__guard_new_breaker(const char *name, const rsl__breaker_conf *c) {
    rsl__breaker *b = rsl__breaker_new(name, c);
    rsl__guard *g = wrap(RSL_GUARD_BREAKER, b);
    if (!g) {
        rsl__breaker_free(b);
        return NULL;
    }
    g->u.breaker = b;
    g->name = rsl__breaker_name(b);
    return g;
}

rsl__guard *rsl__guard_new_limiter(const char *name, const rsl__limiter_conf *c) {
    rsl__limiter *l = rsl__limiter_new(name, c);
    rsl__guard *g = wrap(RSL_GUARD_LIMITER, l);
    if (!g) {
        rsl__limiter_free(l);
        return NULL;
    }
    g->u.limiter = l;
    g->name = rsl__limiter_name(l);
    return g;
}

rsl__guard *rsl__guard_new_bulkhead(const char *name, int64_t max) {
    rsl__bulkhead *b = rsl__bulkhead_new(name, max);
    rsl__guard *g = wrap(RSL_GUARD_BULKHEAD, b);
    if (!g) {
        rsl__bulkhead_free(b);
        return NULL;
    }
    g->u.bulkhead = b;
    g->name = rsl__bulkhead_name(b);
    return g;
}

rsl__guard *rsl__guard_new_throttle(const char *name, const rsl__throttle_conf *c) {
    rsl__throttle *t = rsl__throttle_new(name, c);
    rsl__guard *g = wrap(RSL_GUARD_THROTTLE, t);
    if (!g) {
        rsl__throttle_free(t);
        return NULL;
    }
    g->u.throttle = t;
    g->name = rsl__throttle_name(t);
    return g;
}

rsl__guard *rsl__guard_new_adaptive(const char *name, const rsl__adaptive_conf *c) {
    rsl__adaptive *a = rsl__adaptive_new(name, c);
    rsl__guard *g = wrap(RSL_GUARD_ADAPTIVE, a);
    if (!g) {
        rsl__adaptive_free(a);
        return NULL;
    }
    g->u.adaptive = a;
    g->name = rsl__adaptive_name(a);
    return g;
}

void rsl__guard_ref(rsl__guard *g) {
    atomic_fetch_add_explicit(&g->refs, 1, memory_order_relaxed);
}

void rsl__guard_unref(rsl__guard *g) {
    if (!g) {
        return;
    }
    /* acq_rel: the last holder must see every other holder's writes before freeing. */
    if (atomic_fetch_sub_explicit(&g->refs, 1, memory_order_acq_rel) != 1) {
        return;
    }
    rsl__keyed_free(g->keyed); /* drops its children (those calls hold live on) */
    switch (g->kind) {
    case RSL_GUARD_BREAKER:
        rsl__breaker_free(g->u.breaker);
        break;
    case RSL_GUARD_LIMITER:
        if (g->own_lease) {
            rsl__lease_unref(rsl__guard_lease(g));
        }
        rsl__limiter_free(g->u.limiter);
        break;
    case RSL_GUARD_BULKHEAD:
        rsl__bulkhead_free(g->u.bulkhead);
        break;
    case RSL_GUARD_THROTTLE:
        rsl__throttle_free(g->u.throttle);
        break;
    case RSL_GUARD_ADAPTIVE:
        rsl__adaptive_free(g->u.adaptive);
        break;
    }
    free(g);
}

rsl__guards *rsl__guards_new(void) {
    return calloc(1, sizeof(rsl__guards));
}

void rsl__guards_free(rsl__guards *r) {
    if (!r) {
        return;
    }
    for (size_t i = 0; i < r->n; i++) {
        rsl__guard_unref(r->v[i]);
    }
    free(r->v);
    free(r);
}

/* Index of `name`, or of where it would go; *found says which. */
static size_t search(const rsl__guards *r, const char *name, int *found) {
    size_t lo = 0, hi = r->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(r->v[mid]->name, name);
        if (c == 0) {
            *found = 1;
            return mid;
        }
        if (c < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    *found = 0;
    return lo;
}

rsl__guard *rsl__guards_find(const rsl__guards *r, const char *name) {
    int found;
    size_t i = search(r, name, &found);
    return found ? r->v[i] : NULL;
}

int rsl__guards_add(rsl__guards *r, rsl__guard *g) {
    if (!g || !g->name) {
        return RSL_EINVAL;
    }
    int found;
    size_t i = search(r, g->name, &found);
    if (found) {
        return RSL_EEXIST;
    }
    if (r->n == r->cap) {
        /* Doubling from 8: a policy directory declares tens of guards, rarely thousands. */
        size_t cap = r->cap ? r->cap * 2 : 8;
        rsl__guard **v = realloc(r->v, cap * sizeof(*v));
        if (!v) {
            return RSL_ENOMEM;
        }
        r->v = v;
        r->cap = cap;
    }
    memmove(&r->v[i + 1], &r->v[i], (r->n - i) * sizeof(*r->v));
    r->v[i] = g;
    r->n++;
    rsl__guard_ref(g);
    return 0;
}

void rsl__guards_remove(rsl__guards *r, const char *name) {
    int found;
    size_t i = search(r, name, &found);
    if (!found) {
        return;
    }
    rsl__guard *g = r->v[i];
    memmove(&r->v[i], &r->v[i + 1], (r->n - i - 1) * sizeof(*r->v));
    r->n--;
    rsl__guard_unref(g);
}

size_t rsl__guards_count(const rsl__guards *r) {
    return r->n;
}

rsl__guard *rsl__guards_at(const rsl__guards *r, size_t i) {
    return i < r->n ? r->v[i] : NULL;
}
