/*
 * gen -- a generation bound for running calls (gen.h).
 *
 * Layer: above the Lua binding and the policies, below the calls.  Any thread.
 */
#include "gen.h"

#include "keyed.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Atomic int rsl__genr_live;

void rsl__genr_ref(rsl__genr *G) {
    atomic_fetch_add_explicit(&G->refs, 1, memory_order_relaxed);
}

void rsl__genr_unref(rsl__genr *G) {
    if (!G || atomic_fetch_sub_explicit(&G->refs, 1, memory_order_acq_rel) != 1) {
        return;
    }
    atomic_fetch_sub_explicit(&rsl__genr_live, 1, memory_order_relaxed);
    if (G->api) {
        for (int i = 0; i < G->g->nstates; i++) {
            rsl__lapi_free(G->api[i]);
        }
        free(G->api);
    }
    if (G->budgets) {
        for (int i = 0; i < G->g->npolicies; i++) {
            free(G->budgets[i]);
        }
        free(G->budgets);
    }
    if (G->medians) {
        for (int i = 0; i < G->g->npolicies; i++) {
            free(G->medians[i]);
        }
        free(G->medians);
    }
    for (int i = 0; i < G->g->npolicies; i++) {
        rsl__pview_free(G->g->policies[i].stats);
        G->g->policies[i].stats = NULL;
    }
    rsl__gen_free(G->g);
    free(G);
}

void rsl__caches_free(rsl__caches *c) {
    for (int i = 0; i < c->n; i++) {
        free(c->v[i].name);
        rsl__cache_free(c->v[i].cache);
    }
    free(c->v);
    c->v = NULL;
    c->n = 0;
}

/* The cache for "policy/step", created on first use. Under the conf's lock. */
static rsl__cache *cache_for(rsl__caches *cs, const char *policy, const char *step,
                             int64_t max) {
    char name[512];
    snprintf(name, sizeof(name), "%s/%s", policy, step);
    for (int i = 0; i < cs->n; i++) {
        if (strcmp(cs->v[i].name, name) == 0) {
            rsl__cache_set_max(cs->v[i].cache, max);
            return cs->v[i].cache;
        }
    }
    void *p = realloc(cs->v, (size_t)(cs->n + 1) * sizeof(*cs->v));
    if (!p) {
        return NULL;
    }
    cs->v = p;
    rsl__cache *c = rsl__cache_new(max);
    char *n = strdup(name);
    if (!c || !n) {
        rsl__cache_free(c);
        free(n);
        return NULL;
    }
    cs->v[cs->n].name = n;
    cs->v[cs->n].cache = c;
    cs->n++;
    return c;
}

rsl__genr *rsl__genr_new(const rsl__genr_conf *conf, rsl__gen *g) {
    rsl__genr *G = calloc(1, sizeof(*G));
    if (!G) {
        rsl__gen_free(g);
        return NULL;
    }
    G->g = g;
    /* Breakers this load created get the transition hook before any call can reach them
     * (a generation is published under the runtime's lock); kept ones have it already. */
    for (int i = 0; conf->on_breaker && i < g->nguards; i++) {
        if (g->guards[i]->kind == RSL_GUARD_BREAKER &&
            !rsl__breaker_hooked(g->guards[i]->u.breaker)) {
            rsl__breaker_set_hook(g->guards[i]->u.breaker, conf->on_breaker, conf->on_breaker_ud);
        }
        if (g->guards[i]->kind == RSL_GUARD_BREAKER && g->guards[i]->keyed) { /* its keys' */
            rsl__keyed_set_hook(g->guards[i]->keyed, conf->on_breaker, conf->on_breaker_ud);
        }
    }
    atomic_init(&G->refs, 1);
    atomic_fetch_add_explicit(&rsl__genr_live, 1, memory_order_relaxed);
    G->api = calloc((size_t)g->nstates, sizeof(*G->api));
    G->budgets = calloc((size_t)(g->npolicies ? g->npolicies : 1), sizeof(*G->budgets));
    G->medians = calloc((size_t)(g->npolicies ? g->npolicies : 1), sizeof(*G->medians));
    if (!G->api || !G->budgets || !G->medians) {
        goto fail;
    }
    for (int i = 0; i < g->nstates; i++) {
        if (!(G->api[i] = rsl__lapi_new(&conf->lapi, g, i))) {
            goto fail;
        }
    }
    pthread_mutex_lock(conf->lock);
    for (int i = 0; i < g->npolicies; i++) {
        rsl__policy *p = &g->policies[i];
        G->budgets[i] = calloc((size_t)(p->nsteps ? p->nsteps : 1), sizeof(rsl__budget));
        G->medians[i] = calloc((size_t)(p->nsteps ? p->nsteps : 1), sizeof(rsl__median));
        if (!G->budgets[i] || !G->medians[i]) {
            pthread_mutex_unlock(conf->lock);
            goto fail;
        }
        const char **names = calloc((size_t)(p->nsteps ? p->nsteps : 1), sizeof(*names));
        if (!names) {
            pthread_mutex_unlock(conf->lock);
            goto fail;
        }
        for (int j = 0; j < p->nsteps; j++) {
            rsl__step *s = &p->steps[j];
            if (s->kind == RSL_STEP_LOCAL_CACHE) {
                s->u.cache.cache =
                    cache_for(conf->caches, p->name, s->name, s->u.cache.max_entries);
            }
            names[j] = s->name;
        }
        p->stats = rsl__metrics_view(conf->metrics, p->name, names, p->nsteps);
        free(names);
        if (!p->stats) {
            pthread_mutex_unlock(conf->lock);
            goto fail;
        }
    }
    pthread_mutex_unlock(conf->lock);
    return G;
fail:
    rsl__genr_unref(G);
    return NULL;
}
