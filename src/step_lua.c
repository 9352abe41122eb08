/*
 * step_lua -- r.lua: a step that is a Lua function of the policy, run in the worker's
 * state of the call's generation, protected and time-limited (lua_api.c).
 *
 * Layer: a step kind (step.h).  Worker thread.
 */
#include "call.h"
#include "lua_api.h"
#include "steps.h"

static int lua_start(rsl__call *c, const rsl__step *s, int64_t now) {
    rsl__lcall lc = {c->id, c->start, c->req, c->p, c->pidx};
    const char *prev = c->prev_step >= 0 ? c->p->steps[c->prev_step].name : NULL;
    rsl__lapi_step(c->G->api[c->w->index], &lc, s, prev, &c->prev_ans, &c->ans);
    return 1;
}

const rsl__step_ops rsl__step_lua = {
    .name = "lua",
    .kind = RSL_STEP_LUA,
    .start = lua_start,
};
