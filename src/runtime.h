/*
 * runtime.h -- the runtime behind the public header: what runtime.c, expose.c and
 * inspect.c share.  Not installed; embedders see only resilua.h.
 *
 * Layer: the top of the library (below only its clients, serve.c and main.c).  It
 * includes the layers below so that its files (and white-box tests and benchmarks) see
 * them whole.
 *
 * Ownership: the runtime owns the guard registry, the caches, the gauges, the host step
 * table, the calls' shared part and the workers.  Its current generation (rsl__genr)
 * holds one reference of its own; calls and results hold theirs (gen.h).
 */
#ifndef RSL_RUNTIME_H
#define RSL_RUNTIME_H

#include "cache.h"
#include "call.h"
#include "chain.h"
#include "env.h"
#include "gauge.h"
#include "gen.h"
#include "http.h"
#include "lua_api.h"
#include "metrics.h"
#include "policy.h"
#include "steps.h"
#include "vtime.h"
#include "redis.h"
#include "req.h"
#include "resilua.h"
#include "result.h"
#include "step_host.h"
#include "tmpl.h"
#include "worker.h"

#include <pthread.h>
#include <stdatomic.h>
#include <uv.h>

struct rsl_runtime {
    rsl_options o;
    rsl__env env;              /* o's clock and log */
    char *dir;
    rsl__guards *guards;
    rsl__watchdog *wd;
    pthread_mutex_t lock;      /* current generation, caches, metrics, the last reload's
                                  record; held briefly, never across a Lua load (rsl_call
                                  takes it to find the generation) */
    rsl__genr *cur;
    uint64_t gen_number;
    /* Reload: one at a time (reload_lock, held for the whole load); the guard registry
     * changes under reg_lock, which rsl_state_json takes to walk it. Order: reload_lock,
     * then reg_lock or lock, never both of the latter. */
    pthread_mutex_t reload_lock;
    pthread_mutex_t reg_lock;
    struct json_t *last_reload; /* under lock: DESIGN.md's /state "last_reload"; NULL before
                                  rsl_open finished */
    uint64_t reloads_ok, reloads_failed; /* under lock; the open counts as neither */
    struct rsl__sighup *sighup; /* rsl_handle_sighup's thread, or NULL; under lock */
    int nworkers;
    rsl__worker *workers;
    _Atomic uint64_t rr;
    _Atomic int closing;
    _Atomic int teardown;      /* attached: 1 once rsl_close ran, 2 once the async closed */
    _Atomic int64_t senders;   /* threads between "may post" and the end of uv_async_send */
    rsl__calls calls;          /* the calls' shared part: live count, ids, cancel list */
    rsl__load *load;           /* the load signal and the shedding controller */
    rsl__leases *leases;       /* global limiters' leases, freed after the workers */
    rsl__fleets *fleets;       /* shared breakers' fleets, freed after the workers */
    rsl__hoststeps steps;
    char *redis_host;          /* from rsl_options.redis; NULL: none */
    int redis_port;
    char *redis_user, *redis_password; /* AUTH (copies; NULL: none) */
    rsl__caches caches;        /* under lock */
    rsl__metrics metrics;      /* under lock: creation and rendering */
    rsl__gauges gauges;
    int tracing;               /* tracer is set up: spans are made */
    rsl__tracer tracer;        /* o's trace options, resolved (span.h) */
    rsl__vtime vt;             /* rsl_options.virtual_time: the clock and its timers */
    /* With an I/O model: the step table the loader gets (steps.h). */
    const rsl__step_ops *model_table[RSL_MAX_STEP_KINDS];
    rsl__step_ops model_ops[RSL_MAX_STEP_KINDS];
};

/* A call of `policy` on the current generation, not yet given to a worker (set c->w, then
 * post it, or on that worker's thread rsl__call_start it). */
int rsl__call_new(struct rsl_runtime *rt, const char *policy, const rsl_req *req, rsl_call_cb cb,
                  void *ud, rsl__call **out);
/* The current generation, with a reference (NULL once closed). */
rsl__genr *rsl__rt_current(struct rsl_runtime *rt);
/* The runtime's clock. */
static inline int64_t rsl__rt_now(struct rsl_runtime *rt) {
    return rsl__env_now(&rt->env);
}

#endif
