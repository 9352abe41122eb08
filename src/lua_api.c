/*
 * lua_api -- the C side of what policy code touches per call: the `req` table, the `sig`
 * signals, `prev`, and the protected, time-limited calls into route() and Lua steps.
 *
 * Layer: the Lua binding (lua_api.h).  One rsl__lapi per (generation, worker) Lua state,
 * used only by that worker's thread.  `req`, `sig` and `prev` are created once per state
 * and reused: a table built per call costs about 3x a reused one.  `sig` functions are C closures that find guards through a
 * name -> light userdata table built at load (Lua strings are interned, so the lookup is
 * one hash probe), and read the guards' atomics directly: no allocation, no lock (but
 * for a keyed guard's key, found under one stripe's lock of its table: keyed.h).
 */
#include "lua_api.h"

#include "clock.h"
#include "keyed.h"
#include "req.h"
#include "sandbox.h"

#include <lauxlib.h>
#include <lua.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct rsl__lapi {
    rsl__lapi_conf conf;
    rsl__gen *g;
    int state;
    lua_State *L;
    int req_ref, prev_ref, gauges_ref;
    int *sig_refs; /* per policy */
    uint64_t req_call; /* id of the call whose request fills `req` */
    int64_t now;       /* the running call's start: sig.now() and rates use it */
};

#define UV_API lua_upvalueindex(1)
#define UV_GUARDS lua_upvalueindex(2)

/* [-0, +0] The guard named by argument 1, of one of the kinds in `kinds` (bit per kind);
 * raises otherwise. */
static rsl__guard *arg_guard(lua_State *L, unsigned kinds, const char *fn) {
    if (lua_type(L, 1) != LUA_TSTRING) {
        luaL_error(L, "sig.%s: expected a guard name, got %s", fn, luaL_typename(L, 1));
    }
    lua_pushvalue(L, 1);
    lua_rawget(L, UV_GUARDS);
    rsl__guard *g = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (!g) {
        luaL_error(L, "sig.%s: no guard named \"%s\"", fn, lua_tostring(L, 1));
    }
    if (!(kinds & (1u << g->kind))) {
        luaL_error(L, "sig.%s: \"%s\" is a %s", fn, g->name, rsl__guard_kind_name(g->kind));
    }
    return g;
}

static rsl__lapi *api(lua_State *L) {
    return lua_touserdata(L, UV_API);
}

#define BREAKER (1u << RSL_GUARD_BREAKER)
#define LIMITER (1u << RSL_GUARD_LIMITER)
#define BULKHEAD (1u << RSL_GUARD_BULKHEAD)
#define ADAPTIVE (1u << RSL_GUARD_ADAPTIVE)

/* [-0, +0] For a keyed g and a key at argument idx (a string or a number): that key's
 * child, a reference to give back with rsl__guard_unref; NULL to read g itself (no key, a
 * key not seen yet, which reads as a fresh guard, or the parent overridden).  A guard
 * without `key` ignores the argument: it is the same for every key. */
static rsl__guard *key_child(lua_State *L, rsl__guard *g, int idx, const char *fn) {
    if (!g->keyed || lua_isnoneornil(L, idx)) {
        return NULL;
    }
    int t = lua_type(L, idx);
    if (t != LUA_TSTRING && t != LUA_TNUMBER) {
        luaL_error(L, "sig.%s: key must be a string, got %s", fn, luaL_typename(L, idx));
    }
    size_t len;
    const char *k = lua_tolstring(L, idx, &len);
    return rsl__keyed_lookup(g, k, len);
}

/* The breaker to read: a key's child when there is one, else g's own. */
static rsl__breaker *breaker_of(rsl__guard *g, rsl__guard *child) {
    return child ? child->u.breaker : g->u.breaker;
}

/* sig.state(name [, key]) -> "closed" | "open" | ... ; the names are upvalues 3.. (no
 * interning per call). */
static int sig_state(lua_State *L) {
    rsl__guard *g = arg_guard(L, BREAKER, "state");
    rsl__guard *c = key_child(L, g, 2, "state");
    if (!c) {
        rsl__guard_sync(g, api(L)->now); /* a shared breaker: the fleet's latest verdict */
    }
    int st = (int)rsl__breaker_state_at(breaker_of(g, c), api(L)->now);
    rsl__guard_unref(c);
    lua_pushvalue(L, lua_upvalueindex(3 + st));
    return 1;
}

static int sig_failure_rate(lua_State *L) {
    rsl__guard *g = arg_guard(L, BREAKER, "failure_rate");
    rsl__guard *c = key_child(L, g, 2, "failure_rate");
    lua_pushnumber(L, rsl__breaker_failure_rate(breaker_of(g, c), api(L)->now));
    rsl__guard_unref(c);
    return 1;
}

static int sig_slow_rate(lua_State *L) {
    rsl__guard *g = arg_guard(L, BREAKER, "slow_rate");
    rsl__guard *c = key_child(L, g, 2, "slow_rate");
    lua_pushnumber(L, rsl__breaker_slow_rate(breaker_of(g, c), api(L)->now));
    rsl__guard_unref(c);
    return 1;
}

static int sig_calls(lua_State *L) {
    rsl__guard *g = arg_guard(L, BREAKER, "calls");
    rsl__guard *c = key_child(L, g, 2, "calls");
    lua_pushnumber(L, (lua_Number)rsl__breaker_calls(breaker_of(g, c), api(L)->now));
    rsl__guard_unref(c);
    return 1;
}

/* sig.latency(name, q [, key]): ms at quantile q in [0, 1] (q > 1 is read as a percent). */
static int sig_latency(lua_State *L) {
    rsl__guard *g = arg_guard(L, BREAKER, "latency");
    double q = luaL_optnumber(L, 2, 0.5);
    if (q > 1.0) {
        q /= 100.0;
    }
    if (q < 0.0 || q > 1.0) {
        return luaL_error(L, "sig.latency: quantile must be in 0..1, got %f", q);
    }
    rsl__guard *c = key_child(L, g, 3, "latency");
    lua_pushnumber(L, (double)rsl__breaker_latency(breaker_of(g, c), api(L)->now, q) / 1e6);
    rsl__guard_unref(c);
    return 1;
}

static int sig_inflight(lua_State *L) {
    rsl__guard *g = arg_guard(L, BULKHEAD | BREAKER | ADAPTIVE, "inflight");
    lua_pushnumber(L, g->kind == RSL_GUARD_BULKHEAD   ? (lua_Number)rsl__bulkhead_inflight(g->u.bulkhead)
                      : g->kind == RSL_GUARD_ADAPTIVE ? (lua_Number)rsl__adaptive_inflight(g->u.adaptive)
                                                      : (lua_Number)rsl__breaker_probes_inflight(g->u.breaker));
    return 1;
}

/* sig.limit(name): an adaptive guard's concurrency limit, or a bulkhead's max. */
static int sig_limit(lua_State *L) {
    rsl__guard *g = arg_guard(L, BULKHEAD | ADAPTIVE, "limit");
    lua_pushnumber(L, g->kind == RSL_GUARD_ADAPTIVE ? (lua_Number)rsl__adaptive_limit(g->u.adaptive)
                                                    : (lua_Number)rsl__bulkhead_max(g->u.bulkhead));
    return 1;
}

static int sig_load(lua_State *L) {
    rsl__guard *g = arg_guard(L, BULKHEAD, "load");
    lua_pushnumber(L, rsl__bulkhead_load(g->u.bulkhead));
    return 1;
}

/* sig.tokens(name [, key]): a key not seen yet has a full bucket (the parent's, unused);
 * a global limiter's are the tokens this instance leased and has not spent (a key not
 * seen yet: the first lease's credit). */
static int sig_tokens(lua_State *L) {
    rsl__guard *g = arg_guard(L, LIMITER, "tokens");
    rsl__guard *c = key_child(L, g, 2, "tokens");
    const rsl__guard *x = c ? c : g;
    rsl__lease *l = rsl__guard_lease(x);
    lua_pushnumber(L, l ? (lua_Number)rsl__lease_pool(l)
                        : rsl__limiter_tokens(x->u.limiter, api(L)->now));
    rsl__guard_unref(c);
    return 1;
}

/* sig.gauge(name) -> the host's value, or nil when it never set one. */
static int sig_gauge(lua_State *L) {
    rsl__lapi *a = api(L);
    size_t len;
    const char *name = luaL_checklstring(L, 1, &len);
    lua_rawgeti(L, LUA_REGISTRYINDEX, a->gauges_ref);
    lua_pushvalue(L, 1);
    lua_rawget(L, -2);
    int i;
    if (lua_isnumber(L, -1)) {
        i = (int)lua_tointeger(L, -1);
        lua_pop(L, 2);
    } else {
        lua_pop(L, 1);
        i = rsl__gauge_find(a->conf.gauges, name, len);
        if (i >= 0) {
            lua_pushvalue(L, 1);
            lua_pushinteger(L, i);
            lua_rawset(L, -3);
        }
        lua_pop(L, 1);
    }
    if (i < 0) {
        lua_pushnil(L);
    } else {
        lua_pushnumber(L, rsl__gauge_get(a->conf.gauges, i));
    }
    return 1;
}

/* sig.pressure() -> the runtime's load signal in 0..1 (shed.h). */
static int sig_pressure(lua_State *L) {
    const rsl__load *l = api(L)->conf.load;
    lua_pushnumber(L, l ? rsl__load_pressure(l) : 0.0);
    return 1;
}

static int sig_now(lua_State *L) {
    lua_pushnumber(L, (double)api(L)->now / 1e6);
    return 1;
}

static const luaL_Reg sig_fns[] = {
    {"state", sig_state},       {"failure_rate", sig_failure_rate},
    {"slow_rate", sig_slow_rate}, {"latency", sig_latency},
    {"calls", sig_calls},       {"inflight", sig_inflight},
    {"load", sig_load},         {"tokens", sig_tokens},
    {"gauge", sig_gauge},       {"now", sig_now},
    {"limit", sig_limit},       {"pressure", sig_pressure},
    {NULL, NULL},
};

/* [-0, +0] Builds sig, req, prev and the gauge cache in the registry. */
rsl__lapi *rsl__lapi_new(const rsl__lapi_conf *conf, rsl__gen *gen, int state) {
    rsl__lapi *a = calloc(1, sizeof(*a));
    if (!a) {
        return NULL;
    }
    a->conf = *conf;
    a->g = gen;
    a->state = state;
    lua_State *L = a->L = gen->states[state];
    int top = lua_gettop(L);

    lua_newtable(L); /* guards: name -> light userdata */
    for (int i = 0; i < gen->nguards; i++) {
        rsl__guard *g = gen->guards[i];
        lua_pushstring(L, g->name);
        lua_pushlightuserdata(L, g);
        lua_rawset(L, -3);
    }
    int guards = lua_gettop(L);

    lua_createtable(L, 0, 11); /* sig */
    for (const luaL_Reg *f = sig_fns; f->name; f++) {
        lua_pushlightuserdata(L, a);
        lua_pushvalue(L, guards);
        int n = 2;
        if (f->func == sig_state) {
            for (int s = 0; s < RSL_BREAKER__COUNT; s++) {
                lua_pushstring(L, rsl__breaker_state_name((rsl__breaker_state)s));
            }
            n += RSL_BREAKER__COUNT;
        }
        lua_pushcclosure(L, f->func, n);
        lua_setfield(L, -2, f->name);
    }
    /* One plain sig table per policy, sharing the closures: a route that overwrites a
     * field of its sig breaks only itself, and reads cost no metamethod (a read-only
     * proxy cost ~20 ns per route of three signals). */
    int fns = lua_gettop(L);
    int np = gen->npolicies;
    a->sig_refs = calloc((size_t)(np ? np : 1), sizeof(int));
    if (!a->sig_refs) {
        lua_settop(L, top);
        free(a);
        return NULL;
    }
    for (int i = 0; i < np; i++) {
        lua_createtable(L, 0, 11);
        lua_pushnil(L);
        while (lua_next(L, fns)) {
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_rawset(L, -4);
        }
        a->sig_refs[i] = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_pop(L, 2); /* the functions, guards (the tables and the closures keep them) */

    lua_newtable(L);
    a->req_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_createtable(L, 0, 5);
    a->prev_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_newtable(L);
    a->gauges_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_settop(L, top);
    return a;
}

void rsl__lapi_free(rsl__lapi *a) {
    if (a) {
        free(a->sig_refs);
    }
    free(a); /* the refs live in the state, which closes with its generation */
}

/* [-0, +1] Pushes `req`, filled with the call's request (once per call). */
static void push_req(rsl__lapi *a, const rsl__lcall *c) {
    lua_State *L = a->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, a->req_ref);
    if (a->req_call == c->id) {
        return;
    }
    a->req_call = c->id;
    lua_pushnil(L);
    while (lua_next(L, -2)) { /* clearing fields during traversal is allowed */
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        lua_pushnil(L);
        lua_rawset(L, -4);
    }
    const rsl_req *r = c->req;
    for (int i = 0; i < r->nattrs; i++) {
        lua_pushlstring(L, r->attrs[i].name, r->attrs[i].nlen);
        lua_pushlstring(L, r->attrs[i].val, r->attrs[i].vlen);
        lua_rawset(L, -3);
    }
    if (r->body) {
        lua_pushlstring(L, r->body, r->body_len);
        lua_setfield(L, -2, "body");
    }
}

/* [-0, +0] Copies the Lua error at the top into err and pops it. */
static void take_error(lua_State *L, int rc, const char *what, int64_t limit, char *err,
                       size_t errlen) {
    const char *msg = lua_tostring(L, -1);
    if (rc == RSL_SANDBOX_ELIMIT) {
        snprintf(err, errlen, "%s ran past its limit of %.0f ms", what, (double)limit / 1e6);
    } else if (rc == LUA_ERRMEM) {
        snprintf(err, errlen, "%s ran out of memory (cap %zu bytes)", what,
                 rsl__sandbox_mem_limit(L));
    } else {
        snprintf(err, errlen, "%s", msg ? msg : "error object is not a string");
    }
    lua_pop(L, 1);
}

/* [-0, +0] The priority at idx (a number or nil) into *priority; 0, or -1 with err. */
static int read_priority(lua_State *L, int idx, int *priority, char *err, size_t errlen) {
    if (lua_isnil(L, idx)) {
        return 0;
    }
    lua_Number n = lua_type(L, idx) == LUA_TNUMBER ? lua_tonumber(L, idx) : -1;
    if (n < 0 || n > RSL_PRIORITY_LOWEST || n != (int)n) {
        snprintf(err, errlen, "route returned priority %s, expected an integer 0..%d",
                 lua_type(L, idx) == LUA_TNUMBER ? lua_tostring(L, idx) : luaL_typename(L, idx),
                 RSL_PRIORITY_LOWEST);
        return -1;
    }
    *priority = (int)n;
    return 0;
}

int rsl__lapi_route(rsl__lapi *a, const rsl__lcall *c, int *path, int *npath, int *priority,
                    char *err, size_t errlen) {
    lua_State *L = a->L;
    int top = lua_gettop(L);
    a->now = c->start;
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->p->route_refs[a->state]);
    push_req(a, c);
    lua_rawgeti(L, LUA_REGISTRYINDEX, a->sig_refs[c->pidx]);
    int64_t limit = a->conf.route_limit_ns;
    int rc = rsl__sandbox_pcall(L, 2, 2, limit);
    if (rc != 0) {
        take_error(L, rc, "route", limit, err, errlen);
        lua_settop(L, top);
        return -1;
    }
    int ret = -1;
    int prio = *priority;
    if (read_priority(L, -1, &prio, err, errlen) < 0) {
        goto out;
    }
    lua_pop(L, 1);
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "chain");
        if (lua_istable(L, -1)) { /* { chain = {...}, priority = N } */
            lua_getfield(L, -2, "priority");
            if (read_priority(L, -1, &prio, err, errlen) < 0) {
                goto out;
            }
            lua_pop(L, 1);
            lua_replace(L, -2);
        } else if (!lua_isnil(L, -1)) {
            snprintf(err, errlen, "route returned chain = %s, expected a list of step names",
                     luaL_typename(L, -1));
            goto out;
        } else {
            lua_pop(L, 1);
        }
    }
    if (!lua_istable(L, -1)) {
        snprintf(err, errlen, "route returned %s, expected a list of step names",
                 luaL_typename(L, -1));
        goto out;
    }
    int n = (int)lua_objlen(L, -1);
    if (n < 1 || n > RSL_POLICY_MAX_CHAIN) {
        snprintf(err, errlen, "route returned a list of %d steps, expected 1..%d", n,
                 RSL_POLICY_MAX_CHAIN);
        goto out;
    }
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, -1, i + 1);
        size_t len;
        const char *name = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
        int idx = name ? rsl__policy_step(c->p, name, len) : -1;
        if (idx < 0) {
            if (name) {
                snprintf(err, errlen, "route returned unknown step \"%s\"", name);
            } else {
                snprintf(err, errlen, "route returned a %s at position %d, expected a step name",
                         luaL_typename(L, -1), i + 1);
            }
            goto out;
        }
        path[i] = idx;
        lua_pop(L, 1);
    }
    *npath = n;
    *priority = prio;
    ret = 0;
out:
    lua_settop(L, top);
    return ret;
}

/* [-0, +1] Pushes `prev` (the previous step's answer) or nil. */
static void push_prev(rsl__lapi *a, const char *step, const rsl__answer *p) {
    lua_State *L = a->L;
    if (!step) {
        lua_pushnil(L);
        return;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, a->prev_ref);
    lua_pushinteger(L, p->status);
    lua_setfield(L, -2, "status");
    lua_pushlstring(L, p->body.p ? p->body.p : "", p->body.len);
    lua_setfield(L, -2, "body");
    lua_pushstring(L, rsl_outcome_name(p->outcome));
    lua_setfield(L, -2, "outcome");
    lua_pushstring(L, step);
    lua_setfield(L, -2, "step");
    if (p->error) {
        lua_pushstring(L, p->error);
    } else {
        lua_pushnil(L);
    }
    lua_setfield(L, -2, "error");
}

/* [-0, +0] Reads a step's result table at idx into ans. */
static void read_result(lua_State *L, int idx, rsl__answer *ans) {
    lua_getfield(L, idx, "status");
    int status = 200;
    if (!lua_isnil(L, -1)) {
        lua_Number n = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : -1;
        if (n < 100 || n > 599 || n != (int)n) {
            rsl__answer_fail(ans, RSL_OUTCOME_ERROR,
                             "lua step returned status %s, expected an integer 100..599",
                             lua_isstring(L, -1) ? lua_tostring(L, -1) : luaL_typename(L, -1));
            lua_pop(L, 1);
            return;
        }
        status = (int)n;
    }
    lua_pop(L, 1);
    ans->status = status;
    ans->outcome = rsl__status_outcome(status);

    lua_getfield(L, idx, "body");
    if (!lua_isnil(L, -1)) {
        size_t len;
        const char *b = lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER
                            ? lua_tolstring(L, -1, &len)
                            : NULL;
        if (!b) {
            rsl__answer_fail(ans, RSL_OUTCOME_ERROR, "lua step returned a %s body, expected a string",
                             luaL_typename(L, -1));
            lua_pop(L, 1);
            return;
        }
        if (rsl__buf_append(&ans->body, b, len) < 0) {
            lua_pop(L, 1);
            rsl__answer_fail(ans, RSL_OUTCOME_ERROR, "out of memory");
            return;
        }
    }
    lua_pop(L, 1);

    lua_getfield(L, idx, "headers");
    if (lua_istable(L, -1)) {
        rsl__buf pairs = {0};
        int np = 0, oom = 0;
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            if (lua_type(L, -2) == LUA_TSTRING && lua_isstring(L, -1)) {
                const char *k = lua_tostring(L, -2), *v = lua_tostring(L, -1);
                oom |= rsl__buf_append(&pairs, k, strlen(k) + 1) < 0 ||
                       rsl__buf_append(&pairs, v, strlen(v) + 1) < 0;
                np++;
            }
            lua_pop(L, 1);
        }
        if (!oom) {
            ans->headers = rsl__headers_unpack(pairs.p, pairs.len, np);
            ans->nheaders = ans->headers ? np : 0;
        }
        rsl__buf_free(&pairs);
    }
    lua_pop(L, 1);
    if (ans->outcome != RSL_OUTCOME_OK) {
        char msg[32];
        snprintf(msg, sizeof(msg), "status %d", status);
        ans->error = strdup(msg);
    }
}

void rsl__lapi_step(rsl__lapi *a, const rsl__lcall *c, const rsl__step *s,
                    const char *prev_step, const rsl__answer *prev, rsl__answer *ans) {
    lua_State *L = a->L;
    int top = lua_gettop(L);
    a->now = c->start;
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->u.lua.refs[a->state]);
    push_req(a, c);
    push_prev(a, prev_step, prev);
    /* The step's own timeout bounds it too, and running past that is a `timeout`; running
     * past the runtime's limit is an `error` (a runaway, not a slow answer). */
    int64_t limit = a->conf.lua_step_limit_ns;
    int own = s->timeout_ns > 0 && (limit <= 0 || s->timeout_ns < limit);
    if (own) {
        limit = s->timeout_ns;
    }
    int rc = rsl__sandbox_pcall(L, 2, 3, limit);
    if (rc != 0) {
        char err[512];
        take_error(L, rc, own ? "lua step (its timeout)" : "lua step", limit, err, sizeof(err));
        rsl__answer_fail(ans,
                         own && rc == RSL_SANDBOX_ELIMIT ? RSL_OUTCOME_TIMEOUT : RSL_OUTCOME_ERROR,
                         "%s", err);
        lua_settop(L, top);
        return;
    }
    int r1 = top + 1;
    if (lua_istable(L, r1)) {
        read_result(L, r1, ans);
    } else if (lua_isnil(L, r1) && lua_type(L, r1 + 1) == LUA_TSTRING) {
        size_t len;
        const char *o = lua_tolstring(L, r1 + 1, &len);
        int oc = rsl_outcome_parse(o, len);
        if (oc < 0 || oc == RSL_OUTCOME_OK) {
            rsl__answer_fail(ans, RSL_OUTCOME_ERROR,
                             "lua step returned nil, \"%s\": not a failure outcome", o);
        } else if (lua_type(L, r1 + 2) == LUA_TSTRING) {
            rsl__answer_fail(ans, (rsl_outcome)oc, "%s", lua_tostring(L, r1 + 2));
        } else {
            static const char *const answered[] = {
#define RSL_X_(e, s, st) "lua step answered " s,
                RSL_OUTCOMES(RSL_X_)
#undef RSL_X_
            };
            rsl__answer_fail(ans, (rsl_outcome)oc, "%s", answered[oc]);
        }
    } else {
        rsl__answer_fail(ans, RSL_OUTCOME_ERROR,
                         "lua step returned %s; expected a table, or nil and an outcome",
                         luaL_typename(L, r1));
    }
    lua_settop(L, top);
}
