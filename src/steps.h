/*
 * steps -- the table of step kinds, each one's rsl__step_ops (step.h).  The runtime hands
 * it to the policy loader (rsl__gen_opts.step_ops), which points every loaded step at its
 * kind's ops, and gives the DSL the kinds it does not know itself (RSL_STEP_OTHER).
 *
 * Layer: the step kinds (the top of them: it names each one).  Adding a kind: its
 * step_NAME.c with an RSL_STEP_OTHER rsl__step_ops, and its line in the table of steps.c
 * (where it may declare the ops `extern` itself).
 */
#ifndef RSL_STEPS_H
#define RSL_STEPS_H

#include "step.h"

extern const rsl__step_ops rsl__step_stub;        /* step_stub.c */
extern const rsl__step_ops rsl__step_lua;         /* step_lua.c */
extern const rsl__step_ops rsl__step_host;        /* step_host.c */
extern const rsl__step_ops rsl__step_local_cache; /* step_cache.c */
extern const rsl__step_ops rsl__step_http;        /* step_http.c */
extern const rsl__step_ops rsl__step_redis;       /* step_redis.c */
extern const rsl__step_ops rsl__step_redis_cache; /* step_redis.c */

/* Every kind, NULL-terminated. */
extern const rsl__step_ops *const rsl__step_ops_table[];

/* The table with an I/O model (step_model.c): every kind of rsl__step_ops_table, the
 * ones that wait on a server answered by rsl__calls.io_model instead.  Fills `copies`
 * and `table` (NULL-terminated; both of `max` entries). 0, or RSL_EINVAL when too small. */
#define RSL_MAX_STEP_KINDS 16
int rsl__model_table(const rsl__step_ops **table, rsl__step_ops *copies, int max);

#endif
