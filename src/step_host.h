/*
 * step_host -- r.c: a step the host program answers (rsl_register_step), from any thread,
 * now or later.  The table of host step functions by name lives here; the runtime fills
 * it (rsl_register_step), calls find it by name when they start the step.
 *
 * Layer: a step kind (step.h), above the chain.
 */
#ifndef RSL_STEP_HOST_H
#define RSL_STEP_HOST_H

#include "call.h"
#include "step.h"

typedef struct rsl__hoststep {
    char *name;
    rsl_step_fn fn;
    void *ud;
} rsl__hoststep;

/* Host steps by name; any thread (under its lock). */
typedef struct rsl__hoststeps {
    pthread_mutex_t lock;
    rsl__hoststep *v;
    int n;
} rsl__hoststeps;

void rsl__hoststeps_init(rsl__hoststeps *t);
void rsl__hoststeps_close(rsl__hoststeps *t);
/* Registers or replaces `name`. 0 or RSL_ENOMEM. */
int rsl__hoststeps_set(rsl__hoststeps *t, const char *name, rsl_step_fn fn, void *ud);

/* The handle a host step answers through (resilua.h's rsl_step_call). */
enum { RSL_SC_PENDING, RSL_SC_ANSWERED, RSL_SC_ABANDONED };

struct rsl_step_call {
    rsl__msg msg;            /* RSL_MSG_ANSWER */
    _Atomic int state;       /* RSL_SC_*: the first of answer/abandon wins */
    _Atomic int refs;        /* the worker's and the host's */
    _Atomic int host_done;   /* the host has answered (its first answer wins) */
    rsl__call *call;         /* valid while the worker holds its reference */
    rsl__worker *w;
    rsl__answer ans;
};

/* A host step's answer (RSL_MSG_ANSWER) reached the worker: sc is released by this. */
void rsl__host_answered(rsl_step_call *sc);

extern const rsl__step_ops rsl__step_host;

#endif
