/*
 * policy -- loading a policy directory into a generation (policy.h): Lua states that ran
 * every policy file with the `resilua` DSL, the compiled C structs the chain runs on, and
 * the guards resolved against the runtime's registry.
 *
 * Steps of a load, each of which may fail with nothing changed outside the new generation:
 *  1. list DIR/ *.lua in name order;
 *  2. per state: a sandbox, the embedded DSL (lua/resilua.lua), every file in its own
 *     environment (1 s each when there is a watchdog), then the DSL's finish(), which
 *     checks references across files and returns the declarations normalized (ns, masks);
 *  3. state 0's declarations become the structs of policy.h; every guard is built fresh
 *     (which validates its settings) or found in the registry (same name and kind);
 *     the other states only add their references to route and Lua step functions, matched
 *     by policy and step name;
 *  4. only then is the registry changed: new guards added (undone if adding fails), kind
 *     changes replaced, same-kind guards reconfigured in place, undeclared ones removed.
 * Errors are `file:line: message` lines, every one the load found (a failing file does not
 * stop the others from being checked; finish() runs only when every file loaded).
 *
 * Reading declarations back from Lua happens inside lua_cpcall: an allocation failure there
 * is an error, not a panic.  Threads: the loader's only; see policy.h.
 */
#include "policy.h"

#include "clock.h"
#include "window.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <lauxlib.h>
#include <luajit.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

extern const struct rsl__lua_module {
    const char *name;
    const char *src;
    size_t len;
} rsl__lua_modules[];

/* Declarations take microseconds; a policy file still running after a second will not end. */
#define LOAD_LIMIT_NS RSL_NS_PER_S

static const char *const outcome_names[] = {
#define RSL_X_(e, s, st) s,
    RSL_OUTCOMES(RSL_X_)
#undef RSL_X_
};

/* ---- small helpers -------------------------------------------------------------------- */

/* A growing text of newline-separated lines. */
typedef struct lines {
    char *p;
    size_t len, cap;
    int n;
    int oom;
} lines;

static void lines_add(lines *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void lines_add(lines *l, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        return;
    }
    size_t need = l->len + (size_t)n + 2;
    if (need > l->cap) {
        size_t cap = l->cap ? l->cap : 256;
        while (cap < need) {
            cap *= 2;
        }
        char *p = realloc(l->p, cap);
        if (!p) {
            l->oom = 1;
            return;
        }
        l->p = p;
        l->cap = cap;
    }
    if (l->n) {
        l->p[l->len++] = '\n';
    }
    va_start(ap, fmt);
    vsnprintf(l->p + l->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    l->len += (size_t)n;
    l->n++;
}

static char *memdup0(const char *s, size_t len) {
    char *p = malloc(len + 1);
    if (p) {
        memcpy(p, s, len);
        p[len] = 0;
    }
    return p;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* ---- reading declarations (the table at the top of the stack) --------------------------- */

/* [-0, +0] */
static double num(lua_State *L, const char *k) {
    lua_getfield(L, -1, k);
    double v = lua_tonumber(L, -1);
    lua_pop(L, 1);
    return v;
}

/* [-0, +0] A malloc'd copy of string field k (len may be NULL), or NULL when absent. */
static char *str(lua_State *L, const char *k, size_t *len) {
    lua_getfield(L, -1, k);
    char *s = NULL;
    if (lua_type(L, -1) == LUA_TSTRING) {
        size_t n;
        const char *v = lua_tolstring(L, -1, &n);
        s = memdup0(v, n);
        if (len) {
            *len = n;
        }
    }
    lua_pop(L, 1);
    return s;
}

/* [-0, +0] Whether field k is a string equal to v. */
static int str_is(lua_State *L, const char *k, const char *v) {
    lua_getfield(L, -1, k);
    int eq = lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), v) == 0;
    lua_pop(L, 1);
    return eq;
}

/* ---- guards --------------------------------------------------------------------------- */

enum { PLAN_SAME, PLAN_ADD, PLAN_REPLACE };

typedef struct gdecl {
    rsl__guard_kind kind;
    char *name;
    char *file;
    int line;
    rsl__breaker_conf b;
    rsl__limiter_conf l;
    int64_t max;
    int plan;
} gdecl;

typedef struct loader {
    const char *dir;
    const rsl__gen_opts *o;
    char **paths; /* "DIR/name.lua", sorted */
    int npaths;
    lines errs;
    lines warnings;
    gdecl *decls; /* parallel to gen->guards */
    int ndecls;
    rsl__gen *g;
    int state; /* the state being compiled or attached */
    int ref;   /* registry ref of the declarations being read */
    int oom;
} loader;

/* [-0, +0] The guard declaration at the top of the stack. */
static void read_guard(lua_State *L, loader *ld, gdecl *d) {
    d->name = str(L, "name", NULL);
    d->file = str(L, "file", NULL);
    d->line = (int)num(L, "line");
    if (!d->name || !d->file) {
        ld->oom = 1;
    }
    if (str_is(L, "kind", "breaker")) {
        d->kind = RSL_GUARD_BREAKER;
        rsl__breaker_conf_default(&d->b);
        d->b.window_ns = (int64_t)num(L, "window_ns");
        d->b.buckets = (int)num(L, "buckets");
        int stripes = ld->o->stripes;
        d->b.stripes = stripes < 1                        ? 1
                       : stripes > RSL_WINDOW_MAX_STRIPES ? RSL_WINDOW_MAX_STRIPES
                                                          : stripes;
        d->b.min_calls = (int64_t)num(L, "min_calls");
        d->b.failure_rate = num(L, "failure_rate");
        d->b.slow_call_ns = (int64_t)num(L, "slow_call_ns");
        d->b.slow_rate = num(L, "slow_rate");
        d->b.open_for_ns = (int64_t)num(L, "open_for_ns");
        d->b.backoff_factor = num(L, "backoff_factor");
        d->b.backoff_max_ns = (int64_t)num(L, "backoff_max_ns");
        d->b.jitter = num(L, "jitter");
        d->b.probes = (int)num(L, "probes");
        d->b.count_mask = (uint32_t)num(L, "count_mask");
    } else if (str_is(L, "kind", "limiter")) {
        d->kind = RSL_GUARD_LIMITER;
        d->l.rate = num(L, "rate");
        d->l.per_ns = (int64_t)num(L, "per_ns");
        d->l.burst = num(L, "burst");
    } else {
        d->kind = RSL_GUARD_BULKHEAD;
        d->max = (int64_t)num(L, "max");
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
    }
    return NULL;
}

/* Builds (which validates) or finds every declared guard; changes nothing in `reg`.
 * g->guards[i] is decls[i]'s guard: both sorted by name. */
static int plan_guards(loader *ld, rsl__guards *reg) {
    rsl__gen *g = ld->g;
    for (int i = 0; i < ld->ndecls; i++) {
        gdecl *d = &ld->decls[i];
        rsl__guard *fresh = guard_new(d);
        if (!fresh) {
            lines_add(&ld->errs, "%s:%d: %s \"%s\": settings refused (or out of memory)", d->file,
                      d->line, rsl__guard_kind_name(d->kind), d->name);
            return -1;
        }
        rsl__guard *old = rsl__guards_find(reg, d->name);
        if (old && old->kind == d->kind) {
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
           a->probes == b->probes && a->count_mask == b->count_mask;
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
    }
    return RSL_EINVAL;
}

static char *take(lines *l) {
    char *p = l->n ? l->p : NULL;
    if (!p) {
        free(l->p);
    }
    memset(l, 0, sizeof(*l));
    return p;
}

/* Changes the registry to match the generation (see the file comment, step 4). */
static int apply_guards(loader *ld, rsl__guards *reg, rsl__load_report *rep) {
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
            lines_add(&ld->errs, "%s: out of memory applying guards", ld->dir);
            return rc;
        }
    }
    /* From here nothing fails: a breaker that cannot get a new window keeps its old one. */
    for (int i = 0; i < ld->ndecls; i++) {
        gdecl *d = &ld->decls[i];
        switch (d->plan) {
        case PLAN_ADD:
            lines_add(&added, "%s", d->name);
            break;
        case PLAN_REPLACE:
            rsl__guards_remove(reg, d->name);
            rsl__guards_add(reg, g->guards[i]); /* cannot fail: a slot was just freed */
            lines_add(&changed, "%s", d->name);
            lines_add(&reset, "%s", d->name);
            break;
        case PLAN_SAME: {
            int r = reconfigure(ld, d, g->guards[i]);
            if (r < 0) { /* out of memory for a new window: the old settings stay */
                lines_add(&ld->warnings, "%s:%d: %s \"%s\": out of memory, kept its old settings",
                          d->file, d->line, rsl__guard_kind_name(d->kind), d->name);
            } else if (r == 0) {
                lines_add(&kept, "%s", d->name);
            } else {
                lines_add(&changed, "%s", d->name);
                if (r == 2) {
                    lines_add(&reset, "%s", d->name);
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
            lines_add(&removed, "%s", gone[i]);
            free(gone[i]);
        }
    }
    free(gone);
    if (rep) {
        rep->kept = take(&kept);
        rep->changed = take(&changed);
        rep->added = take(&added);
        rep->removed = take(&removed);
        rep->reset = take(&reset);
    } else {
        free(kept.p);
        free(changed.p);
        free(added.p);
        free(removed.p);
        free(reset.p);
    }
    return rc;
}

/* ---- compiling policies --------------------------------------------------------------- */

static int cmp_policy(const void *a, const void *b) {
    return strcmp(((const rsl__policy *)a)->name, ((const rsl__policy *)b)->name);
}

static int cmp_step(const void *a, const void *b) {
    return strcmp(((const rsl__step *)a)->name, ((const rsl__step *)b)->name);
}

static int cmp_decl(const void *a, const void *b) {
    return strcmp(((const gdecl *)a)->name, ((const gdecl *)b)->name);
}

static int *new_refs(int n) {
    int *r = malloc((size_t)n * sizeof(int));
    for (int i = 0; r && i < n; i++) {
        r[i] = LUA_NOREF;
    }
    return r;
}

/* [-0, +0] Parses the string at stack index idx as a template; a parse error is a load
 * error naming the step (the DSL checks templates too, so this is a second line). */
static rsl__tmpl *tmpl_at(lua_State *L, loader *ld, const rsl__policy *p, const rsl__step *s,
                          int idx, const char *what) {
    size_t len = 0;
    const char *v = lua_tolstring(L, idx, &len);
    char msg[256] = "out of memory";
    rsl__tmpl *t = v ? rsl__tmpl_parse(v, len, msg, sizeof(msg)) : NULL;
    if (!t) {
        lines_add(&ld->errs, "%s:%d: policy \"%s\": step \"%s\": %s: %s", p->file, s->line,
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

/* [-0, +0] The step declaration at the top of the stack into s. */
static void read_step(lua_State *L, loader *ld, const rsl__policy *p, rsl__step *s) {
    s->name = str(L, "name", NULL);
    s->line = (int)num(L, "line");
    s->timeout_ns = (int64_t)num(L, "timeout_ns");
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
        s->retry.attempts = (int)num(L, "attempts");
        lua_getfield(L, -1, "exponential");
        s->retry.exponential = lua_toboolean(L, -1);
        lua_pop(L, 1);
        s->retry.base_ns = (int64_t)num(L, "base_ns");
        s->retry.max_ns = (int64_t)num(L, "max_ns");
        s->retry.jitter = str_is(L, "jitter", "none")           ? RSL_JITTER_NONE
                          : str_is(L, "jitter", "equal")        ? RSL_JITTER_EQUAL
                          : str_is(L, "jitter", "decorrelated") ? RSL_JITTER_DECORRELATED
                                                                : RSL_JITTER_FULL;
        s->retry.on_mask = (uint32_t)num(L, "on_mask");
        s->retry.budget = num(L, "budget");
    }
    lua_pop(L, 1);

    s->fault = (rsl__fault){.abort = -1};
    lua_getfield(L, -1, "fault");
    if (lua_istable(L, -1)) {
        s->has_fault = 1;
        s->fault.delay_ns = (int64_t)num(L, "delay_ns");
        s->fault.delay_percent = num(L, "delay_percent");
        s->fault.abort = (int)num(L, "abort");
        s->fault.abort_percent = num(L, "abort_percent");
    }
    lua_pop(L, 1);

    if (str_is(L, "kind", "stub")) {
        s->kind = RSL_STEP_STUB;
        s->u.stub.status = (int)num(L, "status");
        s->u.stub.body = str(L, "body", &s->u.stub.body_len);
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
    } else if (str_is(L, "kind", "lua")) {
        s->kind = RSL_STEP_LUA;
        s->u.lua.refs = new_refs(ld->g->nstates);
        ld->oom |= !s->u.lua.refs;
    } else if (str_is(L, "kind", "c")) {
        s->kind = RSL_STEP_C;
        s->u.c.name = str(L, "cname", NULL);
        ld->oom |= !s->u.c.name;
    } else if (str_is(L, "kind", "http")) {
        s->kind = RSL_STEP_HTTP;
        s->u.http.method = str(L, "method", NULL);
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
    } else if (str_is(L, "kind", "redis")) {
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
    } else {
        s->kind = str_is(L, "kind", "redis_cache") ? RSL_STEP_REDIS_CACHE : RSL_STEP_LOCAL_CACHE;
        s->u.cache.key = field_tmpl(L, ld, p, s, "key", "key");
        s->u.cache.ttl_ns = (int64_t)num(L, "ttl_ns");
        s->u.cache.max_entries = (int64_t)num(L, "max_entries");
    }
    s->ops = ld->o->step_ops ? ld->o->step_ops[s->kind] : NULL;
}

/* [-0, +0] The policy declaration at the top of the stack into p (state 0). */
static void read_policy(lua_State *L, loader *ld, rsl__policy *p) {
    p->name = str(L, "name", NULL);
    p->file = str(L, "file", NULL);
    p->line = (int)num(L, "line");
    p->deadline_ns = (int64_t)num(L, "deadline_ns");
    p->fallback_mask = (uint32_t)num(L, "fallback_mask");
    if (!p->name || !p->file) {
        ld->oom = 1;
        return;
    }
    lua_getfield(L, -1, "steps");
    int n = (int)lua_objlen(L, -1);
    p->steps = calloc((size_t)n, sizeof(rsl__step));
    if (!p->steps) {
        ld->oom = 1;
        lua_pop(L, 1);
        return;
    }
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, -1, i + 1);
        read_step(L, ld, p, &p->steps[i]);
        lua_pop(L, 1);
        p->nsteps = i + 1;
        if (!p->steps[i].name) {
            break;
        }
    }
    lua_pop(L, 1);
    if (ld->oom) {
        return;
    }
    qsort(p->steps, (size_t)p->nsteps, sizeof(rsl__step), cmp_step);

    lua_getfield(L, -1, "chain");
    n = (int)lua_objlen(L, -1);
    p->chain = calloc((size_t)n, sizeof(int));
    for (int i = 0; i < n && p->chain; i++) {
        lua_rawgeti(L, -1, i + 1);
        size_t len;
        const char *name = lua_tolstring(L, -1, &len);
        p->chain[i] = rsl__policy_step(p, name, len); /* the DSL checked it */
        lua_pop(L, 1);
        p->nchain = i + 1;
    }
    ld->oom |= !p->chain;
    lua_pop(L, 1);

    lua_getfield(L, -1, "route");
    int has_route = lua_isfunction(L, -1);
    lua_pop(L, 1);
    if (has_route) {
        p->route_refs = new_refs(ld->g->nstates);
        ld->oom |= !p->route_refs;
    }
}

/* [-0, +0] Takes this state's references to p's functions (declaration at the top). */
static int attach_refs(lua_State *L, loader *ld, rsl__policy *p) {
    if (p->route_refs) {
        lua_getfield(L, -1, "route");
        if (!lua_isfunction(L, -1)) {
            lua_pop(L, 1);
            return -1;
        }
        p->route_refs[ld->state] = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_getfield(L, -1, "steps");
    int n = (int)lua_objlen(L, -1);
    if (n != p->nsteps) {
        lua_pop(L, 1);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, -1, i + 1);
        lua_getfield(L, -1, "name");
        size_t len;
        const char *name = lua_tolstring(L, -1, &len);
        int j = name ? rsl__policy_step(p, name, len) : -1;
        lua_pop(L, 1);
        if (j < 0 || (p->steps[j].kind == RSL_STEP_LUA) != str_is(L, "kind", "lua")) {
            lua_pop(L, 2);
            return -1;
        }
        if (p->steps[j].kind == RSL_STEP_LUA) {
            lua_getfield(L, -1, "run");
            p->steps[j].u.lua.refs[ld->state] = luaL_ref(L, LUA_REGISTRYINDEX);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return 0;
}

/* [-0, +0] (through lua_cpcall, ud = the loader) Compiles state 0's declarations, or
 * attaches state ld->state's references. */
static int compile(lua_State *L) {
    loader *ld = lua_touserdata(L, 1);
    rsl__gen *g = ld->g;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ld->ref); /* decls */

    if (ld->state == 0) {
        lua_getfield(L, -1, "guards");
        int n = (int)lua_objlen(L, -1);
        ld->decls = calloc((size_t)(n ? n : 1), sizeof(gdecl));
        g->guards = calloc((size_t)(n ? n : 1), sizeof(rsl__guard *));
        if (!ld->decls || !g->guards) {
            ld->oom = 1;
            return 0;
        }
        for (int i = 0; i < n; i++) {
            lua_rawgeti(L, -1, i + 1);
            read_guard(L, ld, &ld->decls[i]);
            lua_pop(L, 1);
            ld->ndecls = i + 1;
        }
        lua_pop(L, 1);
        if (ld->oom) {
            return 0;
        }
        qsort(ld->decls, (size_t)ld->ndecls, sizeof(gdecl), cmp_decl);

        lua_getfield(L, -1, "warnings");
        n = (int)lua_objlen(L, -1);
        for (int i = 0; i < n; i++) {
            lua_rawgeti(L, -1, i + 1);
            lines_add(&ld->warnings, "%s", lua_tostring(L, -1));
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
        return 0; /* policies after the guards exist: see rsl__gen_load */
    }
    if (ld->state < 0) { /* state 0, second half: policies and expose */
        lua_getfield(L, -1, "policies");
        int n = (int)lua_objlen(L, -1);
        g->policies = calloc((size_t)(n ? n : 1), sizeof(rsl__policy));
        if (!g->policies) {
            ld->oom = 1;
            return 0;
        }
        for (int i = 0; i < n && !ld->oom; i++) {
            lua_rawgeti(L, -1, i + 1);
            read_policy(L, ld, &g->policies[i]);
            g->npolicies = i + 1;
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
        if (ld->oom) {
            return 0;
        }
        qsort(g->policies, (size_t)g->npolicies, sizeof(rsl__policy), cmp_policy);

        lua_getfield(L, -1, "expose");
        n = (int)lua_objlen(L, -1);
        g->expose = n ? calloc((size_t)n, sizeof(rsl__expose)) : NULL;
        for (int i = 0; i < n && g->expose; i++) {
            lua_rawgeti(L, -1, i + 1);
            rsl__expose *e = &g->expose[i];
            e->method = str(L, "method", NULL);
            e->path = str(L, "path", NULL);
            lua_getfield(L, -1, "policy");
            rsl__policy *p = rsl__gen_policy(g, lua_tostring(L, -1));
            e->policy = p ? (int)(p - g->policies) : -1;
            lua_pop(L, 2);
            g->nexpose = i + 1;
            ld->oom |= !e->method || !e->path || !p;
        }
        ld->oom |= n && !g->expose;
        lua_pop(L, 1);
    }
    /* Function references, for every state (state 0 in the second half). */
    int state = ld->state < 0 ? 0 : ld->state;
    int saved = ld->state;
    ld->state = state;
    lua_getfield(L, -1, "policies");
    int n = (int)lua_objlen(L, -1);
    if (n != g->npolicies) {
        ld->oom = -1;
    }
    for (int i = 0; i < n && !ld->oom; i++) {
        lua_rawgeti(L, -1, i + 1);
        lua_getfield(L, -1, "name");
        rsl__policy *p = rsl__gen_policy(g, lua_tostring(L, -1));
        lua_pop(L, 1);
        if (!p || attach_refs(L, ld, p) != 0) {
            ld->oom = -1; /* the states disagree */
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    ld->state = saved;
    return 0;
}

/* ---- running the files ------------------------------------------------------------------ */

static const struct rsl__lua_module *dsl_module(void) {
    for (const struct rsl__lua_module *m = rsl__lua_modules; m->name; m++) {
        if (strcmp(m->name, "resilua") == 0) {
            return m;
        }
    }
    return NULL;
}

/* [-1, +0] Records the error at the top of the stack for `path`. */
static void file_error(lua_State *L, loader *ld, const char *path, int rc, int64_t limit) {
    const char *msg = lua_tostring(L, -1);
    size_t plen = strlen(path);
    if (rc == LUA_ERRMEM) {
        lines_add(&ld->errs, "%s: out of memory (the limit is %zu bytes per state)", path,
                  rsl__sandbox_mem_limit(L));
    } else if (rc == RSL_SANDBOX_ELIMIT) {
        /* "path:line: run-time limit exceeded" from the hook: keep the place. */
        const char *tail = msg ? strstr(msg, ": run-time limit exceeded") : NULL;
        lines_add(&ld->errs, "%.*s: still running after the load time limit of %.0f s",
                  tail ? (int)(tail - msg) : (int)plen, tail ? msg : path, (double)limit / 1e9);
    } else if (msg && strncmp(msg, path, plen) == 0 && msg[plen] == ':') {
        lines_add(&ld->errs, "%s", msg);
    } else {
        lines_add(&ld->errs, "%s: %s", path, msg ? msg : "error");
    }
    lua_pop(L, 1);
}

/* [-0, +0] Runs the DSL and every file in L; on success the declarations are in the
 * registry as ld->ref. */
static int run_state(lua_State *L, loader *ld) {
    int64_t limit = ld->o->wd ? LOAD_LIMIT_NS : 0;
    int top = lua_gettop(L);
    const struct rsl__lua_module *m = dsl_module();
    if (!m) {
        lines_add(&ld->errs, "%s: the resilua module is missing from this build", ld->dir);
        return -1;
    }
    if (luaL_loadbuffer(L, m->src, m->len, "=resilua") != 0) {
        lines_add(&ld->errs, "%s: %s", ld->dir, lua_tostring(L, -1));
        lua_settop(L, top);
        return -1;
    }
    luaJIT_setmode(L, -1, LUAJIT_MODE_ALLFUNC | LUAJIT_MODE_OFF);
    lua_createtable(L, 0, 3);
    lua_createtable(L, RSL_OUTCOME__COUNT, 0);
    for (int i = 0; i < RSL_OUTCOME__COUNT; i++) {
        lua_pushstring(L, outcome_names[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "outcomes");
    lua_pushinteger(L, RSL_POLICY_MAX_CHAIN);
    lua_setfield(L, -2, "max_chain");
    lua_pushinteger(L, RSL_POLICY_MAX_GUARDS);
    lua_setfield(L, -2, "max_guards");
    int rc = rsl__sandbox_pcall(L, 1, 2, limit); /* module ctl */
    if (rc != 0) {
        lines_add(&ld->errs, "%s: %s", ld->dir, lua_tostring(L, -1));
        lua_settop(L, top);
        return -1;
    }
    lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
    lua_pushvalue(L, -3);
    lua_setfield(L, -2, "resilua");
    lua_pop(L, 1); /* module ctl */

    int failed = 0;
    for (int i = 0; i < ld->npaths; i++) {
        const char *path = ld->paths[i];
        rc = rsl__sandbox_loadfile(L, path);
        if (rc == 0) {
            rc = rsl__sandbox_pcall(L, 0, 0, limit);
        }
        if (rc != 0) {
            file_error(L, ld, path, rc, limit);
            failed = 1;
        }
    }
    if (failed) {
        lua_settop(L, top);
        return -1;
    }
    lua_getfield(L, -1, "finish");
    rc = rsl__sandbox_pcall(L, 0, 2, limit); /* module ctl decls errs */
    if (rc != 0) {
        lines_add(&ld->errs, "%s: %s", ld->dir, lua_tostring(L, -1));
        lua_settop(L, top);
        return -1;
    }
    if (!lua_istable(L, -2)) {
        int n = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
        for (int i = 0; i < n; i++) {
            lua_rawgeti(L, -1, i + 1);
            lines_add(&ld->errs, "%s", lua_tostring(L, -1));
            lua_pop(L, 1);
        }
        if (n == 0) {
            lines_add(&ld->errs, "%s: the declarations did not validate", ld->dir);
        }
        lua_settop(L, top);
        return -1;
    }
    lua_pop(L, 1);
    ld->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_settop(L, top);
    return 0;
}

/* [-0, +0] Runs compile() protected for ld->state; 0 or -1 (with an error line). */
static int compile_protected(lua_State *L, loader *ld) {
    ld->oom = 0;
    int rc = lua_cpcall(L, compile, ld);
    if (rc != 0) {
        lua_pop(L, 1);
        ld->oom = 1;
    }
    if (ld->oom == -1) {
        lines_add(&ld->errs,
                  "%s: the policy files declared different policies in another worker's state "
                  "(declarations must not depend on time or chance)",
                  ld->dir);
        return -1;
    }
    if (ld->oom) {
        lines_add(&ld->errs, "%s: out of memory compiling the policies", ld->dir);
        return -1;
    }
    return ld->errs.n ? -1 : 0;
}

static int list_files(loader *ld) {
    DIR *d = opendir(ld->dir);
    if (!d) {
        lines_add(&ld->errs, "%s: cannot open the policy directory (%s)", ld->dir, strerror(errno));
        return -1;
    }
    size_t dlen = strlen(ld->dir);
    const char *sep = dlen && ld->dir[dlen - 1] == '/' ? "" : "/";
    int cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        if (e->d_name[0] == '.' || n < 5 || strcmp(e->d_name + n - 4, ".lua") != 0) {
            continue;
        }
        char *path = malloc(dlen + n + 2);
        if (!path) {
            break;
        }
        snprintf(path, dlen + n + 2, "%s%s%s", ld->dir, sep, e->d_name);
        struct stat st;
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
            free(path);
            continue;
        }
        if (ld->npaths == cap) {
            cap = cap ? cap * 2 : 16;
            char **v = realloc(ld->paths, (size_t)cap * sizeof(char *));
            if (!v) {
                free(path);
                break;
            }
            ld->paths = v;
        }
        ld->paths[ld->npaths++] = path;
    }
    closedir(d);
    if (ld->npaths == 0) {
        lines_add(&ld->errs, "%s: no policy files (*.lua)", ld->dir);
        return -1;
    }
    qsort(ld->paths, (size_t)ld->npaths, sizeof(char *), cmp_str);
    return 0;
}

static void loader_free(loader *ld) {
    for (int i = 0; i < ld->npaths; i++) {
        free(ld->paths[i]);
    }
    free(ld->paths);
    for (int i = 0; i < ld->ndecls; i++) {
        free(ld->decls[i].name);
        free(ld->decls[i].file);
    }
    free(ld->decls);
    free(ld->errs.p);
    free(ld->warnings.p);
}

int rsl__gen_load(const char *dir, rsl__guards *registry, const rsl__gen_opts *o, rsl__gen **out,
                  rsl__load_report *report, char *err, size_t errlen) {
    if (err && errlen) {
        err[0] = 0;
    }
    if (report) {
        memset(report, 0, sizeof(*report));
    }
    if (!dir || !registry || !o || !out || o->nstates < 1) {
        return RSL_EINVAL;
    }
    *out = NULL;
    loader ld = {.dir = dir, .o = o, .ref = LUA_NOREF};
    int rc = RSL_ELOAD;
    rsl__gen *g = ld.g = calloc(1, sizeof(*g));
    if (!g || !(g->states = calloc((size_t)o->nstates, sizeof(lua_State *)))) {
        rc = RSL_ENOMEM;
        goto fail;
    }
    g->nstates = o->nstates;
    atomic_init(&g->refs, 1);
    if (list_files(&ld) != 0) {
        goto fail;
    }
    for (int i = 0; i < o->nstates; i++) {
        lua_State *L = g->states[i] = rsl__sandbox_new(o->mem_limit, o->wd);
        if (!L) {
            lines_add(&ld.errs, "%s: out of memory creating a Lua state", dir);
            rc = RSL_ENOMEM;
            goto fail;
        }
        if (run_state(L, &ld) != 0) {
            goto fail;
        }
        ld.state = i;
        if (compile_protected(L, &ld) != 0) {
            goto fail;
        }
        if (i == 0) {
            /* Guards exist before the steps that point at them. */
            if (plan_guards(&ld, registry) != 0) {
                goto fail;
            }
            ld.state = -1;
            if (compile_protected(L, &ld) != 0) {
                goto fail;
            }
        }
        luaL_unref(L, LUA_REGISTRYINDEX, ld.ref);
        ld.ref = LUA_NOREF;
        lua_gc(L, LUA_GCCOLLECT, 0); /* the DSL's load-time garbage */
    }
    /* Only now, with the whole directory loaded and validated, does the registry change;
     * under the registry lock, which is held for this short C-only part, never for the
     * Lua load above. */
    if (o->registry_lock) {
        pthread_mutex_lock(o->registry_lock);
    }
    rc = apply_guards(&ld, registry, report);
    if (o->registry_lock) {
        pthread_mutex_unlock(o->registry_lock);
    }
    if (rc < 0) {
        goto fail;
    }
    if (report) {
        report->warnings = take(&ld.warnings);
    }
    loader_free(&ld);
    *out = g;
    return 0;
fail:
    if (err && errlen) {
        snprintf(err, errlen, "%s", ld.errs.n ? ld.errs.p : "out of memory loading policies");
    }
    if (report) {
        rsl__load_report_free(report);
    }
    loader_free(&ld);
    rsl__gen_free(g);
    return rc == 0 ? RSL_ELOAD : rc;
}

/* ---- the generation ----------------------------------------------------------------------- */

static void step_free(rsl__step *s) {
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
    }
}

void rsl__gen_free(rsl__gen *g) {
    if (!g) {
        return;
    }
    for (int i = 0; g->states && i < g->nstates; i++) {
        rsl__sandbox_free(g->states[i]);
    }
    free(g->states);
    for (int i = 0; i < g->npolicies; i++) {
        rsl__policy *p = &g->policies[i];
        for (int j = 0; j < p->nsteps; j++) {
            step_free(&p->steps[j]);
        }
        free(p->steps);
        free(p->chain);
        free(p->route_refs);
        free(p->name);
        free(p->file);
    }
    free(g->policies);
    for (int i = 0; i < g->nguards; i++) {
        rsl__guard_unref(g->guards[i]);
    }
    free(g->guards);
    for (int i = 0; i < g->nexpose; i++) {
        free(g->expose[i].method);
        free(g->expose[i].path);
    }
    free(g->expose);
    free(g);
}

rsl__policy *rsl__gen_policy(const rsl__gen *g, const char *name) {
    if (!g || !name) {
        return NULL;
    }
    int lo = 0, hi = g->npolicies;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(g->policies[mid].name, name);
        if (c == 0) {
            return &g->policies[mid];
        }
        if (c < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return NULL;
}

int rsl__policy_step(const rsl__policy *p, const char *name, size_t len) {
    int lo = 0, hi = p->nsteps;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        const char *s = p->steps[mid].name;
        size_t slen = strlen(s);
        int c = memcmp(s, name, slen < len ? slen : len);
        if (c == 0) {
            c = slen < len ? -1 : slen > len ? 1 : 0;
        }
        if (c == 0) {
            return mid;
        }
        if (c < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return -1;
}

rsl__guard *rsl__gen_guard(const rsl__gen *g, const char *name) {
    if (!g || !name) {
        return NULL;
    }
    int lo = 0, hi = g->nguards;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(g->guards[mid]->name, name);
        if (c == 0) {
            return g->guards[mid];
        }
        if (c < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return NULL;
}

void rsl__load_report_free(rsl__load_report *r) {
    if (!r) {
        return;
    }
    free(r->kept);
    free(r->changed);
    free(r->added);
    free(r->removed);
    free(r->reset);
    free(r->warnings);
    memset(r, 0, sizeof(*r));
}

/* ---- describe ----------------------------------------------------------------------------- */

static json_t *outcome_list(uint32_t mask) {
    json_t *a = json_array();
    for (int i = 0; i < RSL_OUTCOME__COUNT; i++) {
        if (mask & (1u << i)) {
            json_array_append_new(a, json_string(outcome_names[i]));
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
        break;
    }
    case RSL_GUARD_LIMITER: {
        rsl__limiter_conf c;
        rsl__limiter_conf_get(g->u.limiter, &c);
        json_object_set_new(o, "rate", json_real(c.rate));
        json_object_set_new(o, "per_ms", ms(c.per_ns));
        json_object_set_new(o, "burst", json_real(c.burst));
        break;
    }
    case RSL_GUARD_BULKHEAD:
        json_object_set_new(o, "max", json_integer(rsl__bulkhead_max(g->u.bulkhead)));
        break;
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
    }
    return "unknown";
}

static json_t *step_json(const rsl__step *s) {
    static const char *const jitters[] = {"none", "full", "equal", "decorrelated"};
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(s->name));
    json_object_set_new(o, "kind", json_string(step_kind_name(s->kind)));
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
            json_object_set_new(f, "abort", json_string(outcome_names[s->fault.abort]));
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
        json_object_set_new(o, "route", json_boolean(p->route_refs != NULL));
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
