/*
 * chain -- running one call through its policy (chain.h): the route, the order of the
 * steps, each attempt behind its guards, faults, retries, timeouts and the deadline, and
 * the fallback rule.
 *
 * A call is a small state machine (rsl__call.phase) driven by advance(): steps that answer
 * at once (stub, lua, local_cache) loop inside it; a step that answers later, a retry
 * backoff or a fault delay park the call in RSL_PH_WAIT until an answer
 * (rsl__chain_answered), a timer or a cancel resumes it.  The chain never knows which kind
 * a step is: it calls the kind's rsl__step_ops.
 *
 * Guards are taken per attempt, in the step's order; a rejection releases what was taken
 * (a breaker permit without a verdict, a bulkhead slot) and is the outcome `rejected`.
 *
 * Layer: above the calls; below the step kinds.  Worker thread only.
 */
#include "chain.h"

#include "clock.h"
#include "keyed.h"
#include "lua_api.h"
#include "retry.h"
#include "vtime.h"

#include <stdlib.h>
#include <string.h>

static void advance(rsl__call *c, int64_t now);

static double ms_since(int64_t from, int64_t now) {
    return (double)(now - from) / 1e6;
}

/* ---- guards --------------------------------------------------------------------------- */

/* A shed call (a reserve, the load controller, a deadline it cannot meet) is `rejected`
 * like any refusal, and tells the client to come back: a 429 with Retry-After, the answer
 * the sidecar sends when no later step serves it. */
static void shed_answer(rsl__call *c) {
    static const rsl__header retry_after = {(char *)"Retry-After", (char *)"1"};
    c->ans.status = 429;
    rsl__answer_copy_headers(&c->ans, &retry_after, 1);
}

/* Guard i of s, acquired for c, given back (keyed: to the child it went to). */
static void give_back(rsl__call *c, const rsl__step *s, int i, int verdict, int64_t now) {
    if (s->guards[i]->keyed) {
        rsl__keyed_release(c->kids[i], &c->permits[i], verdict, now, c->ans.outcome,
                           c->ans.status, now - c->attempt_start);
        c->kids[i] = NULL;
    } else {
        rsl__guard *g = s->guards[i];
        rsl__guard_release(g, &c->permits[i], verdict, now, c->ans.outcome, c->ans.status,
                           now - c->attempt_start);
        rsl__fleet *f = g->kind == RSL_GUARD_BREAKER ? rsl__guard_fleet(g) : NULL;
        if (f && (!c->fleet_due || c->fleet_due == f)) {
            c->fleet_due = f; /* tended after the answer (call.c): a flush never delays it */
        } else if (f) {
            rsl__fleet_tend(f, c->w->redis); /* a second shared breaker: on our loop, now */
        }
    }
}

static int acquire_guards(rsl__call *c, const rsl__step *s, int64_t now) {
    c->held = 0;
    for (int i = 0; i < s->nguards; i++) {
        rsl__guard *g = s->guards[i];
        const char *why = "";
        int rc, holds;
        if (g->keyed) { /* one child per key value: found (or made) from the request */
            rc = rsl__keyed_acquire(g, c->req, &c->scratch, now, c->priority, c->w->redis,
                                    &c->permits[i], &c->kids[i], &why);
            holds = c->kids[i] != NULL;
        } else {
            rc = rsl__guard_acquire(g, now, c->priority, &c->permits[i], &why);
            holds = rsl__guard_holds(g);
        }
        if (!g->keyed && g->kind == RSL_GUARD_LIMITER && rsl__guard_lease(g)) {
            rsl__lease_tend(rsl__guard_lease(g), c->w->redis); /* its refill, on our loop */
        }
        if (rc <= 0) {
            if (c->tr) {
                rsl__trace_refused(c, g);
            }
            for (int j = 0; j < i; j++) {
                if (c->held & (1u << j)) {
                    give_back(c, s, j, 0, now);
                }
            }
            c->held = 0;
            rsl__answer_fail(&c->ans, RSL_OUTCOME_REJECTED, "%s \"%s\" %s",
                             rsl__guard_kind_name(g->kind), g->name, why);
            if (rc < 0) {
                shed_answer(c);
            }
            return 0;
        }
        if (holds) {
            c->held |= 1u << i;
        }
    }
    return 1;
}

/* The attempt ended: verdicts to breakers (none when canceled), slots back. */
static void release_guards(rsl__call *c, const rsl__step *s, int64_t now, int verdict) {
    for (int i = 0; i < s->nguards && c->held; i++) {
        if (c->held & (1u << i)) {
            give_back(c, s, i, verdict, now);
            c->held &= ~(1u << i);
        }
    }
}

/* ---- timers --------------------------------------------------------------------------- */

static void on_timer(uv_timer_t *t);

void rsl__chain_timer(rsl__call *c, int purpose, int64_t ns) {
    rsl__vtime *vt = c->cs->vt;
    if (vt && rsl__vt_arm(vt, c, &c->vt_slot, rsl__vt_now(vt) + (ns > 0 ? ns : 0)) == 0) {
        c->timer_purpose = purpose;
        return;
    } /* else out of memory: a libuv timer, in real time, rather than none */
    if (!c->timer_inited) {
        uv_timer_init(c->w->loop, &c->timer);
        c->timer.data = c;
        c->timer_inited = 1;
    }
    c->timer_purpose = purpose;
    uint64_t ms = ns <= 0 ? 0 : (uint64_t)((ns + RSL_NS_PER_MS - 1) / RSL_NS_PER_MS);
    /* libuv counts from the loop's cached time, taken when this turn began: on a busy
     * loop that is milliseconds ago, and a timeout would fire that much early (a 100 ms
     * timeout measured 95 ms on a loaded machine).  Count from now. */
    uv_update_time(c->w->loop);
    uv_timer_start(&c->timer, on_timer, ms, 0);
}

static void timer_stop(rsl__call *c) {
    if (c->cs->vt) {
        rsl__vt_disarm(c->cs->vt, &c->vt_slot);
    }
    if (c->timer_inited) {
        uv_timer_stop(&c->timer);
    }
    c->timer_purpose = RSL_TIMER_NONE;
}

/* A step that waits with neither a timeout nor a deadline still ends: a hung upstream or
 * a stopped Redis must not hold a call (and its bulkhead slot) forever.  As Envoy's route
 * timeout, generous enough never to cut a real answer short. */
#define IO_DEFAULT_TIMEOUT_NS (30 * RSL_NS_PER_S)

/* DESIGN.md: "every step gets min(own, left)". */
int64_t rsl__chain_attempt_limit(const rsl__call *c, const rsl__step *s, int64_t now) {
    int64_t limit = s->timeout_ns ? s->timeout_ns : IO_DEFAULT_TIMEOUT_NS;
    if (c->deadline && (limit == 0 || c->deadline - now < limit)) {
        limit = c->deadline - now;
        if (limit < 1) {
            limit = 1;
        }
    }
    return limit;
}

void rsl__chain_answered(rsl__call *c) {
    timer_stop(c);
    c->phase = RSL_PH_ATTEMPTED;
    advance(c, rsl__call_now(c));
}

/* ---- attempts ------------------------------------------------------------------------- */

/* One attempt of the current step: guards, then the fault roll, then the kind's start.
 * 1: the answer is in c->ans; 0: waiting. */
static int attempt(rsl__call *c, const rsl__step *s, int64_t now) {
    rsl__answer_reset(&c->ans);
    c->attempt_start = now;
    if (c->tr) {
        rsl__trace_attempt(c, s, now);
    }
    if (s->nguards > RSL_MAX_GUARDS) {
        rsl__answer_fail(&c->ans, RSL_OUTCOME_ERROR, "more than %d guards on one step",
                         RSL_MAX_GUARDS);
        return 1;
    }
    int admitted;
    if (c->tr) {
        rsl__trace_sink = c; /* a breaker's transition becomes the attempt's event */
        admitted = acquire_guards(c, s, now);
        rsl__trace_sink = NULL;
    } else {
        admitted = acquire_guards(c, s, now); /* no TLS write: a call in the .so pays one */
    }
    if (!admitted) {
        return 1;
    }
    c->tries++;
    if (s->has_fault) {
        if (s->fault.abort >= 0 && rsl__rand01() * 100.0 < s->fault.abort_percent) {
            rsl_outcome o = (rsl_outcome)s->fault.abort;
            rsl__answer_fail(&c->ans, o, "fault injected: %s", rsl_outcome_name(o));
            if (o == RSL_OUTCOME_5XX) {
                c->ans.status = 503;
            }
            return 1;
        }
        if (s->fault.delay_ns > 0 && rsl__rand01() * 100.0 < s->fault.delay_percent) {
            rsl__chain_timer(c, RSL_TIMER_DELAY, s->fault.delay_ns);
            return 0;
        }
    }
    return s->ops->start(c, s, now);
}

/* Stops whatever the attempt waits on (nothing, in a backoff or a fault delay). 0: its
 * answer is already on its way. */
static int abort_wait(rsl__call *c, const rsl__step *s) {
    return !s->ops->abort || s->ops->abort(c);
}

/* After an attempt: 1 when a retry was scheduled. */
static int maybe_retry(rsl__call *c, const rsl__step *s, int64_t now) {
    const rsl__retry *r = &s->retry;
    if (c->canceled || c->attempt >= r->attempts || !(r->on_mask & (1u << c->ans.outcome))) {
        return 0;
    }
    int64_t wait = rsl__backoff_ns(r, c->attempt, &c->last_sleep);
    if (c->deadline && now + wait >= c->deadline) {
        return 0; /* it could not finish before the deadline */
    }
    if (!rsl__budget_take_retry(&c->G->budgets[c->pidx][c->path[c->pos]], r->budget, now)) {
        return 0;
    }
    if (c->p->stats) {
        rsl__pview *v = c->p->stats;
        atomic_fetch_add_explicit(&v->steps[c->path[c->pos]]->retries, 1, memory_order_relaxed);
    }
    rsl__chain_timer(c, RSL_TIMER_BACKOFF, wait);
    return 1;
}

/* ---- driving -------------------------------------------------------------------------- */

/* A step whose recent median duration is more than the call has left of its deadline is
 * shed before it starts (a later, quicker step may still answer).  The shed counts as a
 * sample of what was left, so that a median learned in a slow spell cannot shed forever:
 * each shed pulls it down until calls run again and measure. */
static int shed_for_deadline(rsl__call *c, int64_t now) {
    rsl__median *m = &c->G->medians[c->pidx][c->path[c->pos]];
    int64_t p50 = rsl__median_get(m), left = c->deadline - now;
    if (p50 <= 0 || left >= p50) {
        return 0;
    }
    rsl__median_observe(m, left);
    rsl__answer_fail(&c->ans, RSL_OUTCOME_REJECTED,
                     "shed: %.1f ms left of the deadline, under the step's recent median of "
                     "%.1f ms",
                     (double)left / 1e6, (double)p50 / 1e6);
    shed_answer(c);
    if (c->cs->load) {
        rsl__load_note_deadline_shed(c->cs->load);
    }
    return 1;
}

static void end_step(rsl__call *c, int64_t now) {
    rsl__entry *e = &c->res->path[c->res->npath++];
    e->step = c->p->steps[c->path[c->pos]].name;
    e->outcome = c->ans.outcome;
    e->ms = ms_since(c->step_start, now);
    e->attempts = c->tries; /* a rejection or a skipped step is no try */
    rsl__pview *v = c->p->stats;
    if (v) {
        rsl__stepstats_observe(v->steps[c->path[c->pos]], e->outcome, now - c->step_start);
    }
    if (c->tries > 0 && e->outcome != RSL_OUTCOME_CANCELED) {
        rsl__median_observe(&c->G->medians[c->pidx][c->path[c->pos]], now - c->step_start);
    }
    if (c->ans.outcome != RSL_OUTCOME_OK) {
        e->error = c->ans.error ? strdup(c->ans.error) : strdup(rsl_outcome_name(e->outcome));
    }
}

/* Drives c from its phase until it waits or is done.  `now` is read from the clock only
 * where time has passed (after an attempt): a precise clock read costs ~25 ns, as much as
 * the rest of a stub step. */
static void advance(rsl__call *c, int64_t now) {
    for (;;) {
        const rsl__step *s = c->pos < c->npath ? &c->p->steps[c->path[c->pos]] : NULL;
        switch (c->phase) {
        case RSL_PH_STEP:
            if (!s) {
                rsl__call_finish(c, now);
                return;
            }
            c->step_start = now;
            c->attempt = 0;
            c->tries = 0;
            c->last_sleep = 0;
            if (atomic_load_explicit(&c->cancel_req, memory_order_relaxed)) {
                c->canceled = 1;
            }
            if (c->canceled) {
                rsl__answer_fail(&c->ans, RSL_OUTCOME_CANCELED, "call canceled");
                end_step(c, now);
                rsl__call_finish(c, now);
                return;
            }
            if (c->deadline && now >= c->deadline && s->ops->waits) {
                rsl__answer_fail(&c->ans, RSL_OUTCOME_TIMEOUT, "deadline passed before the step");
                c->phase = RSL_PH_ATTEMPTED;
                break;
            }
            if (c->deadline && s->ops->waits && shed_for_deadline(c, now)) {
                c->phase = RSL_PH_ATTEMPTED;
                break;
            }
            rsl__budget_note_first(&c->G->budgets[c->pidx][c->path[c->pos]], now);
            c->phase = RSL_PH_ATTEMPT;
            break;
        case RSL_PH_ATTEMPT:
            c->attempt++;
            if (!attempt(c, s, now)) {
                c->phase = RSL_PH_WAIT;
                return;
            }
            now = rsl__call_now(c);
            c->phase = RSL_PH_ATTEMPTED;
            break;
        case RSL_PH_ATTEMPTED:
            if (c->tr) {
                rsl__trace_sink = c;
                release_guards(c, s, now, c->ans.outcome != RSL_OUTCOME_CANCELED);
                rsl__trace_sink = NULL;
                rsl__trace_attempt_end(c, s, now);
            } else {
                release_guards(c, s, now, c->ans.outcome != RSL_OUTCOME_CANCELED);
            }
            if (c->attempt > 0 && maybe_retry(c, s, now)) {
                c->phase = RSL_PH_WAIT;
                return;
            }
            end_step(c, now);
            if (c->ans.outcome != RSL_OUTCOME_CANCELED &&
                (c->p->fallback_mask & (1u << c->ans.outcome)) && c->pos + 1 < c->npath) {
                if (c->p->stats) {
                    rsl__pview *v = c->p->stats;
                    atomic_fetch_add_explicit(&v->steps[c->path[c->pos]]->fallbacks, 1,
                                              memory_order_relaxed);
                }
                rsl__answer_move(&c->prev_ans, &c->ans);
                c->prev_step = c->path[c->pos];
                c->pos++;
                c->phase = RSL_PH_STEP;
                break;
            }
            rsl__call_finish(c, now);
            return;
        case RSL_PH_WAIT:
        case RSL_PH_DONE:
            return;
        }
    }
}

static void on_timer(uv_timer_t *t) {
    rsl__call *c = t->data;
    int purpose = c->timer_purpose;
    c->timer_purpose = RSL_TIMER_NONE;
    rsl__chain_vt_fire(c, purpose);
}

void rsl__chain_vt_fire(rsl__call *c, int purpose) {
    c->timer_purpose = RSL_TIMER_NONE;
    if (c->phase != RSL_PH_WAIT) {
        return;
    }
    const rsl__step *s = &c->p->steps[c->path[c->pos]];
    int64_t now = rsl__call_now(c);
    switch (purpose) {
    case RSL_TIMER_STEP_TIMEOUT:
        if (!abort_wait(c, s)) {
            return; /* the answer beat the timeout by a hair: it is on its way */
        }
        rsl__answer_fail(&c->ans, RSL_OUTCOME_TIMEOUT, "step timed out after %.1f ms",
                         ms_since(c->attempt_start, now));
        c->phase = RSL_PH_ATTEMPTED;
        break;
    case RSL_TIMER_BACKOFF:
        c->phase = RSL_PH_ATTEMPT;
        break;
    case RSL_TIMER_ANSWER:
        c->phase = RSL_PH_ATTEMPTED;
        break;
    case RSL_TIMER_DELAY:
        /* The injected delay is over: the attempt proper, guards still held. */
        if (!s->ops->start(c, s, now)) {
            return;
        }
        now = rsl__call_now(c);
        c->phase = RSL_PH_ATTEMPTED;
        break;
    default:
        return;
    }
    advance(c, now);
}

void rsl__call_cancel(rsl__call *c) {
    if (c->phase == RSL_PH_DONE) {
        return;
    }
    c->canceled = 1;
    if (c->phase != RSL_PH_WAIT) {
        return; /* running right now (cannot happen from a message); checked at each step */
    }
    if (!abort_wait(c, &c->p->steps[c->path[c->pos]])) {
        return; /* the answer is on its way; it completes the call as canceled */
    }
    timer_stop(c);
    rsl__answer_fail(&c->ans, RSL_OUTCOME_CANCELED, "call canceled");
    c->phase = RSL_PH_ATTEMPTED;
    advance(c, rsl__call_now(c));
}

void rsl__call_start(rsl__call *c) {
    if (atomic_load_explicit(&c->cancel_req, memory_order_relaxed)) {
        rsl__call_abort(c, RSL_OUTCOME_CANCELED, "call canceled before it started");
        return;
    }
    rsl__call_track(c);
    c->start = rsl__call_now(c);
    /* The sooner of the policy's deadline and the caller's (rsl_req_set_deadline). */
    int64_t dl = c->p->deadline_ns;
    if (c->req->deadline_ns > 0 && (dl == 0 || c->req->deadline_ns < dl)) {
        dl = c->req->deadline_ns;
    }
    c->deadline = dl ? c->start + dl : 0;
    c->prev_step = -1;
    if (c->cs->tracer) {
        c->tr = c->tr_spare;
        c->tr_spare = NULL;
        rsl__trace_start(c);
    }
    if (c->p->route_refs) {
        char err[512];
        rsl__lcall lc = {c->id, c->start, c->req, c->p, c->pidx};
        c->priority = -1; /* left alone by a route that gives none */
        if (rsl__lapi_route(c->G->api[c->w->index], &lc, c->path, &c->npath, &c->priority,
                            err, sizeof(err)) < 0) {
            rsl__log(c->cs->env, RSL_LOG_WARN,
                     "%s:%d: policy \"%s\": route failed, taking chain: %s", c->p->file,
                     c->p->line, c->p->name, err);
            c->res->route_failed = 1;
            if (c->p->stats) {
                rsl__pview *v = c->p->stats;
                atomic_fetch_add_explicit(&v->ps->route_failures, 1, memory_order_relaxed);
            }
            c->npath = 0;
        }
        c->has_priority = c->priority >= 0;
        c->priority = c->has_priority ? c->priority : 0;
    }
    if (c->npath == 0) {
        c->npath = c->p->nchain < RSL_MAX_PATH ? c->p->nchain : RSL_MAX_PATH;
        memcpy(c->path, c->p->chain, (size_t)c->npath * sizeof(int));
    }
    c->pos = 0;
    int64_t now = c->p->route_refs ? rsl__call_now(c) : c->start;
    rsl__load *load = c->cs->load;
    if (load) {
        if (c->posted) {
            rsl__load_sojourn(load, c->w->index, rsl__clock_coarse() - c->posted);
        }
        if (rsl__load_shed(load, c->priority)) {
            /* The whole call, before any step: the runtime itself is behind. */
            rsl__answer_fail(&c->ans, RSL_OUTCOME_REJECTED,
                             "shed under load (pressure %.2f, priority %d)",
                             rsl__load_pressure(load), c->priority);
            shed_answer(c);
            c->step_start = now;
            c->tries = 0;
            end_step(c, now);
            rsl__call_finish(c, now);
            return;
        }
    }
    c->phase = RSL_PH_STEP;
    advance(c, now);
}
