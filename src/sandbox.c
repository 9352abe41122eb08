/*
 * sandbox -- the Lua states policies run in (sandbox.h): a capped allocator, an
 * allow-listed environment per policy file, and run-time limits enforced by a watchdog
 * thread that also stop loops LuaJIT would have compiled.
 *
 * Layer: Lua, above the base: the policies load into sandboxed states.
 *
 * Memory.  Each state's allocator `ud` is its `sbx`, which counts the bytes in use.  The
 * cap applies while policy code runs (inside rsl__sandbox_pcall): past it the allocator
 * returns NULL and Lua raises a memory error there, where it is caught.  Outside, C code on
 * the state (pushing a request, reading declarations, a full GC) is never refused, so an
 * unprotected API call cannot panic because a policy filled its state.
 *
 * Time.  No trace is ever compiled in a sandbox state: the JIT engine is off for the whole
 * state, and every chunk loaded through here (policy files, the DSL) is also marked
 * no-JIT with all its functions (LUAJIT_MODE_ALLFUNC), so a state whose engine someone
 * turns back on still interprets policy code.  A count hook fires in the interpreter, so:
 * each outermost rsl__sandbox_pcall is an "entry" numbered by `seq` (odd inside, even
 * outside), the watchdog notes when it first sees an entry and, once that entry has run
 * past its limit, arms lua_sethook(L, hook, LUA_MASKCOUNT, 1) from its own thread (as
 * luajit.c does from a signal handler).  The hook raises on every instruction until that
 * entry returns; the policy-visible `pcall` rethrows limit and memory errors, so policy
 * code cannot catch them and carry on.
 *
 * Races with the watchdog.  lua_sethook is a plain read-modify-write of the state's hook
 * mask, as are LuaJIT's own updates of it on the Lua thread (after any failed pcall), so
 *  - hook changes from our two threads are serialized by `hook_lock`;
 *  - an entry that ends while the watchdog arms it cannot leave a stale hook behind: the
 *    watchdog raises `arming`, then re-reads `seq` (both seq_cst), the exit path writes
 *    `seq`, then reads `arming` and `armed` (seq_cst): one of them sees the other, and the
 *    exit path unhooks under the lock (Dekker's handshake).  The hook still checks that it
 *    is for the current entry and unhooks itself otherwise;
 *  - an arming LuaJIT overwrites on the Lua thread (it restores the mask after a failed
 *    pcall) is repeated on each tick until the hook has fired for that entry.
 * Hot path cost: one release store on entry, one seq_cst store and two loads on exit.
 *
 * Threads: a state belongs to one thread at a time; the watchdog reads the atomics of the
 * states registered with it and arms hooks, under its own lock.
 */
#include "sandbox.h"

#include "clock.h"

#include <lauxlib.h>
#include <lua.h>
#include <luajit.h>
#include <lualib.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* 2 ms: a stopped call overruns its limit by at most two ticks (first sight, then arming),
 * 4% of the default 50 ms route limit; a tick scans a few states (well under 1 us), so 500
 * wake-ups a second cost nothing measurable. */
#define DEFAULT_TICK_NS (2 * RSL_NS_PER_MS)

typedef struct sbx {
    /* The Lua thread's own. */
    size_t used, limit; /* bytes */
    int enforce;        /* inside an entry: the cap applies */
    int mem_hit;        /* the allocator refused during this entry */
    int limit_hit;      /* the hook raised during this entry */
    int depth;          /* nested rsl__sandbox_pcall */
    uint64_t seqv;      /* this thread's copy of seq */
    int64_t cur_limit;  /* last limit stored in limit_ns */
    lua_State *L;
    rsl__watchdog *wd;

    /* Shared with the watchdog. */
    _Atomic uint64_t seq;      /* odd: inside entry seq */
    _Atomic int64_t limit_ns;  /* of the current entry; <= 0 none */
    _Atomic uint64_t armed;    /* entry the hook was armed for */
    _Atomic uint64_t fired;    /* entry the hook raised in */
    _Atomic int arming;        /* the watchdog is arming (handshake with the exit path) */
    pthread_mutex_t hook_lock; /* serializes lua_sethook between the two threads */

    /* The watchdog's own, under its lock. */
    uint64_t wd_seq;  /* entry last seen */
    int64_t wd_since; /* when it was first seen */
} sbx;

struct rsl__watchdog {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int stop;
    int64_t tick_ns;
    sbx **v;
    int n, cap;
};

static char template_key; /* registry[&template_key]: what policy environments are made of */

static sbx *get(lua_State *L) {
    void *ud;
    lua_getallocf(L, &ud);
    return ud;
}

/* ---- memory ----------------------------------------------------------------------------- */

static void *sbx_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    sbx *s = ud;
    if (nsize == 0) {
        free(ptr);
        s->used -= osize;
        return NULL;
    }
    if (s->enforce && nsize > osize && s->used + (nsize - osize) > s->limit) {
        s->mem_hit = 1;
        return NULL;
    }
    void *p = realloc(ptr, nsize);
    if (!p) {
        s->mem_hit = 1;
        return NULL;
    }
    s->used = s->used - osize + nsize;
    return p;
}

size_t rsl__sandbox_mem(lua_State *L) {
    return get(L)->used;
}

size_t rsl__sandbox_mem_limit(lua_State *L) {
    return get(L)->limit;
}

/* ---- the limit hook and hook changes ------------------------------------------------------ */

/* [-0, +0] Removes the hook when it is still armed for `entry`. Lua thread. */
static void unhook(sbx *s, uint64_t entry) {
    pthread_mutex_lock(&s->hook_lock);
    if (atomic_load(&s->armed) == entry) {
        lua_sethook(s->L, NULL, 0, 0);
        atomic_store(&s->armed, 0);
    }
    pthread_mutex_unlock(&s->hook_lock);
}

/* [-0, +1, raises] Armed by the watchdog: raises on every instruction of the entry it was
 * armed for; any other time it is stale and removes itself. */
static void limit_hook(lua_State *L, lua_Debug *ar) {
    sbx *s = get(L);
    uint64_t seq = s->seqv;
    int mine = (seq & 1) && s->depth > 0 && atomic_load(&s->armed) == seq;
    if (!mine) {
        /* The lock orders us after the watchdog's last arming: re-read under it. */
        pthread_mutex_lock(&s->hook_lock);
        mine = (seq & 1) && s->depth > 0 && atomic_load(&s->armed) == seq;
        if (!mine) {
            lua_sethook(L, NULL, 0, 0);
        }
        pthread_mutex_unlock(&s->hook_lock);
        if (!mine) {
            return;
        }
    }
    atomic_store(&s->fired, seq);
    s->limit_hit = 1;
    if (lua_getinfo(L, "Sl", ar) && ar->currentline > 0) {
        lua_pushfstring(L, "%s:%d: run-time limit exceeded", ar->short_src, ar->currentline);
    } else {
        lua_pushliteral(L, "run-time limit exceeded");
    }
    lua_error(L);
}

/* Watchdog thread, its lock held. */
static void arm(sbx *s, uint64_t seq) {
    pthread_mutex_lock(&s->hook_lock);
    atomic_store(&s->arming, 1);
    if (atomic_load(&s->seq) == seq) {
        atomic_store(&s->armed, seq);
        lua_sethook(s->L, limit_hook, LUA_MASKCOUNT, 1);
    }
    atomic_store(&s->arming, 0);
    pthread_mutex_unlock(&s->hook_lock);
}

static void check(sbx *s, int64_t now) {
    uint64_t seq = atomic_load_explicit(&s->seq, memory_order_acquire);
    if (!(seq & 1)) {
        return;
    }
    if (seq != s->wd_seq) {
        s->wd_seq = seq;
        s->wd_since = now;
        return;
    }
    int64_t limit = atomic_load_explicit(&s->limit_ns, memory_order_relaxed);
    if (limit <= 0 || now - s->wd_since < limit || atomic_load(&s->fired) == seq) {
        return;
    }
    arm(s, seq);
}

/* ---- the watchdog ------------------------------------------------------------------------- */

static void *watchdog_main(void *arg) {
    rsl__watchdog *w = arg;
    pthread_mutex_lock(&w->lock);
    while (!w->stop) {
        int64_t now = rsl__clock_now();
        for (int i = 0; i < w->n; i++) {
            check(w->v[i], now);
        }
        int64_t next = now + w->tick_ns;
        struct timespec ts = {.tv_sec = next / RSL_NS_PER_S, .tv_nsec = next % RSL_NS_PER_S};
        pthread_cond_timedwait(&w->cond, &w->lock, &ts);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

rsl__watchdog *rsl__watchdog_new(int64_t tick_ns) {
    rsl__watchdog *w = calloc(1, sizeof(*w));
    if (!w) {
        return NULL;
    }
    w->tick_ns = tick_ns > 0 ? tick_ns : DEFAULT_TICK_NS;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* the clock rsl__clock_now reads */
    pthread_cond_init(&w->cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&w->lock, NULL);
    /* The thread starts with every signal blocked: signals belong to the host. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&w->thread, NULL, watchdog_main, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        pthread_cond_destroy(&w->cond);
        pthread_mutex_destroy(&w->lock);
        free(w);
        return NULL;
    }
    return w;
}

void rsl__watchdog_free(rsl__watchdog *w) {
    if (!w) {
        return;
    }
    pthread_mutex_lock(&w->lock);
    w->stop = 1;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->lock);
    free(w->v);
    free(w);
}

static int watch(rsl__watchdog *w, sbx *s) {
    pthread_mutex_lock(&w->lock);
    if (w->n == w->cap) {
        /* Doubling from 8: one state per worker per live generation. */
        int cap = w->cap ? w->cap * 2 : 8;
        sbx **v = realloc(w->v, (size_t)cap * sizeof(*v));
        if (!v) {
            pthread_mutex_unlock(&w->lock);
            return -1;
        }
        w->v = v;
        w->cap = cap;
    }
    w->v[w->n++] = s;
    pthread_mutex_unlock(&w->lock);
    return 0;
}

/* After this the watchdog no longer touches s (it arms under the same lock). */
static void unwatch(rsl__watchdog *w, sbx *s) {
    pthread_mutex_lock(&w->lock);
    for (int i = 0; i < w->n; i++) {
        if (w->v[i] == s) {
            w->v[i] = w->v[--w->n];
            break;
        }
    }
    pthread_mutex_unlock(&w->lock);
}

/* ---- the environment ---------------------------------------------------------------------- */

/* [-(n+1), +(results)] pcall as policy code sees it: limit and memory errors go through. */
static int policy_pcall(lua_State *L) {
    luaL_checkany(L, 1);
    int status = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
    sbx *s = get(L);
    if (status != 0 && (s->limit_hit || s->mem_hit || status == LUA_ERRMEM)) {
        return lua_error(L);
    }
    lua_pushboolean(L, status == 0);
    lua_insert(L, 1);
    return lua_gettop(L);
}

/* [-3, +0, raises] __newindex of a read-only proxy; upvalue 1 is the table's name. */
static int readonly_newindex(lua_State *L) {
    const char *key = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : luaL_typename(L, 2);
    return luaL_error(L, "cannot set \"%s\": %s is read-only", key,
                      lua_tostring(L, lua_upvalueindex(1)));
}

/* [-1, +1] Replaces the table at the top with a read-only proxy of it named `name`. */
static void push_proxy(lua_State *L, const char *name) {
    lua_newtable(L);          /* t proxy */
    lua_createtable(L, 0, 3); /* t proxy mt */
    lua_pushvalue(L, -3);
    lua_setfield(L, -2, "__index");
    lua_pushstring(L, name);
    lua_pushcclosure(L, readonly_newindex, 1);
    lua_setfield(L, -2, "__newindex");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2); /* t proxy */
    lua_remove(L, -2);       /* proxy */
}

/* [-1, +1, raises] require as policy code sees it: only "resilua", as a read-only proxy
 * made on first use (upvalue 1). */
static int policy_require(lua_State *L) {
    const char *name = luaL_checkstring(L, 1);
    if (strcmp(name, "resilua") != 0) {
        return luaL_error(L, "module \"%s\" is not available in policies", name);
    }
    if (lua_isnil(L, lua_upvalueindex(1))) {
        lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
        lua_getfield(L, -1, "resilua");
        if (!lua_istable(L, -1)) {
            return luaL_error(L, "module \"resilua\" is not loaded");
        }
        push_proxy(L, "resilua");
        lua_replace(L, lua_upvalueindex(1));
        lua_pop(L, 1);
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    return 1;
}

/* [-3, +0, raises] __newindex of a policy environment. */
static int env_newindex(lua_State *L) {
    const char *key = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : luaL_typename(L, 2);
    return luaL_error(L, "assignment to undeclared global \"%s\"", key);
}

static const char *const env_functions[] = {
    "pairs", "ipairs", "type", "tostring", "tonumber", "error", "select", "unpack", "pcall", NULL,
};
static const char *const env_tables[] = {"string", "table", "math", "os", NULL};

/* [-0, +1] Pushes a new environment: an empty table that raises on assignment and reads
 * through to its own base of allow-listed functions and read-only proxies (one base per
 * environment: nothing a policy file can reach is shared with another file). */
void rsl__sandbox_push_env(lua_State *L) {
    lua_newtable(L);           /* env */
    lua_createtable(L, 0, 16); /* env base */
    lua_pushlightuserdata(L, &template_key);
    lua_rawget(L, LUA_REGISTRYINDEX); /* env base tmpl */
    for (int i = 0; env_functions[i]; i++) {
        lua_getfield(L, -1, env_functions[i]);
        lua_setfield(L, -3, env_functions[i]);
    }
    for (int i = 0; env_tables[i]; i++) {
        lua_getfield(L, -1, env_tables[i]);
        push_proxy(L, env_tables[i]);
        lua_setfield(L, -3, env_tables[i]);
    }
    lua_pop(L, 1); /* env base */
    lua_pushnil(L);
    lua_pushcclosure(L, policy_require, 1);
    lua_setfield(L, -2, "require");
    lua_createtable(L, 0, 3);       /* env base mt */
    lua_insert(L, -2);              /* env mt base */
    lua_setfield(L, -2, "__index"); /* env mt */
    lua_pushcfunction(L, env_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2); /* env */
}

/* [-0, +0] (through lua_cpcall) Opens the libraries for the DSL and builds the template
 * environments are made of. */
static int setup(lua_State *L) {
    luaL_openlibs(L);
    /* string.dump would also be reachable as ("").dump: remove it from the library. */
    lua_getglobal(L, "string");
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    lua_pop(L, 1);

    lua_pushlightuserdata(L, &template_key);
    lua_createtable(L, 0, 16); /* key tmpl */
    for (int i = 0; env_functions[i]; i++) {
        lua_getglobal(L, env_functions[i]);
        lua_setfield(L, -2, env_functions[i]);
    }
    lua_pushcfunction(L, policy_pcall);
    lua_setfield(L, -2, "pcall");
    lua_getglobal(L, "string");
    lua_setfield(L, -2, "string");
    lua_getglobal(L, "table");
    lua_setfield(L, -2, "table");
    lua_getglobal(L, "math");
    lua_setfield(L, -2, "math");
    lua_createtable(L, 0, 2); /* key tmpl os */
    lua_getglobal(L, "os");
    lua_getfield(L, -1, "time");
    lua_setfield(L, -3, "time");
    lua_getfield(L, -1, "clock");
    lua_setfield(L, -3, "clock");
    lua_pop(L, 1);
    lua_setfield(L, -2, "os"); /* key tmpl */
    lua_rawset(L, LUA_REGISTRYINDEX);
    return 0;
}

/* [-0, +0] */
lua_State *rsl__sandbox_new(size_t mem_limit, rsl__watchdog *wd) {
    sbx *s = calloc(1, sizeof(*s));
    if (!s) {
        return NULL;
    }
    s->limit = mem_limit ? mem_limit : SIZE_MAX;
    pthread_mutex_init(&s->hook_lock, NULL);
    lua_State *L = lua_newstate(sbx_alloc, s);
    if (!L) {
        pthread_mutex_destroy(&s->hook_lock);
        free(s);
        return NULL;
    }
    s->L = L;
    if (lua_cpcall(L, setup, NULL) != 0) {
        lua_close(L);
        pthread_mutex_destroy(&s->hook_lock);
        free(s);
        return NULL;
    }
    /* After luaL_openlibs: opening `jit` turns the engine on. */
    luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
    if (wd) {
        if (watch(wd, s) != 0) {
            lua_close(L);
            pthread_mutex_destroy(&s->hook_lock);
            free(s);
            return NULL;
        }
        s->wd = wd;
    }
    return L;
}

void rsl__sandbox_free(lua_State *L) {
    if (!L) {
        return;
    }
    sbx *s = get(L);
    if (s->wd) {
        unwatch(s->wd, s);
    }
    lua_close(L);
    pthread_mutex_destroy(&s->hook_lock);
    free(s);
}

int rsl__sandbox_loadfile(lua_State *L, const char *path) {
    /* Text only: LuaJIT does not verify bytecode, and loading it is a way out. */
    int rc = luaL_loadfilex(L, path, "t");
    if (rc != 0) {
        return rc;
    }
    luaJIT_setmode(L, -1, LUAJIT_MODE_ALLFUNC | LUAJIT_MODE_OFF);
    rsl__sandbox_push_env(L);
    lua_setfenv(L, -2);
    return 0;
}

/* ---- protected, limited calls --------------------------------------------------------------- */

/* [-1, +1] Makes the error at the top a string and picks the code to return. */
static int classify(lua_State *L, sbx *s, int rc) {
    if (s->limit_hit) {
        rc = RSL_SANDBOX_ELIMIT;
    } else if (s->mem_hit || rc == LUA_ERRMEM) {
        rc = LUA_ERRMEM;
        lua_pop(L, 1);
        lua_pushliteral(L, "not enough memory");
        /* The garbage that filled the state goes now (outermost entry: the cap is off), so
         * the next call starts under the cap. */
        if (s->depth == 0) {
            lua_gc(L, LUA_GCCOLLECT, 0);
        }
    }
    if (!lua_isstring(L, -1)) {
        const char *t = luaL_typename(L, -1);
        lua_pop(L, 1);
        lua_pushfstring(L, "(error object is a %s value)", t);
    }
    return rc;
}

int rsl__sandbox_pcall(lua_State *L, int nargs, int nresults, int64_t limit_ns) {
    sbx *s = get(L);
    if (s->depth > 0) { /* nested: the outermost entry's limit applies */
        s->depth++;
        int rc = lua_pcall(L, nargs, nresults, 0);
        s->depth--;
        return rc ? classify(L, s, rc) : 0;
    }
    uint64_t entry = s->seqv + 1;
    s->seqv = entry;
    s->depth = 1;
    s->limit_hit = 0;
    s->mem_hit = 0;
    s->enforce = 1;
    if (limit_ns != s->cur_limit) {
        s->cur_limit = limit_ns;
        atomic_store_explicit(&s->limit_ns, limit_ns, memory_order_relaxed);
    }
    atomic_store_explicit(&s->seq, entry, memory_order_release);

    int rc = lua_pcall(L, nargs, nresults, 0);

    atomic_store_explicit(&s->seq, entry + 1, memory_order_seq_cst);
    s->seqv = entry + 1;
    s->depth = 0;
    s->enforce = 0;
    if (atomic_load_explicit(&s->arming, memory_order_seq_cst) ||
        atomic_load_explicit(&s->armed, memory_order_seq_cst) == entry) {
        unhook(s, entry);
    }
    return rc ? classify(L, s, rc) : 0;
}
