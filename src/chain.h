/*
 * chain -- running one call through its policy: route, then steps one at a time, each
 * behind its guards, with timeouts, the deadline, retries and faults, until a step answers
 * with an outcome outside `fallback_on`.
 *
 * Layer: above the calls, the guards and the retry rules; below the step kinds, which it
 * drives only through their rsl__step_ops (step.h), and which call back into it with the
 * functions below.  Worker thread only.
 */
#ifndef RSL_CHAIN_H
#define RSL_CHAIN_H

#include "call.h"

/* Starts c on its worker (c->w is set, this is its thread). */
void rsl__call_start(rsl__call *c);
/* Cancels c if it is still running: it completes as `canceled`. */
void rsl__call_cancel(rsl__call *c);

/* For the step kinds (step.h): */
/* The answer of a waiting attempt is in c->ans: the attempt is over (a canceled call
 * completes as canceled). */
void rsl__chain_answered(rsl__call *c);
/* A timer of c's is due (libuv's, or virtual time's: rsl_vt_advance pops it): its
 * purpose (RSL_TIMER_*) goes on with the call.  The call's worker thread. */
void rsl__chain_vt_fire(struct rsl__call *c, int purpose);
/* Arms the call's timer: the step's timeout (RSL_TIMER_STEP_TIMEOUT) in ns from now. */
void rsl__chain_timer(rsl__call *c, int purpose, int64_t ns);
/* The time this attempt of s may take: the step's timeout (or a default for a step that
 * waits and has none), cut by what is left of the deadline.  Always > 0. */
int64_t rsl__chain_attempt_limit(const rsl__call *c, const rsl__step *s, int64_t now);

#endif
