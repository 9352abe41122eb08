/*
 * step_cache -- r.local_cache: answers from the runtime's in-process cache of the step
 * (cache.c), keyed by a template over the request; learns the answer of an earlier step
 * of the path that answered ok (write-through).
 *
 * Layer: a step kind (step.h).  Worker thread (the cache itself is thread-safe).
 */
#include "call.h"
#include "steps.h"

static void cache_hit(void *ud, int status, const char *body, size_t len) {
    rsl__answer *a = ud;
    a->status = status;
    a->outcome = RSL_OUTCOME_OK;
    if (rsl__buf_append(&a->body, body, len) < 0) {
        rsl__answer_fail(a, RSL_OUTCOME_ERROR, "out of memory");
    }
}

static int local_cache_start(rsl__call *c, const rsl__step *s, int64_t now) {
    const char *missing = NULL;
    c->scratch.len = 0;
    int rc = rsl__tmpl_expand(s->u.cache.key, c->req, 0, &c->scratch, &missing);
    if (rc < 0) {
        rsl__answer_unexpanded(&c->ans, rc, missing);
        return 1;
    }
    if (!s->u.cache.cache) {
        rsl__answer_fail(&c->ans, RSL_OUTCOME_ERROR, "out of memory");
        return 1;
    }
    if (!rsl__cache_get(s->u.cache.cache, c->scratch.p, c->scratch.len, now, cache_hit, &c->ans)) {
        rsl__answer_fail(&c->ans, RSL_OUTCOME_MISS, "no cached answer for key \"%s\"",
                         c->scratch.p);
    }
    return 1;
}

static void local_cache_learn(rsl__call *c, const rsl__step *s, const rsl_result *r,
                              int64_t now) {
    if (!s->u.cache.cache) {
        return;
    }
    const char *missing = NULL;
    c->scratch.len = 0;
    if (rsl__tmpl_expand(s->u.cache.key, c->req, 0, &c->scratch, &missing) < 0) {
        return; /* the key cannot be built for this request: nothing to write */
    }
    rsl__cache_put(s->u.cache.cache, c->scratch.p, c->scratch.len, r->status,
                   r->body.p ? r->body.p : "", r->body.len, now + s->u.cache.ttl_ns);
}

const rsl__step_ops rsl__step_local_cache = {
    .name = "local_cache",
    .kind = RSL_STEP_LOCAL_CACHE,
    .start = local_cache_start,
    .learn = local_cache_learn,
};
