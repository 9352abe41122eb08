/*
 * span -- a call's trace: whether it is sampled, what it records (one span for the call,
 * one per step attempt, breaker transitions as events), the context r.http sends on, and
 * the spans it hands to the host's on_span and the worker's exporter when it ends.
 *
 * Layer: the calls (beside call.c, below the chain, which marks the attempts).  The
 * runtime makes one rsl__tracer from rsl_options; calls reach it through rsl__calls.
 * A call's trace is used on its worker's thread only.
 *
 * Cost: with tracing off and no caller's context, nothing (c->tr stays NULL: one branch
 * per stage).  A call that is neither sampled nor recorded (parent said no, ratio said
 * no, no trace_errors) gets ids only, for the context it sends on.
 */
#ifndef RSL_SPAN_H
#define RSL_SPAN_H

#include "otlp.h"
#include "resilua.h"
#include "tmpl.h"
#include "trace.h"

#include <stdint.h>

struct rsl__call;
struct rsl__step;
struct rsl__guard;

/* A call's attempts and events kept for its spans; past these they are counted, not
 * kept (resilua.spans_lost on the call's span). */
#define RSL_TRACE_MAX_ATTEMPTS 32
#define RSL_TRACE_MAX_EVENTS 8

typedef struct rsl__tracer {
    double ratio;          /* 0..1 */
    int errors;            /* export degraded and failed calls too */
    int skip_unsampled;    /* no traceparent from an unsampled call without a parent */
    void (*on_span)(void *ud, const rsl_span *s);
    void *on_span_ud;
    int exporting;         /* an OTLP endpoint: the workers' exporters get the spans */
    int64_t wall_offset;   /* unix ns - the runtime clock's ns, taken at open */
    rsl__otlp_conf otlp;   /* url and service name owned here */
    rsl__otlp_stats *stats;/* one per worker */
    int nstats;
} rsl__tracer;

typedef struct rsl__tattempt {
    int step;              /* index in the policy's steps */
    int attempt;           /* 1, 2, ... (0: skipped, the deadline had passed) */
    int64_t start, end;
    rsl_outcome outcome;
    int status;
    uint8_t id[8];
    int64_t error;         /* offset of its message in text, -1: none */
    const struct rsl__guard *refused_by;
    int64_t server;        /* offset of "host" in text, -1: none */
    int port;
} rsl__tattempt;

typedef struct rsl__tevent {
    int attempt;           /* index in a[] */
    int64_t at;
    const char *breaker;   /* borrowed from the breaker (kept alive by the generation) */
    const char *from, *to; /* static */
    int64_t reason;        /* offset in text */
} rsl__tevent;

typedef struct rsl__trace {
    rsl__tctx ctx;         /* the trace, the call's span id, the flags it sends on */
    uint8_t parent[8];
    int has_parent;
    int sampled;           /* exported for sure */
    int recording;         /* keeps attempts (sampled, or trace_errors may export it) */
    int n, nevents, lost;
    int cur;               /* the attempt under way, -1: none */
    rsl__tattempt a[RSL_TRACE_MAX_ATTEMPTS];
    rsl__tevent ev[RSL_TRACE_MAX_EVENTS];
    rsl__buf text;         /* messages, hosts, reasons */
} rsl__trace;

/* Resolves the options (and OTEL_* environment variables, see resilua.h) into t: 1 when
 * tracing is on, 0 when off, RSL_ENOMEM.  nworkers: the exporters' stats. */
int rsl__tracer_init(rsl__tracer *t, const rsl_options *o, int64_t now, int nworkers);
void rsl__tracer_close(rsl__tracer *t);
/* Spans exported and dropped, summed over the workers (any thread). */
void rsl__tracer_counts(const rsl__tracer *t, uint64_t *exported, uint64_t *dropped_full,
                        uint64_t *dropped_failed);

/* The call starts: sampling decided, ids made (c->tr set), unless tracing is off. */
void rsl__trace_start(struct rsl__call *c);
/* An attempt of step s begins at now (its guards are taken next). */
void rsl__trace_attempt(struct rsl__call *c, const struct rsl__step *s, int64_t now);
/* The attempt ended with c->ans at now (a step skipped for the deadline: one without a
 * beginning). */
void rsl__trace_attempt_end(struct rsl__call *c, const struct rsl__step *s, int64_t now);
/* Guard g refused the attempt under way. */
void rsl__trace_refused(struct rsl__call *c, const struct rsl__guard *g);
/* The attempt under way goes to this URL (r.http): server.address and server.port. */
void rsl__trace_server(struct rsl__call *c, const char *url);
/* The context an attempt sends on: 1 with a traceparent in tp (56 bytes) and the
 * tracestate (may be NULL) in *ts, 0 when the call has none. */
int rsl__trace_outgoing(const struct rsl__call *c, char *tp, const char **ts);

/* Breaker transitions land in the call whose guard work runs on this thread right now:
 * the chain sets it around taking and giving back guards (recording calls only). */
extern _Thread_local struct rsl__call *rsl__trace_sink;
void rsl__trace_transition(const char *breaker, const char *from, const char *to,
                           const char *reason);

/* The call ended with result r: the result gets the trace context (before its callback);
 * rsl__trace_emit then hands the spans on (after it, unless r leaves with the callback). */
void rsl__trace_result(struct rsl__call *c, struct rsl_result *r);
void rsl__trace_emit(struct rsl__call *c, const struct rsl_result *r, int64_t now);
/* Back to empty for the call object's next call (kept with it); free on release. */
void rsl__trace_reset(rsl__trace *t);
void rsl__trace_free(rsl__trace *t);

#endif
