/*
 * step_stub -- r.stub: a fixed answer (status, body, headers), the last resort of a chain.
 *
 * Layer: a step kind (step.h).  Worker thread.
 */
#include "call.h"
#include "steps.h"

#include <stdio.h>
#include <string.h>

static int stub_start(rsl__call *c, const rsl__step *s, int64_t now) {
    c->ans.status = s->u.stub.status;
    c->ans.outcome = rsl__status_outcome(s->u.stub.status);
    if (rsl__buf_append(&c->ans.body, s->u.stub.body ? s->u.stub.body : "",
                        s->u.stub.body_len) < 0) {
        rsl__answer_fail(&c->ans, RSL_OUTCOME_ERROR, "out of memory");
        return 1;
    }
    rsl__answer_copy_headers(&c->ans, s->u.stub.headers, s->u.stub.nheaders);
    if (c->ans.outcome != RSL_OUTCOME_OK) {
        char msg[32];
        snprintf(msg, sizeof(msg), "status %d", c->ans.status);
        c->ans.error = strdup(msg);
    }
    return 1;
}

const rsl__step_ops rsl__step_stub = {
    .name = "stub",
    .kind = RSL_STEP_STUB,
    .start = stub_start,
};
