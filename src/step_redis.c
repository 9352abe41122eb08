/*
 * step_redis -- r.redis (a command of argv templates) and r.redis_cache (GET key; learns
 * an earlier step's ok answer with SET key body PX ttl), through the worker's hiredis
 * async connection on its loop (redis.c).
 *
 * Layer: a step kind (step.h).  Worker thread.
 */
#include "chain.h"
#include "steps.h"

#include <stdio.h>
#include <string.h>

/* A reply that comes after this is dropped: its callback does not run. */
static int redis_abort(rsl__call *c) {
    if (c->wait) {
        rsl__redis_cancel(c->w->redis, c->wait);
        c->wait = NULL;
    }
    return 1;
}

static void redis_done(void *ud, const rsl__redis_reply *rep) {
    rsl__call *c = ud;
    c->wait = NULL;
    rsl__answer_reset(&c->ans);
    if (rep->outcome == RSL_OUTCOME_OK) {
        c->ans.outcome = RSL_OUTCOME_OK;
        c->ans.status = 200;
        if (rsl__buf_append(&c->ans.body, rep->str ? rep->str : "", rep->len) < 0) {
            rsl__answer_fail(&c->ans, RSL_OUTCOME_ERROR, "out of memory");
        }
    } else {
        rsl__answer_fail(&c->ans, rep->outcome, "%s",
                         rep->error ? rep->error : rsl_outcome_name(rep->outcome));
    }
    rsl__chain_answered(c);
}

#define MAX_REDIS_ARGS 64

/* r.redis (argv templates) and r.redis_cache (GET key). */
static int redis_start(rsl__call *c, const rsl__step *s, int64_t now) {
    rsl__redis *rd = c->w->redis;
    if (!rd) {
        rsl__answer_fail(&c->ans, RSL_OUTCOME_CONNECT,
                         "no Redis configured (resilua --redis HOST:PORT, rsl_options.redis)");
        return 1;
    }
    const rsl__tmpl *const *tv;
    const rsl__tmpl *get[2];
    int argc;
    if (s->kind == RSL_STEP_REDIS_CACHE) {
        get[0] = NULL; /* "GET", literal */
        get[1] = s->u.cache.key;
        tv = get;
        argc = 2;
    } else {
        tv = (const rsl__tmpl *const *)s->u.redis.argv;
        argc = s->u.redis.argc < MAX_REDIS_ARGS ? s->u.redis.argc : MAX_REDIS_ARGS;
    }
    size_t off[MAX_REDIS_ARGS], len[MAX_REDIS_ARGS];
    const char *argv[MAX_REDIS_ARGS];
    const char *missing = NULL;
    int rc = 0;
    c->scratch.len = 0;
    for (int i = 0; i < argc && rc == 0; i++) {
        off[i] = c->scratch.len;
        if (!tv[i]) {
            rc = rsl__buf_append(&c->scratch, "GET", 3) < 0 ? RSL_ENOMEM : 0;
        } else {
            rc = rsl__tmpl_expand(tv[i], c->req, 0, &c->scratch, &missing);
        }
        len[i] = c->scratch.len - off[i];
    }
    if (rc < 0) {
        rsl__answer_unexpanded(&c->ans, rc, missing);
        return 1;
    }
    for (int i = 0; i < argc; i++) {
        argv[i] = c->scratch.p + off[i];
    }
    rsl__redis_cmd *cmd = NULL;
    rc = rsl__redis_command(rd, argc, argv, len, redis_done, c, &cmd);
    if (rc < 0) {
        if (rc == RSL_ECLOSED) {
            rsl__answer_fail(&c->ans, RSL_OUTCOME_CONNECT, "Redis %s:%d is not connected",
                             c->w->conf.redis_host, c->w->conf.redis_port);
        } else {
            rsl__answer_fail(&c->ans, RSL_OUTCOME_ERROR, "Redis command not sent: %s",
                             rsl_strerror(rc));
        }
        return 1;
    }
    c->wait = cmd;
    int64_t limit = rsl__chain_attempt_limit(c, s, now);
    if (limit > 0) {
        rsl__chain_timer(c, RSL_TIMER_STEP_TIMEOUT, limit);
    }
    return 0;
}

/* SET key body PX ttl, fire and forget: hiredis only appends it to the connection's
 * output buffer here, and the loop writes it after the call has answered.  No Redis, or
 * not connected right now: the write is skipped (a cache is allowed to forget). */
static void redis_cache_learn(rsl__call *c, const rsl__step *s, const rsl_result *r,
                              int64_t now) {
    rsl__redis *rd = c->w->redis;
    if (!rd || !rsl__redis_connected(rd)) {
        return;
    }
    const char *missing = NULL;
    c->scratch.len = 0;
    if (rsl__tmpl_expand(s->u.cache.key, c->req, 0, &c->scratch, &missing) < 0) {
        return;
    }
    char ttl[32];
    int64_t ms = s->u.cache.ttl_ns / RSL_NS_PER_MS;
    snprintf(ttl, sizeof(ttl), "%lld", (long long)(ms > 0 ? ms : 1));
    const char *argv[] = {"SET", c->scratch.p, r->body.p ? r->body.p : "", "PX", ttl};
    size_t lens[] = {3, c->scratch.len, r->body.len, 2, strlen(ttl)};
    rsl__redis_command(rd, 5, argv, lens, NULL, NULL, NULL);
}

const rsl__step_ops rsl__step_redis = {
    .name = "redis",
    .kind = RSL_STEP_REDIS,
    .waits = 1,
    .start = redis_start,
    .abort = redis_abort,
};

const rsl__step_ops rsl__step_redis_cache = {
    .name = "redis_cache",
    .kind = RSL_STEP_REDIS_CACHE,
    .waits = 1,
    .start = redis_start,
    .abort = redis_abort,
    .learn = redis_cache_learn,
};
