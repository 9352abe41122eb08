/*
 * worker -- a thread owning one libuv loop and the I/O clients beside it (worker.h).
 *
 * Layer: the loop and its I/O.  Other threads reach it only through its MPSC queue +
 * uv_async_send (which coalesces wake-ups, so each wake-up drains the whole queue).
 * Everything else it touches (its loop, its I/O clients, the jobs its owner runs on it
 * and their timers) belongs to it alone.
 *
 * Stopping: rsl_close first makes sure no thread can post a new call (runtime.c), then
 * posts RSL_MSG_STOP.  The owner's ops->stop cancels what is in flight; the worker keeps
 * its loop turning until every job has completed (a host step answered just before its
 * cancel still arrives as a message), waits until no other thread is inside
 * rsl__worker_post, and only then closes its async handle.
 */
#include "worker.h"

#include "clock.h"

#include <sched.h>
#include <stdlib.h>

static _Thread_local rsl__worker *self;

rsl__worker *rsl__worker_self(void) {
    return self;
}

/* ---- Vyukov's intrusive MPSC queue: push is one exchange; pop is wait-free except
 * while a producer sits between its exchange and its link, when pop returns NULL and the
 * producer's uv_async_send that follows wakes the consumer again. */
void rsl__queue_init(rsl__queue *q) {
    atomic_store_explicit(&q->stub.next, NULL, memory_order_relaxed);
    atomic_store_explicit(&q->head, &q->stub, memory_order_relaxed);
    q->tail = &q->stub;
}

void rsl__queue_push(rsl__queue *q, rsl__msg *m) {
    atomic_store_explicit(&m->next, NULL, memory_order_relaxed);
    rsl__msg *prev = atomic_exchange_explicit(&q->head, m, memory_order_acq_rel);
    atomic_store_explicit(&prev->next, m, memory_order_release);
}

rsl__msg *rsl__queue_pop(rsl__queue *q) {
    rsl__msg *tail = q->tail;
    rsl__msg *next = atomic_load_explicit(&tail->next, memory_order_acquire);
    if (tail == &q->stub) {
        if (!next) {
            return NULL;
        }
        q->tail = next;
        tail = next;
        next = atomic_load_explicit(&next->next, memory_order_acquire);
    }
    if (next) {
        q->tail = next;
        return tail;
    }
    if (tail != atomic_load_explicit(&q->head, memory_order_acquire)) {
        return NULL;
    }
    rsl__queue_push(q, &q->stub);
    next = atomic_load_explicit(&tail->next, memory_order_acquire);
    if (next) {
        q->tail = next;
        return tail;
    }
    return NULL;
}

void rsl__worker_post(rsl__worker *w, rsl__msg *m) {
    _Atomic int64_t *senders = w->conf.senders;
    atomic_fetch_add(senders, 1);
    rsl__queue_push(&w->q, m);
    /* Full fence between the push's link store and uv_async_send's first read of the
     * handle's pending flag.  libuv before 1.45 reads the flag with a plain load first
     * ("cheap read") and skips the wake-up when it is set; on x86 that load may pass our
     * link store still in the store buffer, so the loop can clear the flag, drain, miss
     * the unlinked message (pop returns NULL while a producer is mid-push) and go back to
     * sleep: a call stranded until the next post to this worker (libuv PR #349 describes
     * the race; 1.45's PR #3879 made that read seq_cst).  Debian 12 ships 1.44.  Costs
     * one mfence per post, against a hand-off of microseconds.  Seen as a 10 s
     * rsl_call_sync timeout in test_reload's reshape test (1 run in ~20). */
    atomic_thread_fence(memory_order_seq_cst);
    uv_async_send(&w->async);
    atomic_fetch_sub(senders, 1);
}

static void on_attached_closed(uv_handle_t *h) {
    rsl__worker *w = h->data;
    w->conf.ops->closed(w);
}

static void maybe_finish(rsl__worker *w) {
    if (!w->stopping || w->busy > 0 || uv_is_closing((uv_handle_t *)&w->async)) {
        return;
    }
    /* Nobody may be left inside rsl__worker_post: posters of calls are excluded by the
     * runtime before STOP; a host step answering a call we completed may still be
     * returning from uv_async_send. */
    while (atomic_load(w->conf.senders) > 0) {
        sched_yield();
    }
    /* I/O clients close their handles now; the loop runs until their close callbacks.
     * The exporter first: it sends through the HTTP client. */
    if (w->otlp) {
        rsl__otlp_close(w->otlp);
        w->otlp = NULL;
    }
    if (w->http) {
        rsl__http_close(w->http);
        w->http = NULL;
    }
    if (w->redis) {
        rsl__redis_close(w->redis);
        w->redis = NULL;
    }
    if (w->beating) {
        uv_close((uv_handle_t *)&w->beat, NULL);
        w->beating = 0;
    }
    w->conf.ops->idle(w); /* calls freed from now on are not kept */
    uv_close((uv_handle_t *)&w->async, w->attached ? on_attached_closed : NULL);
}

static void handle(rsl__worker *w, rsl__msg *m) {
    switch (m->type) {
    case RSL_MSG_FN: {
        /* Posted before STOP (rsl_on_worker refuses once closing began), so it runs even
         * on a stopping worker: 0 from rsl_on_worker promises it runs. */
        rsl__fn_msg *fm = (rsl__fn_msg *)m;
        fm->fn(fm->ud, w->loop);
        free(fm);
        break;
    }
    case RSL_MSG_STOP:
        w->stopping = 1;
        w->conf.ops->stop(w);
        rsl__otlp_flush(w->otlp); /* the last spans; the worker waits for the batch */
        break;
    default:
        w->conf.ops->handle(w, m);
        break;
    }
}

/* After answering a synchronous call, a worker of its own keeps polling its queue this
 * long before it sleeps in the loop: the caller's next call (request/answer loops are
 * what rsl_call_sync is for) then needs no kernel wake-up, about 10-40 us on this
 * project's VMs (bench_embed).  Only after synchronous calls: spinning after asynchronous
 * ones cost a third of the calls/s on 2 cores (threads fighting for them), while their
 * senders do not wait for the answer anyway.  Timers of the loop wait that long at most.
 * An attached worker never spins: the host's loop is not ours to hold. */
#define SPIN_NS (50 * RSL_NS_PER_US)

/* Messages handled in one turn of the loop at most: then the loop polls its I/O (the
 * answers of upstreams and Redis) before the next batch.  Without a bound, host threads
 * that post as fast as the worker answers keep it in here, and replies wait unread. */
#define DRAIN_BATCH 64

/* Handles queued messages, at most `limit` of them (then the rest after this turn's I/O). */
static void drain_some(rsl__worker *w, int limit) {
    int64_t spin_until = 0;
    for (int n = 0;;) {
        if (n == limit) {
            uv_async_send(&w->async); /* the rest after this turn's I/O */
            break;
        }
        rsl__msg *m = rsl__queue_pop(&w->q);
        if (m) {
            handle(w, m);
            n++;
            spin_until = 0;
            continue;
        }
        if (w->stopping || w->attached || !w->spin) {
            break;
        }
        int64_t now = rsl__clock_now();
        if (!spin_until) {
            spin_until = now + SPIN_NS;
        } else if (now >= spin_until) {
            w->spin = 0;
            break;
        }
    }
    maybe_finish(w);
}

static void drain(uv_async_t *h) {
    drain_some(h->data, DRAIN_BATCH);
}

rsl__http *rsl__worker_http(rsl__worker *w) {
    if (!w->http && !w->stopping) {
        w->http = rsl__http_new(w->loop, w->conf.http_max_body);
    }
    return w->http;
}

/* A batch of spans on the wire keeps a stopping worker up until it is answered (within
 * the exporter's timeout). */
static void otlp_hold(void *ud, int d) {
    rsl__worker *w = ud;
    if (d > 0) {
        rsl__worker_hold(w);
    } else {
        rsl__worker_release(w);
    }
}

rsl__otlp *rsl__worker_otlp(rsl__worker *w) {
    if (!w->otlp && w->conf.otlp && !w->stopping) {
        rsl__http *h = rsl__worker_http(w);
        if (h) {
            w->otlp = rsl__otlp_new(w->loop, h, w->conf.otlp, &w->conf.otlp_stats[w->index],
                                    otlp_hold, w);
        }
    }
    return w->otlp;
}

static void redis_log(void *ud, int level, const char *msg) {
    rsl__worker *w = ud;
    rsl__log(w->conf.env, level == 0 ? RSL_LOG_ERROR : level == 1 ? RSL_LOG_WARN : RSL_LOG_INFO,
             "worker %d: redis %s:%d: %s", w->index, w->conf.redis_host, w->conf.redis_port, msg);
}

/* The heartbeat: how late it fires is the loop's lag, the load signal's first half (the
 * queue's sojourn, measured as calls start, is the other). */
static void on_beat(uv_timer_t *t) {
    rsl__worker *w = t->data;
    int64_t now = rsl__clock_now();
    rsl__load_beat(w->conf.load, w->index, now - w->beat_last - RSL_SHED_BEAT_NS);
    w->beat_last = now;
    if (w->conf.ops->beat && !w->stopping) {
        w->conf.ops->beat(w);
    }
}

/* On the loop's thread, before it serves calls: the Redis connection starts opening now,
 * so that the first call finds it up; the heartbeat starts. */
static void io_start(rsl__worker *w) {
    w->http = NULL;
    w->redis = NULL;
    w->otlp = NULL;
    w->beating = 0;
    if (w->conf.load && uv_timer_init(w->loop, &w->beat) == 0) {
        w->beat.data = w;
        w->beat_last = rsl__clock_now();
        uv_timer_start(&w->beat, on_beat, RSL_SHED_BEAT_NS / 1000000, RSL_SHED_BEAT_NS / 1000000);
        uv_unref((uv_handle_t *)&w->beat); /* it never keeps a loop running */
        w->beating = 1;
    }
    if (w->conf.redis_host) {
        w->redis = rsl__redis_new(w->loop, w->conf.redis_host, w->conf.redis_port, redis_log, w);
        if (w->redis && w->conf.redis_password &&
            rsl__redis_auth(w->redis, w->conf.redis_user, w->conf.redis_password) < 0) {
            redis_log(w, 0, "out of memory for AUTH: connecting without it");
        }
    }
}

void rsl__worker_hold(rsl__worker *w) {
    w->busy++;
}

void rsl__worker_release(rsl__worker *w) {
    w->busy--;
    maybe_finish(w);
}

static void *run(void *arg) {
    rsl__worker *w = arg;
    self = w;
    rsl__thread_slot = w->index + 1 < RSL_THREAD_SLOTS ? w->index + 1 : 0;
    rsl__rand_seed(w->conf.seed ? w->conf.seed + (uint64_t)w->index : 0);
    io_start(w);
    uv_sem_post(&w->ready);
    uv_run(w->loop, UV_RUN_DEFAULT);
    /* Only a cancel posted by a waiter racing the close can be left (calls and answers
     * keep the loop alive until they are processed): the owner frees it. */
    rsl__msg *m;
    while ((m = rsl__queue_pop(&w->q)) != NULL) {
        if (m->type == RSL_MSG_CANCEL) {
            w->conf.ops->handle(w, m);
        }
    }
    self = NULL;
    rsl__thread_slot = 0;
    return NULL;
}

int rsl__worker_start(rsl__worker *w, const rsl__worker_conf *conf, int index) {
    w->conf = *conf;
    w->index = index;
    w->calls = NULL;
    w->busy = 0;
    w->stopping = 0;
    w->spare = NULL;
    w->nspare = 0;
    rsl__queue_init(&w->q);
    w->loop = &w->own_loop;
    w->attached = 0;
    int rc = uv_loop_init(w->loop);
    if (rc < 0) {
        return RSL_ESYS;
    }
    rc = uv_async_init(w->loop, &w->async, drain);
    if (rc < 0) {
        uv_loop_close(w->loop);
        return RSL_ESYS;
    }
    w->async.data = w;
    uv_sem_init(&w->ready, 0);
    if (pthread_create(&w->thread, NULL, run, w) != 0) {
        uv_close((uv_handle_t *)&w->async, NULL);
        uv_run(w->loop, UV_RUN_DEFAULT);
        uv_loop_close(w->loop);
        uv_sem_destroy(&w->ready);
        return RSL_ESYS;
    }
    uv_sem_wait(&w->ready);
    return 0;
}

void rsl__worker_join(rsl__worker *w) {
    w->stop.type = RSL_MSG_STOP;
    rsl__worker_post(w, &w->stop);
    pthread_join(w->thread, NULL);
    uv_loop_close(w->loop);
    uv_sem_destroy(&w->ready);
}

int rsl__worker_attach(rsl__worker *w, const rsl__worker_conf *conf, uv_loop_t *loop) {
    w->conf = *conf;
    w->index = 0;
    w->calls = NULL;
    w->busy = 0;
    w->stopping = 0;
    w->spare = NULL;
    w->nspare = 0;
    w->loop = loop;
    w->attached = 1;
    rsl__queue_init(&w->q);
    if (uv_async_init(loop, &w->async, drain) < 0) {
        return RSL_ESYS;
    }
    w->async.data = w;
    self = w;
    rsl__rand_seed(conf->seed);
    io_start(w);
    return 0;
}

void rsl__worker_stop_attached(rsl__worker *w) {
    /* What a worker thread does on RSL_MSG_STOP, here and now: the message goes through
     * the queue so that everything posted before it is handled first. */
    w->stop.type = RSL_MSG_STOP;
    rsl__queue_push(&w->q, &w->stop);
    drain_some(w, -1); /* all of it, STOP included, now: no batch bound here */
    self = NULL;
}
