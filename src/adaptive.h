/*
 * adaptive -- a concurrency limit that follows the upstream's latency (Netflix
 * concurrency-limits' Gradient2, with a windowed-minimum baseline): as many calls at once
 * as the upstream serves without queueing much, found by measuring, not configured.
 *
 * Calls are admitted while inflight < limit.  Each completion is a sample (its latency) or
 * a drop (a timeout, a refused connection, a 429 or 503: the upstream saying "too much").
 * Samples accumulate in a window of `window`; a window closes at the first completion at
 * least `window` after it opened that finds `min_samples` samples or a drop in it (with
 * fewer, it stays open).  When it closes, with est the limit as a real number:
 *
 *   drops in the window:   est = est * backoff                         (0.9)
 *   otherwise, rtt = the window's mean latency, base = the baseline:
 *     peak inflight < est / 2:  est holds (the application, not the upstream, limits)
 *     gradient = clamp(tolerance * base / rtt, 0.5, 1)                  (tolerance 1.5)
 *     est = (1 - smoothing) * est + smoothing * (est * gradient + queue) (0.2, queue 4)
 *   limit = floor(clamp(est, min, max))
 *
 * so the limit grows by smoothing * queue per window while the mean latency is within
 * tolerance x the baseline, and shrinks in proportion once queueing pushes it beyond.
 *
 * The baseline is the minimum latency over the last RSL_ADAPTIVE_BASE_WINDOWS windows
 * (each window's smallest sample): it falls at once, and when the upstream really got
 * slower it rises toward that minimum by at most RSL_ADAPTIVE_RISE of itself per window.
 * Nothing ever pins concurrency down to re-measure it (Envoy's adaptive concurrency does,
 * and its users complain: envoy#8337, #9007).
 *
 * Layer: the guards.  Any thread: admission and completion are atomics (inflight, the
 * window's sums); closing a window takes a mutex with trylock (a thread that finds it
 * taken leaves the close to the one holding it).
 */
#ifndef RSL_ADAPTIVE_H
#define RSL_ADAPTIVE_H

#include <stdint.h>

typedef struct rsl__adaptive_conf {
    int64_t min;         /* >= 1; default 4 */
    int64_t max;         /* >= min; default 500 */
    int64_t initial;     /* in [min, max]; default 20 */
    double tolerance;    /* >= 1; default 1.5 */
    double smoothing;    /* (0, 1]; default 0.2 */
    double backoff;      /* (0, 1); default 0.9 */
    double queue;        /* >= 0; default 4 */
    int64_t window_ns;   /* default 1 s */
    int64_t min_samples; /* >= 1; default 10 */
} rsl__adaptive_conf;

#define RSL_ADAPTIVE_BASE_WINDOWS 30
#define RSL_ADAPTIVE_RISE 0.02

typedef struct rsl__adaptive rsl__adaptive;

void rsl__adaptive_conf_default(rsl__adaptive_conf *c);
/* NULL on a bad conf or out of memory. */
rsl__adaptive *rsl__adaptive_new(const char *name, const rsl__adaptive_conf *c);
void rsl__adaptive_free(rsl__adaptive *a);
const char *rsl__adaptive_name(const rsl__adaptive *a);
/* New settings in place, the learned limit kept (clamped to the new [min, max]); 0 or
 * RSL_EINVAL. */
int rsl__adaptive_configure(rsl__adaptive *a, const rsl__adaptive_conf *c);
void rsl__adaptive_conf_get(const rsl__adaptive *a, rsl__adaptive_conf *c);
/* Forgets what it learned: the limit back to `initial`, no baseline. */
void rsl__adaptive_reset(rsl__adaptive *a);

/* 1: admitted (release it exactly once); 0: at the limit (counted as a rejection). */
int rsl__adaptive_acquire(rsl__adaptive *a);
/* The same for a caller that may fill only `usable` per mille of the limit (1000: all of
 * it; the rest is kept for higher priorities): -1 when there is room, but not within that
 * share (counted as a rejection too). */
int rsl__adaptive_acquire_upto(rsl__adaptive *a, int usable);
/* Admitted whatever the limit (a disabled guard still counts what is inside). */
void rsl__adaptive_enter(rsl__adaptive *a);
/* An admitted call ended at `now` after latency_ns: a drop (1) or a sample (0). */
void rsl__adaptive_release(rsl__adaptive *a, int64_t now, int64_t latency_ns, int drop);
/* An admitted call ended with nothing learned (canceled, a later guard refused). */
void rsl__adaptive_leave(rsl__adaptive *a);

/* Reads, any thread. */
int64_t rsl__adaptive_limit(const rsl__adaptive *a);
int64_t rsl__adaptive_inflight(const rsl__adaptive *a);
typedef struct rsl__adaptive_stats {
    double est;          /* the limit as a real number */
    int64_t baseline_ns; /* 0 before the first window closed */
    int64_t rtt_ns;      /* the last closed window's mean latency */
    uint64_t windows;    /* windows closed */
    uint64_t drops;      /* completions counted as drops */
    uint64_t rejections;
} rsl__adaptive_stats;
void rsl__adaptive_stats_get(rsl__adaptive *a, rsl__adaptive_stats *s);

#endif
