/*
 * steps -- the table of step kinds (steps.h).
 *
 * Layer: the step kinds.  Read-only.
 */
#include "steps.h"

#include <stddef.h>

const rsl__step_ops *const rsl__step_ops_table[] = {
    &rsl__step_stub,
    &rsl__step_lua,
    &rsl__step_host,
    &rsl__step_local_cache,
    &rsl__step_http,
    &rsl__step_redis,
    &rsl__step_redis_cache,
    NULL,
};
