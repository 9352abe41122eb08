/*
 * policy_decl -- the policy loader's small tools: lines of messages, the readers of a
 * declaration's fields (the table the DSL normalized, at the top of the stack), and
 * finding a policy, a step or a guard of a loaded generation by name.
 *
 * Layer: the policies, the lowest of their files (policy_load.c, policy_guards.c and
 * policy_steps.c use it).  The loader's thread; the lookups from any thread (a generation
 * is immutable).
 */
#include "policy_int.h"

#include <lauxlib.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- small helpers -------------------------------------------------------------------- */

void rsl__lines_add(lines *l, const char *fmt, ...) {
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

/* ---- reading declarations (the table at the top of the stack) --------------------------- */

/* [-0, +0] */
double rsl__decl_num(lua_State *L, const char *k) {
    lua_getfield(L, -1, k);
    double v = lua_tonumber(L, -1);
    lua_pop(L, 1);
    return v;
}

/* [-0, +0] A malloc'd copy of string field k (len may be NULL), or NULL when absent. */
char *rsl__decl_str(lua_State *L, const char *k, size_t *len) {
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
int rsl__decl_is(lua_State *L, const char *k, const char *v) {
    lua_getfield(L, -1, k);
    int eq = lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), v) == 0;
    lua_pop(L, 1);
    return eq;
}

int *rsl__decl_refs(int n) {
    int *r = malloc((size_t)n * sizeof(int));
    for (int i = 0; r && i < n; i++) {
        r[i] = LUA_NOREF;
    }
    return r;
}

/* ---- lookups ---------------------------------------------------------------------------- */

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
