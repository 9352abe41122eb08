/*
 * metrics -- the counters behind DESIGN.md's Prometheus series, and their text rendering.
 *
 * Layer: base: counters the generations create and the calls and the chain bump; the
 * runtime renders them.
 *
 * Per-policy and per-step counters are keyed by name and owned by the runtime, so they
 * survive reloads (a reload never resets a counter).  They are append-only: a policy or
 * step seen once keeps its counters for the runtime's life, and their addresses never
 * change, so a generation maps its policies and steps to them once (rsl__pview) and the
 * chain bumps relaxed atomics with no lookup.  Guard series are read from the guards.
 *
 * Threads: bumps from any worker; creation and rendering under the runtime's lock.
 */
#ifndef RSL_METRICS_H
#define RSL_METRICS_H

#include "resilua.h"
#include <stdatomic.h>
#include <stdint.h>

/* Upper bounds (seconds) of resilua_step_duration_seconds: 0.5 ms .. 10 s, the span of a
 * cached answer to a slow upstream (Prometheus' default buckets shifted down a decade). */
#define RSL_DURATION_BOUNDS                                                                \
    {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}
#define RSL_DURATION_NBOUNDS 14

typedef struct rsl__stepstats {
    char *name;
    _Atomic uint64_t calls[RSL_OUTCOME__COUNT];
    _Atomic uint64_t fallbacks, retries;
    _Atomic uint64_t buckets[RSL_DURATION_NBOUNDS + 1]; /* the last one is +Inf */
    _Atomic uint64_t sum_ns;
} rsl__stepstats;

typedef struct rsl__pstats {
    char *name;
    _Atomic uint64_t calls[RSL_OUTCOME__COUNT];
    _Atomic uint64_t route_failures;
    rsl__stepstats **steps;
    int nsteps, cap;
} rsl__pstats;

typedef struct rsl__metrics {
    rsl__pstats **p;
    int n, cap;
} rsl__metrics;

/* What a generation's policy points at (rsl__policy.stats): its counters and its steps'
 * counters by step index. */
typedef struct rsl__pview {
    rsl__pstats *ps;
    rsl__stepstats **steps;
} rsl__pview;

void rsl__metrics_free(rsl__metrics *m);
/* The counters of `policy` and its `nsteps` step names, created when new.  Caller holds
 * the runtime's lock. NULL on no memory. */
rsl__pview *rsl__metrics_view(rsl__metrics *m, const char *policy, const char *const *steps,
                              int nsteps);
void rsl__pview_free(rsl__pview *v);

/* A step ended with outcome o after ns. */
void rsl__stepstats_observe(rsl__stepstats *s, rsl_outcome o, int64_t ns);

/* Appends the series of the policies' and steps' counters to *out (Prometheus text). */
struct rsl__buf;
int rsl__metrics_render(const rsl__metrics *m, struct rsl__buf *out);
/* Appends `"value"` with Prometheus label escaping (\\, \", \n). */
int rsl__metrics_label(struct rsl__buf *out, const char *value);

#endif
