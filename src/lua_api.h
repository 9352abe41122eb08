/*
 * lua_api -- the C side of what policy code touches per call: `req`, `sig`, `prev`, and
 * the protected, time-limited calls into route() and Lua steps.
 *
 * Layer: the Lua binding, above the sandbox and the policies it reads, below the calls
 * (which it knows only as the rsl__lcall below).  One rsl__lapi per (generation, worker)
 * Lua state, used only by that worker's thread.
 */
#ifndef RSL_LUA_API_H
#define RSL_LUA_API_H

#include "answer.h"
#include "gauge.h"
#include "policy.h"

typedef struct rsl__lapi rsl__lapi;

typedef struct rsl__lapi_conf {
    rsl__gauges *gauges;       /* sig.gauge reads them */
    int64_t route_limit_ns;    /* rsl_options' limits on Lua */
    int64_t lua_step_limit_ns;
    const struct rsl__load *load; /* sig.pressure reads it; NULL: 0 */
} rsl__lapi_conf;

/* What policy code sees of the call it runs for. */
typedef struct rsl__lcall {
    uint64_t id;        /* `req` is filled once per call id */
    int64_t start;      /* the call's start: sig.now() and rates use it */
    const rsl_req *req;
    const rsl__policy *p;
    int pidx;           /* p's index in its generation */
} rsl__lcall;

rsl__lapi *rsl__lapi_new(const rsl__lapi_conf *conf, rsl__gen *g, int state);
void rsl__lapi_free(rsl__lapi *a);
/* Runs the policy's route; fills path[0..*npath) (at most RSL_POLICY_MAX_CHAIN step
 * indices) and *priority (0..RSL_PRIORITY_LOWEST; left alone when the route gives none).
 * A route returns a list of step names, or { chain = {...}, priority = N }; a second
 * return value, when a number, is the priority too (the DSL's `priority` function).
 * 0, or -1 with a message in err. */
int rsl__lapi_route(rsl__lapi *a, const rsl__lcall *lc, int *path, int *npath, int *priority,
                    char *err, size_t errlen);
/* Runs Lua step s into ans; prev_step names the step that answered prev (NULL: none). */
void rsl__lapi_step(rsl__lapi *a, const rsl__lcall *lc, const rsl__step *s,
                    const char *prev_step, const rsl__answer *prev, rsl__answer *ans);

#endif
