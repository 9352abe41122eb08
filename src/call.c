/*
 * call -- a call's object, its life and its end (call.h).
 *
 * Every way a call ends goes through rsl__call_finish(), which runs the callback exactly
 * once and frees the call (after its timer's close callback, if it has one).
 *
 * Layer: the calls.  A call's functions run on its worker's thread; rsl__calls_* on any.
 */
#include "call.h"
#include "vtime.h"

#include <stdlib.h>
#include <string.h>

/* ---- the calls of a runtime ----------------------------------------------------------- */

int rsl__calls_init(rsl__calls *cs) {
    atomic_init(&cs->live, 0);
    atomic_init(&cs->next_id, 0);
    cs->tracked = NULL;
    cs->ntracked = cs->tracked_cap = 0;
    return pthread_mutex_init(&cs->lock, NULL) == 0 ? 0 : RSL_ESYS;
}

void rsl__calls_close(rsl__calls *cs) {
    free(cs->tracked);
    pthread_mutex_destroy(&cs->lock);
}

/* A short list: only calls made with an id (rsl_call_id and rsl_call_sync) are on it. */
int rsl__calls_track(rsl__calls *cs, rsl__call *c) {
    pthread_mutex_lock(&cs->lock);
    if (cs->ntracked == cs->tracked_cap) {
        int cap = cs->tracked_cap ? cs->tracked_cap * 2 : 64;
        rsl__call **t = realloc(cs->tracked, (size_t)cap * sizeof(*t));
        if (!t) {
            pthread_mutex_unlock(&cs->lock);
            return RSL_ENOMEM;
        }
        cs->tracked = t;
        cs->tracked_cap = cap;
    }
    cs->tracked[cs->ntracked++] = c;
    c->tracked = 1;
    pthread_mutex_unlock(&cs->lock);
    return 0;
}

void rsl__calls_untrack(rsl__calls *cs, rsl__call *c) {
    pthread_mutex_lock(&cs->lock);
    for (int i = cs->ntracked - 1; i >= 0; i--) {
        if (cs->tracked[i] == c) {
            cs->tracked[i] = cs->tracked[--cs->ntracked];
            break;
        }
    }
    c->tracked = 0;
    pthread_mutex_unlock(&cs->lock);
}

void rsl__calls_flag(rsl__calls *cs, uint64_t id) {
    pthread_mutex_lock(&cs->lock);
    for (int i = 0; i < cs->ntracked; i++) {
        if (cs->tracked[i]->id == id) {
            atomic_store_explicit(&cs->tracked[i]->cancel_req, 1, memory_order_relaxed);
            break;
        }
    }
    pthread_mutex_unlock(&cs->lock);
}

/* ---- call objects kept for reuse ------------------------------------------------------
 * A worker keeps the objects of up to SPARE_MAX finished calls for the calls made on its
 * own thread (the sidecar's, a callback's next call): such a call then allocates nothing
 * of its own, no call, request copy, result, names or buffers, which was a fifth of the
 * instructions of an r.redis call (callgrind, bench_io).  A buffer grown past
 * SPARE_BUF_MAX is freed, not kept.  Under ASan a kept object is poisoned until reused,
 * so a use of a finished call is still reported. */
#define SPARE_MAX 64
#define SPARE_BUF_MAX 8192

#if defined(__SANITIZE_ADDRESS__) /* gcc; clang says it with __has_feature */
#define RSL_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RSL_ASAN 1
#endif
#endif
#ifdef RSL_ASAN
#include <sanitizer/asan_interface.h>
/* The call object, its result, request block, names and buffers: all of it. */
static void spare_poison(rsl__call *c, int on) {
    void (*f)(void const volatile *, size_t) =
        on ? __asan_poison_memory_region : __asan_unpoison_memory_region;
    if (!on) {
        f(c, sizeof(*c));
    }
    rsl__buf *b[4] = {&c->ans.body, &c->prev_ans.body, &c->scratch, &c->io};
    for (int i = 0; i < 4; i++) {
        if (b[i]->p) {
            f(b[i]->p, b[i]->cap);
        }
    }
    if (c->req) {
        f(c->req, c->req_size);
    }
    rsl_result *r = c->res;
    if (r) {
        if (!on) {
            f(r, sizeof(*r));
        }
        if (r->body.p) {
            f(r->body.p, r->body.cap);
        }
        if (r->names) {
            f(r->names, r->names_size);
        }
        if (on) {
            f(r, sizeof(*r));
        }
    }
    if (on) {
        f(c, sizeof(*c));
    }
}
#define SPARE_POISON(c) spare_poison((c), 1)
#define SPARE_UNPOISON(c) spare_poison((c), 0)
#else
#define SPARE_POISON(c) ((void)(c))
#define SPARE_UNPOISON(c) ((void)(c))
#endif

static void call_keep(rsl__call *c, rsl__worker *w) {
    rsl__answer_reset(&c->ans);
    rsl__answer_reset(&c->prev_ans);
    if (c->G) {
        rsl__genr_unref(c->G);
    }
    rsl__buf b[4] = {c->ans.body, c->prev_ans.body, c->scratch, c->io};
    rsl_result *res = c->res;
    rsl_req *req = c->req;
    size_t req_size = c->req_size;
    rsl__trace *tr = c->tr ? c->tr : c->tr_spare;
    memset(c, 0, sizeof(*c));
    c->tr_spare = tr;
    for (int i = 0; i < 4; i++) {
        rsl__buf_empty(&b[i], SPARE_BUF_MAX);
    }
    c->ans.body = b[0];
    c->prev_ans.body = b[1];
    c->scratch = b[2];
    c->io = b[3];
    if (res) {
        rsl__result_scrub(res, SPARE_BUF_MAX);
    }
    c->res = res;
    if (req_size > SPARE_BUF_MAX) {
        rsl_req_free(req);
    } else {
        c->req = req;
        c->req_size = req_size;
    }
    c->next = w->spare;
    w->spare = c;
    w->nspare++;
    SPARE_POISON(c);
}

/* A finished call's object kept by w (its buffers, result and request block with it),
 * zeroed but for those; NULL when w keeps none. */
static rsl__call *call_spare(rsl__worker *w) {
    rsl__call *c = w->spare;
    if (c) {
        SPARE_UNPOISON(c);
        w->spare = c->next;
        w->nspare--;
        c->next = NULL;
    }
    return c;
}

static void call_release(rsl__call *c) {
    rsl__answer_free(&c->ans);
    rsl__answer_free(&c->prev_ans);
    rsl__buf_free(&c->scratch);
    rsl__buf_free(&c->io);
    rsl_result_free(c->res);
    rsl_req_free(c->req);
    rsl__trace_free(c->tr);
    rsl__trace_free(c->tr_spare);
    if (c->G) {
        rsl__genr_unref(c->G);
    }
    free(c);
}

void rsl__call_drop_spares(rsl__worker *w) {
    rsl__call *c;
    while ((c = call_spare(w)) != NULL) {
        call_release(c);
    }
}

void rsl__call_free(rsl__call *c) {
    rsl__calls *cs = c->cs;
    rsl__worker *w = c->w;
    if (w && !w->stopping && w->nspare < SPARE_MAX && rsl__worker_self() == w) {
        call_keep(c, w);
    } else {
        call_release(c);
    }
    /* Read before the count drops: once it does, the last call may free cs any time. */
    void (*freed)(void *, int64_t) = cs->freed;
    void *ud = cs->freed_ud;
    int64_t left = atomic_fetch_sub(&cs->live, 1) - 1;
    if (freed) {
        freed(ud, left);
    }
}

int rsl__call_make(rsl__calls *cs, rsl__worker *w, rsl__genr *G, rsl__policy *p,
                   const rsl_req *req, rsl_call_cb cb, void *ud, rsl__call **out) {
    rsl__call *c = w ? call_spare(w) : NULL;
    if (!c && !(c = calloc(1, sizeof(*c)))) {
        rsl__genr_unref(G);
        return RSL_ENOMEM;
    }
    c->msg.type = RSL_MSG_CALL;
    c->cs = cs;
    atomic_fetch_add(&cs->live, 1); /* rsl__call_free takes it back */
    c->G = G;
    c->p = p;
    c->pidx = (int)(p - G->g->policies);
    c->cb = cb;
    c->ud = ud;
    c->id = atomic_fetch_add_explicit(&cs->next_id, 1, memory_order_relaxed) + 1;
    c->req = rsl__req_copy(req, c->req, &c->req_size);
    rsl_result *r = c->req ? rsl__result_new(c->res, p->name) : NULL;
    if (!r) {
        rsl__call_free(c);
        return RSL_ENOMEM;
    }
    c->res = r;
    *out = c;
    return 0;
}

/* ---- in flight on a worker ------------------------------------------------------------ */

void rsl__call_track(rsl__call *c) {
    rsl__worker *w = c->w;
    c->prev = NULL;
    c->next = w->calls;
    if (w->calls) {
        w->calls->prev = c;
    }
    w->calls = c;
    rsl__worker_hold(w);
}

static void call_untrack(rsl__call *c) {
    rsl__worker *w = c->w;
    if (c->prev) {
        c->prev->next = c->next;
    } else if (w->calls == c) {
        w->calls = c->next;
    }
    if (c->next) {
        c->next->prev = c->prev;
    }
    c->prev = c->next = NULL;
}

/* ---- the end -------------------------------------------------------------------------- */

static void on_timer_closed(uv_handle_t *h) {
    rsl__call_free(h->data);
}

static double ms_since(int64_t from, int64_t now) {
    return (double)(now - from) / 1e6;
}

void rsl__call_finish(rsl__call *c, int64_t now) {
    rsl_result *r = c->res;
    c->phase = RSL_PH_DONE;
    if (c->cs->vt) {
        rsl__vt_disarm(c->cs->vt, &c->vt_slot); /* nothing may point at a freed call */
    }
    r->elapsed_ms = ms_since(c->start, now);
    r->outcome = c->ans.outcome;
    r->status = c->ans.status;
    rsl__buf tmpb = r->body;
    r->body = c->ans.body;
    c->ans.body = tmpb;
    r->headers = c->ans.headers;
    r->nheaders = c->ans.nheaders;
    c->ans.headers = NULL;
    c->ans.nheaders = 0;
    r->served_by = r->npath > 0 ? r->npath - 1 : -1;
    r->degraded = r->served_by > 0;
    rsl__pview *v = c->p->stats;
    if (v && (unsigned)r->outcome < RSL_OUTCOME__COUNT) {
        atomic_fetch_add_explicit(&v->ps->calls[r->outcome], 1, memory_order_relaxed);
    }

    /* Write-through: every step after the one that answered ok may learn the answer (the
     * caches do).  A local cache write is a hash insert; it happens before the callback
     * only so that the callback may hand the result to another thread. */
    if (r->outcome == RSL_OUTCOME_OK && r->served_by >= 0) {
        for (int i = r->served_by + 1; i < c->npath; i++) {
            const rsl__step *s = &c->p->steps[c->path[i]];
            if (s->ops->learn) {
                s->ops->learn(c, s, r, now);
            }
        }
    }
    rsl__result_own_names(r, c->G);
    if (c->tracked) {
        rsl__calls_untrack(c->cs, c);
    }
    call_untrack(c);
    if (c->tr || c->req->has_trace) {
        rsl__trace_result(c, r);
    }
    if (c->cb_keeps_result) {
        if (c->tr) {
            rsl__trace_emit(c, r, now); /* r leaves with the callback */
        }
        c->res = NULL; /* the callback's now: r may be freed before cb even returns */
        c->w->spin = 1;
    }
    c->cb(r, c->ud);
    if (c->tr && !c->cb_keeps_result) {
        rsl__trace_emit(c, r, now); /* after the answer: its caller does not wait for this */
    }
    if (c->fleet_due) { /* a shared breaker's flush, if one is due: after the answer too */
        rsl__fleet_tend(c->fleet_due, c->w->redis);
    }
    rsl__worker *w = c->w;
    if (c->timer_inited) {
        uv_close((uv_handle_t *)&c->timer, on_timer_closed);
    } else {
        rsl__call_free(c);
    }
    rsl__worker_release(w);
}

void rsl__call_abort(rsl__call *c, rsl_outcome o, const char *msg) {
    rsl__call_track(c);
    c->start = rsl__call_now(c);
    rsl__answer_fail(&c->ans, o, "%s", msg);
    rsl__call_finish(c, c->start);
}
