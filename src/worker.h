/*
 * worker -- a thread owning one libuv loop (or a host's loop it is attached to), the I/O
 * clients beside it (HTTP, Redis), and a queue other threads post messages to.
 *
 * Layer: the loop and its I/O, below the Lua binding, the policies and the calls.  It
 * knows nothing of calls: messages it does not handle itself (everything but STOP and FN)
 * go to the owner's ops, which also hear when the worker stops and when it is idle.
 *
 * Threads: rsl__worker_post from any thread; the rest on the worker's thread.
 */
#ifndef RSL_WORKER_H
#define RSL_WORKER_H

#include "env.h"
#include "http.h"
#include "otlp.h"
#include "redis.h"
#include "shed.h"

#include <pthread.h>
#include <stdatomic.h>
#include <uv.h>

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

/* ---- the worker ----------------------------------------------------------------------- */
typedef struct rsl__worker rsl__worker;

/* What the worker's owner (the runtime) does for it, on the worker's thread. */
typedef struct rsl__worker_ops {
    /* A message of the owner's (RSL_MSG_CALL, _ANSWER, _CANCEL); also a message left in the
     * queue after the loop ended, which can only be a cancel (w->stopping is set). */
    void (*handle)(rsl__worker *w, rsl__msg *m);
    /* STOP arrived: cancel everything in flight (w->stopping is set). */
    void (*stop)(rsl__worker *w);
    /* Stopping, nothing in flight, the loop about to close: free what is kept for reuse. */
    void (*idle)(rsl__worker *w);
    /* Attached only: the async handle closed; the owner may be freed now. */
    void (*closed)(rsl__worker *w);
    /* The heartbeat fired (every RSL_SHED_BEAT_NS while serving; NULL: nothing to do). */
    void (*beat)(rsl__worker *w);
} rsl__worker_ops;

typedef struct rsl__worker_conf {
    const rsl__worker_ops *ops;
    void *owner;              /* the owner's, for its ops (the runtime) */
    const rsl__env *env;      /* the log */
    _Atomic int64_t *senders; /* threads inside a post: the worker closes only at 0 */
    size_t http_max_body;
    uint64_t seed;            /* 0: a random seed */
    const char *redis_host;   /* NULL: no Redis */
    int redis_port;
    const char *redis_user, *redis_password; /* AUTH; password NULL: none */
    const rsl__otlp_conf *otlp;   /* NULL: no span exporter */
    rsl__otlp_stats *otlp_stats;  /* one per worker, by index */
    rsl__load *load;              /* the heartbeat reports the loop's lag; NULL: none */
} rsl__worker_conf;

struct rsl__worker {
    rsl__worker_conf conf;
    int index;
    uv_loop_t *loop;  /* &own_loop, or the host's loop when attached */
    uv_loop_t own_loop;
    int attached;     /* runs on the host's loop and thread: no thread of its own */
    uv_async_t async;
    pthread_t thread;
    rsl__queue q;
    int busy;         /* jobs in flight (calls): a stopping worker closes after the last */
    int stopping;
    int spin;         /* a synchronous call just answered: poll the queue a little */
    rsl__msg stop;    /* RSL_MSG_STOP, posted once by rsl__worker_join */
    rsl__http *http;   /* made on first use; closed when the worker stops */
    rsl__redis *redis; /* made at start when there is Redis */
    rsl__otlp *otlp;   /* made on first use; flushed at STOP, closed when it stops */
    uv_timer_t beat;   /* the heartbeat (conf.load): how late the loop runs; unref'd */
    int beating;
    int64_t beat_last;
    /* The calls' own per-worker lists (call.c): the worker never reads them. */
    struct rsl__call *calls; /* in flight */
    struct rsl__call *spare; /* finished calls' objects kept for reuse */
    int nspare;
    uv_sem_t ready;
};

int rsl__worker_start(rsl__worker *w, const rsl__worker_conf *conf, int index);
/* Attaches worker 0 to the host's loop; on that loop's thread. */
int rsl__worker_attach(rsl__worker *w, const rsl__worker_conf *conf, uv_loop_t *loop);
/* Attached: stops now, on the loop's thread: queued calls are aborted, waiting ones
 * canceled; the async handle closes when the last job completed, and its close callback
 * calls ops->closed. */
void rsl__worker_stop_attached(rsl__worker *w);
/* Posts m and wakes the worker. Any thread. */
void rsl__worker_post(rsl__worker *w, rsl__msg *m);
void rsl__worker_join(rsl__worker *w);
/* The worker running on this thread, or NULL. */
rsl__worker *rsl__worker_self(void);
/* Loop thread: a job (call) began / completed (the last one lets a stopping worker
 * finish). */
void rsl__worker_hold(rsl__worker *w);
void rsl__worker_release(rsl__worker *w);
/* Loop thread: the worker's HTTP client (made on first use; NULL when out of memory or
 * stopping). */
rsl__http *rsl__worker_http(rsl__worker *w);
/* Loop thread: the worker's span exporter (made on first use; NULL when there is none,
 * when out of memory or stopping). */
rsl__otlp *rsl__worker_otlp(rsl__worker *w);

#endif
