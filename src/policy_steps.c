/*
 * policy_steps -- one step declaration read into an rsl__step (policy.h): its guards,
 * timeout, retry and fault, the fields of its kind, and the kind's rsl__step_ops when the
 * loader was given the table; and freeing it.
 *
 * Layer: the policies.  The loader's thread.
 */
#include "policy_int.h"

#include "clock.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* [-0, +0] Parses the string at stack index idx as a template; a parse error is a load
 * error naming the step (the DSL checks templates too, so this is a second line). */
static rsl__tmpl *tmpl_at(lua_State *L, loader *ld, const rsl__policy *p, const rsl__step *s,
                          int idx, const char *what) {
    size_t len = 0;
    const char *v = lua_tolstring(L, idx, &len);
    char msg[256] = "out of memory";
    rsl__tmpl *t = v ? rsl__tmpl_parse(v, len, msg, sizeof(msg)) : NULL;
    if (!t) {
        rsl__lines_add(&ld->errs, "%s:%d: policy \"%s\": step \"%s\": %s: %s", p->file, s->line,
                       p->name, s->name, what, v ? msg : "missing");
    }
    return t;
}

/* [-0, +0] Template of field `name` of the table at the top. */
static rsl__tmpl *field_tmpl(lua_State *L, loader *ld, const rsl__policy *p, const rsl__step *s,
                             const char *name, const char *what) {
    lua_getfield(L, -1, name);
    rsl__tmpl *t = tmpl_at(L, ld, p, s, -1, what);
    lua_pop(L, 1);
    return t;
}

/* [-0, +0] Template of element i of the table at the top. */
static rsl__tmpl *idx_tmpl(lua_State *L, loader *ld, const rsl__policy *p, const rsl__step *s,
                           int i, const char *what) {
    lua_rawgeti(L, -1, i);
    rsl__tmpl *t = tmpl_at(L, ld, p, s, -1, what);
    lua_pop(L, 1);
    return t;
}

/* The ops of kind `kind` (by `name` for RSL_STEP_OTHER) in the NULL-terminated table t;
 * NULL when t is NULL or has none. */
static const rsl__step_ops *kind_ops(const rsl__step_ops *const *t, int kind, const char *name) {
    for (; t && *t; t++) {
        if ((*t)->kind == kind && (kind != RSL_STEP_OTHER || (name && !strcmp((*t)->name, name)))) {
            return *t;
        }
    }
    return NULL;
}

/* [-0, +0] A step of an RSL_STEP_OTHER kind: its ops read its fields (the DSL only
 * checked their names). */
static void read_other(lua_State *L, loader *ld, const rsl__policy *p, rsl__step *s) {
    lua_getfield(L, -1, "kind");
    const char *kind = lua_tostring(L, -1); /* the declaration keeps the string alive */
    lua_pop(L, 1);
    s->kind = RSL_STEP_OTHER;
    s->ops = kind ? kind_ops(ld->o->step_ops, RSL_STEP_OTHER, kind) : NULL;
    char err[256] = "";
    if (!s->ops || !s->ops->parse) {
        rsl__lines_add(&ld->errs, "%s:%d: policy \"%s\": step \"%s\": no step kind \"%s\"",
                       p->file, s->line, p->name, s->name, kind ? kind : "?");
    } else if (s->ops->parse(L, s, err, sizeof(err)) < 0) {
        rsl__lines_add(&ld->errs, "%s:%d: policy \"%s\": step \"%s\": %s", p->file, s->line,
                       p->name, s->name, err[0] ? err : "refused");
    }
}

/* [-0, +0] The step declaration at the top of the stack into s. */
void rsl__read_step(lua_State *L, loader *ld, const rsl__policy *p, rsl__step *s) {
    s->name = rsl__decl_str(L, "name", NULL);
    s->line = (int)rsl__decl_num(L, "line");
    s->timeout_ns = (int64_t)rsl__decl_num(L, "timeout_ns");
    if (!s->name) {
        ld->oom = 1;
        return;
    }

    lua_getfield(L, -1, "guards");
    s->nguards = (int)lua_objlen(L, -1);
    s->guards = s->nguards ? calloc((size_t)s->nguards, sizeof(*s->guards)) : NULL;
    for (int i = 0; i < s->nguards && s->guards; i++) {
        lua_rawgeti(L, -1, i + 1);
        s->guards[i] = rsl__gen_guard(ld->g, lua_tostring(L, -1)); /* the DSL checked it */
        lua_pop(L, 1);
    }
    if (s->nguards && !s->guards) {
        ld->oom = 1;
        s->nguards = 0;
    }
    lua_pop(L, 1);

    s->retry = (rsl__retry){.attempts = 1,
                            .exponential = 1,
                            .base_ns = 20 * RSL_NS_PER_MS,
                            .max_ns = RSL_NS_PER_S,
                            .jitter = RSL_JITTER_FULL,
                            .on_mask = (1u << RSL_OUTCOME_TIMEOUT) | (1u << RSL_OUTCOME_CONNECT) |
                                       (1u << RSL_OUTCOME_5XX),
                            .budget = 0.2};
    lua_getfield(L, -1, "retry");
    if (lua_istable(L, -1)) {
        s->retry.attempts = (int)rsl__decl_num(L, "attempts");
        lua_getfield(L, -1, "exponential");
        s->retry.exponential = lua_toboolean(L, -1);
        lua_pop(L, 1);
        s->retry.base_ns = (int64_t)rsl__decl_num(L, "base_ns");
        s->retry.max_ns = (int64_t)rsl__decl_num(L, "max_ns");
        s->retry.jitter = rsl__decl_is(L, "jitter", "none")           ? RSL_JITTER_NONE
                          : rsl__decl_is(L, "jitter", "equal")        ? RSL_JITTER_EQUAL
                          : rsl__decl_is(L, "jitter", "decorrelated") ? RSL_JITTER_DECORRELATED
                                                                : RSL_JITTER_FULL;
        s->retry.on_mask = (uint32_t)rsl__decl_num(L, "on_mask");
        s->retry.budget = rsl__decl_num(L, "budget");
    }
    lua_pop(L, 1);

    s->fault = (rsl__fault){.abort = -1};
    lua_getfield(L, -1, "fault");
    if (lua_istable(L, -1)) {
        s->has_fault = 1;
        s->fault.delay_ns = (int64_t)rsl__decl_num(L, "delay_ns");
        s->fault.delay_percent = rsl__decl_num(L, "delay_percent");
        s->fault.abort = (int)rsl__decl_num(L, "abort");
        s->fault.abort_percent = rsl__decl_num(L, "abort_percent");
    }
    lua_pop(L, 1);

    if (rsl__decl_is(L, "kind", "stub")) {
        s->kind = RSL_STEP_STUB;
        s->u.stub.status = (int)rsl__decl_num(L, "status");
        s->u.stub.body = rsl__decl_str(L, "body", &s->u.stub.body_len);
        lua_getfield(L, -1, "headers");
        int n = (int)lua_objlen(L, -1);
        s->u.stub.headers = n ? calloc((size_t)n, sizeof(rsl__header)) : NULL;
        for (int i = 0; i < n && s->u.stub.headers; i++) {
            lua_rawgeti(L, -1, i + 1);
            rsl__header *h = &s->u.stub.headers[i];
            lua_rawgeti(L, -1, 1);
            h->name = strdup(lua_tostring(L, -1));
            lua_rawgeti(L, -2, 2);
            h->value = strdup(lua_tostring(L, -1));
            lua_pop(L, 3);
            s->u.stub.nheaders = i + 1;
            ld->oom |= !h->name || !h->value;
        }
        ld->oom |= !s->u.stub.body || (n && !s->u.stub.headers);
        lua_pop(L, 1);
    } else if (rsl__decl_is(L, "kind", "lua")) {
        s->kind = RSL_STEP_LUA;
        s->u.lua.refs = rsl__decl_refs(ld->g->nstates);
        ld->oom |= !s->u.lua.refs;
    } else if (rsl__decl_is(L, "kind", "c")) {
        s->kind = RSL_STEP_C;
        s->u.c.name = rsl__decl_str(L, "cname", NULL);
        ld->oom |= !s->u.c.name;
    } else if (rsl__decl_is(L, "kind", "http")) {
        s->kind = RSL_STEP_HTTP;
        s->u.http.method = rsl__decl_str(L, "method", NULL);
        ld->oom |= !s->u.http.method;
        s->u.http.url = field_tmpl(L, ld, p, s, "url", "url");
        lua_getfield(L, -1, "body");
        if (lua_isstring(L, -1)) {
            lua_pop(L, 1);
            s->u.http.body = field_tmpl(L, ld, p, s, "body", "body");
        } else {
            lua_pop(L, 1);
        }
        lua_getfield(L, -1, "pass_body");
        s->u.http.pass_body = lua_toboolean(L, -1);
        lua_pop(L, 1);
        lua_getfield(L, -1, "headers");
        int n = (int)lua_objlen(L, -1);
        if (n) {
            s->u.http.hnames = calloc((size_t)n, sizeof(char *));
            s->u.http.hvalues = calloc((size_t)n, sizeof(rsl__tmpl *));
            ld->oom |= !s->u.http.hnames || !s->u.http.hvalues;
        }
        for (int i = 0; i < n && s->u.http.hnames && s->u.http.hvalues; i++) {
            lua_rawgeti(L, -1, i + 1);
            lua_rawgeti(L, -1, 1);
            s->u.http.hnames[i] = strdup(lua_tostring(L, -1));
            lua_pop(L, 1);
            s->u.http.nheaders = i + 1;
            ld->oom |= !s->u.http.hnames[i];
            s->u.http.hvalues[i] = idx_tmpl(L, ld, p, s, 2, "header value");
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    } else if (rsl__decl_is(L, "kind", "redis")) {
        s->kind = RSL_STEP_REDIS;
        lua_getfield(L, -1, "cmd");
        int n = (int)lua_objlen(L, -1);
        s->u.redis.argv = calloc((size_t)(n ? n : 1), sizeof(rsl__tmpl *));
        ld->oom |= !s->u.redis.argv;
        for (int i = 0; i < n && s->u.redis.argv; i++) {
            s->u.redis.argv[i] = idx_tmpl(L, ld, p, s, i + 1, "cmd");
            s->u.redis.argc = i + 1;
        }
        lua_pop(L, 1);
    } else if (rsl__decl_is(L, "kind", "redis_cache") || rsl__decl_is(L, "kind", "local_cache")) {
        s->kind = rsl__decl_is(L, "kind", "redis_cache") ? RSL_STEP_REDIS_CACHE
                                                          : RSL_STEP_LOCAL_CACHE;
        s->u.cache.key = field_tmpl(L, ld, p, s, "key", "key");
        s->u.cache.ttl_ns = (int64_t)rsl__decl_num(L, "ttl_ns");
        s->u.cache.max_entries = (int64_t)rsl__decl_num(L, "max_entries");
    } else {
        read_other(L, ld, p, s); /* a kind of the step table that reads itself */
        return;
    }
    s->ops = kind_ops(ld->o->step_ops, s->kind, NULL);
}

void rsl__step_free(rsl__step *s) {
    free(s->name);
    free(s->guards);
    switch (s->kind) {
    case RSL_STEP_STUB:
        free(s->u.stub.body);
        for (int i = 0; i < s->u.stub.nheaders; i++) {
            free(s->u.stub.headers[i].name);
            free(s->u.stub.headers[i].value);
        }
        free(s->u.stub.headers);
        break;
    case RSL_STEP_LUA:
        free(s->u.lua.refs); /* the references die with the states */
        break;
    case RSL_STEP_C:
        free(s->u.c.name);
        break;
    case RSL_STEP_LOCAL_CACHE:
    case RSL_STEP_REDIS_CACHE:
        rsl__tmpl_free(s->u.cache.key);
        break;
    case RSL_STEP_HTTP:
        free(s->u.http.method);
        rsl__tmpl_free(s->u.http.url);
        rsl__tmpl_free(s->u.http.body);
        for (int i = 0; i < s->u.http.nheaders; i++) {
            free(s->u.http.hnames[i]);
            rsl__tmpl_free(s->u.http.hvalues[i]);
        }
        free(s->u.http.hnames);
        free(s->u.http.hvalues);
        break;
    case RSL_STEP_REDIS:
        for (int i = 0; i < s->u.redis.argc; i++) {
            rsl__tmpl_free(s->u.redis.argv[i]);
        }
        free(s->u.redis.argv);
        break;
    case RSL_STEP_OTHER:
        if (s->ops && s->ops->free) {
            s->ops->free(s);
        }
        break;
    }
}
