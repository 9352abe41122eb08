/*
 * policy_describe -- a loaded generation as JSON: its policies, their steps and chains,
 * every guard's settings and the r.expose routes (rsl__gen_describe: `check`, /describe).
 *
 * Layer: the policies.  Any thread (a generation is immutable).
 */
#include "policy_int.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

/* ---- describe ----------------------------------------------------------------------------- */

static json_t *outcome_list(uint32_t mask) {
    json_t *a = json_array();
    for (int i = 0; i < RSL_OUTCOME__COUNT; i++) {
        if (mask & (1u << i)) {
            json_array_append_new(a, json_string(rsl_outcome_name((rsl_outcome)i)));
        }
    }
    return a;
}

static json_t *ms(int64_t ns) {
    return json_real((double)ns / 1e6);
}

static json_t *guard_json(const rsl__guard *g) {
    json_t *o = json_object();
    json_object_set_new(o, "kind", json_string(rsl__guard_kind_name(g->kind)));
    switch (g->kind) {
    case RSL_GUARD_BREAKER: {
        rsl__breaker_conf c;
        rsl__breaker_conf_get(g->u.breaker, &c);
        json_object_set_new(o, "window_ms", ms(c.window_ns));
        json_object_set_new(o, "buckets", json_integer(c.buckets));
        json_object_set_new(o, "min_calls", json_integer(c.min_calls));
        json_object_set_new(o, "failure_rate", json_real(c.failure_rate));
        json_object_set_new(o, "slow_call_ms", ms(c.slow_call_ns));
        json_object_set_new(o, "slow_rate", json_real(c.slow_rate));
        json_object_set_new(o, "open_for_ms", ms(c.open_for_ns));
        json_object_set_new(o, "backoff",
                            json_pack("{s:f,s:o,s:f}", "factor", c.backoff_factor, "max_ms",
                                      ms(c.backoff_max_ns), "jitter", c.jitter));
        json_object_set_new(o, "probes", json_integer(c.probes));
        json_object_set_new(o, "count", outcome_list(c.count_mask));
        if (rsl__guard_fleet(g)) {
            rsl__fleet_conf fc;
            rsl__fleet_conf_get(rsl__guard_fleet(g), &fc);
            json_object_set_new(o, "shared", json_pack("{s:i,s:o}", "quorum", fc.quorum,
                                                       "flush_ms", ms(fc.flush_ns)));
        }
        break;
    }
    case RSL_GUARD_LIMITER: {
        rsl__limiter_conf c;
        rsl__limiter_conf_get(g->u.limiter, &c);
        json_object_set_new(o, "rate", json_real(c.rate));
        json_object_set_new(o, "per_ms", ms(c.per_ns));
        json_object_set_new(o, "burst", json_real(c.burst));
        if (rsl__guard_lease(g)) {
            rsl__lease_conf lc;
            rsl__lease_conf_get(rsl__guard_lease(g), &lc);
            json_object_set_new(o, "scope", json_string("global"));
            json_object_set_new(o, "lease", json_integer(lc.lease));
            json_object_set_new(
                o, "on_redis_down",
                json_string(rsl__lease_on_down_name(lc.on_down)));
        }
        break;
    }
    case RSL_GUARD_BULKHEAD:
        json_object_set_new(o, "max", json_integer(rsl__bulkhead_max(g->u.bulkhead)));
        break;
    case RSL_GUARD_THROTTLE: {
        rsl__throttle_conf c;
        rsl__throttle_conf_get(g->u.throttle, &c);
        json_object_set_new(o, "k", json_real(c.k));
        json_object_set_new(o, "window_ms", ms(c.window_ns));
        json_object_set_new(o, "min_requests", json_integer(c.min_requests));
        json_object_set_new(o, "max_p", json_real(c.max_p));
        break;
    }
    case RSL_GUARD_ADAPTIVE: {
        rsl__adaptive_conf c;
        rsl__adaptive_conf_get(g->u.adaptive, &c);
        json_object_set_new(o, "algorithm", json_string("gradient"));
        json_object_set_new(o, "min", json_integer(c.min));
        json_object_set_new(o, "max", json_integer(c.max));
        json_object_set_new(o, "initial", json_integer(c.initial));
        json_object_set_new(o, "tolerance", json_real(c.tolerance));
        json_object_set_new(o, "smoothing", json_real(c.smoothing));
        json_object_set_new(o, "backoff", json_real(c.backoff));
        json_object_set_new(o, "queue", json_real(c.queue));
        json_object_set_new(o, "window_ms", ms(c.window_ns));
        json_object_set_new(o, "min_samples", json_integer(c.min_samples));
        break;
    }
    }
    if (g->keyed) {
        rsl__keyed_conf kc;
        rsl__keyed_conf_get(g->keyed, &kc);
        json_object_set_new(o, "key", json_string(rsl__keyed_template(g->keyed)));
        json_object_set_new(o, "max_keys", json_integer((json_int_t)kc.max_keys));
        json_object_set_new(o, "top_k", json_integer(kc.top_k));
    }
    if (rsl__guard_has_reserve(g)) { /* as declared: { "0": 0.3, ... } */
        json_t *r = json_object();
        for (int p = 0; p + 1 < RSL_PRIORITIES; p++) {
            int kept = rsl__guard_usable(g, p) - rsl__guard_usable(g, p + 1);
            if (kept > 0) {
                char k[4];
                snprintf(k, sizeof(k), "%d", p);
                json_object_set_new(r, k, json_real(kept / 1e3));
            }
        }
        json_object_set_new(o, "reserve", r);
    }
    return o;
}

static const char *step_kind_name(rsl__step_kind k) {
    switch (k) {
    case RSL_STEP_STUB:
        return "stub";
    case RSL_STEP_LUA:
        return "lua";
    case RSL_STEP_C:
        return "c";
    case RSL_STEP_LOCAL_CACHE:
        return "local_cache";
    case RSL_STEP_HTTP:
        return "http";
    case RSL_STEP_REDIS:
        return "redis";
    case RSL_STEP_REDIS_CACHE:
        return "redis_cache";
    case RSL_STEP_OTHER:
        return "other";
    }
    return "unknown";
}

static json_t *step_json(const rsl__step *s) {
    static const char *const jitters[] = {"none", "full", "equal", "decorrelated"};
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(s->name));
    json_object_set_new(
        o, "kind",
        json_string(s->kind == RSL_STEP_OTHER && s->ops ? s->ops->name : step_kind_name(s->kind)));
    json_object_set_new(o, "line", json_integer(s->line));
    json_t *gs = json_array();
    for (int i = 0; i < s->nguards; i++) {
        json_array_append_new(gs, json_string(s->guards[i]->name));
    }
    json_object_set_new(o, "guards", gs);
    if (s->timeout_ns) {
        json_object_set_new(o, "timeout_ms", ms(s->timeout_ns));
    }
    if (s->retry.attempts > 1) {
        json_object_set_new(o, "retry",
                            json_pack("{s:i,s:s,s:o,s:o,s:s,s:o,s:f}", "attempts",
                                      s->retry.attempts, "backoff",
                                      s->retry.exponential ? "exponential" : "constant", "base_ms",
                                      ms(s->retry.base_ns), "max_ms", ms(s->retry.max_ns), "jitter",
                                      jitters[s->retry.jitter], "on",
                                      outcome_list(s->retry.on_mask), "budget", s->retry.budget));
    }
    if (s->has_fault) {
        json_t *f = json_object();
        if (s->fault.delay_ns) {
            json_object_set_new(f, "delay_ms", ms(s->fault.delay_ns));
            json_object_set_new(f, "delay_percent", json_real(s->fault.delay_percent));
        }
        if (s->fault.abort >= 0) {
            json_object_set_new(f, "abort",
                                json_string(rsl_outcome_name((rsl_outcome)s->fault.abort)));
            json_object_set_new(f, "abort_percent", json_real(s->fault.abort_percent));
        }
        json_object_set_new(o, "fault", f);
    }
    switch (s->kind) {
    case RSL_STEP_STUB:
        json_object_set_new(o, "status", json_integer(s->u.stub.status));
        break;
    case RSL_STEP_C:
        json_object_set_new(o, "function", json_string(s->u.c.name));
        break;
    case RSL_STEP_LOCAL_CACHE:
        json_object_set_new(o, "ttl_ms", ms(s->u.cache.ttl_ns));
        json_object_set_new(o, "max_entries", json_integer(s->u.cache.max_entries));
        break;
    case RSL_STEP_REDIS_CACHE:
        json_object_set_new(o, "ttl_ms", ms(s->u.cache.ttl_ns));
        break;
    case RSL_STEP_HTTP:
        json_object_set_new(o, "method", json_string(s->u.http.method));
        break;
    case RSL_STEP_OTHER:
        if (s->ops && s->ops->describe) {
            s->ops->describe(s, o);
        }
        break;
    default:
        break;
    }
    return o;
}

json_t *rsl__gen_describe(const rsl__gen *g) {
    if (!g) {
        return NULL;
    }
    json_t *root = json_object();
    json_t *ps = json_array();
    for (int i = 0; i < g->npolicies; i++) {
        const rsl__policy *p = &g->policies[i];
        json_t *o = json_object();
        json_object_set_new(o, "name", json_string(p->name));
        json_object_set_new(o, "file", json_string(p->file));
        json_object_set_new(o, "line", json_integer(p->line));
        json_object_set_new(o, "deadline_ms", p->deadline_ns ? ms(p->deadline_ns) : json_null());
        json_t *steps = json_array();
        for (int j = 0; j < p->nsteps; j++) {
            json_array_append_new(steps, step_json(&p->steps[j]));
        }
        json_object_set_new(o, "steps", steps);
        json_t *chain = json_array();
        for (int j = 0; j < p->nchain; j++) {
            json_array_append_new(chain, json_string(p->steps[p->chain[j]].name));
        }
        json_object_set_new(o, "chain", chain);
        json_object_set_new(o, "fallback_on", outcome_list(p->fallback_mask));
        json_object_set_new(o, "route", json_boolean(p->user_route));
        if (p->has_priority) {
            json_object_set_new(o, "priority", json_true());
        }
        json_array_append_new(ps, o);
    }
    json_object_set_new(root, "policies", ps);
    json_t *gs = json_object();
    for (int i = 0; i < g->nguards; i++) {
        json_object_set_new(gs, g->guards[i]->name, guard_json(g->guards[i]));
    }
    json_object_set_new(root, "guards", gs);
    json_t *ex = json_array();
    for (int i = 0; i < g->nexpose; i++) {
        const rsl__expose *e = &g->expose[i];
        json_array_append_new(ex, json_pack("{s:s,s:s,s:s}", "method", e->method, "path", e->path,
                                            "policy", g->policies[e->policy].name));
    }
    json_object_set_new(root, "expose", ex);
    return root;
}
