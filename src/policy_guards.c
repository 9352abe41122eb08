/*
 * policy_guards -- the guard declarations of a load applied to the runtime's registry:
 * each is built fresh (which validates its settings) or matched by name and kind; only
 * once the whole directory loaded is the registry changed: new guards added (undone if
 * adding fails), kind changes replaced, same-kind guards reconfigured in place (their
 * state kept unless their window changed), undeclared ones removed.  The load report says
 * which.
 *
 * Layer: the policies, above the guards.  The loader's thread; the registry changes under
 * its lock (rsl__gen_opts.registry_lock).
 */
#include "policy_int.h"

#include "clock.h"
#include "window.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* [-0, +0] The guard declaration at the top of the stack. */
void rsl__read_guard(lua_State *L, loader *ld, gdecl *d) {
    d->name = rsl__decl_str(L, "name", NULL);
    d->file = rsl__decl_str(L, "file", NULL);
    d->line = (int)rsl__decl_num(L, "line");
    if (!d->name || !d->file) {
        ld->oom = 1;
    }
    if (rsl__decl_is(L, "kind", "breaker")) {
        d->kind = RSL_GUARD_BREAKER;
        rsl__breaker_conf_default(&d->b);
        d->b.window_ns = (int64_t)rsl__decl_num(L, "window_ns");
        d->b.buckets = (int)rsl__decl_num(L, "buckets");
        int stripes = ld->o->stripes;
        d->b.stripes = stripes < 1                        ? 1
                       : stripes > RSL_WINDOW_MAX_STRIPES ? RSL_WINDOW_MAX_STRIPES
                                                          : stripes;
        d->b.min_calls = (int64_t)rsl__decl_num(L, "min_calls");
        d->b.failure_rate = rsl__decl_num(L, "failure_rate");
        d->b.slow_call_ns = (int64_t)rsl__decl_num(L, "slow_call_ns");
        d->b.slow_rate = rsl__decl_num(L, "slow_rate");
        d->b.open_for_ns = (int64_t)rsl__decl_num(L, "open_for_ns");
        d->b.backoff_factor = rsl__decl_num(L, "backoff_factor");
        d->b.backoff_max_ns = (int64_t)rsl__decl_num(L, "backoff_max_ns");
        d->b.jitter = rsl__decl_num(L, "jitter");
        d->b.probes = (int)rsl__decl_num(L, "probes");
        d->b.count_mask = (uint32_t)rsl__decl_num(L, "count_mask");
        d->b.trip.periods = (int)rsl__decl_num(L, "trip_periods");
        if (d->b.trip.periods > 0) {
            d->b.trip.period_ns = (int64_t)rsl__decl_num(L, "trip_period_ns");
            d->b.trip.window_ns = (int64_t)rsl__decl_num(L, "trip_window_ns");
            d->b.trip.short_window_ns = (int64_t)rsl__decl_num(L, "trip_short_window_ns");
            d->b.trip.failure_rate = rsl__decl_num(L, "trip_failure_rate");
            d->b.trip.q = rsl__decl_num(L, "trip_q");
            d->b.trip.over_ns = (int64_t)rsl__decl_num(L, "trip_over_ns");
            d->b.trip.factor = rsl__decl_num(L, "trip_factor");
            d->b.trip.max_ns = (int64_t)rsl__decl_num(L, "trip_max_ns");
        }
        d->shared = rsl__decl_num(L, "shared_quorum") > 0;
        if (d->shared) {
            const rsl__breaker_conf *b = &d->b;
            d->fc = (rsl__fleet_conf){
                .quorum = (int)rsl__decl_num(L, "shared_quorum"),
                .flush_ns = (int64_t)rsl__decl_num(L, "shared_flush_ns"),
                .window_ns = b->window_ns,
                .buckets = b->buckets,
                .min_calls = b->min_calls,
                .failure_rate = b->failure_rate,
                .slow_rate = b->slow_rate,
                .open_for_ns = b->open_for_ns,
                .backoff_factor = b->backoff_factor,
                .backoff_max_ns = b->backoff_max_ns,
                .jitter = b->jitter,
                .probes = b->probes,
            };
        }
    } else if (rsl__decl_is(L, "kind", "limiter")) {
        d->kind = RSL_GUARD_LIMITER;
        d->l.rate = rsl__decl_num(L, "rate");
        d->l.per_ns = (int64_t)rsl__decl_num(L, "per_ns");
        d->l.burst = rsl__decl_num(L, "burst");
        d->global = rsl__decl_num(L, "global") > 0;
        if (d->global) {
            int od = rsl__decl_is(L, "on_redis_down", "open")     ? RSL_LEASE_OPEN
                     : rsl__decl_is(L, "on_redis_down", "closed") ? RSL_LEASE_CLOSED
                                                                  : RSL_LEASE_LOCAL;
            d->lc = (rsl__lease_conf){d->l.rate, d->l.per_ns, d->l.burst,
                                      (int64_t)rsl__decl_num(L, "lease"), od};
        }
    } else if (rsl__decl_is(L, "kind", "throttle")) {
        d->kind = RSL_GUARD_THROTTLE;
        d->t.k = rsl__decl_num(L, "k");
        d->t.window_ns = (int64_t)rsl__decl_num(L, "window_ns");
        d->t.min_requests = (int64_t)rsl__decl_num(L, "min_requests");
        d->t.max_p = rsl__decl_num(L, "max_p");
    } else if (rsl__decl_is(L, "kind", "adaptive")) {
        d->kind = RSL_GUARD_ADAPTIVE;
        d->a.min = (int64_t)rsl__decl_num(L, "min");
        d->a.max = (int64_t)rsl__decl_num(L, "max");
        d->a.initial = (int64_t)rsl__decl_num(L, "initial");
        d->a.tolerance = rsl__decl_num(L, "tolerance");
        d->a.smoothing = rsl__decl_num(L, "smoothing");
        d->a.backoff = rsl__decl_num(L, "backoff");
        d->a.queue = rsl__decl_num(L, "queue");
        d->a.window_ns = (int64_t)rsl__decl_num(L, "window_ns");
        d->a.min_samples = (int64_t)rsl__decl_num(L, "min_samples");
    } else {
        d->kind = RSL_GUARD_BULKHEAD;
        d->max = (int64_t)rsl__decl_num(L, "max");
    }
    /* `key` (a breaker or a local limiter): one guard per key value (keyed.h). */
    d->key = rsl__decl_str(L, "key", NULL);
    d->kc.max_keys = (int64_t)rsl__decl_num(L, "max_keys");
    d->kc.top_k = (int)rsl__decl_num(L, "top_k");
    /* The DSL writes usable_0 (1000) .. usable_7 only for a guard with a reserve. */
    int reserved = rsl__decl_num(L, "usable_0") > 0;
    for (int p = 0; p < RSL_PRIORITIES; p++) {
        char k[16];
        snprintf(k, sizeof(k), "usable_%d", p);
        d->usable[p] = reserved ? (int)rsl__decl_num(L, k) : 1000;
    }
}

static rsl__guard *guard_new(const gdecl *d) {
    switch (d->kind) {
    case RSL_GUARD_BREAKER:
        return rsl__guard_new_breaker(d->name, &d->b);
    case RSL_GUARD_LIMITER:
        return rsl__guard_new_limiter(d->name, &d->l);
    case RSL_GUARD_BULKHEAD:
        return rsl__guard_new_bulkhead(d->name, d->max);
    case RSL_GUARD_THROTTLE:
        return rsl__guard_new_throttle(d->name, &d->t);
    case RSL_GUARD_ADAPTIVE:
        return rsl__guard_new_adaptive(d->name, &d->a);
    }
    return NULL;
}

/* Builds (which validates) or finds every declared guard; changes nothing in `reg`.
 * g->guards[i] is decls[i]'s guard: both sorted by name. */
int rsl__plan_guards(loader *ld, rsl__guards *reg) {
    rsl__gen *g = ld->g;
    for (int i = 0; i < ld->ndecls; i++) {
        gdecl *d = &ld->decls[i];
        rsl__guard *fresh = guard_new(d);
        if (!fresh) {
            rsl__lines_add(&ld->errs, "%s:%d: %s \"%s\": settings refused (or out of memory)",
                           d->file, d->line, rsl__guard_kind_name(d->kind), d->name);
            return -1;
        }
        rsl__guard *old = rsl__guards_find(reg, d->name);
        rsl__guard_reserve_set(fresh, d->usable); /* a fresh guard is nobody's yet */
        if (d->global && ld->o->leases) {
            d->lease = rsl__leases_get(ld->o->leases, d->name, &d->lc);
            if (!d->lease) {
                rsl__guard_unref(fresh);
                rsl__lines_add(&ld->errs, "%s:%d: limiter \"%s\": out of memory for its lease",
                               d->file, d->line, d->name);
                return -1;
            }
            atomic_store(&fresh->lease, d->lease);
        }
        if (d->shared && ld->o->fleets) {
            d->fleet = rsl__fleets_get(ld->o->fleets, d->name, &d->fc);
            if (!d->fleet) {
                rsl__guard_unref(fresh);
                rsl__lines_add(&ld->errs, "%s:%d: breaker \"%s\": out of memory for its fleet",
                               d->file, d->line, d->name);
                return -1;
            }
            atomic_store(&fresh->fleet, d->fleet);
        }
        /* After the lease: a keyed global limiter's children (its overflow child from now)
         * take leases of their own from it. */
        char kerr[512];
        if (d->key && rsl__keyed_attach(fresh, d->key, &d->kc, kerr, sizeof(kerr)) < 0) {
            rsl__guard_unref(fresh);
            rsl__lines_add(&ld->errs, "%s:%d: %s \"%s\": %s", d->file, d->line,
                           rsl__guard_kind_name(d->kind), d->name, kerr);
            return -1;
        }
        /* Keyed or not, and on which template, is part of the kind: a change starts afresh. */
        int same_keys = old && (old->keyed ? rsl__keyed_compatible(old->keyed, d->key, &d->kc) &&
                                                 (rsl__guard_lease(old) != NULL) ==
                                                     (d->lease != NULL) /* children's leases */
                                           : d->key == NULL);
        if (old && old->kind == d->kind && same_keys) {
            rsl__guard_unref(fresh);
            rsl__guard_ref(old);
            g->guards[i] = old;
            d->plan = PLAN_SAME;
        } else {
            g->guards[i] = fresh;
            d->plan = old ? PLAN_REPLACE : PLAN_ADD;
        }
        g->nguards = i + 1;
    }
    return 0;
}

static int breaker_conf_eq(const rsl__breaker_conf *a, const rsl__breaker_conf *b) {
    return a->window_ns == b->window_ns && a->buckets == b->buckets && a->stripes == b->stripes &&
           a->min_calls == b->min_calls && a->failure_rate == b->failure_rate &&
           a->slow_call_ns == b->slow_call_ns && a->slow_rate == b->slow_rate &&
           a->open_for_ns == b->open_for_ns && a->backoff_factor == b->backoff_factor &&
           a->backoff_max_ns == b->backoff_max_ns && a->jitter == b->jitter &&
           a->probes == b->probes && a->count_mask == b->count_mask &&
           rsl__trip_conf_eq(&a->trip, &b->trip);
}

/* Applies the settings of a same-kind guard in place: 0 kept, 1 changed, 2 changed with its
 * state reset, negative on failure. */
static int reconfigure(const loader *ld, const gdecl *d, rsl__guard *g) {
    switch (d->kind) {
    case RSL_GUARD_BREAKER: {
        rsl__breaker_conf cur;
        rsl__breaker_conf_get(g->u.breaker, &cur);
        if (breaker_conf_eq(&cur, &d->b)) {
            return 0;
        }
        int rc = rsl__breaker_configure(g->u.breaker, &d->b);
        return rc < 0 ? rc : rc == 1 ? 2 : 1;
    }
    case RSL_GUARD_LIMITER: {
        rsl__limiter_conf cur;
        rsl__limiter_conf_get(g->u.limiter, &cur);
        if (cur.rate == d->l.rate && cur.per_ns == d->l.per_ns && cur.burst == d->l.burst) {
            return 0;
        }
        int64_t now = ld->o->clock ? ld->o->clock(ld->o->clock_ud) : rsl__clock_now();
        int rc = rsl__limiter_configure(g->u.limiter, &d->l, now);
        return rc < 0 ? rc : 1;
    }
    case RSL_GUARD_BULKHEAD:
        if (rsl__bulkhead_max(g->u.bulkhead) == d->max) {
            return 0;
        }
        return rsl__bulkhead_configure(g->u.bulkhead, d->max) < 0 ? RSL_EINVAL : 1;
    case RSL_GUARD_THROTTLE: {
        rsl__throttle_conf cur;
        rsl__throttle_conf_get(g->u.throttle, &cur);
        if (cur.k == d->t.k && cur.window_ns == d->t.window_ns / RSL_THROTTLE_BUCKETS *
                                                    RSL_THROTTLE_BUCKETS &&
            cur.min_requests == d->t.min_requests && cur.max_p == d->t.max_p) {
            return 0;
        }
        int reset = cur.window_ns != d->t.window_ns / RSL_THROTTLE_BUCKETS * RSL_THROTTLE_BUCKETS;
        return rsl__throttle_configure(g->u.throttle, &d->t) < 0 ? RSL_EINVAL : reset ? 2 : 1;
    }
    case RSL_GUARD_ADAPTIVE: {
        /* The learned limit is kept (clamped to a new [min, max]); `initial` is where a new
         * guard starts, so changing it alone changes nothing live. */
        rsl__adaptive_conf cur;
        rsl__adaptive_conf_get(g->u.adaptive, &cur);
        if (memcmp(&cur, &d->a, sizeof(cur)) == 0) {
            return 0;
        }
        return rsl__adaptive_configure(g->u.adaptive, &d->a) < 0 ? RSL_EINVAL : 1;
    }
    }
    return RSL_EINVAL;
}

char *rsl__lines_take(lines *l) {
    char *p = l->n ? l->p : NULL;
    if (!p) {
        free(l->p);
    }
    memset(l, 0, sizeof(*l));
    return p;
}

/* A new guard's lease or fleet may be one kept from an earlier declaration of the name
 * (the runtime's registries outlive guards): it takes the new settings. */
static void configure_shared(const gdecl *d) {
    if (d->lease) {
        rsl__lease_configure(d->lease, &d->lc);
    }
    if (d->fleet) {
        rsl__fleet_configure(d->fleet, &d->fc);
    }
}

/* Changes the registry to match the generation (see the file comment, step 4). */
int rsl__apply_guards(loader *ld, rsl__guards *reg, rsl__load_report *rep) {
    rsl__gen *g = ld->g;
    lines kept = {0}, changed = {0}, added = {0}, removed = {0}, reset = {0};
    int rc = 0;
    for (int i = 0; i < ld->ndecls; i++) {
        if (ld->decls[i].plan == PLAN_ADD && (rc = rsl__guards_add(reg, g->guards[i])) < 0) {
            for (int j = 0; j < i; j++) {
                if (ld->decls[j].plan == PLAN_ADD) {
                    rsl__guards_remove(reg, ld->decls[j].name);
                }
            }
            rsl__lines_add(&ld->errs, "%s: out of memory applying guards", ld->dir);
            return rc;
        }
    }
    /* From here nothing fails: a breaker that cannot get a new window keeps its old one. */
    for (int i = 0; i < ld->ndecls; i++) {
        gdecl *d = &ld->decls[i];
        switch (d->plan) {
        case PLAN_ADD:
            configure_shared(d);
            rsl__lines_add(&added, "%s", d->name);
            break;
        case PLAN_REPLACE:
            configure_shared(d);
            rsl__guards_remove(reg, d->name);
            rsl__guards_add(reg, g->guards[i]); /* cannot fail: a slot was just freed */
            rsl__lines_add(&changed, "%s", d->name);
            rsl__lines_add(&reset, "%s", d->name);
            break;
        case PLAN_SAME: {
            int r = reconfigure(ld, d, g->guards[i]);
            if (r >= 0 && rsl__guard_reserve_set(g->guards[i], d->usable) && r == 0) {
                r = 1; /* only its reserve changed */
            }
            if (r >= 0 && d->kind == RSL_GUARD_LIMITER) { /* its scope, or its lease's settings */
                rsl__guard *gg = g->guards[i];
                int moved = rsl__guard_lease(gg) != d->lease;
                int conf = d->lease && rsl__lease_configure(d->lease, &d->lc);
                atomic_store(&gg->lease, d->lease);
                r = r == 0 && (moved || conf) ? 1 : r;
            }
            if (r >= 0 && d->kind == RSL_GUARD_BREAKER) { /* shared or not, its settings */
                rsl__guard *gg = g->guards[i];
                int moved = rsl__guard_fleet(gg) != d->fleet;
                int conf = d->fleet && rsl__fleet_configure(d->fleet, &d->fc);
                atomic_store(&gg->fleet, d->fleet);
                r = r == 0 && (moved || conf) ? 1 : r;
            }
            if (r >= 0 && g->guards[i]->keyed) { /* the children follow (settings, lease's too), max_keys, top_k */
                int64_t now = ld->o->clock ? ld->o->clock(ld->o->clock_ud) : rsl__clock_now();
                int kr = rsl__keyed_configure(g->guards[i], &d->kc, r > 0, r == 2, now);
                r = kr > r ? kr : r;
            }
            if (r < 0) { /* out of memory for a new window: the old settings stay */
                rsl__lines_add(&ld->warnings,
                               "%s:%d: %s \"%s\": out of memory, kept its old settings", d->file,
                               d->line, rsl__guard_kind_name(d->kind), d->name);
            } else if (r == 0) {
                rsl__lines_add(&kept, "%s", d->name);
            } else {
                rsl__lines_add(&changed, "%s", d->name);
                if (r == 2) {
                    rsl__lines_add(&reset, "%s", d->name);
                }
            }
            break;
        }
        }
    }
    /* Guards nobody declares any more. */
    size_t n = rsl__guards_count(reg);
    char **gone = n ? calloc(n, sizeof(char *)) : NULL;
    size_t ngone = 0;
    for (size_t i = 0; gone && i < n; i++) {
        rsl__guard *r = rsl__guards_at(reg, i);
        if (!rsl__gen_guard(g, r->name)) {
            gone[ngone++] = strdup(r->name);
        }
    }
    for (size_t i = 0; i < ngone; i++) {
        if (gone[i]) {
            rsl__guards_remove(reg, gone[i]);
            rsl__lines_add(&removed, "%s", gone[i]);
            free(gone[i]);
        }
    }
    free(gone);
    if (rep) {
        rep->kept = rsl__lines_take(&kept);
        rep->changed = rsl__lines_take(&changed);
        rep->added = rsl__lines_take(&added);
        rep->removed = rsl__lines_take(&removed);
        rep->reset = rsl__lines_take(&reset);
    } else {
        free(kept.p);
        free(changed.p);
        free(added.p);
        free(removed.p);
        free(reset.p);
    }
    return rc;
}
