/*
 * policy_load -- loading a policy directory into a generation (policy.h): Lua states that ran
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
 *
 * Layer: the policies (the top of their files), above the sandbox and the guards, below
 * the Lua binding.  Guard declarations are applied in policy_guards.c, steps read in
 * policy_steps.c, its small tools and the lookups by name are in policy_decl.c, the JSON
 * description in policy_describe.c.
 */
#include "policy_int.h"

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

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
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
/* [-0, +0] The policy declaration at the top of the stack into p (state 0). */
static void read_policy(lua_State *L, loader *ld, rsl__policy *p) {
    p->name = rsl__decl_str(L, "name", NULL);
    p->file = rsl__decl_str(L, "file", NULL);
    p->line = (int)rsl__decl_num(L, "line");
    p->deadline_ns = (int64_t)rsl__decl_num(L, "deadline_ns");
    p->fallback_mask = (uint32_t)rsl__decl_num(L, "fallback_mask");
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
        rsl__read_step(L, ld, p, &p->steps[i]);
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
    lua_getfield(L, -1, "user_route");
    p->user_route = lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, -1, "has_priority");
    p->has_priority = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (has_route) {
        p->route_refs = rsl__decl_refs(ld->g->nstates);
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
        if (j < 0 || (p->steps[j].kind == RSL_STEP_LUA) != rsl__decl_is(L, "kind", "lua")) {
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
            rsl__read_guard(L, ld, &ld->decls[i]);
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
            rsl__lines_add(&ld->warnings, "%s", lua_tostring(L, -1));
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
            e->method = rsl__decl_str(L, "method", NULL);
            e->path = rsl__decl_str(L, "path", NULL);
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
        rsl__lines_add(&ld->errs, "%s: out of memory (the limit is %zu bytes per state)", path,
                       rsl__sandbox_mem_limit(L));
    } else if (rc == RSL_SANDBOX_ELIMIT) {
        /* "path:line: run-time limit exceeded" from the hook: keep the place. */
        const char *tail = msg ? strstr(msg, ": run-time limit exceeded") : NULL;
        rsl__lines_add(&ld->errs, "%.*s: still running after the load time limit of %.0f s",
                       tail ? (int)(tail - msg) : (int)plen, tail ? msg : path,
                       (double)limit / 1e9);
    } else if (msg && strncmp(msg, path, plen) == 0 && msg[plen] == ':') {
        rsl__lines_add(&ld->errs, "%s", msg);
    } else {
        rsl__lines_add(&ld->errs, "%s: %s", path, msg ? msg : "error");
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
        rsl__lines_add(&ld->errs, "%s: the resilua module is missing from this build", ld->dir);
        return -1;
    }
    if (luaL_loadbuffer(L, m->src, m->len, "=resilua") != 0) {
        rsl__lines_add(&ld->errs, "%s: %s", ld->dir, lua_tostring(L, -1));
        lua_settop(L, top);
        return -1;
    }
    luaJIT_setmode(L, -1, LUAJIT_MODE_ALLFUNC | LUAJIT_MODE_OFF);
    lua_createtable(L, 0, 5);
    lua_createtable(L, RSL_OUTCOME__COUNT, 0);
    for (int i = 0; i < RSL_OUTCOME__COUNT; i++) {
        lua_pushstring(L, rsl_outcome_name((rsl_outcome)i));
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "outcomes");
    lua_pushinteger(L, RSL_POLICY_MAX_CHAIN);
    lua_setfield(L, -2, "max_chain");
    lua_pushinteger(L, RSL_POLICY_MAX_GUARDS);
    lua_setfield(L, -2, "max_guards");
    lua_pushinteger(L, RSL_PRIORITY_LOWEST);
    lua_setfield(L, -2, "lowest_priority");
    lua_pushinteger(L, RSL_KEYED_TOP_MAX);
    lua_setfield(L, -2, "max_top_k");
    lua_newtable(L); /* kinds: the step kinds the DSL does not know, name -> fields */
    for (const rsl__step_ops *const *k = ld->o->step_ops; k && *k; k++) {
        if ((*k)->kind == RSL_STEP_OTHER) {
            lua_newtable(L);
            for (int i = 0; (*k)->fields && (*k)->fields[i]; i++) {
                lua_pushstring(L, (*k)->fields[i]);
                lua_rawseti(L, -2, i + 1);
            }
            lua_setfield(L, -2, (*k)->name);
        }
    }
    lua_setfield(L, -2, "kinds");
    int rc = rsl__sandbox_pcall(L, 1, 2, limit); /* module ctl */
    if (rc != 0) {
        rsl__lines_add(&ld->errs, "%s: %s", ld->dir, lua_tostring(L, -1));
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
        rsl__lines_add(&ld->errs, "%s: %s", ld->dir, lua_tostring(L, -1));
        lua_settop(L, top);
        return -1;
    }
    if (!lua_istable(L, -2)) {
        int n = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
        for (int i = 0; i < n; i++) {
            lua_rawgeti(L, -1, i + 1);
            rsl__lines_add(&ld->errs, "%s", lua_tostring(L, -1));
            lua_pop(L, 1);
        }
        if (n == 0) {
            rsl__lines_add(&ld->errs, "%s: the declarations did not validate", ld->dir);
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
        rsl__lines_add(&ld->errs,
                       "%s: the policy files declared different policies in another worker's state "
                       "(declarations must not depend on time or chance)",
                       ld->dir);
        return -1;
    }
    if (ld->oom) {
        rsl__lines_add(&ld->errs, "%s: out of memory compiling the policies", ld->dir);
        return -1;
    }
    return ld->errs.n ? -1 : 0;
}

static int list_files(loader *ld) {
    DIR *d = opendir(ld->dir);
    if (!d) {
        rsl__lines_add(&ld->errs, "%s: cannot open the policy directory (%s)", ld->dir,
                       strerror(errno));
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
        rsl__lines_add(&ld->errs, "%s: no policy files (*.lua)", ld->dir);
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
        free(ld->decls[i].key);
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
            rsl__lines_add(&ld.errs, "%s: out of memory creating a Lua state", dir);
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
            if (rsl__plan_guards(&ld, registry) != 0) {
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
    rc = rsl__apply_guards(&ld, registry, report);
    if (o->registry_lock) {
        pthread_mutex_unlock(o->registry_lock);
    }
    if (rc < 0) {
        goto fail;
    }
    if (report) {
        report->warnings = rsl__lines_take(&ld.warnings);
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
            rsl__step_free(&p->steps[j]);
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
