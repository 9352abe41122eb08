/*
 * step_model -- an I/O model (rsl_options.io_model) standing in for the network: the
 * step kinds that wait on a server (r.http, r.redis, r.redis_cache) keep their
 * declarations and everything around an attempt (guards, retries, timeouts, fallbacks),
 * and only the attempt itself is answered by the model, at once.  `resilua test` runs
 * policies this way on a clock of its own.
 *
 * Layer: a step kind (step.h), above the chain; steps.h names the table it copies.
 * The call's worker thread.
 */
#include "call.h"
#include "chain.h"
#include "policy.h"
#include "steps.h"

#include <stdio.h>
#include <string.h>

/* The model's answer into c->ans. */
static void fill(rsl__call *c, const rsl_io_attempt *a, const rsl_io_answer *ans) {
    if (ans->latency_ns >= a->limit_ns) {
        rsl__answer_fail(&c->ans, RSL_OUTCOME_TIMEOUT, "step timed out after %.1f ms",
                         (double)a->limit_ns / 1e6);
        return;
    }
    if (ans->outcome != RSL_OUTCOME_OK) {
        rsl__answer_fail(&c->ans, ans->outcome, "%s",
                         ans->error ? ans->error : rsl_outcome_name(ans->outcome));
        c->ans.status = ans->status != 200 ? ans->status : 0;
        return;
    }
    c->ans.status = ans->status;
    c->ans.outcome = rsl__status_outcome(ans->status);
    if (ans->body_len && rsl__buf_append(&c->ans.body, ans->body, ans->body_len) < 0) {
        rsl__answer_fail(&c->ans, RSL_OUTCOME_ERROR, "out of memory");
        return;
    }
    if (c->ans.outcome != RSL_OUTCOME_OK) {
        char msg[32];
        snprintf(msg, sizeof(msg), "status %d", ans->status);
        c->ans.error = strdup(msg);
    }
}

static int model_start(rsl__call *c, const rsl__step *s, int64_t now) {
    const rsl__calls *cs = c->cs;
    rsl_io_attempt a = {
        .policy = c->p->name,
        .step = s->name,
        .kind = s->ops->name,
        .attempt = c->attempt,
        .req = c->req,
        .now = now,
        .limit_ns = rsl__chain_attempt_limit(c, s, now),
    };
    rsl_io_answer ans = {.outcome = RSL_OUTCOME_OK, .status = 200};
    cs->io_model(cs->io_model_ud, &a, &ans);
    fill(c, &a, &ans);
    int64_t wait = ans.latency_ns < a.limit_ns ? ans.latency_ns : a.limit_ns;
    if (cs->vt && wait > 0) {
        /* Virtual time: the answer is ready, and arrives after its latency. */
        rsl__chain_timer(c, RSL_TIMER_ANSWER, wait);
        return 0;
    }
    return 1;
}

int rsl__model_table(const rsl__step_ops **table, rsl__step_ops *copies, int max) {
    int n = 0;
    for (const rsl__step_ops *const *k = rsl__step_ops_table; *k; k++, n++) {
        if (n + 1 >= max) {
            return RSL_EINVAL;
        }
        copies[n] = **k;
        table[n] = &copies[n];
        if ((*k)->waits && *k != &rsl__step_host) {
            copies[n].start = model_start;
            copies[n].abort = NULL;
            copies[n].learn = NULL; /* nothing is written to a server that is not there */
        }
    }
    table[n] = NULL;
    return 0;
}
