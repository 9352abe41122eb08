/*
 * steps -- the table of step kinds: rsl__step_kind -> its rsl__step_ops (step.h).  The
 * runtime hands it to the policy loader (rsl__gen_opts.step_ops), which points every
 * loaded step at its kind's ops.
 *
 * Layer: the step kinds (the top of them: it names each one).  Adding a kind: its
 * step_NAME.c with its ops, an extern below and a line in the table of steps.c (and the
 * DSL's constructor, and its fields in policy.c's reader).
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

/* By rsl__step_kind. */
extern const rsl__step_ops *const rsl__step_ops_table[];

#endif
