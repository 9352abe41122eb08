/*
 * trace -- W3C trace context: trace and span ids, the traceparent header read and
 * written, and the ratio sampler's decision on a trace id.
 *
 * Layer: base (beside the request, which carries a caller's context).  Any thread.
 *
 * Ids come from a per-thread generator seeded from the kernel (getrandom): unlike the
 * jitter generator (clock.h), which a fixed seed makes repeat, two processes must never
 * draw the same trace id.
 */
#ifndef RSL_TRACE_H
#define RSL_TRACE_H

#include <stddef.h>
#include <stdint.h>

#define RSL_TRACEPARENT_LEN 55 /* "00-" 32 "-" 16 "-" 2 */
#define RSL_TRACESTATE_MAX 512 /* W3C: a vendor may drop a longer one */

typedef struct rsl__tctx {
    uint8_t trace_id[16];
    uint8_t span_id[8];
    uint8_t flags; /* bit 0: sampled */
} rsl__tctx;

/* Parses a traceparent (n bytes): 0, or -1 when it is not one (bad length or hex, version
 * ff, an all-zero id; a version above 00 may carry more fields after the flags). */
int rsl__tctx_parse(const char *s, size_t n, rsl__tctx *out);
/* Writes "00-<trace>-<span>-<flags>" and a NUL into out (RSL_TRACEPARENT_LEN + 1 bytes). */
void rsl__tctx_format(const rsl__tctx *t, char *out);
/* Lowercase hex of n bytes into out (2n + 1 bytes, NUL-terminated). */
void rsl__hex(const uint8_t *b, size_t n, char *out);
/* A new random trace id (16 bytes) or span id (8), never all zero.  Any thread. */
void rsl__trace_id_new(uint8_t id[16]);
void rsl__span_id_new(uint8_t id[8]);
/* The ratio sampler: 1 when a root trace with this id is sampled at `ratio` (0..1).  The
 * decision is the trace id's (its last 8 bytes against ratio * 2^64, as OpenTelemetry's
 * TraceIdRatioBased), so every hop sampling at the same ratio agrees. */
int rsl__trace_sampled(const uint8_t trace_id[16], double ratio);

#endif
