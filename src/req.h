/*
 * req -- the request a call carries: attributes (name -> bytes) and a body.  The caller's
 * rsl_req is copied into one allocation when a call is made, so it may be reused at once.
 *
 * Layer: base: the request, read by the Lua binding and the steps.
 */
#ifndef RSL_REQ_H
#define RSL_REQ_H

#include "resilua.h"
#include "trace.h"
#include <stddef.h>

typedef struct rsl__attr {
    const char *name;
    size_t nlen;
    const char *val;
    size_t vlen;
} rsl__attr;

struct rsl_req {
    rsl__attr *attrs;
    int nattrs, cap;
    const char *body;
    size_t body_len;
    int frozen; /* a copy made by rsl__req_dup: one block, strings inside it */
    /* The caller's trace context (rsl_req_set_trace) and deadline (rsl_req_set_deadline). */
    int has_trace;
    rsl__tctx trace;
    const char *tracestate; /* NULL: none */
    size_t tracestate_len;
    int64_t deadline_ns;    /* 0: none */
};

/* A deep copy in one block (free with rsl_req_free). NULL on no memory. */
rsl_req *rsl__req_dup(const rsl_req *r);
/* The same copy made in `into` (a block of *size bytes from an earlier copy, may be NULL)
 * when it is large enough, else in a new block (`into` is then freed); *size is set to the
 * block's size.  NULL on no memory (`into` freed). */
rsl_req *rsl__req_copy(const rsl_req *r, rsl_req *into, size_t *size);

#endif
