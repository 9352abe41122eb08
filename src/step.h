/*
 * step -- the interface of a step kind (r.stub, r.lua, r.c, r.http, r.redis, the caches):
 * what the chain calls to run one attempt of a step, without knowing which kind it runs.
 * As wrk's `sock` or hiredis's adapters: a small table of functions per kind.
 *
 * Layer: declared here, below the policies (a loaded step points at its kind's table);
 * implemented by the step_*.c files, above the chain; listed in steps.c, which the runtime
 * hands to the policy loader (rsl__gen_opts.step_ops), so nothing below the steps names
 * them.
 *
 * Contract of start(c, s, now): the attempt begins with the step's guards held and c->ans
 * reset.  It returns 1 when the answer is in c->ans already; 0 when the answer comes later,
 * through rsl__chain_answered(c) (chain.h) on the call's worker thread, exactly once unless
 * abort() is called first.  A kind that waits arms the step's timeout with rsl__chain_timer.
 * abort(c): stop waiting (timeout, cancel); 1 when no answer will come any more, 0 when it
 * is already on its way (it then arrives, and the chain takes it as the attempt's end).
 */
#ifndef RSL_STEP_H
#define RSL_STEP_H

#include <stdint.h>

struct rsl__call;
struct rsl__step;
struct rsl_result;

typedef struct rsl__step_ops {
    const char *name; /* as /describe shows it: "http" */
    /* Waits on something outside the worker (host, network): not started once the
     * deadline has passed. */
    int waits;
    int (*start)(struct rsl__call *c, const struct rsl__step *s, int64_t now);
    int (*abort)(struct rsl__call *c); /* NULL: never waits */
    /* The call was answered ok by an earlier step of its path: write-through (caches).
     * NULL: nothing to learn. */
    void (*learn)(struct rsl__call *c, const struct rsl__step *s, const struct rsl_result *r,
                  int64_t now);
} rsl__step_ops;

#endif
