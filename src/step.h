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
 * A kind is one of rsl__step_kind, whose fields policy.h and policy_steps.c know, or
 * RSL_STEP_OTHER: a kind that brings its declaration with it.  The DSL then takes r.NAME
 * with `fields` (beside guards, timeout, retry and fault), parse() reads them into the
 * step's u.other, free() frees that, describe() adds them to /describe.  Adding such a
 * kind is its step_NAME.c and a line in steps.c's table: nothing else changes.
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

#include <stddef.h>
#include <stdint.h>

struct json_t;
struct lua_State;
struct rsl__call;
struct rsl__step;
struct rsl_result;

typedef struct rsl__step_ops {
    const char *name; /* the DSL's r.NAME, and /describe's "kind": "http" */
    int kind;         /* rsl__step_kind (policy.h), or RSL_STEP_OTHER */
    /* RSL_STEP_OTHER only: */
    const char *const *fields; /* its own fields, NULL-terminated */
    /* Reads its fields from the step's declaration, the table at the top of L's stack
     * ([-0, +0]; lua_getfield and the rsl__decl_* readers of policy_int.h), into
     * s->u.other.  0, or -1 with what is wrong in err: the load fails with it, at the
     * step's file:line. */
    int (*parse)(struct lua_State *L, struct rsl__step *s, char *err, size_t errlen);
    void (*free)(struct rsl__step *s);                           /* NULL: nothing */
    void (*describe)(const struct rsl__step *s, struct json_t *o); /* NULL: nothing */
    /* Running it, any kind: */
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
