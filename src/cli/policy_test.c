/*
 * policy_test -- `resilua test [-p DIR] TESTS_DIR`: policy unit tests, in Lua.
 *
 * Every TESTS_DIR/test_*.lua file runs against a runtime of its own, opened on DIR with a
 * virtual clock and an I/O model (rsl_options.io_model): the real guards, routes, chains
 * and Lua steps run, and every r.http, r.redis or r.redis_cache attempt is answered by
 * what the test asked for, at once, the clock moved on by its latency.  A test file has:
 *
 *   local res = call("storefront.product", { id = "1", tier = "vip" }, { upstream = "down" })
 *   expect(res).served_by("cache").path{ "primary=connect", "cache=ok" }.status(200)
 *   after("5s")                      -- the virtual clock moves on
 *   expect(state("products-api")).is("closed")
 *
 * call(POLICY, ATTRS, UPSTREAMS): UPSTREAMS maps a step name, or `upstream` for every I/O
 * step not named, to "ok" (200), a status (503, "404"), "down" (connect), "timeout",
 * "error", or a table { status =, body =, latency = "300ms", outcome = }.  Each
 * expectation is one TAP line; a failure names the file and line of the expectation and
 * shows what was expected against what came.  Exit 0 when every expectation held, 1 when
 * one did not (or a file failed to run), 2 on a usage error or a policy directory that
 * does not load.
 *
 * Layer: the CLI, a client of resilua.h only (and jansson for rsl_state_json).
 */
#include "cli.h"
#include "resilua.h"

#include <dirent.h>
#include <jansson.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NS_PER_MS 1000000LL
#define START_NS (1000LL * 1000 * NS_PER_MS) /* 1000 s: far from 0 */
#define MAX_UPSTREAMS 32

/* ---- the virtual world -------------------------------------------------------------------- */

enum { UP_OK, UP_STATUS, UP_DOWN, UP_TIMEOUT, UP_ERROR };

typedef struct upstream {
    char step[64]; /* "" : every I/O step not named */
    int mode;
    int status;
    char *body;
    size_t body_len;
    int64_t latency_ns;
} upstream;

typedef struct world {
    _Atomic int64_t now;
    /* The call in flight's upstreams: set by the driver before rsl_call_sync, read by the
     * worker during it (the call's hand-off orders the two). */
    upstream up[MAX_UPSTREAMS];
    int nup;
} world;

static int64_t world_clock(void *ud) {
    return atomic_load(&((world *)ud)->now);
}

static const upstream *upstream_for(const world *w, const char *step) {
    const upstream *def = NULL;
    for (int i = 0; i < w->nup; i++) {
        if (strcmp(w->up[i].step, step) == 0) {
            return &w->up[i];
        }
        if (!w->up[i].step[0]) {
            def = &w->up[i];
        }
    }
    return def;
}

static void model(void *ud, const rsl_io_attempt *a, rsl_io_answer *ans) {
    world *w = ud;
    static const upstream ok = {"", UP_OK, 200, NULL, 0, NS_PER_MS};
    const upstream *u = upstream_for(w, a->step);
    if (!u) {
        u = &ok;
    }
    ans->latency_ns = u->latency_ns;
    switch (u->mode) {
    case UP_OK:
    case UP_STATUS:
        ans->status = u->status;
        ans->body = u->body ? u->body : "{\"upstream\":\"ok\"}";
        ans->body_len = u->body ? u->body_len : strlen(ans->body);
        break;
    case UP_DOWN:
        ans->outcome = RSL_OUTCOME_CONNECT;
        ans->error = "connection refused (the test's upstream is down)";
        break;
    case UP_TIMEOUT:
        ans->latency_ns = INT64_MAX;
        break;
    case UP_ERROR:
        ans->outcome = RSL_OUTCOME_ERROR;
        ans->error = "an error (the test's upstream)";
        break;
    }
    int64_t d = ans->latency_ns < a->limit_ns ? ans->latency_ns : a->limit_ns;
    atomic_fetch_add(&w->now, d);
}

/* ---- the Lua side --------------------------------------------------------------------------- */

typedef struct runner {
    world w;
    rsl_runtime *rt;
    int n, failed; /* TAP points */
} runner;

static runner *runner_of(lua_State *L) {
    return lua_touserdata(L, lua_upvalueindex(1));
}

/* [-0, +0] The upstream spec at the top of the stack, for `step`, into u; raises a Lua
 * error naming what is wrong. */
static void read_upstream(lua_State *L, const char *step, upstream *u) {
    memset(u, 0, sizeof(*u));
    snprintf(u->step, sizeof(u->step), "%s", step);
    u->status = 200;
    u->latency_ns = NS_PER_MS;
    if (lua_type(L, -1) == LUA_TNUMBER || (lua_type(L, -1) == LUA_TSTRING &&
                                           strspn(lua_tostring(L, -1), "0123456789") ==
                                               strlen(lua_tostring(L, -1)))) {
        u->mode = UP_STATUS;
        u->status = (int)lua_tointeger(L, -1);
        if (u->status < 100 || u->status > 599) {
            luaL_error(L, "upstream of %s: status %d is not 100..599",
                       step[0] ? step : "every step", u->status);
        }
        return;
    }
    if (lua_type(L, -1) == LUA_TSTRING) {
        static const struct {
            const char *name;
            int mode;
        } modes[] = {{"ok", UP_OK},         {"down", UP_DOWN},   {"connect", UP_DOWN},
                     {"timeout", UP_TIMEOUT}, {"error", UP_ERROR}};
        const char *s = lua_tostring(L, -1);
        for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
            if (strcmp(s, modes[i].name) == 0) {
                u->mode = modes[i].mode;
                return;
            }
        }
        luaL_error(L, "upstream of %s: \"%s\" is not ok, down, timeout, error or a status",
                   step[0] ? step : "every step", s);
    }
    if (lua_type(L, -1) != LUA_TTABLE) {
        luaL_error(L, "upstream of %s: expected a string, a status or a table, got %s",
                   step[0] ? step : "every step", luaL_typename(L, -1));
    }
    lua_getfield(L, -1, "outcome");
    if (!lua_isnil(L, -1)) {
        read_upstream(L, step, u);
    }
    lua_pop(L, 1);
    lua_getfield(L, -1, "status");
    if (!lua_isnil(L, -1)) {
        u->mode = UP_STATUS;
        u->status = (int)luaL_checkinteger(L, -1);
    }
    lua_pop(L, 1);
    lua_getfield(L, -1, "body");
    if (!lua_isnil(L, -1)) {
        size_t n;
        const char *b = luaL_checklstring(L, -1, &n);
        u->body = malloc(n + 1);
        if (u->body) {
            memcpy(u->body, b, n + 1);
            u->body_len = n;
        }
    }
    lua_pop(L, 1);
    lua_getfield(L, -1, "latency");
    if (!lua_isnil(L, -1)) {
        const char *l = luaL_checkstring(L, -1);
        if ((u->latency_ns = rsl_cli_duration(l)) < 0) {
            luaL_error(L, "upstream of %s: latency \"%s\" is not a duration such as 300ms",
                       step[0] ? step : "every step", l);
        }
    }
    lua_pop(L, 1);
}

static void free_upstreams(world *w) {
    for (int i = 0; i < w->nup; i++) {
        free(w->up[i].body);
    }
    w->nup = 0;
}

/* __call(policy, attrs, upstreams) -> { status, outcome, served_by, degraded, path, body } */
static int l_call(lua_State *L) {
    runner *r = runner_of(L);
    const char *policy = luaL_checkstring(L, 1);
    free_upstreams(&r->w);
    if (lua_istable(L, 3)) {
        lua_pushnil(L);
        while (lua_next(L, 3)) {
            if (lua_type(L, -2) != LUA_TSTRING) {
                luaL_error(L, "call: upstreams are named by step (or `upstream`)");
            }
            if (r->w.nup == MAX_UPSTREAMS) {
                luaL_error(L, "call: more than %d upstreams", MAX_UPSTREAMS);
            }
            const char *k = lua_tostring(L, -2);
            read_upstream(L, strcmp(k, "upstream") == 0 ? "" : k, &r->w.up[r->w.nup++]);
            lua_pop(L, 1);
        }
    }
    rsl_req *req = rsl_req_new();
    if (!req) {
        return luaL_error(L, "call: out of memory");
    }
    if (lua_istable(L, 2)) {
        lua_pushnil(L);
        while (lua_next(L, 2)) {
            if (lua_type(L, -2) == LUA_TSTRING &&
                (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER)) {
                size_t n;
                const char *v = lua_tolstring(L, -1, &n);
                if (strcmp(lua_tostring(L, -2), "body") == 0) {
                    rsl_req_set_body(req, v, n);
                } else {
                    rsl_req_set(req, lua_tostring(L, -2), v, n);
                }
            }
            lua_pop(L, 1);
        }
    }
    rsl_result *res = NULL;
    int rc = rsl_call_sync(r->rt, policy, req, 60LL * 1000 * NS_PER_MS, &res);
    rsl_req_free(req);
    if (rc != 0) {
        return luaL_error(L, "call \"%s\": %s", policy, rsl_strerror(rc));
    }
    lua_createtable(L, 0, 8);
    lua_pushinteger(L, rsl_result_status(res));
    lua_setfield(L, -2, "status");
    lua_pushstring(L, rsl_outcome_name(rsl_result_outcome(res)));
    lua_setfield(L, -2, "outcome");
    lua_pushstring(L, rsl_result_served_by(res) ? rsl_result_served_by(res) : "none");
    lua_setfield(L, -2, "served_by");
    lua_pushboolean(L, rsl_result_degraded(res));
    lua_setfield(L, -2, "degraded");
    size_t blen;
    const char *b = rsl_result_body(res, &blen);
    lua_pushlstring(L, b ? b : "", b ? blen : 0);
    lua_setfield(L, -2, "body");
    lua_createtable(L, (int)rsl_result_path_len(res), 0);
    for (size_t i = 0; i < rsl_result_path_len(res); i++) {
        rsl_path_entry e;
        rsl_result_path(res, i, &e);
        lua_pushfstring(L, "%s=%s", e.step, rsl_outcome_name(e.outcome));
        lua_rawseti(L, -2, (int)i + 1);
    }
    lua_setfield(L, -2, "path");
    rsl_result_free(res);
    return 1;
}

/* __after("5s") */
static int l_after(lua_State *L) {
    runner *r = runner_of(L);
    const char *d = luaL_checkstring(L, 1);
    int64_t ns = rsl_cli_duration(d);
    if (ns < 0) {
        return luaL_error(L, "after: \"%s\" is not a duration such as 5s", d);
    }
    atomic_fetch_add(&r->w.now, ns);
    return 0;
}

/* __state(guard) -> its state ("closed", "open", ...; a limiter or bulkhead: its kind) */
static int l_state(lua_State *L) {
    runner *r = runner_of(L);
    const char *name = luaL_checkstring(L, 1);
    char *s = rsl_state_json(r->rt);
    json_t *doc = s ? json_loads(s, 0, NULL) : NULL;
    rsl_free(s);
    json_t *g = json_object_get(json_object_get(doc, "guards"), name);
    if (!g) {
        json_decref(doc);
        return luaL_error(L, "state: no guard named \"%s\"", name);
    }
    json_t *st = json_object_get(g, "state");
    lua_pushstring(L, json_is_string(st) ? json_string_value(st)
                                         : json_string_value(json_object_get(g, "kind")));
    json_decref(doc);
    return 1;
}

/* __report(ok, where, what, expected, got): one TAP line. */
static int l_report(lua_State *L) {
    runner *r = runner_of(L);
    int ok = lua_toboolean(L, 1);
    const char *where = luaL_checkstring(L, 2), *what = luaL_checkstring(L, 3);
    r->n++;
    if (ok) {
        printf("ok %d - %s: %s\n", r->n, where, what);
    } else {
        r->failed++;
        printf("not ok %d - %s: %s\n#   expected: %s\n#   got:      %s\n", r->n, where, what,
               luaL_optstring(L, 4, "?"), luaL_optstring(L, 5, "?"));
    }
    fflush(stdout);
    return 0;
}

/* The test file's globals, over the primitives above (upvalues of the chunk). */
static const char prelude[] =
    "local __call, __after, __state, __report, getinfo = ...\n"
    "local function where()\n"
    "  local i = getinfo(3, 'Sl')\n"
    "  return (i and i.short_src or '?') .. ':' .. (i and i.currentline or 0)\n"
    "end\n"
    "local function show(v)\n"
    "  if type(v) == 'table' then\n"
    "    local t = {}\n"
    "    for i, x in ipairs(v) do t[i] = tostring(x) end\n"
    "    return '{' .. table.concat(t, ', ') .. '}'\n"
    "  end\n"
    "  return type(v) == 'string' and string.format('%q', v) or tostring(v)\n"
    "end\n"
    "local function same(a, b)\n"
    "  if type(a) == 'table' and type(b) == 'table' then\n"
    "    if #a ~= #b then return false end\n"
    "    for i = 1, #a do if a[i] ~= b[i] then return false end end\n"
    "    return true\n"
    "  end\n"
    "  return a == b\n"
    "end\n"
    "local fields = { served_by = 'served_by', path = 'path', status = 'status',\n"
    "                 outcome = 'outcome', degraded = 'degraded', body = 'body' }\n"
    "function expect(v)\n"
    "  local e = {}\n"
    "  local function check(what, want, got)\n"
    "    __report(same(want, got), where(), what .. ' ' .. show(want), show(want), show(got))\n"
    "    return e\n"
    "  end\n"
    "  setmetatable(e, { __index = function(_, k)\n"
    "    if k == 'is' then return function(want) return check('is', want, v) end end\n"
    "    local f = fields[k]\n"
    "    if not f then error('expect: no check named ' .. tostring(k), 2) end\n"
    "    if type(v) ~= 'table' then error('expect(...).' .. k .. ': not a call result', 2) end\n"
    "    return function(want) return check(k, want, v[f]) end\n"
    "  end })\n"
    "  return e\n"
    "end\n"
    "function call(policy, attrs, upstreams) return __call(policy, attrs, upstreams) end\n"
    "function after(d) __after(d) end\n"
    "function state(name) return __state(name) end\n";

/* Runs one test file in a state of its own (rsl_cli_lua_state). */
static int run_file(runner *r, const char *path) {
    lua_State *L = rsl_cli_lua_state();
    if (!L) {
        return -1;
    }
    int rc = luaL_loadbuffer(L, prelude, sizeof(prelude) - 1, "=resilua test");
    if (rc == 0) {
        static const lua_CFunction prim[] = {l_call, l_after, l_state, l_report};
        for (size_t i = 0; i < sizeof(prim) / sizeof(prim[0]); i++) {
            lua_pushlightuserdata(L, r);
            lua_pushcclosure(L, prim[i], 1);
        }
        lua_pushvalue(L, -6); /* getinfo, left by rsl_cli_lua_state */
        rc = lua_pcall(L, 5, 0, 0);
    }
    if (rc == 0) {
        rc = luaL_loadfile(L, path);
        if (rc == 0) {
            rc = lua_pcall(L, 0, 0, 0);
        }
    }
    if (rc != 0) {
        r->n++;
        r->failed++;
        printf("not ok %d - %s\n", r->n, lua_tostring(L, -1) ? lua_tostring(L, -1) : "error");
    }
    lua_close(L);
    free_upstreams(&r->w);
    return 0;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void quiet_log(void *ud, rsl_log_level level, const char *msg) {
    if (level <= RSL_LOG_ERROR) {
        fprintf(stderr, "resilua test: %s\n", msg);
    }
}

int rsl_cli_test(int argc, char **argv) {
    const char *dir = "policies", *tests = NULL;
    for (int i = 2; i < argc; i++) {
        if ((strcmp(argv[i], "-p") == 0 || strcmp(argv[i], "--policies") == 0) && i + 1 < argc) {
            dir = argv[++i];
        } else if (strncmp(argv[i], "--policies=", 11) == 0) {
            dir = argv[i] + 11;
        } else if (argv[i][0] != '-' && !tests) {
            tests = argv[i];
        } else {
            fprintf(stderr, "usage: resilua test [-p DIR] TESTS_DIR\n");
            return 2;
        }
    }
    if (!tests) {
        fprintf(stderr, "usage: resilua test [-p DIR] TESTS_DIR\n");
        return 2;
    }
    DIR *d = opendir(tests);
    if (!d) {
        fprintf(stderr, "resilua test: cannot read %s\n", tests);
        return 2;
    }
    char **files = NULL;
    size_t nfiles = 0;
    for (struct dirent *e; (e = readdir(d));) {
        size_t n = strlen(e->d_name);
        if (strncmp(e->d_name, "test_", 5) == 0 && n > 4 && strcmp(e->d_name + n - 4, ".lua") == 0) {
            char **nf = realloc(files, (nfiles + 1) * sizeof(*files));
            if (!nf) {
                break;
            }
            files = nf;
            files[nfiles] = malloc(strlen(tests) + n + 2);
            if (files[nfiles]) {
                sprintf(files[nfiles++], "%s/%s", tests, e->d_name);
            }
        }
    }
    closedir(d);
    if (nfiles) {
        qsort(files, nfiles, sizeof(*files), cmp_str);
    }
    runner *r = calloc(1, sizeof(*r));
    int status = r ? 0 : 2;
    for (size_t i = 0; r && i < nfiles && status != 2; i++) {
        atomic_store(&r->w.now, START_NS);
        rsl_options o;
        rsl_options_init(&o);
        o.policy_dir = dir;
        o.workers = 1;
        o.clock = world_clock;
        o.clock_ud = &r->w;
        o.seed = 1;
        o.log = quiet_log;
        o.io_model = model;
        o.io_model_ud = &r->w;
        o.otlp_endpoint = "";
        char err[4096];
        int rc = rsl_open(&r->rt, &o, err, sizeof(err));
        if (rc != 0) {
            fprintf(stderr, "resilua test: %s: %s\n%s\n", dir, rsl_strerror(rc), err);
            status = 2;
            break;
        }
        printf("# %s\n", files[i]);
        run_file(r, files[i]);
        rsl_close(r->rt);
        r->rt = NULL;
    }
    if (r && status != 2) {
        printf("1..%d\n", r->n);
        if (r->failed) {
            printf("# %d of %d failed\n", r->failed, r->n);
        }
        status = r->failed || nfiles == 0 ? 1 : 0;
        if (nfiles == 0) {
            fprintf(stderr, "resilua test: no test_*.lua in %s\n", tests);
        }
    }
    for (size_t i = 0; i < nfiles; i++) {
        free(files[i]);
    }
    free(files);
    free(r);
    return status;
}
