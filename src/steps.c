/*
 * steps -- the table of step kinds (steps.h).
 *
 * Layer: the step kinds.  Read-only.
 */
#include "steps.h"

#include "policy.h"

const rsl__step_ops *const rsl__step_ops_table[] = {
    [RSL_STEP_STUB] = &rsl__step_stub,
    [RSL_STEP_LUA] = &rsl__step_lua,
    [RSL_STEP_C] = &rsl__step_host,
    [RSL_STEP_LOCAL_CACHE] = &rsl__step_local_cache,
    [RSL_STEP_HTTP] = &rsl__step_http,
    [RSL_STEP_REDIS] = &rsl__step_redis,
    [RSL_STEP_REDIS_CACHE] = &rsl__step_redis_cache,
};
