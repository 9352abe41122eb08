/*
 * step_host -- r.c, the host's steps (step_host.h).
 *
 * The handle is shared by the worker and the host, each holding a reference.  The first
 * of "answered" (the host) and "abandoned" (the worker, on a timeout or a cancel) wins a
 * CAS; an answer that loses is dropped, an answer that wins reaches the worker as a
 * message (or, answered from inside the step function, is picked up on return).
 *
 * Layer: a step kind.  rsl_step_answer and rsl_step_fail from any thread; the rest on the
 * call's worker thread.
 */
#include "step_host.h"

#include "chain.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the table ------------------------------------------------------------------------ */

void rsl__hoststeps_init(rsl__hoststeps *t) {
    pthread_mutex_init(&t->lock, NULL);
    t->v = NULL;
    t->n = 0;
}

void rsl__hoststeps_close(rsl__hoststeps *t) {
    for (int i = 0; i < t->n; i++) {
        free(t->v[i].name);
    }
    free(t->v);
    pthread_mutex_destroy(&t->lock);
}

int rsl__hoststeps_set(rsl__hoststeps *t, const char *name, rsl_step_fn fn, void *ud) {
    pthread_mutex_lock(&t->lock);
    for (int i = 0; i < t->n; i++) {
        if (strcmp(t->v[i].name, name) == 0) {
            t->v[i].fn = fn;
            t->v[i].ud = ud;
            pthread_mutex_unlock(&t->lock);
            return 0;
        }
    }
    rsl__hoststep *p = realloc(t->v, (size_t)(t->n + 1) * sizeof(*p));
    char *n = strdup(name);
    if (!p || !n) {
        if (p) {
            t->v = p;
        }
        free(n);
        pthread_mutex_unlock(&t->lock);
        return RSL_ENOMEM;
    }
    t->v = p;
    t->v[t->n++] = (rsl__hoststep){n, fn, ud};
    pthread_mutex_unlock(&t->lock);
    return 0;
}

/* Copied under the lock into *out. 0 or RSL_ENOENT. */
static int hoststep_find(rsl__hoststeps *t, const char *name, rsl__hoststep *out) {
    int rc = RSL_ENOENT;
    pthread_mutex_lock(&t->lock);
    for (int i = 0; i < t->n; i++) {
        if (strcmp(t->v[i].name, name) == 0) {
            *out = t->v[i];
            rc = 0;
            break;
        }
    }
    pthread_mutex_unlock(&t->lock);
    return rc;
}

/* ---- the handle ----------------------------------------------------------------------- */

static void step_call_unref(rsl_step_call *sc) {
    if (atomic_fetch_sub_explicit(&sc->refs, 1, memory_order_acq_rel) == 1) {
        rsl__answer_free(&sc->ans);
        free(sc);
    }
}

/* The worker gives up on the host's answer (timeout, cancel). 1: abandoned (or nothing
 * was pending); 0: the answer won the race and its message is on the way. */
static int host_abort(rsl__call *c) {
    rsl_step_call *sc = c->wait;
    if (!sc) {
        return 1;
    }
    int expect = RSL_SC_PENDING;
    if (atomic_compare_exchange_strong(&sc->state, &expect, RSL_SC_ABANDONED)) {
        c->wait = NULL;
        sc->call = NULL;
        step_call_unref(sc);
        return 1;
    }
    return 0;
}

static int host_answer(rsl_step_call *sc) {
    int expect = RSL_SC_PENDING;
    if (!atomic_compare_exchange_strong(&sc->state, &expect, RSL_SC_ANSWERED)) {
        step_call_unref(sc); /* abandoned: drop the host's reference */
        return RSL_EALREADY;
    }
    if (rsl__worker_self() == sc->w) {
        rsl__call *c = sc->call;
        if (c && c->in_attempt && c->wait == sc) {
            /* Answered from inside the step function: the attempt picks the answer up on
             * return and the worker's reference keeps sc alive until then. */
            step_call_unref(sc);
            return 0;
        }
    }
    /* The message carries the host's reference; sc may be gone once this returns. */
    rsl__worker_post(sc->w, &sc->msg);
    return 0;
}

/* The host's first answer: 1 to go on, 0 when it is a second answer, or a late one
 * (the worker gave up: the host's reference is dropped here). */
static int host_first(rsl_step_call *sc) {
    if (atomic_exchange(&sc->host_done, 1)) {
        return 0;
    }
    if (atomic_load(&sc->state) != RSL_SC_PENDING) {
        step_call_unref(sc);
        return 0;
    }
    return 1;
}

int rsl_step_answer(rsl_step_call *sc, int status, const char *body, size_t len) {
    if (!sc || (!body && len)) {
        return RSL_EINVAL;
    }
    if (!host_first(sc)) {
        return RSL_EALREADY;
    }
    /* Only the host writes sc->ans, and only before it wins the state CAS. */
    rsl__answer_reset(&sc->ans);
    sc->ans.status = status;
    sc->ans.outcome = rsl__status_outcome(status);
    if (rsl__buf_append(&sc->ans.body, body ? body : "", len) < 0) {
        rsl__answer_fail(&sc->ans, RSL_OUTCOME_ERROR, "out of memory copying the answer");
    } else if (sc->ans.outcome != RSL_OUTCOME_OK) {
        char msg[32];
        snprintf(msg, sizeof(msg), "status %d", status);
        sc->ans.error = strdup(msg);
    }
    return host_answer(sc);
}

int rsl_step_fail(rsl_step_call *sc, rsl_outcome o, const char *msg) {
    if (!sc || (unsigned)o >= RSL_OUTCOME__COUNT) {
        return RSL_EINVAL;
    }
    if (!host_first(sc)) {
        return RSL_EALREADY;
    }
    rsl__answer_fail(&sc->ans, o, "%s", msg ? msg : rsl_outcome_name(o));
    return host_answer(sc);
}

/* Takes the answer out of an answered handle and releases the worker's reference. */
static void take_host_answer(rsl__call *c, rsl_step_call *sc) {
    rsl__answer_move(&c->ans, &sc->ans);
    c->wait = NULL;
    sc->call = NULL;
    step_call_unref(sc);
}

/* ---- the step ------------------------------------------------------------------------- */

static int host_start(rsl__call *c, const rsl__step *s, int64_t now) {
    rsl__hoststep hs;
    if (hoststep_find(c->cs->hoststeps, s->u.c.name, &hs) < 0) {
        rsl__answer_fail(&c->ans, RSL_OUTCOME_ERROR, "no C step registered as \"%s\"",
                         s->u.c.name);
        return 1;
    }
    rsl_step_call *sc = calloc(1, sizeof(*sc));
    if (!sc) {
        rsl__answer_fail(&c->ans, RSL_OUTCOME_ERROR, "out of memory");
        return 1;
    }
    sc->msg.type = RSL_MSG_ANSWER;
    atomic_init(&sc->state, RSL_SC_PENDING);
    atomic_init(&sc->refs, 2);
    sc->call = c;
    sc->w = c->w;
    c->wait = sc;
    c->in_attempt = 1;
    hs.fn(sc, c->req, hs.ud);
    c->in_attempt = 0;
    if (atomic_load(&sc->state) == RSL_SC_ANSWERED && c->wait == sc) {
        take_host_answer(c, sc);
        return 1;
    }
    /* Pending: bounded by the step's timeout and the deadline, whichever comes first. */
    int64_t limit = s->timeout_ns;
    if (c->deadline && (limit == 0 || c->deadline - now < limit)) {
        limit = c->deadline - now;
    }
    if (limit > 0) {
        rsl__chain_timer(c, RSL_TIMER_STEP_TIMEOUT, limit);
    }
    return 0;
}

void rsl__host_answered(rsl_step_call *sc) {
    rsl__call *c = sc->call;
    if (!c || c->wait != sc) {
        step_call_unref(sc); /* the message's (host's) reference */
        return;
    }
    take_host_answer(c, sc); /* the worker's reference */
    step_call_unref(sc);     /* the message's */
    if (c->canceled) {
        rsl__answer_fail(&c->ans, RSL_OUTCOME_CANCELED, "call canceled");
    }
    rsl__chain_answered(c);
}

const rsl__step_ops rsl__step_host = {
    .name = "c",
    .kind = RSL_STEP_C,
    .waits = 1,
    .start = host_start,
    .abort = host_abort,
};
