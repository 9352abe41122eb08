/*
 * inspect -- what the runtime shows of itself: rsl_describe_json (the loaded policies),
 * rsl_state_json (generations, reloads, every guard's state), rsl_metrics_text (the
 * Prometheus exposition) and rsl_check (load a directory without running it).
 *
 * Layer: the runtime (runtime.h).  Any thread: it takes the runtime's lock for its
 * counters and the registry's lock for the guards, never both at once.
 */
#include "runtime.h"

#include "clock.h"
#include "keyed.h"
#include "steps.h"
#include "trip.h"
#include "window.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- introspection -------------------------------------------------------------------- */

char *rsl_describe_json(rsl_runtime *rt) {
    rsl__genr *G = rt ? rsl__rt_current(rt) : NULL;
    if (!G) {
        return NULL;
    }
    json_t *j = rsl__gen_describe(G->g);
    char *s = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9)) : NULL;
    json_decref(j);
    rsl__genr_unref(G);
    return s;
}

/* A guard shared through Redis (a global limiter's lease, a shared breaker's fleet): 1 with
 * its mode's name and its Redis errors, else 0. */
static int shared_of(rsl__guard *g, const char **mode, uint64_t *errors) {
    if (rsl__guard_lease(g)) {
        rsl__lease_stats ls;
        rsl__lease_stats_get(rsl__guard_lease(g), &ls);
        *mode = rsl__lease_mode_name(ls.mode);
        *errors = ls.errors;
        return 1;
    }
    if (g->kind == RSL_GUARD_BREAKER && rsl__guard_fleet(g)) {
        rsl__fleet_stats fs;
        rsl__fleet_stats_get(rsl__guard_fleet(g), &fs);
        *mode = rsl__fleet_mode_name(fs.mode);
        *errors = fs.errors;
        return 1;
    }
    return 0;
}

/* A keyed guard's table: its bound, its keys, and the top_k keys by calls. */
static void keyed_state(json_t *o, rsl__guard *g, int64_t now) {
    rsl__keyed_stats *st = rsl__keyed_stats_get(g, now);
    if (!st) {
        return;
    }
    json_object_set_new(o, "key", json_string(rsl__keyed_template(g->keyed)));
    json_object_set_new(o, "max_keys", json_integer((json_int_t)st->conf.max_keys));
    json_object_set_new(o, "top_k", json_integer(st->conf.top_k));
    json_object_set_new(o, "keys", json_integer((json_int_t)st->keys));
    json_object_set_new(o, "evictions", json_integer((json_int_t)st->evictions));
    json_object_set_new(o, "overflow_calls", json_integer((json_int_t)st->overflow_calls));
    json_t *top = json_array();
    for (int i = 0; i <= st->ntop; i++) { /* the top keys, then "other" */
        const rsl__keyed_item *it = i < st->ntop ? &st->top[i] : &st->rest;
        json_t *e = json_object();
        json_object_set_new(e, "key", json_stringn(it->key, it->klen));
        json_object_set_new(e, "calls", json_integer((json_int_t)it->calls));
        json_object_set_new(e, "rejections", json_integer((json_int_t)it->rejections));
        if (i < st->ntop && it->state >= 0) {
            json_object_set_new(
                e, "state", json_string(rsl__breaker_state_name((rsl__breaker_state)it->state)));
        } else if (i < st->ntop) {
            json_object_set_new(e, "tokens", json_real(it->tokens));
        }
        if (i < st->ntop) {
            json_array_append_new(top, e);
        } else {
            json_object_set_new(o, "other", e);
        }
    }
    json_object_set_new(o, "top", top);
    free(st);
}

static json_t *guard_state(rsl__guard *g, int64_t now) {
    json_t *o = json_object();
    json_object_set_new(o, "kind", json_string(rsl__guard_kind_name(g->kind)));
    rsl_override ov = rsl__guard_override_get(g);
    if (ov != RSL_OVERRIDE_AUTO) {
        json_object_set_new(o, "override", json_string(rsl__override_name(ov)));
    }
    switch (g->kind) {
    case RSL_GUARD_BREAKER: {
        rsl__breaker *b = g->u.breaker;
        rsl__guard_sync(g, now);
        if (rsl__guard_fleet(g)) {
            rsl__fleet_stats fs;
            rsl__fleet_stats_get(rsl__guard_fleet(g), &fs);
            json_object_set_new(
                o, "shared",
                json_pack("{s:s,s:s,s:i,s:I,s:I,s:I,s:i,s:I,s:I}", "mode",
                          rsl__fleet_mode_name(fs.mode), "fleet_state",
                          rsl__fleet_state_name(fs.state), "quorum", fs.quorum, "calls",
                          (json_int_t)fs.calls, "failures", (json_int_t)fs.failures,
                          "failing_instances", (json_int_t)fs.instances, "probe_leases",
                          fs.rights, "flushes", (json_int_t)fs.flushes, "redis_errors",
                          (json_int_t)fs.errors));
        }
        json_object_set_new(o, "state",
                            json_string(rsl__breaker_state_name(rsl__breaker_state_at(b, now))));
        json_object_set_new(o, "failure_rate", json_real(rsl__breaker_failure_rate(b, now)));
        json_object_set_new(o, "slow_rate", json_real(rsl__breaker_slow_rate(b, now)));
        json_object_set_new(o, "calls", json_integer(rsl__breaker_calls(b, now)));
        json_object_set_new(o, "p50_ms", json_real((double)rsl__breaker_latency(b, now, 0.5) / 1e6));
        json_object_set_new(o, "p90_ms", json_real((double)rsl__breaker_latency(b, now, 0.9) / 1e6));
        json_object_set_new(o, "p99_ms", json_real((double)rsl__breaker_latency(b, now, 0.99) / 1e6));
        json_object_set_new(o, "open_remaining_ms",
                            json_real((double)rsl__breaker_open_remaining(b, now) / 1e6));
        json_object_set_new(o, "backoff_level", json_integer(rsl__breaker_level(b)));
        json_object_set_new(o, "probes_inflight", json_integer(rsl__breaker_probes_inflight(b)));
        json_object_set_new(o, "rejections", json_integer((json_int_t)rsl__breaker_rejections(b)));
        const rsl__trip *t = rsl__breaker_trip(b);
        if (t) {
            json_object_set_new(
                o, "trip",
                json_pack("{s:f,s:i,s:f}", "threshold_ms", (double)rsl__trip_threshold(t) / 1e6,
                          "streak", rsl__trip_streak(t), "window_ms",
                          (double)rsl__trip_window(t) / 1e6));
        }
        break;
    }
    case RSL_GUARD_LIMITER:
        if (rsl__guard_lease(g)) { /* scope = "global" */
            rsl__lease_stats ls;
            rsl__lease_stats_get(rsl__guard_lease(g), &ls);
            json_object_set_new(o, "scope", json_string("global"));
            json_object_set_new(o, "mode", json_string(rsl__lease_mode_name(ls.mode)));
            if (!g->keyed) { /* keyed: each key has its pool (top[].tokens) and instances */
                json_object_set_new(o, "pool", json_integer(ls.pool));
                json_object_set_new(o, "instances", json_integer(ls.instances));
            }
            json_object_set_new(o, "refills", json_integer((json_int_t)ls.refills));
            json_object_set_new(o, "granted", json_integer((json_int_t)ls.granted));
            json_object_set_new(o, "redis_errors", json_integer((json_int_t)ls.errors));
            json_object_set_new(o, "rejections", json_integer((json_int_t)ls.rejections));
            break;
        }
        json_object_set_new(o, "tokens", json_real(rsl__limiter_tokens(g->u.limiter, now)));
        json_object_set_new(o, "rejections",
                            json_integer((json_int_t)rsl__limiter_rejections(g->u.limiter)));
        break;
    case RSL_GUARD_BULKHEAD:
        json_object_set_new(o, "inflight", json_integer(rsl__bulkhead_inflight(g->u.bulkhead)));
        json_object_set_new(o, "max", json_integer(rsl__bulkhead_max(g->u.bulkhead)));
        json_object_set_new(o, "load", json_real(rsl__bulkhead_load(g->u.bulkhead)));
        json_object_set_new(o, "rejections",
                            json_integer((json_int_t)rsl__bulkhead_rejections(g->u.bulkhead)));
        break;
    case RSL_GUARD_THROTTLE: {
        int64_t req, acc;
        rsl__throttle_counts(g->u.throttle, now, &req, &acc);
        json_object_set_new(o, "requests", json_integer(req));
        json_object_set_new(o, "accepts", json_integer(acc));
        json_object_set_new(o, "p", json_real(rsl__throttle_p(g->u.throttle, now)));
        json_object_set_new(o, "rejections",
                            json_integer((json_int_t)rsl__throttle_rejections(g->u.throttle)));
        break;
    }
    case RSL_GUARD_ADAPTIVE: {
        rsl__adaptive_stats st;
        rsl__adaptive_stats_get(g->u.adaptive, &st);
        json_object_set_new(o, "limit", json_integer(rsl__adaptive_limit(g->u.adaptive)));
        json_object_set_new(o, "inflight", json_integer(rsl__adaptive_inflight(g->u.adaptive)));
        json_object_set_new(o, "estimate", json_real(st.est));
        json_object_set_new(o, "baseline_ms", json_real((double)st.baseline_ns / 1e6));
        json_object_set_new(o, "rtt_ms", json_real((double)st.rtt_ns / 1e6));
        json_object_set_new(o, "windows", json_integer((json_int_t)st.windows));
        json_object_set_new(o, "drops", json_integer((json_int_t)st.drops));
        json_object_set_new(o, "rejections", json_integer((json_int_t)st.rejections));
        break;
    }
    }
    if (g->keyed) {
        keyed_state(o, g, now);
    }
    if (rsl__guard_has_reserve(g)) {
        /* Per priority: the share it may fill, and the calls shed for the reserve. */
        json_t *usable = json_array(), *shed = json_array();
        for (int p = 0; p < RSL_PRIORITIES; p++) {
            json_array_append_new(
                usable, json_real(rsl__guard_usable(g, p) / 1e3));
            json_array_append_new(shed, json_integer((json_int_t)rsl__guard_shed(g, p)));
        }
        json_object_set_new(o, "usable", usable);
        json_object_set_new(o, "shed", shed);
    }
    return o;
}

char *rsl_state_json(rsl_runtime *rt) {
    if (!rt) {
        return NULL;
    }
    json_t *root = json_object();
    json_t *guards = json_object();
    int64_t now = rsl__rt_now(rt);
    pthread_mutex_lock(&rt->lock);
    json_object_set_new(root, "generation", json_integer((json_int_t)rt->gen_number));
    /* A copy: the record is replaced (and freed) by the next reload. */
    json_object_set_new(root, "last_reload",
                        rt->last_reload ? json_deep_copy(rt->last_reload) : json_null());
    json_t *reloads = json_object();
    json_object_set_new(reloads, "ok", json_integer((json_int_t)rt->reloads_ok));
    json_object_set_new(reloads, "failed", json_integer((json_int_t)rt->reloads_failed));
    json_object_set_new(root, "reloads", reloads);
    json_t *shed = json_array();
    for (int p = 0; p < RSL_PRIORITIES; p++) {
        json_array_append_new(shed, json_integer((json_int_t)rsl__load_shed_count(rt->load, p)));
    }
    json_object_set_new(
        root, "load",
        json_pack("{s:f,s:f,s:o,s:I}", "pressure", rsl__load_pressure(rt->load), "level",
                  rsl__load_level(rt->load), "shed", shed, "deadline_shed",
                  (json_int_t)rsl__load_deadline_sheds(rt->load)));
    pthread_mutex_unlock(&rt->lock);
    /* The registry lock, not rt->lock: walking every guard must not stall calls. */
    pthread_mutex_lock(&rt->reg_lock);
    for (size_t i = 0; i < rsl__guards_count(rt->guards); i++) {
        rsl__guard *g = rsl__guards_at(rt->guards, i);
        json_object_set_new(guards, g->name, guard_state(g, now));
    }
    pthread_mutex_unlock(&rt->reg_lock);
    json_object_set_new(root, "guards", guards);
    char *s = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    json_decref(root);
    return s;
}

static int metric_guard(rsl__buf *b, const char *name, const char *label, const char *guard,
                        const char *l2, const char *v2, const char *l3, const char *v3,
                        uint64_t value) {
    int rc = rsl__buf_append(b, name, strlen(name));
    rc |= rsl__buf_append(b, "{", 1);
    rc |= rsl__buf_append(b, label, strlen(label));
    rc |= rsl__buf_append(b, "=", 1);
    rc |= rsl__metrics_label(b, guard);
    if (l2) {
        rc |= rsl__buf_append(b, ",", 1);
        rc |= rsl__buf_append(b, l2, strlen(l2));
        rc |= rsl__buf_append(b, "=", 1);
        rc |= rsl__metrics_label(b, v2);
    }
    if (l3) {
        rc |= rsl__buf_append(b, ",", 1);
        rc |= rsl__buf_append(b, l3, strlen(l3));
        rc |= rsl__buf_append(b, "=", 1);
        rc |= rsl__metrics_label(b, v3);
    }
    char num[32];
    int n = snprintf(num, sizeof(num), "} %llu\n", (unsigned long long)value);
    rc |= rsl__buf_append(b, num, (size_t)n);
    return rc;
}

/* name{LABEL="guard",key="KEY"[,l3="v3"[,l4="v4"]]} value: a keyed guard's series. */
static int metric_key(rsl__buf *b, const char *name, const char *label, const char *guard,
                      const char *key, const char *l3, const char *v3, const char *l4,
                      const char *v4, uint64_t value) {
    int rc = rsl__buf_append(b, name, strlen(name));
    rc |= rsl__buf_append(b, "{", 1);
    rc |= rsl__buf_append(b, label, strlen(label));
    rc |= rsl__buf_append(b, "=", 1);
    rc |= rsl__metrics_label(b, guard);
    rc |= rsl__buf_append(b, ",key=", 5);
    rc |= rsl__metrics_label(b, key);
    if (l3) {
        rc |= rsl__buf_append(b, ",", 1);
        rc |= rsl__buf_append(b, l3, strlen(l3));
        rc |= rsl__buf_append(b, "=", 1);
        rc |= rsl__metrics_label(b, v3);
    }
    if (l4) {
        rc |= rsl__buf_append(b, ",", 1);
        rc |= rsl__buf_append(b, l4, strlen(l4));
        rc |= rsl__buf_append(b, "=", 1);
        rc |= rsl__metrics_label(b, v4);
    }
    char num[32];
    int n = snprintf(num, sizeof(num), "} %llu\n", (unsigned long long)value);
    rc |= rsl__buf_append(b, num, (size_t)n);
    return rc;
}

/* The top keys, then "other": i in 0..ntop. */
static const rsl__keyed_item *key_item(const rsl__keyed_stats *st, int i) {
    return i < st->ntop ? &st->top[i] : &st->rest;
}

#define HELP(b, name, type, text)                                                          \
    rsl__buf_append(b, "# HELP " name " " text "\n# TYPE " name " " type "\n",            \
                    strlen("# HELP " name " " text "\n# TYPE " name " " type "\n"))

/* The load signal and what was shed on it (shed.h). */
static int load_metrics(rsl__buf *b, const rsl__load *l) {
    char t[320];
    int n = snprintf(t, sizeof(t),
                     "# HELP resilua_pressure The runtime's load signal, 0..1 (loop lag, queue "
                     "wait).\n# TYPE resilua_pressure gauge\nresilua_pressure %.4f\n"
                     "# HELP resilua_shed_level How many priorities the load controller "
                     "sheds.\n# TYPE resilua_shed_level gauge\nresilua_shed_level %.4f\n",
                     rsl__load_pressure(l), rsl__load_level(l));
    int rc = rsl__buf_append(b, t, (size_t)n);
    rc |= HELP(b, "resilua_shed_total", "counter",
               "Calls shed before they started: under load (by priority), or for a deadline "
               "below the step's recent median.");
    for (int p = 0; p < RSL_PRIORITIES; p++) {
        uint64_t v = rsl__load_shed_count(l, p);
        if (v) {
            n = snprintf(t, sizeof(t), "resilua_shed_total{reason=\"load\",priority=\"%d\"} %llu\n",
                         p, (unsigned long long)v);
            rc |= rsl__buf_append(b, t, (size_t)n);
        }
    }
    n = snprintf(t, sizeof(t), "resilua_shed_total{reason=\"deadline\"} %llu\n",
                 (unsigned long long)rsl__load_deadline_sheds(l));
    rc |= rsl__buf_append(b, t, (size_t)n);
    return rc;
}

char *rsl_metrics_text(rsl_runtime *rt) {
    if (!rt) {
        return NULL;
    }
    rsl__buf b = {0};
    int rc = 0;
    int64_t now = rsl__rt_now(rt);
    /* The counters under rt->lock, the guards under reg_lock: never both at once. */
    pthread_mutex_lock(&rt->lock);
    rc |= rsl__metrics_render(&rt->metrics, &b);
    unsigned long long reloads_ok = rt->reloads_ok, reloads_failed = rt->reloads_failed;
    unsigned long long generation = rt->gen_number;
    pthread_mutex_unlock(&rt->lock);
    pthread_mutex_lock(&rt->reg_lock);
    size_t ng = rsl__guards_count(rt->guards);
    /* A keyed guard's series carry `key`: its top_k keys by calls and "other" for the rest,
     * so that no more than top_k + 1 series per metric (and state, or transition) come
     * from one guard however many keys it sees.  One snapshot per guard for all of them. */
    rsl__keyed_stats **ks = ng ? calloc(ng, sizeof(*ks)) : NULL;
    for (size_t i = 0; ks && i < ng; i++) {
        rsl__guard *g = rsl__guards_at(rt->guards, i);
        if (g->keyed && !(ks[i] = rsl__keyed_stats_get(g, now))) {
            rc = RSL_ENOMEM;
        }
    }
    rc |= ng && !ks ? RSL_ENOMEM : 0;
    rc |= HELP(&b, "resilua_breaker_state", "gauge",
               "1 for the breaker's current state (a keyed breaker's \"other\": how many of "
               "its other keys are in it).");
    for (size_t i = 0; ks && i < ng; i++) {
        rsl__guard *g = rsl__guards_at(rt->guards, i);
        if (g->kind == RSL_GUARD_BREAKER && ks[i]) {
            for (int k = 0; k <= ks[i]->ntop; k++) {
                const rsl__keyed_item *it = key_item(ks[i], k);
                for (int s = 0; s < RSL_BREAKER__COUNT; s++) {
                    uint64_t v = k < ks[i]->ntop ? it->state == s : ks[i]->rest_states[s];
                    rc |= metric_key(&b, "resilua_breaker_state", "breaker", g->name, it->key,
                                     "state", rsl__breaker_state_name((rsl__breaker_state)s),
                                     NULL, NULL, v);
                }
            }
        } else if (g->kind == RSL_GUARD_BREAKER) {
            rsl__breaker_state st = rsl__breaker_state_at(g->u.breaker, now);
            for (int s = 0; s < RSL_BREAKER__COUNT; s++) {
                rc |= metric_guard(&b, "resilua_breaker_state", "breaker", g->name, "state",
                                   rsl__breaker_state_name((rsl__breaker_state)s), NULL, NULL,
                                   (int)st == s);
            }
        }
    }
    rc |= HELP(&b, "resilua_breaker_transitions_total", "counter", "Breaker state changes.");
    for (size_t i = 0; ks && i < ng; i++) {
        rsl__guard *g = rsl__guards_at(rt->guards, i);
        if (g->kind != RSL_GUARD_BREAKER) {
            continue;
        }
        for (int k = 0; ks[i] && k <= ks[i]->ntop; k++) {
            const rsl__keyed_item *it = key_item(ks[i], k);
            for (int f = 0; f < RSL_BREAKER__COUNT; f++) {
                for (int t = 0; t < RSL_BREAKER__COUNT; t++) {
                    if (it->trans[f][t]) {
                        rc |= metric_key(&b, "resilua_breaker_transitions_total", "breaker",
                                         g->name, it->key, "from",
                                         rsl__breaker_state_name((rsl__breaker_state)f), "to",
                                         rsl__breaker_state_name((rsl__breaker_state)t),
                                         it->trans[f][t]);
                    }
                }
            }
        }
        for (int f = 0; !ks[i] && f < RSL_BREAKER__COUNT; f++) {
            for (int t = 0; t < RSL_BREAKER__COUNT; t++) {
                uint64_t v = f == t ? 0
                                    : rsl__breaker_transitions(g->u.breaker, (rsl__breaker_state)f,
                                                               (rsl__breaker_state)t);
                if (v) {
                    rc |= metric_guard(&b, "resilua_breaker_transitions_total", "breaker",
                                       g->name, "from",
                                       rsl__breaker_state_name((rsl__breaker_state)f), "to",
                                       rsl__breaker_state_name((rsl__breaker_state)t), v);
                }
            }
        }
    }
    rc |= HELP(&b, "resilua_guard_rejections_total", "counter", "Calls a guard said no to.");
    for (size_t i = 0; ks && i < ng; i++) {
        rsl__guard *g = rsl__guards_at(rt->guards, i);
        if (ks[i]) {
            for (int k = 0; k <= ks[i]->ntop; k++) {
                const rsl__keyed_item *it = key_item(ks[i], k);
                rc |= metric_key(&b, "resilua_guard_rejections_total", "guard", g->name, it->key,
                                 NULL, NULL, NULL, NULL, it->rejections);
            }
            continue;
        }
        rsl__adaptive_stats st = {0};
        if (g->kind == RSL_GUARD_ADAPTIVE) {
            rsl__adaptive_stats_get(g->u.adaptive, &st);
        }
        rsl__lease_stats ls = {0};
        if (rsl__guard_lease(g)) {
            rsl__lease_stats_get(rsl__guard_lease(g), &ls);
        }
        uint64_t v = g->kind == RSL_GUARD_BREAKER    ? rsl__breaker_rejections(g->u.breaker)
                     : rsl__guard_lease(g)           ? ls.rejections
                     : g->kind == RSL_GUARD_LIMITER  ? rsl__limiter_rejections(g->u.limiter)
                     : g->kind == RSL_GUARD_THROTTLE ? rsl__throttle_rejections(g->u.throttle)
                     : g->kind == RSL_GUARD_ADAPTIVE ? st.rejections
                                                     : rsl__bulkhead_rejections(g->u.bulkhead);
        rc |= metric_guard(&b, "resilua_guard_rejections_total", "guard", g->name, NULL, NULL,
                           NULL, NULL, v);
    }
    rc |= HELP(&b, "resilua_shared_mode", "gauge",
               "1 for a shared guard's mode: starting, joined (Redis decides), down (local).");
    for (size_t i = 0; i < ng; i++) {
        rsl__guard *g = rsl__guards_at(rt->guards, i);
        const char *mode;
        uint64_t errors;
        if (shared_of(g, &mode, &errors)) {
            for (int m = RSL_LEASE_STARTING; m <= RSL_LEASE_DOWN; m++) {
                const char *name = rsl__lease_mode_name(m); /* the fleet's are the same */
                rc |= metric_guard(&b, "resilua_shared_mode", "guard", g->name, "mode", name,
                                   NULL, NULL, strcmp(name, mode) == 0);
            }
        }
    }
    rc |= HELP(&b, "resilua_redis_errors_total", "counter",
               "A shared guard's Redis commands that failed, were refused or timed out.");
    for (size_t i = 0; i < ng; i++) {
        rsl__guard *g = rsl__guards_at(rt->guards, i);
        const char *mode;
        uint64_t errors;
        if (shared_of(g, &mode, &errors)) {
            rc |= metric_guard(&b, "resilua_redis_errors_total", "guard", g->name, NULL, NULL,
                               NULL, NULL, errors);
        }
    }
    rc |= HELP(&b, "resilua_guard_shed_total", "counter",
               "Calls a guard's reserve refused, by priority (those it keeps room from).");
    for (size_t i = 0; i < ng; i++) {
        rsl__guard *g = rsl__guards_at(rt->guards, i);
        for (int p = 1; p < RSL_PRIORITIES && rsl__guard_has_reserve(g); p++) {
            if (rsl__guard_usable(g, p) < 1000) {
                char prio[4];
                snprintf(prio, sizeof(prio), "%d", p);
                rc |= metric_guard(&b, "resilua_guard_shed_total", "guard", g->name, "priority",
                                   prio, NULL, NULL,
                                   rsl__guard_shed(g, p));
            }
        }
    }
    rc |= HELP(&b, "resilua_bulkhead_inflight", "gauge", "Calls inside a bulkhead now.");
    for (size_t i = 0; i < ng; i++) {
        rsl__guard *g = rsl__guards_at(rt->guards, i);
        if (g->kind == RSL_GUARD_BULKHEAD) {
            int64_t v = rsl__bulkhead_inflight(g->u.bulkhead);
            rc |= metric_guard(&b, "resilua_bulkhead_inflight", "bulkhead", g->name, NULL, NULL,
                               NULL, NULL, v > 0 ? (uint64_t)v : 0);
        }
    }
    rc |= HELP(&b, "resilua_adaptive_limit", "gauge",
               "An adaptive guard's concurrency limit now.");
    for (size_t i = 0; i < ng; i++) {
        rsl__guard *g = rsl__guards_at(rt->guards, i);
        if (g->kind == RSL_GUARD_ADAPTIVE) {
            int64_t v = rsl__adaptive_limit(g->u.adaptive);
            rc |= metric_guard(&b, "resilua_adaptive_limit", "guard", g->name, NULL, NULL, NULL,
                               NULL, v > 0 ? (uint64_t)v : 0);
        }
    }
    rc |= HELP(&b, "resilua_adaptive_inflight", "gauge", "Calls inside an adaptive guard now.");
    for (size_t i = 0; i < ng; i++) {
        rsl__guard *g = rsl__guards_at(rt->guards, i);
        if (g->kind == RSL_GUARD_ADAPTIVE) {
            int64_t v = rsl__adaptive_inflight(g->u.adaptive);
            rc |= metric_guard(&b, "resilua_adaptive_inflight", "guard", g->name, NULL, NULL,
                               NULL, NULL, v > 0 ? (uint64_t)v : 0);
        }
    }
    rc |= HELP(&b, "resilua_keyed_calls_total", "counter",
               "Attempts that reached a keyed guard's key (its top keys, then \"other\").");
    for (size_t i = 0; ks && i < ng; i++) {
        for (int k = 0; ks[i] && k <= ks[i]->ntop; k++) {
            const rsl__keyed_item *it = key_item(ks[i], k);
            rc |= metric_key(&b, "resilua_keyed_calls_total", "guard",
                             rsl__guards_at(rt->guards, i)->name, it->key, NULL, NULL, NULL,
                             NULL, it->calls);
        }
    }
    rc |= HELP(&b, "resilua_keyed_keys", "gauge", "Keys a keyed guard holds now.");
    for (size_t i = 0; ks && i < ng; i++) {
        if (ks[i]) {
            rc |= metric_guard(&b, "resilua_keyed_keys", "guard", rsl__guards_at(rt->guards, i)->name,
                               NULL, NULL, NULL, NULL, ks[i]->keys);
        }
    }
    rc |= HELP(&b, "resilua_keyed_evictions_total", "counter",
               "Keys a keyed guard let go to make room (least recently used first).");
    for (size_t i = 0; ks && i < ng; i++) {
        if (ks[i]) {
            rc |= metric_guard(&b, "resilua_keyed_evictions_total", "guard",
                               rsl__guards_at(rt->guards, i)->name, NULL, NULL, NULL, NULL,
                               ks[i]->evictions);
        }
    }
    rc |= HELP(&b, "resilua_keyed_overflow_total", "counter",
               "Attempts a keyed guard served with its shared overflow guard: no room, and "
               "nothing it could evict.");
    for (size_t i = 0; ks && i < ng; i++) {
        if (ks[i]) {
            rc |= metric_guard(&b, "resilua_keyed_overflow_total", "guard",
                               rsl__guards_at(rt->guards, i)->name, NULL, NULL, NULL, NULL,
                               ks[i]->overflow_calls);
        }
    }
    for (size_t i = 0; ks && i < ng; i++) {
        free(ks[i]);
    }
    free(ks);
    char tail[1536];
    int n = snprintf(tail, sizeof(tail),
                     "# HELP resilua_reloads_total Policy reloads, by result.\n"
                     "# TYPE resilua_reloads_total counter\n"
                     "resilua_reloads_total{result=\"ok\"} %llu\n"
                     "resilua_reloads_total{result=\"error\"} %llu\n"
                     "# HELP resilua_policy_generation The policy generation serving now.\n"
                     "# TYPE resilua_policy_generation gauge\n"
                     "resilua_policy_generation %llu\n",
                     reloads_ok, reloads_failed, generation);
    if (rt->tracing && n > 0 && (size_t)n < sizeof(tail)) {
        uint64_t exp, full, failed;
        rsl__tracer_counts(&rt->tracer, &exp, &full, &failed);
        n += snprintf(tail + n, sizeof(tail) - (size_t)n,
                      "# HELP resilua_trace_spans_exported_total Spans the collector took.\n"
                      "# TYPE resilua_trace_spans_exported_total counter\n"
                      "resilua_trace_spans_exported_total %llu\n"
                      "# HELP resilua_trace_spans_dropped_total Spans dropped: no room in the "
                      "queue, or their batch failed.\n"
                      "# TYPE resilua_trace_spans_dropped_total counter\n"
                      "resilua_trace_spans_dropped_total{reason=\"queue_full\"} %llu\n"
                      "resilua_trace_spans_dropped_total{reason=\"export_failed\"} %llu\n",
                      (unsigned long long)exp, (unsigned long long)full,
                      (unsigned long long)failed);
    }
    pthread_mutex_unlock(&rt->reg_lock);
    rc |= rsl__buf_append(&b, tail, (size_t)n);
    rc |= load_metrics(&b, rt->load);
    if (rc) {
        rsl__buf_free(&b);
        return NULL;
    }
    return b.p;
}

int rsl_check(const char *policy_dir, char **json, char *err, size_t errlen) {
    char dummy[1];
    if (json) {
        *json = NULL;
    }
    if (!policy_dir) {
        return RSL_EINVAL;
    }
    rsl__guards *reg = rsl__guards_new();
    rsl__watchdog *wd = rsl__watchdog_new(0); /* a policy file looping at load is stopped */
    /* Registries with no Redis behind them, so that a global limiter and a shared breaker
     * are described as such (scope, lease, shared), as a runtime would build them. */
    rsl__leases *ls = rsl__leases_new(NULL, "check", NULL);
    rsl__fleets *fs = rsl__fleets_new(NULL, "check", NULL);
    if (!reg || !wd || !ls || !fs) {
        rsl__guards_free(reg);
        rsl__watchdog_free(wd);
        rsl__leases_free(ls);
        rsl__fleets_free(fs);
        return RSL_ENOMEM;
    }
    rsl_options d;
    rsl_options_init(&d);
    rsl__gen_opts go = {.nstates = 1,
                        .mem_limit = d.lua_mem_limit,
                        .wd = wd,
                        .stripes = 1,
                        .leases = ls,
                        .fleets = fs,
                        .step_ops = rsl__step_ops_table}; /* the kinds a runtime has */
    rsl__gen *g = NULL;
    rsl__load_report rep = {0};
    int rc = rsl__gen_load(policy_dir, reg, &go, &g, &rep, err ? err : dummy,
                           err ? errlen : sizeof(dummy));
    if (rc == 0) {
        if (json) {
            json_t *j = rsl__gen_describe(g);
            if (j && rep.warnings) {
                json_object_set_new(j, "warnings", json_string(rep.warnings));
            }
            *json = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
            json_decref(j);
        }
        rsl__gen_free(g);
    }
    rsl__load_report_free(&rep);
    rsl__guards_free(reg);
    rsl__watchdog_free(wd);
    rsl__leases_free(ls); /* after the guards that used them */
    rsl__fleets_free(fs);
    return rc;
}
