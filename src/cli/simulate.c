/*
 * simulate -- `resilua simulate [-p DIR] SCENARIO.lua [--json FILE] [--seed N]`: a
 * scenario's traffic through the real policies and guards on virtual time.
 *
 * The runtime is opened attached to a loop of this thread's, with virtual time and an
 * I/O model (resilua.h): calls arrive as the scenario's traffic says (Poisson arrivals at
 * its rate), every I/O step's attempt is answered by the scenario's upstream for that step
 * at that moment, and its latency goes by on the virtual clock, so calls overlap as they
 * would.  Nothing is sent; the run goes as fast as the CPU does, and the same seed gives
 * the same output, byte for byte.  Each simulated second prints one line: the calls that
 * ended in it, served-by counts per tier, every breaker's state, error rate and p90.
 *
 * A scenario is Lua, in a state like a test file's (no files, no code loading):
 *
 *   scenario { policy = "storefront.product", duration = "10m", seed = 7 }
 *   traffic { rate = 1000, attrs = { tier = { vip = 0.3, free = 0.7 }, id = { "1", "2" } } }
 *   traffic { from = "4m", to = "6m", rate = 1500 }
 *   upstream "primary" { latency = { p50 = "20ms", p99 = "120ms" } }
 *   upstream "primary" { from = "2m", to = "4m", error_rate = 100, status = 503 }
 *   upstream "primary" { from = "4m", to = "6m", down = true }
 *
 * Phases run from `from` (default 0) to `to` (default the end); where phases overlap, the
 * later one's fields win.  A bad field is an error at its file:line.
 *
 * Layer: the CLI, a client of resilua.h only (and jansson for rsl_state_json).
 */
#include "cli.h"
#include "resilua.h"

#include <jansson.h>
#include <lauxlib.h>
#include <lua.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define NS_PER_S 1000000000LL
#define MAX_PHASES 64
#define MAX_VALUES 4096
#define MAX_ATTRS 8
#define MAX_COLS 16

/* ---- the scenario -------------------------------------------------------------------------- */

typedef struct attr {
    char *name;
    int n;
    char **value;
    double *share; /* cumulative, ending at 1 */
} attr;

typedef struct traffic {
    int64_t from, to;
    double rate; /* calls per second; < 0: not set by this phase */
    int nattrs;  /* 0: not set */
    attr attrs[MAX_ATTRS];
} traffic;

enum { LAT_UNSET, LAT_FIXED, LAT_UNIFORM, LAT_LOGNORMAL };

typedef struct upphase {
    char *step;
    int64_t from, to;
    int lat; /* LAT_* */
    double a, b; /* fixed: a; uniform: a..b; lognormal: mu, sigma (of ln ns) */
    double error_rate; /* percent; < 0: not set */
    int status;        /* of the errors; 0: not set */
    int down, timeout; /* -1: not set */
} upphase;

typedef struct scenario {
    char *policy;
    int64_t duration;
    uint64_t seed;
    traffic tr[MAX_PHASES];
    int ntr;
    upphase up[MAX_PHASES];
    int nup;
} scenario;

static scenario *scn_of(lua_State *L) {
    return lua_touserdata(L, lua_upvalueindex(1));
}

/* [-0, +0] Field `k` of the table at `idx` as a duration (ns), or def when absent. */
static int64_t field_duration(lua_State *L, int idx, const char *k, int64_t def) {
    lua_getfield(L, idx, k);
    int64_t v = def;
    if (!lua_isnil(L, -1)) {
        const char *s = lua_tostring(L, -1);
        if (!s || (v = rsl_cli_duration(s)) < 0) {
            luaL_error(L, "%s: expected a duration such as \"2m\", got %s", k,
                       s ? s : luaL_typename(L, -1));
        }
    }
    lua_pop(L, 1);
    return v;
}

static double field_number(lua_State *L, int idx, const char *k, double def, double lo,
                           double hi) {
    lua_getfield(L, idx, k);
    double v = def;
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TNUMBER) {
            luaL_error(L, "%s: expected a number, got %s", k, luaL_typename(L, -1));
        }
        v = lua_tonumber(L, -1);
        if (!(v >= lo && v <= hi)) {
            luaL_error(L, "%s: must be in %g..%g, got %g", k, lo, hi, v);
        }
    }
    lua_pop(L, 1);
    return v;
}

static int cmp_key(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* [-0, +0] attrs = { name = "v" | { "a", "b" } (uniform) | { a = share, b = share } }. */
static void read_attrs(lua_State *L, int idx, traffic *t) {
    lua_getfield(L, idx, "attrs");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    luaL_checktype(L, -1, LUA_TTABLE);
    int at = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, at)) {
        if (t->nattrs == MAX_ATTRS || lua_type(L, -2) != LUA_TSTRING) {
            luaL_error(L, "attrs: at most %d, each named", MAX_ATTRS);
        }
        attr *a = &t->attrs[t->nattrs++];
        a->name = strdup(lua_tostring(L, -2));
        int cap = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 1;
        if (lua_istable(L, -1) && cap == 0) { /* shares: count them */
            lua_pushnil(L);
            while (lua_next(L, -2)) {
                cap++;
                lua_pop(L, 1);
            }
        }
        if (cap > MAX_VALUES) {
            luaL_error(L, "attrs.%s: at most %d values", a->name, MAX_VALUES);
        }
        a->value = calloc((size_t)(cap ? cap : 1), sizeof(char *));
        a->share = calloc((size_t)(cap ? cap : 1), sizeof(double));
        if (!a->value || !a->share) {
            luaL_error(L, "out of memory");
        }
        if (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER) {
            a->n = 1;
            a->value[0] = strdup(lua_tostring(L, -1));
            a->share[0] = 1;
        } else if (lua_type(L, -1) == LUA_TTABLE) {
            int vt = lua_gettop(L);
            if (lua_objlen(L, vt) > 0) { /* a list: uniform */
                int n = (int)lua_objlen(L, vt);
                if (n > MAX_VALUES) {
                    luaL_error(L, "attrs.%s: at most %d values", a->name, MAX_VALUES);
                }
                for (int i = 1; i <= n; i++) {
                    lua_rawgeti(L, vt, i);
                    const char *v = lua_tostring(L, -1);
                    if (!v) {
                        luaL_error(L, "attrs.%s: values must be strings", a->name);
                    }
                    a->value[a->n] = strdup(v);
                    a->share[a->n] = (double)(a->n + 1) / n;
                    a->n++;
                    lua_pop(L, 1);
                }
            } else { /* shares, in name order so that a run never depends on hashing */
                char **names = a->value; /* sorted in place, then kept */
                double *sh = a->share, total = 0;
                int n = 0;
                lua_pushnil(L);
                while (lua_next(L, vt)) {
                    if (n == MAX_VALUES || lua_type(L, -2) != LUA_TSTRING ||
                        lua_type(L, -1) != LUA_TNUMBER || lua_tonumber(L, -1) < 0) {
                        luaL_error(L, "attrs.%s: expected value = share (a number >= 0)",
                                   a->name);
                    }
                    names[n++] = strdup(lua_tostring(L, -2));
                    a->n = n; /* freed with the scenario, even if a later one is bad */
                    lua_pop(L, 1);
                }
                qsort(names, (size_t)n, sizeof(names[0]), cmp_key);
                for (int i = 0; i < n; i++) {
                    lua_getfield(L, vt, names[i]);
                    sh[i] = lua_tonumber(L, -1);
                    total += sh[i];
                    lua_pop(L, 1);
                }
                if (!(total > 0)) {
                    luaL_error(L, "attrs.%s: the shares add up to 0", a->name);
                }
                double acc = 0;
                for (int i = 0; i < n; i++) {
                    acc += sh[i] / total;
                    a->share[i] = i + 1 == n ? 1 : acc;
                }
                a->n = n;
            }
        } else {
            luaL_error(L, "attrs.%s: expected a string, a list or shares", a->name);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    /* In name order: each call draws its attributes in that order, whatever the hashing. */
    for (int i = 1; i < t->nattrs; i++) {
        for (int j = i; j > 0 && strcmp(t->attrs[j - 1].name, t->attrs[j].name) > 0; j--) {
            attr tmp = t->attrs[j];
            t->attrs[j] = t->attrs[j - 1];
            t->attrs[j - 1] = tmp;
        }
    }
}

/* scenario { policy, duration, seed } */
static int l_scenario(lua_State *L) {
    scenario *s = scn_of(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "policy");
    if (!lua_isstring(L, -1)) {
        return luaL_error(L, "scenario: policy (a name) is required");
    }
    free(s->policy);
    s->policy = strdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    s->duration = field_duration(L, 1, "duration", 0);
    if (s->duration <= 0) {
        return luaL_error(L, "scenario: duration (such as \"10m\") is required");
    }
    s->seed = (uint64_t)field_number(L, 1, "seed", (double)s->seed, 0, 9007199254740992.0);
    return 0;
}

/* traffic { from, to, rate, attrs } */
static int l_traffic(lua_State *L) {
    scenario *s = scn_of(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    if (s->ntr == MAX_PHASES) {
        return luaL_error(L, "traffic: at most %d phases", MAX_PHASES);
    }
    traffic *t = &s->tr[s->ntr++];
    t->from = field_duration(L, 1, "from", 0);
    t->to = field_duration(L, 1, "to", INT64_MAX);
    t->rate = field_number(L, 1, "rate", -1, 0, 1e7);
    read_attrs(L, 1, t);
    return 0;
}

/* [-0, +0] latency = "20ms" | { min =, max = } | { p50 =, p99 = } */
static void read_latency(lua_State *L, int idx, upphase *u) {
    lua_getfield(L, idx, "latency");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    if (lua_type(L, -1) == LUA_TSTRING) {
        int64_t v = rsl_cli_duration(lua_tostring(L, -1));
        if (v < 0) {
            luaL_error(L, "latency: expected a duration, got %s", lua_tostring(L, -1));
        }
        u->lat = LAT_FIXED;
        u->a = (double)v;
    } else if (lua_type(L, -1) == LUA_TTABLE) {
        int lt = lua_gettop(L);
        int64_t p50 = field_duration(L, lt, "p50", -1), p99 = field_duration(L, lt, "p99", -1);
        int64_t mn = field_duration(L, lt, "min", -1), mx = field_duration(L, lt, "max", -1);
        if (p50 > 0 && p99 >= p50) {
            u->lat = LAT_LOGNORMAL;
            u->a = log((double)p50);
            u->b = (log((double)p99) - u->a) / 2.3263478740; /* z of the 99th percentile */
        } else if (mn >= 0 && mx >= mn) {
            u->lat = LAT_UNIFORM;
            u->a = (double)mn;
            u->b = (double)mx;
        } else {
            luaL_error(L, "latency: expected { p50 =, p99 = } (p99 >= p50 > 0) or "
                          "{ min =, max = } (max >= min)");
        }
    } else {
        luaL_error(L, "latency: expected a duration or a table, got %s", luaL_typename(L, -1));
    }
    lua_pop(L, 1);
}

static int read_flag(lua_State *L, int idx, const char *k) {
    lua_getfield(L, idx, k);
    int v = lua_isnil(L, -1) ? -1 : lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

/* upstream "step" { from, to, latency, error_rate, status, down, timeout } */
static int l_upstream_phase(lua_State *L) {
    scenario *s = scn_of(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    if (s->nup == MAX_PHASES) {
        return luaL_error(L, "upstream: at most %d phases", MAX_PHASES);
    }
    upphase *u = &s->up[s->nup++];
    u->step = strdup(lua_tostring(L, lua_upvalueindex(2)));
    u->from = field_duration(L, 1, "from", 0);
    u->to = field_duration(L, 1, "to", INT64_MAX);
    read_latency(L, 1, u);
    u->error_rate = field_number(L, 1, "error_rate", -1, 0, 100);
    u->status = (int)field_number(L, 1, "status", 0, 100, 599);
    u->down = read_flag(L, 1, "down");
    u->timeout = read_flag(L, 1, "timeout");
    return 0;
}

static int l_upstream(lua_State *L) {
    luaL_checkstring(L, 1);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, 1);
    lua_pushcclosure(L, l_upstream_phase, 2);
    return 1;
}

static void scenario_free(scenario *s) {
    free(s->policy);
    for (int i = 0; i < s->ntr; i++) {
        for (int j = 0; j < s->tr[i].nattrs; j++) {
            free(s->tr[i].attrs[j].name);
            for (int k = 0; k < s->tr[i].attrs[j].n; k++) {
                free(s->tr[i].attrs[j].value[k]);
            }
            free(s->tr[i].attrs[j].value);
            free(s->tr[i].attrs[j].share);
        }
    }
    for (int i = 0; i < s->nup; i++) {
        free(s->up[i].step);
    }
}

/* Loads the scenario file: 0, or -1 with a file:line message in err. */
static int scenario_load(const char *path, scenario *s, char *err, size_t errlen) {
    lua_State *L = rsl_cli_lua_state();
    if (!L) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    lua_pop(L, 1); /* getinfo: not needed, errors name their line themselves */
    static const struct {
        const char *name;
        lua_CFunction f;
    } fns[] = {{"scenario", l_scenario}, {"traffic", l_traffic}, {"upstream", l_upstream}};
    for (size_t i = 0; i < sizeof(fns) / sizeof(fns[0]); i++) {
        lua_pushlightuserdata(L, s);
        lua_pushcclosure(L, fns[i].f, 1);
        lua_setglobal(L, fns[i].name);
    }
    int rc = luaL_loadfile(L, path);
    if (rc == 0) {
        rc = lua_pcall(L, 0, 0, 0);
    }
    if (rc != 0) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "error");
    } else if (!s->policy) {
        snprintf(err, errlen, "%s: no scenario { policy = ..., duration = ... }", path);
        rc = -1;
    } else if (s->ntr == 0) {
        snprintf(err, errlen, "%s: no traffic { rate = ... }", path);
        rc = -1;
    }
    lua_close(L);
    return rc == 0 ? 0 : -1;
}

/* ---- the run --------------------------------------------------------------------------------- */

typedef struct col { /* one tier's served-by counts in the current second */
    char *tier;
    char *step[MAX_COLS];
    long count[MAX_COLS];
    int n;
} col;

typedef struct sim {
    scenario *s;
    rsl_runtime *rt;
    int64_t t0;
    uint64_t rng;
    /* the current second */
    long calls, rejected;
    col cols[MAX_COLS];
    int ncols;
    /* the whole run */
    long total, total_ok;
    FILE *json;
    int json_rows;
    json_t *guards; /* the names of the policy's guards (an object used as a set) */
    json_t *transitions; /* [{"t": seconds, "guard", "from", "to", "reason"}, ...] */
    json_t *rows;        /* the per-second rows, for the SVG */
} sim;

static double rand01(sim *m) {
    /* xorshift64*: deterministic from the seed, and one thread draws in a fixed order */
    m->rng ^= m->rng >> 12;
    m->rng ^= m->rng << 25;
    m->rng ^= m->rng >> 27;
    return (double)((m->rng * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

static double normal(sim *m) {
    double u = rand01(m), v = rand01(m);
    return sqrt(-2 * log(u > 0 ? u : 1e-300)) * cos(2 * M_PI * v);
}

static void model(void *ud, const rsl_io_attempt *a, rsl_io_answer *ans) {
    sim *m = ud;
    int64_t t = a->now - m->t0;
    upphase u = {.lat = LAT_FIXED, .a = 1e6, .error_rate = 0, .status = 503, .down = 0,
                 .timeout = 0};
    for (int i = 0; i < m->s->nup; i++) {
        const upphase *p = &m->s->up[i];
        if (strcmp(p->step, a->step) != 0 || t < p->from || t >= p->to) {
            continue;
        }
        if (p->lat != LAT_UNSET) {
            u.lat = p->lat;
            u.a = p->a;
            u.b = p->b;
        }
        if (p->error_rate >= 0) {
            u.error_rate = p->error_rate;
        }
        if (p->status) {
            u.status = p->status;
        }
        if (p->down >= 0) {
            u.down = p->down;
        }
        if (p->timeout >= 0) {
            u.timeout = p->timeout;
        }
    }
    double lat = u.lat == LAT_UNIFORM     ? u.a + (u.b - u.a) * rand01(m)
                 : u.lat == LAT_LOGNORMAL ? exp(u.a + u.b * normal(m))
                                          : u.a;
    ans->latency_ns = (int64_t)lat;
    if (u.timeout) {
        ans->latency_ns = INT64_MAX;
    } else if (u.down) {
        ans->outcome = RSL_OUTCOME_CONNECT;
        ans->error = "connection refused (scenario: down)";
        ans->latency_ns = 1000000; /* a refused connect is quick */
    } else if (u.error_rate > 0 && rand01(m) * 100 < u.error_rate) {
        ans->status = u.status;
        ans->body = "{\"error\":\"scenario\"}";
        ans->body_len = strlen(ans->body);
    } else {
        ans->body = "{\"ok\":true}";
        ans->body_len = strlen(ans->body);
    }
}

/* One call's record: its tier, until the result comes. */
typedef struct pending_call {
    sim *m;
    const char *tier;
} pending_call;

static void count(sim *m, const char *tier, const char *served) {
    col *c = NULL;
    for (int i = 0; i < m->ncols && !c; i++) {
        c = strcmp(m->cols[i].tier, tier) == 0 ? &m->cols[i] : NULL;
    }
    if (!c && m->ncols < MAX_COLS) {
        c = &m->cols[m->ncols++];
        c->tier = strdup(tier);
        c->n = 0;
        /* tiers in name order: a run's lines never depend on arrival order */
        for (int i = m->ncols - 1; i > 0 && strcmp(m->cols[i - 1].tier, m->cols[i].tier) > 0;
             i--) {
            col tmp = m->cols[i];
            m->cols[i] = m->cols[i - 1];
            m->cols[i - 1] = tmp;
            c = &m->cols[i - 1];
        }
    }
    if (!c) {
        return;
    }
    int j = 0;
    while (j < c->n && strcmp(c->step[j], served) != 0) {
        j++;
    }
    if (j == c->n && c->n < MAX_COLS) {
        int k = c->n++;
        c->step[k] = strdup(served);
        c->count[k] = 0;
        while (k > 0 && strcmp(c->step[k - 1], c->step[k]) > 0) {
            char *ts = c->step[k];
            long tc = c->count[k];
            c->step[k] = c->step[k - 1];
            c->count[k] = c->count[k - 1];
            c->step[k - 1] = ts;
            c->count[k - 1] = tc;
            k--;
        }
        j = k;
    }
    if (j < c->n) {
        c->count[j]++;
    }
}

static void on_call_result(const rsl_result *r, void *ud) {
    pending_call *p = ud;
    sim *m = p->m;
    const char *served = rsl_result_served_by(r) ? rsl_result_served_by(r) : "none";
    m->calls++;
    m->total++;
    if (rsl_result_outcome(r) == RSL_OUTCOME_OK) {
        m->total_ok++;
    } else if (rsl_result_outcome(r) == RSL_OUTCOME_REJECTED) {
        m->rejected++;
    }
    count(m, p->tier, served);
    free(p);
}

/* Which traffic applies at t: the rate and the attrs of the last phases that set them. */
static const traffic *attrs_at(const scenario *s, int64_t t, double *rate) {
    const traffic *with = NULL;
    *rate = 0;
    for (int i = 0; i < s->ntr; i++) {
        const traffic *p = &s->tr[i];
        if (t < p->from || t >= p->to) {
            continue;
        }
        if (p->rate >= 0) {
            *rate = p->rate;
        }
        if (p->nattrs) {
            with = p;
        }
    }
    if (!with) { /* attrs declared in a phase that is over still describe the traffic */
        for (int i = 0; i < s->ntr; i++) {
            with = s->tr[i].nattrs ? &s->tr[i] : with;
        }
    }
    return with;
}

static void arrive(sim *m, int64_t t) {
    double rate;
    const traffic *tr = attrs_at(m->s, t, &rate);
    rsl_req *req = rsl_req_new();
    pending_call *p = calloc(1, sizeof(*p));
    if (!req || !p) {
        free(p);
        rsl_req_free(req);
        return;
    }
    p->m = m;
    p->tier = "all";
    for (int i = 0; tr && i < tr->nattrs; i++) {
        const attr *a = &tr->attrs[i];
        double u = rand01(m);
        int k = 0;
        while (k + 1 < a->n && u >= a->share[k]) {
            k++;
        }
        rsl_req_set(req, a->name, a->value[k], strlen(a->value[k]));
        if (strcmp(a->name, "tier") == 0) {
            p->tier = a->value[k];
        }
    }
    if (rsl_call(m->rt, m->s->policy, req, on_call_result, p) != 0) {
        free(p);
    }
    rsl_req_free(req);
}

/* The second [sec-1, sec) is over: its line, and its JSON row. */
static void report(sim *m, long sec) {
    char *st = rsl_state_json(m->rt);
    json_t *doc = st ? json_loads(st, 0, NULL) : NULL;
    rsl_free(st);
    printf("%5lds calls %6ld", sec, m->calls);
    json_t *row = json_pack("{s:i,s:i,s:i}", "t", (json_int_t)sec, "calls", (json_int_t)m->calls,
                            "rejected", (json_int_t)m->rejected);
    json_t *served = json_object();
    for (int i = 0; i < m->ncols; i++) {
        col *c = &m->cols[i];
        printf(" | %s:", c->tier);
        json_t *o = json_object();
        for (int j = 0; j < c->n; j++) {
            if (c->count[j]) {
                printf(" %s=%ld", c->step[j], c->count[j]);
            }
            json_object_set_new(o, c->step[j], json_integer(c->count[j]));
            c->count[j] = 0;
        }
        json_object_set_new(served, c->tier, o);
    }
    json_object_set_new(row, "served_by", served);
    json_t *guards = json_object();
    const char *name;
    json_t *g;
    json_object_foreach(json_object_get(doc, "guards"), name, g) {
        if (!json_object_get(m->guards, name)) {
            continue; /* another policy's */
        }
        const char *kind = json_string_value(json_object_get(g, "kind"));
        if (kind && strcmp(kind, "breaker") == 0) {
            double fr = json_number_value(json_object_get(g, "failure_rate"));
            double p90 = json_number_value(json_object_get(g, "p90_ms"));
            const char *state = json_string_value(json_object_get(g, "state"));
            printf(" | %s %s err %.0f%% p90 %.0fms", name, state ? state : "?", fr, p90);
            json_object_set_new(guards, name,
                                json_pack("{s:s,s:f,s:f}", "state", state ? state : "?",
                                          "failure_rate", fr, "p90_ms", p90));
        } else if (kind && strcmp(kind, "limiter") == 0) {
            double tok = json_number_value(json_object_get(g, "tokens"));
            printf(" | %s tokens %.0f", name, tok);
            json_object_set_new(guards, name, json_pack("{s:f}", "tokens", tok));
        } else if (kind && strcmp(kind, "adaptive") == 0) {
            json_int_t lim = json_integer_value(json_object_get(g, "limit"));
            printf(" | %s limit %lld", name, (long long)lim);
            json_object_set_new(guards, name, json_pack("{s:I}", "limit", lim));
        }
    }
    json_object_set_new(row, "guards", guards);
    if (m->rejected) {
        printf(" | rejected %ld", m->rejected);
    }
    printf("\n");
    json_array_append(m->rows, row);
    if (m->json) {
        char *js = json_dumps(row, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
        fprintf(m->json, "%s%s", m->json_rows++ ? ",\n" : "{\"seconds\": [\n", js ? js : "{}");
        free(js);
    }
    json_decref(row);
    json_decref(doc);
    m->calls = m->rejected = 0;
}

/* ---- the SVG timeline -----------------------------------------------------------------------
 * One self-contained file: per tier a panel of stacked served-by areas (calls per second),
 * per breaker a band colored by its state each second, one panel with each breaker's error
 * rate (0..100%) and p90 (scaled to the run's highest), and a mark at each transition. */

#define SVG_W 960
#define SVG_LEFT 150
#define SVG_RIGHT 20

static const char *const svg_palette[] = {"#4e79a7", "#f28e2b", "#59a14f", "#b07aa1",
                                          "#76b7b2", "#edc948", "#ff9da7", "#9c755f"};

static const char *state_color(const char *st) {
    return !st                            ? "#cccccc"
           : strcmp(st, "closed") == 0    ? "#59a14f"
           : strcmp(st, "open") == 0      ? "#e15759"
           : strcmp(st, "half_open") == 0 ? "#edc948"
                                          : "#9d9d9d";
}

/* A step's color: by its place among every tier's steps in name order, so that a step
 * has the same color in every panel. */
static const char *step_color(const sim *m, const char *step) {
    int rank = 0;
    const char *seen[MAX_COLS * MAX_COLS];
    int nseen = 0;
    for (int i = 0; i < m->ncols; i++) {
        for (int j = 0; j < m->cols[i].n; j++) {
            const char *x = m->cols[i].step[j];
            int dup = 0;
            for (int k = 0; k < nseen && !dup; k++) {
                dup = strcmp(seen[k], x) == 0;
            }
            if (!dup && nseen < MAX_COLS * MAX_COLS) {
                seen[nseen++] = x;
                rank += strcmp(x, step) < 0;
            }
        }
    }
    return svg_palette[rank % (int)(sizeof(svg_palette) / sizeof(svg_palette[0]))];
}

static void svg_write(sim *m, const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "resilua simulate: cannot write %s\n", path);
        return;
    }
    size_t n = json_array_size(m->rows);
    double pw = SVG_W - SVG_LEFT - SVG_RIGHT, dx = n ? pw / (double)n : pw;
    const char *gname;
    json_t *gv;
    int nbreakers = 0;
    json_t *first = json_array_get(m->rows, 0);
    json_object_foreach(json_object_get(first, "guards"), gname, gv) {
        nbreakers += json_object_get(gv, "state") != NULL;
    }
    int panel = 110, band = 18, gap = 26, y = 40;
    int height = y + m->ncols * (panel + gap) + nbreakers * (band + 6) + gap + panel + 30;
    fprintf(f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
            "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"11\">\n"
            "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
            "<text x=\"%d\" y=\"22\" font-size=\"14\" font-weight=\"bold\">%s: %zu s, "
            "%ld calls, %.1f%% ok</text>\n",
            SVG_W, height, SVG_W, height, SVG_LEFT, m->s->policy, n, m->total,
            m->total ? 100.0 * (double)m->total_ok / (double)m->total : 0);
    /* Stacked served-by areas, one panel per tier. */
    for (int ci = 0; ci < m->ncols; ci++) {
        col *c = &m->cols[ci];
        double maxsum = 1;
        for (size_t i = 0; i < n; i++) {
            json_t *o = json_object_get(json_object_get(json_array_get(m->rows, i), "served_by"),
                                        c->tier);
            double sum = 0;
            const char *k;
            json_t *v;
            json_object_foreach(o, k, v) {
                sum += (double)json_integer_value(v);
            }
            maxsum = sum > maxsum ? sum : maxsum;
        }
        fprintf(f, "<text x=\"10\" y=\"%d\" font-weight=\"bold\">%s</text>\n", y + 14,
                c->tier);
        fprintf(f, "<text x=\"10\" y=\"%d\" fill=\"#666\">calls/s by step (max %.0f)</text>\n",
                y + 28, maxsum);
        double *base = calloc(n ? n : 1, sizeof(double));
        for (int sj = 0; base && sj < c->n; sj++) {
            fprintf(f, "<path fill=\"%s\" fill-opacity=\"0.85\" d=\"", step_color(m, c->step[sj]));
            double *top = calloc(n ? n : 1, sizeof(double));
            for (size_t i = 0; top && i < n; i++) {
                json_t *o = json_object_get(
                    json_object_get(json_array_get(m->rows, i), "served_by"), c->tier);
                top[i] = base[i] + (double)json_integer_value(json_object_get(o, c->step[sj]));
                fprintf(f, "%s%.1f %.1f", i ? " L" : "M", SVG_LEFT + dx * (double)i,
                        y + panel - top[i] / maxsum * panel);
                fprintf(f, " L%.1f %.1f", SVG_LEFT + dx * (double)(i + 1),
                        y + panel - top[i] / maxsum * panel);
            }
            for (size_t i = n; top && i > 0; i--) {
                fprintf(f, " L%.1f %.1f L%.1f %.1f", SVG_LEFT + dx * (double)i,
                        y + panel - base[i - 1] / maxsum * panel, SVG_LEFT + dx * (double)(i - 1),
                        y + panel - base[i - 1] / maxsum * panel);
            }
            fprintf(f, " Z\"/>\n");
            fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"10\" height=\"10\" fill=\"%s\"/>"
                       "<text x=\"%d\" y=\"%d\">%s</text>\n",
                    10, y + 36 + 14 * sj, step_color(m, c->step[sj]), 24, y + 45 + 14 * sj,
                    c->step[sj]);
            if (top) {
                memcpy(base, top, n * sizeof(double));
            }
            free(top);
        }
        free(base);
        fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%.0f\" height=\"%d\" fill=\"none\" "
                   "stroke=\"#999\"/>\n",
                SVG_LEFT, y, pw, panel);
        y += panel + gap;
    }
    /* A band per breaker: its state each second. */
    int bands_y = y;
    json_object_foreach(json_object_get(first, "guards"), gname, gv) {
        if (!json_object_get(gv, "state")) {
            continue;
        }
        fprintf(f, "<text x=\"10\" y=\"%d\">%s</text>\n", y + 13, gname);
        for (size_t i = 0; i < n; i++) {
            json_t *g = json_object_get(json_object_get(json_array_get(m->rows, i), "guards"), gname);
            fprintf(f, "<rect x=\"%.1f\" y=\"%d\" width=\"%.2f\" height=\"%d\" fill=\"%s\"/>\n",
                    SVG_LEFT + dx * (double)i, y, dx + 0.3, band,
                    state_color(json_string_value(json_object_get(g, "state"))));
        }
        y += band + 6;
    }
    fprintf(f, "<text x=\"%d\" y=\"%d\" fill=\"#666\">state: <tspan fill=\"#59a14f\">closed</tspan> "
               "<tspan fill=\"#e15759\">open</tspan> <tspan fill=\"#edc948\">half_open</tspan>"
               "</text>\n",
            SVG_LEFT, y + 10);
    y += gap;
    /* Error rate and p90 lines. */
    double maxp90 = 1;
    for (size_t i = 0; i < n; i++) {
        json_object_foreach(json_object_get(json_array_get(m->rows, i), "guards"), gname, gv) {
            double p = json_number_value(json_object_get(gv, "p90_ms"));
            maxp90 = p > maxp90 ? p : maxp90;
        }
    }
    fprintf(f, "<text x=\"10\" y=\"%d\" font-weight=\"bold\">breakers</text>\n"
               "<text x=\"10\" y=\"%d\" fill=\"#e15759\">error rate (0..100%%)</text>\n"
               "<text x=\"10\" y=\"%d\" fill=\"#4e79a7\">p90 (0..%.0f ms)</text>\n",
            y + 14, y + 28, y + 42, maxp90);
    json_object_foreach(json_object_get(first, "guards"), gname, gv) {
        if (!json_object_get(gv, "state")) {
            continue;
        }
        for (int line = 0; line < 2; line++) {
            fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"",
                    line ? "#4e79a7" : "#e15759");
            for (size_t i = 0; i < n; i++) {
                json_t *g =
                    json_object_get(json_object_get(json_array_get(m->rows, i), "guards"), gname);
                double v = line ? json_number_value(json_object_get(g, "p90_ms")) / maxp90
                                : json_number_value(json_object_get(g, "failure_rate")) / 100;
                fprintf(f, "%.1f,%.1f ", SVG_LEFT + dx * ((double)i + 0.5),
                        y + panel - v * panel);
            }
            fprintf(f, "\"/>\n");
        }
    }
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%.0f\" height=\"%d\" fill=\"none\" "
               "stroke=\"#999\"/>\n",
            SVG_LEFT, y, pw, panel);
    int bottom = y + panel;
    /* Transition marks across everything, and the time axis. */
    size_t ti;
    json_t *tr;
    json_array_foreach(m->transitions, ti, tr) {
        double t = json_number_value(json_object_get(tr, "t"));
        const char *to = json_string_value(json_object_get(tr, "to"));
        const char *from = json_string_value(json_object_get(tr, "from"));
        /* Across everything: a breaker that opens from closed, or closes.  The probes in
         * between (open <-> half_open) are ticks on the bands only. */
        int major = strcmp(to, "closed") == 0 || strcmp(from, "closed") == 0;
        fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"%s\" "
                   "stroke-width=\"1\" stroke-dasharray=\"3,3\"><title>%.3f s %s: %s -> %s</title>"
                   "</line>\n",
                SVG_LEFT + dx * t, major ? 40 : bands_y - 4, SVG_LEFT + dx * t,
                major ? bottom : bands_y + nbreakers * (band + 6) - 2,
                major ? "#333333" : state_color(to), t,
                json_string_value(json_object_get(tr, "guard")),
                json_string_value(json_object_get(tr, "from")), to);
    }
    long step = n > 600 ? 120 : n > 120 ? 30 : 10;
    for (long t = 0; t <= (long)n; t += step) {
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%lds</text>\n",
                SVG_LEFT + dx * (double)t, bottom + 16, t);
    }
    fprintf(f, "</svg>\n");
    fclose(f);
}

/* A breaker changed state: a line at its virtual time, and a mark in the JSON. */
static void on_transition(void *ud, const char *breaker, const char *from, const char *to,
                          const char *reason) {
    sim *m = ud;
    if (!json_object_get(m->guards, breaker)) {
        return;
    }
    double t = (double)(rsl_vt_now(m->rt) - m->t0) / 1e9;
    printf("%9.3fs %s %s -> %s (%s)\n", t, breaker, from, to, reason);
    json_array_append_new(m->transitions, json_pack("{s:f,s:s,s:s,s:s,s:s}", "t", t, "guard",
                                                    breaker, "from", from, "to", to, "reason",
                                                    reason));
}

static void quiet_log(void *ud, rsl_log_level level, const char *msg) {
    if (level <= RSL_LOG_ERROR) {
        fprintf(stderr, "resilua simulate: %s\n", msg);
    }
}

static int usage(void) {
    fprintf(stderr,
            "usage: resilua simulate [-p DIR] SCENARIO.lua [--svg FILE] [--json FILE] "
            "[--seed N]\n");
    return 2;
}

int rsl_cli_simulate(int argc, char **argv) {
    const char *dir = "policies", *path = NULL, *json_path = NULL, *svg_path = NULL;
    long long seed = -1;
    for (int i = 2; i < argc; i++) {
        if ((strcmp(argv[i], "-p") == 0 || strcmp(argv[i], "--policies") == 0) && i + 1 < argc) {
            dir = argv[++i];
        } else if (strcmp(argv[i], "--json") == 0 && i + 1 < argc) {
            json_path = argv[++i];
        } else if (strcmp(argv[i], "--svg") == 0 && i + 1 < argc) {
            svg_path = argv[++i];
        } else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            char *end;
            seed = strtoll(argv[++i], &end, 10);
            if (*end || seed < 0) {
                return usage();
            }
        } else if (argv[i][0] != '-' && !path) {
            path = argv[i];
        } else {
            return usage();
        }
    }
    if (!path) {
        return usage();
    }
    scenario *s = calloc(1, sizeof(*s));
    sim *m = calloc(1, sizeof(*m));
    char err[4096];
    if (!s || !m) {
        free(s);
        free(m);
        return 2;
    }
    s->seed = 1;
    if (scenario_load(path, s, err, sizeof(err)) < 0) {
        fprintf(stderr, "resilua simulate: %s\n", err);
        scenario_free(s);
        free(s);
        free(m);
        return 2;
    }
    if (seed >= 0) {
        s->seed = (uint64_t)seed;
    }
    m->s = s;
    m->rng = s->seed * 0x9E3779B97F4A7C15ULL + 1;
    uv_loop_t loop;
    uv_loop_init(&loop);
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    o.loop = &loop;
    o.virtual_time = 1;
    o.seed = s->seed + 1;
    o.log = quiet_log;
    o.io_model = model;
    o.io_model_ud = m;
    o.on_transition = on_transition;
    o.on_transition_ud = m;
    o.otlp_endpoint = "";
    m->guards = json_object();
    m->transitions = json_array();
    m->rows = json_array();
    int rc = rsl_open(&m->rt, &o, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "resilua simulate: %s: %s\n%s\n", dir, rsl_strerror(rc), err);
        uv_loop_close(&loop);
        json_decref(m->guards);
        json_decref(m->transitions);
    json_decref(m->rows);
        scenario_free(s);
        free(s);
        free(m);
        return 2;
    }
    if (json_path && !(m->json = fopen(json_path, "w"))) {
        fprintf(stderr, "resilua simulate: cannot write %s\n", json_path);
    }
    /* The guards of the policy's steps: the only ones its lines show. */
    char *desc = rsl_describe_json(m->rt);
    json_t *d = desc ? json_loads(desc, 0, NULL) : NULL;
    rsl_free(desc);
    int found = 0;
    size_t pi;
    json_t *pol;
    json_array_foreach(json_object_get(d, "policies"), pi, pol) {
        if (strcmp(json_string_value(json_object_get(pol, "name")) ?: "", s->policy) != 0) {
            continue;
        }
        found = 1;
        size_t j, k;
        json_t *step, *gname;
        json_array_foreach(json_object_get(pol, "steps"), j, step) {
            json_array_foreach(json_object_get(step, "guards"), k, gname) {
                json_object_set(m->guards, json_string_value(gname), json_true());
            }
        }
    }
    json_decref(d);
    if (!found) {
        fprintf(stderr, "resilua simulate: %s: no policy \"%s\" in %s\n", path, s->policy, dir);
        rsl_close(m->rt);
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
        json_decref(m->guards);
        json_decref(m->transitions);
    json_decref(m->rows);
        if (m->json) {
            fclose(m->json);
        }
        scenario_free(s);
        free(s);
        free(m);
        return 2;
    }
    m->t0 = rsl_vt_now(m->rt);
    int64_t end = m->t0 + s->duration, next_sec = m->t0 + NS_PER_S;
    double rate;
    attrs_at(s, 0, &rate);
    int64_t next_call = rate > 0 ? m->t0 + (int64_t)(-log(1 - rand01(m)) / rate * NS_PER_S)
                                 : INT64_MAX;
    long sec = 0;
    for (;;) {
        int64_t t = next_call < next_sec ? next_call : next_sec;
        int64_t tt = rsl_vt_next(m->rt);
        if (tt < t) {
            t = tt;
        }
        if (t > end) {
            break;
        }
        rsl_vt_advance(m->rt, t);
        if (t == next_call) {
            arrive(m, t);
            attrs_at(s, t - m->t0, &rate);
            next_call = rate > 0 ? t + 1 + (int64_t)(-log(1 - rand01(m)) / rate * NS_PER_S)
                                 : next_sec; /* no traffic now: look again in a second */
        }
        if (t == next_sec) {
            report(m, ++sec);
            next_sec += NS_PER_S;
        }
    }
    /* Calls still in flight at the end complete as the clock runs on, uncounted in a line. */
    rsl_vt_advance(m->rt, end + 3600 * NS_PER_S);
    printf("simulated %s: %ld calls in %lds, %ld ok (%.1f%%), %zu breaker transitions\n", path,
           m->total, sec, m->total_ok,
           m->total ? 100.0 * (double)m->total_ok / (double)m->total : 0,
           json_array_size(m->transitions));
    if (m->json) {
        /* {"seconds": [...one row per second...], "transitions": [...]} */
        char *tj = json_dumps(m->transitions, JSON_COMPACT | JSON_REAL_PRECISION(9));
        fprintf(m->json, "%s],\n\"transitions\": %s}\n", m->json_rows ? "\n" : "",
                tj ? tj : "[]");
        free(tj);
        fclose(m->json);
    }
    if (svg_path) {
        svg_write(m, svg_path);
    }
    rsl_close(m->rt);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    json_decref(m->guards);
    json_decref(m->transitions);
    json_decref(m->rows);
    for (int i = 0; i < m->ncols; i++) {
        free(m->cols[i].tier);
        for (int j = 0; j < m->cols[i].n; j++) {
            free(m->cols[i].step[j]);
        }
    }
    scenario_free(s);
    free(s);
    free(m);
    return 0;
}
