/*
 * result -- what a finished call hands its callback: rsl_result, its public accessors and
 * its JSON line.
 *
 * Layer: the calls (the lowest of their files: call.c fills results).  A result is
 * immutable once its callback runs; its names are copied out of the generation when the
 * call finishes, so it may outlive its runtime.  Any thread.
 */
#ifndef RSL_RESULT_H
#define RSL_RESULT_H

#include "gen.h"
#include "resilua.h"
#include "tmpl.h"
#include "trace.h"

/* Longest path a call may take: route() returning more entries is a failing route. */
#define RSL_MAX_PATH RSL_POLICY_MAX_CHAIN

typedef struct rsl__entry {
    const char *step; /* borrowed from the generation until the names are copied */
    rsl_outcome outcome;
    double ms;
    int attempts;
    char *error;
} rsl__entry;

struct rsl_result {
    char *names;  /* the policy and step names, copied when the call finishes */
    size_t names_size; /* names' allocation, kept when the call object is reused */
    rsl__genr *G; /* only when that copy failed: a reference keeping the names alive */
    const char *policy;
    int status;
    rsl_outcome outcome;
    int served_by; /* index in path, -1 for none */
    int degraded;
    int route_failed;
    double elapsed_ms;
    rsl__buf body;
    rsl__header *headers;
    int nheaders;
    rsl__entry path[RSL_MAX_PATH];
    int npath;
    int has_trace;  /* the call's own context (or the caller's, with tracing off) */
    rsl__tctx trace;
};

/* A result for a call of `policy` (borrowed until rsl__result_own_names): `reuse` when
 * given (a kept result, scrubbed), else a new one; NULL when out of memory. */
rsl_result *rsl__result_new(rsl_result *reuse, const char *policy);
/* Back to what calloc gives, but for the buffers and names it keeps (a body grown past
 * keep_max bytes is freed). */
void rsl__result_scrub(rsl_result *r, size_t keep_max);
/* Copies the names r borrows from G into one block of its own; when that fails, r keeps
 * a reference to G instead. */
void rsl__result_own_names(rsl_result *r, rsl__genr *G);

#endif
