/*
 * policy_int.h -- what the policy loader's files share (policy_load.c, policy_decl.c,
 * policy_guards.c, policy_steps.c, policy_describe.c): the loader's state, message lines
 * and the readers of a declaration table.  Not installed.
 *
 * Layer: the policies, above the sandbox and the guards.  The loader's thread only.
 */
#ifndef RSL_POLICY_INT_H
#define RSL_POLICY_INT_H

#include "keyed.h"
#include "policy.h"

#include <lua.h>
#include <stddef.h>

/* A growing text of newline-separated lines. */
typedef struct lines {
    char *p;
    size_t len, cap;
    int n;
    int oom;
} lines;

enum { PLAN_SAME, PLAN_ADD, PLAN_REPLACE };

typedef struct gdecl {
    rsl__guard_kind kind;
    char *name;
    char *file;
    int line;
    rsl__breaker_conf b;
    rsl__limiter_conf l;
    rsl__throttle_conf t;
    rsl__adaptive_conf a;
    int64_t max;
    int usable[RSL_PRIORITIES]; /* the reserve: per mille each priority may fill */
    int global;                 /* a limiter with scope = "global" */
    rsl__lease_conf lc;
    rsl__lease *lease;          /* its lease (plan) */
    int shared;                 /* a breaker with shared = {...} */
    rsl__fleet_conf fc;
    rsl__fleet *fleet;          /* its fleet (plan) */
    char *key;                  /* a keyed breaker's or limiter's template, or NULL */
    rsl__keyed_conf kc;
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

/* policy_decl.c: lines, and the fields of the declaration table at the top of L's stack
 * ([-0, +0]; the DSL validated them, so a missing one reads as 0 or NULL). */
void rsl__lines_add(lines *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
double rsl__decl_num(lua_State *L, const char *k);
char *rsl__decl_str(lua_State *L, const char *k, size_t *len); /* malloc'd copy */
int rsl__decl_is(lua_State *L, const char *k, const char *v);  /* field k is string v */
int *rsl__decl_refs(int n); /* n LUA_NOREFs, malloc'd */

/* policy_guards.c */
void rsl__read_guard(lua_State *L, loader *ld, gdecl *d);
/* Builds or finds every declared guard (PLAN_*), changing nothing; 0, or -1 with errors. */
int rsl__plan_guards(loader *ld, rsl__guards *reg);
char *rsl__lines_take(lines *l); /* the text, taken out of l (NULL when empty) */
/* Changes the registry to match the generation and fills rep; 0, or an error of the
 * registry (out of memory: every guard added is taken out again). */
int rsl__apply_guards(loader *ld, rsl__guards *reg, rsl__load_report *rep);

/* policy_steps.c */
void rsl__read_step(lua_State *L, loader *ld, const rsl__policy *p, rsl__step *s);
void rsl__step_free(rsl__step *s);

#endif
