/*
 * policy -- a policy directory loaded into a generation (policy_load.c and the other
 * policy_*.c files): Lua states that ran every policy file, and the compiled, validated C
 * description of every policy, step and guard the chain runs on.
 *
 * Loading: each state (one per worker) gets the embedded `resilua` DSL (lua/resilua.lua)
 * and runs every `*.lua` file of the directory in name order, each in its own sandboxed
 * environment.  The DSL validates every declaration as it is made (unknown fields, ranges,
 * units) and raises `file:line: kind "name": message` naming the declaration's line; after
 * the last file it checks references across files (guards named by steps, chain steps).
 * The first state's declarations are compiled into the structs below; the other states
 * only contribute their Lua references (route and Lua step functions), by position.
 *
 * Guards: the generation resolves every declared guard against the runtime's registry:
 * same name and kind -> the existing object with the new thresholds applied in place; new
 * -> created and added; kind changed -> replaced; absent from the new declarations ->
 * removed from the registry (a generation still running keeps it alive by reference).
 * Nothing in the registry changes unless the whole directory loaded and validated.
 *
 * Layer: the policies, above the sandbox and the guards, below the Lua binding and the
 * generations.  A loaded step points at its kind's rsl__step_ops (step.h), which the
 * caller hands in; the loader never names a kind's code.
 *
 * Threads: rsl__gen_load runs on one thread (the loader); a loaded generation is immutable
 * except for its Lua states, state i being used only by worker i.
 */
#ifndef RSL_POLICY_H
#define RSL_POLICY_H

#include "guard.h"
#include "resilua.h"
#include "sandbox.h"
#include "step.h"
#include "tmpl.h"
#include <lua.h>
#include <pthread.h>
#include <stdint.h>

typedef enum rsl__step_kind {
    RSL_STEP_STUB,
    RSL_STEP_LUA,
    RSL_STEP_C,
    RSL_STEP_LOCAL_CACHE,
    RSL_STEP_HTTP,
    RSL_STEP_REDIS,
    RSL_STEP_REDIS_CACHE, /* uses u.cache (key, ttl); cache stays NULL */
    RSL_STEP_OTHER,       /* a kind of the step table (step.h) that reads its own fields
                             into u.other */
} rsl__step_kind;

typedef enum rsl__jitter { RSL_JITTER_NONE, RSL_JITTER_FULL, RSL_JITTER_EQUAL, RSL_JITTER_DECORRELATED } rsl__jitter;

typedef struct rsl__retry {
    int attempts;        /* total tries, first included; 1 = no retry */
    int exponential;     /* 0: constant */
    int64_t base_ns;     /* default 20 ms */
    int64_t max_ns;      /* default 1 s */
    rsl__jitter jitter;  /* default full */
    uint32_t on_mask;    /* outcomes retried; default timeout|connect|5xx */
    double budget;       /* default 0.2 */
} rsl__retry;

typedef struct rsl__fault {
    int64_t delay_ns;
    double delay_percent;
    int abort;           /* rsl_outcome, or -1 for none; abort "5xx" answers status 503 */
    double abort_percent;
} rsl__fault;

typedef struct rsl__step {
    char *name;
    rsl__step_kind kind;
    const rsl__step_ops *ops; /* the kind's, from rsl__gen_opts.step_ops (NULL without) */
    int line;              /* line of the step's declaration in its policy's file */
    int64_t timeout_ns;    /* 0: none (the policy deadline still applies) */
    rsl__guard **guards;   /* in declaration order; borrowed from the generation */
    int nguards;
    rsl__retry retry;      /* attempts == 1 when none declared */
    rsl__fault fault;      /* percents 0 when none declared */
    int has_fault;
    union {
        struct {
            int status;
            char *body;
            size_t body_len;
            rsl__header *headers;
            int nheaders;
        } stub;
        struct {
            int *refs;     /* registry ref of the function, one per state */
        } lua;
        struct {
            char *name;    /* the host function registered under this name */
        } c;
        struct {
            char *method;
            rsl__tmpl *url;       /* expanded with attributes URL-encoded */
            char **hnames;        /* request headers: names, and value templates */
            rsl__tmpl **hvalues;
            int nheaders;
            rsl__tmpl *body;      /* NULL: none, unless pass_body */
            int pass_body;        /* send req.body (POST/PUT/PATCH without `body`) */
        } http;
        struct {
            rsl__tmpl **argv;
            int argc;
        } redis;
        struct {
            rsl__tmpl *key;
            int64_t ttl_ns;
            int64_t max_entries;
            void *cache;   /* set by the runtime after load (caches outlive generations) */
        } cache;
        void *other;       /* RSL_STEP_OTHER: its ops' (parse, free) */
    } u;
} rsl__step;

typedef struct rsl__policy {
    char *name;
    char *file;            /* as loaded: "DIR/name.lua" */
    int line;
    int64_t deadline_ns;   /* 0: none */
    rsl__step *steps;      /* in declaration order (keys of `steps` sorted by name when
                              declared as a table: Lua tables have no order) */
    int nsteps;
    int *chain;            /* indices into steps */
    int nchain;
    uint32_t fallback_mask;/* bit (1u << outcome) */
    int *route_refs;       /* registry ref of route per state; NULL when no route */
    int user_route;        /* the policy declares a route (route_refs may be the DSL's own,
                              carrying a `priority` on the chain) */
    int has_priority;      /* the policy declares a priority */
    void *stats;           /* set by the runtime: per-policy metrics */
} rsl__policy;

/* r.expose { ["GET /users/:id"] = "user.profile" } */
typedef struct rsl__expose {
    char *method;          /* "GET", "POST", ... or "*" */
    char *path;            /* "/users/:id" */
    int policy;            /* index into policies */
} rsl__expose;

typedef struct rsl__gen_opts {
    int nstates;           /* Lua states to load: one per worker; >= 1 */
    size_t mem_limit;      /* per state */
    rsl__watchdog *wd;     /* may be NULL; when set, each policy file may run 1 s at most */
    int stripes;           /* window stripes for new breakers */
    rsl_clock_fn clock;    /* "now" for limiters reconfigured in place (their token
                              buckets live on the runtime's clock); NULL: rsl__clock_now */
    void *clock_ud;
    pthread_mutex_t *registry_lock; /* held while the registry changes (readers of the
                              registry on other threads take it too); NULL: none.  Reads
                              during the load take no lock: loads are serialized by the
                              caller, so nobody else writes the registry meanwhile. */
    rsl__leases *leases;   /* global limiters' leases (the runtime's); NULL: every limiter
                              is local (a load that only checks or describes) */
    rsl__fleets *fleets;   /* shared breakers' fleets (the runtime's); NULL: every breaker
                              is local */
    const rsl__step_ops *const *step_ops; /* the step kinds (steps.c), NULL-terminated;
                              NULL: the kinds of rsl__step_kind only, without their ops
                              (a load that only checks or describes) */
} rsl__gen_opts;

/* Limits the DSL enforces at load (a longer chain or guard list is a load error); the
 * chain's RSL_MAX_PATH and RSL_MAX_GUARDS must not be smaller. */
#define RSL_POLICY_MAX_CHAIN 16
#define RSL_POLICY_MAX_GUARDS 16

/* What a load did to the guard registry. Names are newline-separated lists: kept (same
 * kind and settings), changed (settings applied in place, or kind changed: a new object),
 * added, removed; reset lists the changed guards whose state restarted (a breaker whose
 * window changed, or a guard whose kind changed). */
typedef struct rsl__load_report {
    char *kept, *changed, *added, *removed, *reset; /* malloc'd, may be NULL */
    char *warnings;        /* `file:line: message` lines `check` shows; may be NULL */
} rsl__load_report;
void rsl__load_report_free(rsl__load_report *r);

typedef struct rsl__gen {
    uint64_t number;       /* set by the runtime */
    _Atomic int refs;      /* the runtime's current pointer + each call running on it */
    int nstates;
    lua_State **states;
    rsl__policy *policies; /* sorted by name */
    int npolicies;
    rsl__guard **guards;   /* every guard it declares (a reference each), sorted by name */
    int nguards;
    rsl__expose *expose;
    int nexpose;
} rsl__gen;

/*
 * Loads `dir`.  On success returns 0 with *out (refs = 1) and applies the guards to
 * `registry` (which may be a fresh one, as `check` does), filling *report if given.  On
 * failure returns RSL_ELOAD (or RSL_ENOMEM) with `file:line: message` lines in err and
 * leaves the registry untouched.
 */
int rsl__gen_load(const char *dir, rsl__guards *registry, const rsl__gen_opts *o,
                  rsl__gen **out, rsl__load_report *report, char *err, size_t errlen);
/* Closes the states and frees everything (drops guard references). */
void rsl__gen_free(rsl__gen *g);

/* Borrowed, NULL when absent. Binary search. */
rsl__policy *rsl__gen_policy(const rsl__gen *g, const char *name);
/* Index of step `name` (length len) in p, or -1. */
int rsl__policy_step(const rsl__policy *p, const char *name, size_t len);
/* Borrowed, NULL when absent. */
rsl__guard *rsl__gen_guard(const rsl__gen *g, const char *name);

/* {"policies":[{"name","file","line","deadline_ms","steps":[{"name","kind","line",
 *   "guards":[...]}],"chain":[...],"route":bool}],"guards":{"NAME":{"kind":..., config}},
 *   "expose":[{"method","path","policy"}]} -- a new jansson object (json_t *). */
struct json_t;
struct json_t *rsl__gen_describe(const rsl__gen *g);

#endif
