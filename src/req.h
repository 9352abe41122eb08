/*
 * req -- the request a call carries: attributes (name -> bytes) and a body.  The caller's
 * rsl_req is copied into one allocation when a call is made, so it may be reused at once.
 */
#ifndef RSL_REQ_H
#define RSL_REQ_H

#include "resilua.h"
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
};

/* A deep copy in one block (free with rsl_req_free). NULL on no memory. */
rsl_req *rsl__req_dup(const rsl_req *r);

#endif
