/*
 * otlp -- a worker's span exporter: spans encoded as OTLP/HTTP JSON into a batch, sent
 * through the worker's HTTP client (http.c, libcurl multi on its loop), never waited for.
 *
 * Layer: the loop and its I/O, beside http.c, which it uses: it knows spans (resilua.h's
 * rsl_span), not calls.
 *
 * Bounds: a batch holds at most max_batch spans and is sent when full or flush_ns after
 * its first span; at most max_inflight batches are on the wire at once.  A span that finds
 * the batch full and no room to send it is dropped, and so is every span of a batch the
 * collector refuses (a status outside 2xx), fails to take (refused, reset) or does not
 * answer within timeout_ns: each counted in the stats, the first failure after a success
 * logged once, as is the recovery.  Memory is max_batch * (1 + max_inflight) spans'
 * encodings at most.
 *
 * Threads: every function on the loop's thread; the stats are read from any.
 */
#ifndef RSL_OTLP_H
#define RSL_OTLP_H

#include "env.h"
#include "http.h"
#include "resilua.h"

#include <stdatomic.h>
#include <uv.h>

struct json_t;

/* One worker's counters, on a cache line of their own (other workers count too). */
typedef struct rsl__otlp_stats {
    _Alignas(64) _Atomic uint64_t exported; /* spans the collector took */
    _Atomic uint64_t dropped_full;          /* no room in the queue */
    _Atomic uint64_t dropped_failed;        /* their batch failed */
    _Atomic uint64_t batches_failed;
} rsl__otlp_stats;

typedef struct rsl__otlp_conf {
    const char *url;          /* the collector's traces endpoint */
    const char *service_name; /* resource attribute service.name */
    int64_t timeout_ns;       /* per batch; 0: 5 s */
    int64_t flush_ns;         /* 0: 1 s */
    int max_batch;            /* 0: 512 */
    int max_inflight;         /* 0: 2 */
    const rsl__env *env;      /* the log */
} rsl__otlp_conf;

typedef struct rsl__otlp rsl__otlp;

/* An exporter on `loop` sending through `http` (which must outlive it).  hold(ud, +1)
 * runs when a batch goes on the wire, hold(ud, -1) when it is done (the worker waits for
 * them before it stops).  NULL when out of memory.  Loop thread. */
rsl__otlp *rsl__otlp_new(uv_loop_t *loop, rsl__http *http, const rsl__otlp_conf *conf,
                         rsl__otlp_stats *stats, void (*hold)(void *ud, int d), void *ud);
/* Encodes s into the batch (or drops and counts it). */
void rsl__otlp_add(rsl__otlp *e, const rsl_span *s);
/* Sends the batch now, if it has spans (the worker is stopping: the last batch). */
void rsl__otlp_flush(rsl__otlp *e);
/* Stops: batches still on the wire are canceled and counted dropped, the batch not sent
 * is dropped, the timer closes; freed from its close callback.  NULL is a no-op. */
void rsl__otlp_close(rsl__otlp *e);

/* Appends s's OTLP/JSON encoding (one element of "spans") to b: 0, or RSL_ENOMEM with b as
 * it was.  Strings are escaped and invalid UTF-8 becomes U+FFFD, as below. */
int rsl__otlp_encode(rsl__buf *b, const rsl_span *s);

/* A JSON string of arbitrary bytes: invalid UTF-8 becomes U+FFFD, so an upstream's
 * message can never make a document fail to encode.  NULL only when out of memory. */
struct json_t *rsl__json_bytes(const char *s, size_t n);

#endif
