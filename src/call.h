/*
 * call -- one call's object and its life: made, started on a worker, finished exactly
 * once (result, callback, write-through, free), and kept for reuse by its worker.
 *
 * Layer: the calls, above the generations, the Lua binding and the worker loop; below the
 * chain (chain.c), which drives a call through its steps, and the step kinds.  The calls
 * of a runtime share an rsl__calls (the runtime's): the embedder's env, the host step
 * table, and the list of calls rsl_cancel can reach.
 *
 * Threads: a call belongs to its worker's thread from the moment it is started there;
 * rsl__calls' functions are for any thread.
 */
#ifndef RSL_CALL_H
#define RSL_CALL_H

#include "answer.h"
#include "env.h"
#include "gen.h"
#include "guard.h"
#include "req.h"
#include "result.h"
#include "span.h"
#include "worker.h"

#include <pthread.h>
#include <stdatomic.h>
#include <uv.h>

/* Guards on one step (the DSL refuses more). */
#define RSL_MAX_GUARDS RSL_POLICY_MAX_GUARDS

typedef struct rsl__call rsl__call;

/* What the calls of one runtime share: made by the runtime, which outlives its calls. */
typedef struct rsl__calls {
    const rsl__env *env;              /* the clock and the log */
    const rsl__tracer *tracer;        /* NULL: tracing off */
    struct rsl__hoststeps *hoststeps; /* host steps by name (step_host.h) */
    /* Virtual time (vtime.h): the call timers on it instead of libuv's; NULL: real time. */
    struct rsl__vtime *vt;
    /* rsl_options.io_model: answers the I/O steps (step_model.c); NULL: the network. */
    void (*io_model)(void *ud, const rsl_io_attempt *a, rsl_io_answer *ans);
    void *io_model_ud;
    /* The load signal and the shedding controller (shed.h); NULL: none (virtual time). */
    struct rsl__load *load;
    /* A call object was freed (any thread); left: calls made and not yet freed.  The last
     * call may free the runtime from here: nothing touches cs after it. */
    void (*freed)(void *ud, int64_t left);
    void *freed_ud;
    _Atomic int64_t live;             /* calls made and not yet freed */
    _Atomic uint64_t next_id;
    pthread_mutex_t lock;             /* the calls rsl_cancel can reach (made with an id) */
    rsl__call **tracked;
    int ntracked, tracked_cap;
} rsl__calls;

int rsl__calls_init(rsl__calls *cs);
void rsl__calls_close(rsl__calls *cs);
/* Makes c reachable by rsl__calls_flag (until it finishes). 0 or RSL_ENOMEM. */
int rsl__calls_track(rsl__calls *cs, rsl__call *c);
void rsl__calls_untrack(rsl__calls *cs, rsl__call *c);
/* Sets the cancel flag of tracked call `id`: a call still queued or running Lua sees it at
 * its next stage. */
void rsl__calls_flag(rsl__calls *cs, uint64_t id);

enum rsl__phase {
    RSL_PH_STEP,       /* begin the step at pos */
    RSL_PH_ATTEMPT,    /* make one attempt */
    RSL_PH_ATTEMPTED,  /* an attempt ended: retry, fall back or finish */
    RSL_PH_WAIT,       /* waiting: an answer to come, a backoff or a fault delay timer */
    RSL_PH_DONE,
};

enum {
    RSL_TIMER_NONE,
    RSL_TIMER_STEP_TIMEOUT,
    RSL_TIMER_BACKOFF,
    RSL_TIMER_DELAY,
    RSL_TIMER_ANSWER, /* virtual time: a modelled answer, already in c->ans, arrives */
};

struct rsl__call {
    rsl__msg msg;                     /* RSL_MSG_CALL */
    struct rsl__call *prev, *next;    /* the worker's in-flight list */
    uint64_t id;
    rsl__calls *cs;
    rsl__worker *w;
    rsl__genr *G;
    rsl__policy *p;
    int pidx;
    rsl_req *req;                     /* frozen copy, owned */
    size_t req_size;                  /* req's allocation (reused by the next call) */
    rsl_call_cb cb;
    void *ud;
    int cb_keeps_result;              /* the callback takes the result (rsl_call_sync) */
    int tracked;                      /* in cs->tracked: rsl_cancel can reach it */
    _Atomic int cancel_req;           /* set by rsl_cancel; checked between stages */
    rsl_result *res;
    int path[RSL_MAX_PATH];
    int npath, pos;
    int priority;                     /* 0..RSL_PRIORITY_LOWEST, from the route (0: none) */
    int has_priority;                 /* the route gave one (a span attribute) */
    int64_t posted;                   /* coarse clock when queued to a worker (0: not) */
    enum rsl__phase phase;
    int64_t start, deadline;          /* ns; deadline 0: none */
    /* the current step */
    int attempt;                      /* attempts begun, rejected ones included */
    int tries;                        /* attempts that passed the guards */
    int64_t step_start, attempt_start, last_sleep;
    rsl__permit permits[RSL_MAX_GUARDS];
    rsl__guard *kids[RSL_MAX_GUARDS]; /* a keyed guard i's child held (keyed.h), or NULL */
    uint32_t held;                    /* bit i: guard i of the step is held */
    rsl__answer ans;                  /* the current step's answer */
    rsl__answer prev_ans;             /* the previous step's answer (for `prev`) */
    int prev_step;                    /* -1: none */
    void *wait;                       /* what the attempt waits on (its kind's), or NULL */
    uv_timer_t timer;
    int timer_inited, timer_purpose;  /* RSL_TIMER_* */
    size_t vt_slot;                   /* its timer's place on virtual time (0: none) */
    int canceled;
    int in_attempt;                   /* inside its kind's start (a host step answering
                                         from inside its function) */
    rsl__buf scratch;
    rsl__buf io;                      /* an HTTP request's expanded body, kept until it ends */
    rsl__trace *tr;                   /* this call's trace (span.h); NULL: none */
    rsl__trace *tr_spare;             /* a finished call's, kept with the object for reuse */
    rsl__fleet *fleet_due;            /* a shared breaker's fleet to tend once the call has
                                         answered (its flush, if due, waits for that) */
};

/* RSL_MSG_CANCEL: cancel call `id` on the worker it is posted to (malloc'd). */
typedef struct rsl__cancel_msg {
    rsl__msg msg;
    uint64_t id;
} rsl__cancel_msg;

/* A call object for a call of p on G (a reference taken over) with a copy of req: one
 * the worker w keeps when given (w's thread only), else a new one.  Its id and worker are
 * the caller's to set.  0 or RSL_ENOMEM (G's reference dropped). */
int rsl__call_make(rsl__calls *cs, rsl__worker *w, rsl__genr *G, rsl__policy *p,
                   const rsl_req *req, rsl_call_cb cb, void *ud, rsl__call **out);
/* The call runs on its worker from now: linked in its in-flight list. */
void rsl__call_track(rsl__call *c);
/* The answer in c->ans is final: the result, the callback, write-through, free. */
void rsl__call_finish(rsl__call *c, int64_t now);
/* Completes a call that never started (queued at close): outcome o. */
void rsl__call_abort(rsl__call *c, rsl_outcome o, const char *msg);
void rsl__call_free(rsl__call *c);
/* Frees the objects w keeps (w's thread, as it stops). */
void rsl__call_drop_spares(rsl__worker *w);

static inline int64_t rsl__call_now(const rsl__call *c) {
    return rsl__env_now(c->cs->env);
}

#endif
