/*
 * runtime.h -- internals shared by the runtime's own files (runtime.c, worker.c, chain.c,
 * lua_api.c).  Not installed; embedders see only resilua.h.
 *
 * Ownership: the runtime owns the guard registry, the caches, the gauges, the host step
 * table and the workers.  A generation (rsl__genr: a loaded rsl__gen plus the runtime's
 * per-state Lua bindings) is reference counted: the runtime's current pointer holds one,
 * every call running on it one, every result handed out one (results borrow step and
 * policy names from it).
 */
#ifndef RSL_RUNTIME_H
#define RSL_RUNTIME_H

#include "cache.h"
#include "http.h"
#include "metrics.h"
#include "policy.h"
#include "redis.h"
#include "req.h"
#include "resilua.h"
#include "tmpl.h"

#include <pthread.h>
#include <stdatomic.h>
#include <uv.h>

/* Longest path a call may take: route() returning more entries is a failing route. */
#define RSL_MAX_PATH RSL_POLICY_MAX_CHAIN
/* Guards on one step (the DSL refuses more). */
#define RSL_MAX_GUARDS RSL_POLICY_MAX_GUARDS

/* ---- messages to a worker: an intrusive MPSC queue (Vyukov) + uv_async_send ---------- */
enum { RSL_MSG_CALL, RSL_MSG_ANSWER, RSL_MSG_CANCEL, RSL_MSG_STOP, RSL_MSG_FN };

typedef struct rsl__msg {
    _Atomic(struct rsl__msg *) next;
    int type;
} rsl__msg;

typedef struct rsl__queue {
    _Atomic(rsl__msg *) head; /* producers exchange here */
    rsl__msg *tail;           /* the consumer's end */
    rsl__msg stub;
} rsl__queue;

/* RSL_MSG_FN: rsl_on_worker's function, malloc'd; the worker runs and frees it. */
typedef struct rsl__fn_msg {
    rsl__msg msg;
    void (*fn)(void *ud, uv_loop_t *loop);
    void *ud;
} rsl__fn_msg;

void rsl__queue_init(rsl__queue *q);
void rsl__queue_push(rsl__queue *q, rsl__msg *m); /* any thread */
rsl__msg *rsl__queue_pop(rsl__queue *q);          /* consumer only; NULL when empty */

/* ---- a step's answer ------------------------------------------------------------------ */
typedef struct rsl__answer {
    rsl_outcome outcome;
    int status;
    rsl__buf body;
    rsl__header *headers; /* malloc'd copies */
    int nheaders;
    char *error;          /* malloc'd; NULL when none */
} rsl__answer;

void rsl__answer_reset(rsl__answer *a);
void rsl__answer_free(rsl__answer *a);
/* Sets outcome/status/error (printf-style message, may be NULL). */
void rsl__answer_fail(rsl__answer *a, rsl_outcome o, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The outcome an HTTP-like status stands for: 5xx, 4xx, else ok. */
rsl_outcome rsl__status_outcome(int status);
int rsl__outcome_status(rsl_outcome o);

/* ---- generations ---------------------------------------------------------------------- */
typedef struct rsl__lapi rsl__lapi; /* lua_api.c: per-state bindings */

typedef struct rsl__budget {
    /* Retry budget of one step over the last 10 s, in 1 s slots (DESIGN.md `budget`). */
    _Atomic int64_t epoch[10];
    _Atomic int64_t first[10];
    _Atomic int64_t retries[10];
} rsl__budget;

typedef struct rsl__genr {
    rsl__gen *g;
    rsl__lapi **api;        /* per state */
    rsl__budget **budgets;  /* [policy][step] */
    _Atomic int refs;
    struct rsl_runtime *rt;
} rsl__genr;

void rsl__genr_ref(rsl__genr *G);
void rsl__genr_unref(rsl__genr *G);
/* Generations alive in this process (every runtime's current one plus the ones draining):
 * lets tests see that an old generation is freed when its last call ends. */
extern _Atomic int rsl__genr_live;

/* ---- results -------------------------------------------------------------------------- */
typedef struct rsl__entry {
    const char *step; /* borrowed from the generation */
    rsl_outcome outcome;
    double ms;
    int attempts;
    char *error;
} rsl__entry;

struct rsl_result {
    char *names;  /* the policy and step names, copied when the call finishes */
    size_t names_size; /* names' allocation, kept when the call object is reused */
    rsl__genr *G; /* only when that copy failed: a reference keeping the names alive */
    const char *policy;
    int status;
    rsl_outcome outcome;
    int served_by; /* index in path, -1 for none */
    int degraded;
    int route_failed;
    double elapsed_ms;
    rsl__buf body;
    rsl__header *headers;
    int nheaders;
    rsl__entry path[RSL_MAX_PATH];
    int npath;
};

/* ---- calls ---------------------------------------------------------------------------- */
typedef struct rsl__worker rsl__worker;

enum rsl__phase {
    RSL_PH_STEP,       /* begin the step at pos */
    RSL_PH_ATTEMPT,    /* make one attempt */
    RSL_PH_ATTEMPTED,  /* an attempt ended: retry, fall back or finish */
    RSL_PH_WAIT,       /* waiting: host step answer, backoff or fault delay timer */
    RSL_PH_DONE,
};

typedef struct rsl__call {
    rsl__msg msg;                     /* RSL_MSG_CALL */
    struct rsl__call *prev, *next;    /* the worker's in-flight list */
    uint64_t id;
    struct rsl_runtime *rt;
    rsl__worker *w;
    rsl__genr *G;
    rsl__policy *p;
    int pidx;
    rsl_req *req;                     /* frozen copy, owned */
    size_t req_size;                  /* req's allocation (reused by the next call) */
    rsl_call_cb cb;
    void *ud;
    int cb_keeps_result;              /* the callback takes the result (rsl_call_sync) */
    int tracked;                      /* in rt->tracked: rsl_cancel can reach it */
    _Atomic int cancel_req;           /* set by rsl_cancel; checked between stages */
    rsl_result *res;
    int path[RSL_MAX_PATH];
    int npath, pos;
    enum rsl__phase phase;
    int64_t start, deadline;          /* ns; deadline 0: none */
    /* the current step */
    int attempt;                      /* attempts begun, rejected ones included */
    int tries;                        /* attempts that passed the guards */
    int64_t step_start, attempt_start, last_sleep;
    rsl__permit permits[RSL_MAX_GUARDS];
    uint32_t held;                    /* bit i: guard i of the step is held */
    rsl__answer ans;                  /* the current step's answer */
    rsl__answer prev_ans;             /* the previous step's answer (for `prev`) */
    int prev_step;                    /* -1: none */
    rsl_step_call *sc;                /* pending host step */
    rsl__http_xfer *xfer;             /* pending HTTP transfer */
    rsl__redis_cmd *rcmd;             /* pending Redis command */
    uv_timer_t timer;
    int timer_inited, timer_purpose;  /* RSL_TIMER_* */
    int canceled;
    int in_attempt;                   /* a host step answering from inside its function */
    rsl__buf scratch;
    rsl__buf io;                      /* an HTTP request's expanded body, kept until it ends */
} rsl__call;

enum { RSL_TIMER_NONE, RSL_TIMER_STEP_TIMEOUT, RSL_TIMER_BACKOFF, RSL_TIMER_DELAY };

/* chain.c: worker thread only. */
void rsl__call_start(rsl__call *c);
void rsl__call_cancel(rsl__call *c);
/* A host step's answer reached the worker (sc is released by this). */
void rsl__call_host_answered(rsl_step_call *sc);
/* Completes a call that never started (queued at close): outcome canceled. */
void rsl__call_abort(rsl__call *c, rsl_outcome o, const char *msg);
void rsl__call_free(rsl__call *c);
/* A finished call's object kept by worker w for its next call (its buffers, result and
 * request block with it), zeroed but for those; NULL when w keeps none.  w's thread. */
rsl__call *rsl__call_spare(rsl__worker *w);
/* Frees the objects w keeps (w's thread, as it stops). */
void rsl__call_drop_spares(rsl__worker *w);
/* The result a call fills; made with the call so that running out of memory fails
 * rsl_call instead of losing a callback.  Names are borrowed from the generation until
 * the call finishes, then copied: a result may outlive its runtime. */
rsl_result *rsl__result_new(rsl__call *c);

/* ---- host steps ----------------------------------------------------------------------- */
enum { RSL_SC_PENDING, RSL_SC_ANSWERED, RSL_SC_ABANDONED };

struct rsl_step_call {
    rsl__msg msg;            /* RSL_MSG_ANSWER */
    _Atomic int state;       /* RSL_SC_*: the first of answer/abandon wins */
    _Atomic int refs;        /* the worker's and the host's */
    _Atomic int host_done;   /* the host has answered (its first answer wins) */
    rsl__call *call;         /* valid while the worker holds its reference */
    rsl__worker *w;
    rsl__answer ans;
};

void rsl__step_call_unref(rsl_step_call *sc);

typedef struct rsl__hoststep {
    char *name;
    rsl_step_fn fn;
    void *ud;
} rsl__hoststep;

/* ---- workers -------------------------------------------------------------------------- */
struct rsl__worker {
    struct rsl_runtime *rt;
    int index;
    uv_loop_t *loop;  /* &own_loop, or the host's loop when attached */
    uv_loop_t own_loop;
    int attached;     /* runs on the host's loop and thread: no thread of its own */
    uv_async_t async;
    pthread_t thread;
    rsl__queue q;
    rsl__call *calls; /* in flight */
    int ncalls;
    int stopping;
    int spin;         /* a synchronous call just answered: poll the queue a little */
    rsl__msg stop; /* RSL_MSG_STOP, posted once by rsl__worker_join */
    rsl__http *http;   /* made on first use; closed when the worker stops */
    rsl__redis *redis; /* made at start when the runtime has Redis */
    rsl__call *spare;  /* finished calls' objects kept for reuse (chain.c) */
    int nspare;
    uv_sem_t ready;
};

int rsl__worker_start(rsl__worker *w, struct rsl_runtime *rt, int index);
/* Attaches worker 0 to the host's loop; on that loop's thread. */
int rsl__worker_attach(rsl__worker *w, struct rsl_runtime *rt, uv_loop_t *loop);
/* Attached: stops now, on the loop's thread: queued calls are aborted, waiting ones
 * canceled; the async handle closes when the last call completed, and its close callback
 * calls rsl__rt_attached_closed. */
void rsl__worker_stop_attached(rsl__worker *w);
/* Posts m and wakes the worker. Any thread. */
void rsl__worker_post(rsl__worker *w, rsl__msg *m);
void rsl__worker_join(rsl__worker *w);
/* The worker running on this thread, or NULL. */
rsl__worker *rsl__worker_self(void);
/* Loop thread: link/unlink an in-flight call. */
void rsl__worker_track(rsl__worker *w, rsl__call *c);
void rsl__worker_untrack(rsl__worker *w, rsl__call *c);
/* Loop thread: a call completed (lets a stopping worker finish). */
void rsl__worker_call_done(rsl__worker *w);
/* Loop thread: the worker's HTTP client (made on first use; NULL when out of memory). */
rsl__http *rsl__worker_http(rsl__worker *w);
/* Asks the worker to cancel call `id` if it is still in flight. Any thread. */
int rsl__worker_post_cancel(rsl__worker *w, uint64_t id);

/* ---- the runtime ---------------------------------------------------------------------- */
#define RSL_MAX_GAUGES 1024

typedef struct rsl__gauge {
    char name[64];
    _Atomic uint64_t bits; /* a double */
} rsl__gauge;

struct rsl_runtime {
    rsl_options o;
    char *dir;
    rsl__guards *guards;
    rsl__watchdog *wd;
    pthread_mutex_t lock;      /* current generation, host steps, caches, gauge creation,
                                  the last reload's record; held briefly, never across a
                                  Lua load (rsl_call takes it to find the generation) */
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
    _Atomic uint64_t next_id;
    _Atomic int closing;
    _Atomic int64_t live;      /* calls made and not yet freed */
    pthread_mutex_t cancel_lock; /* the calls rsl_cancel can reach (made with an id) */
    rsl__call **tracked;
    int ntracked, tracked_cap;
    _Atomic int teardown;      /* attached: 1 once rsl_close ran, 2 once the async closed */
    _Atomic int64_t senders;   /* threads between "may post" and the end of uv_async_send */
    rsl__hoststep *steps;
    int nsteps;
    char *redis_host;          /* from rsl_options.redis; NULL: none */
    int redis_port;
    struct rsl__cache_slot {
        char *name;            /* "policy/step" */
        rsl__cache *cache;
    } *caches;
    int ncaches;
    rsl__metrics metrics;      /* under lock: creation and rendering */
    rsl__gauge gauges[RSL_MAX_GAUGES];
    _Atomic int ngauges;
};

int64_t rsl__rt_now(struct rsl_runtime *rt);
/* Attached runtimes free themselves once the worker's async handle closed and the last
 * call was freed: these two report those events (loop thread / any thread). */
void rsl__rt_attached_closed(struct rsl_runtime *rt);
void rsl__rt_call_freed(struct rsl_runtime *rt);
/* The call finished: rsl_cancel can no longer reach it (worker thread, before its
 * callback). */
void rsl__rt_untrack(struct rsl_runtime *rt, rsl__call *c);
/* A call of `policy` on the current generation, not yet given to a worker (set c->w, then
 * post it, or on that worker's thread rsl__call_start it). */
int rsl__call_new(struct rsl_runtime *rt, const char *policy, const rsl_req *req, rsl_call_cb cb,
                  void *ud, rsl__call **out);
void rsl__log(struct rsl_runtime *rt, rsl_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Host step by name (copied under the lock into *out). 0 or RSL_ENOENT. */
int rsl__rt_hoststep(struct rsl_runtime *rt, const char *name, rsl__hoststep *out);
/* Gauge index by name or -1; value by index. */
int rsl__rt_gauge_find(struct rsl_runtime *rt, const char *name, size_t len);
double rsl__rt_gauge_get(struct rsl_runtime *rt, int i);

/* ---- lua_api.c: per state, worker thread ---------------------------------------------- */
rsl__lapi *rsl__lapi_new(struct rsl_runtime *rt, rsl__genr *G, int state);
void rsl__lapi_free(rsl__lapi *a);
/* Runs p's route for c; fills c->path/npath. 0, or -1 with a message in err. */
int rsl__lapi_route(rsl__lapi *a, rsl__call *c, char *err, size_t errlen);
/* Runs Lua step s for c into c->ans. */
void rsl__lapi_step(rsl__lapi *a, rsl__call *c, const rsl__step *s);

#endif
