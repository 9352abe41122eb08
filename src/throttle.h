/*
 * throttle -- client-side throttling (Google SRE book, "Handling Overload"): a client
 * that sees its upstream refuse work refuses some of it first, locally, so that a
 * struggling upstream is not also asked to say no to every request.  Over the last
 * `window`, each attempt is a request and each answer the upstream really served is an
 * accept; an attempt is refused here with probability
 *
 *     p = min(max_p, max(0, (requests - k * accepts) / (requests + 1)))
 *
 * once requests >= min_requests (p = 0 before).  k = 2 lets through twice what the
 * upstream accepts; k = 1.1 is stricter.  Requests refused here count as requests too (the
 * book's rule), so the refusals taper off by themselves as accepts come back.
 *
 * Counts live in `buckets` time buckets of window/buckets each, every one tagged with its
 * epoch (now / bucket width), so a bucket from an earlier turn of the ring is reset by the
 * first attempt that lands in it and a late answer never credits the wrong one: an accept
 * goes to the bucket its attempt started in, or nowhere once that bucket has moved on.
 *
 * Layer: the guards.  Any thread: atomics only (a reset may drop a count or two made in
 * the same instant by another thread; the rule is statistical).
 */
#ifndef RSL_THROTTLE_H
#define RSL_THROTTLE_H

#include <stdint.h>

typedef struct rsl__throttle_conf {
    double k;            /* > 1; default 2 */
    int64_t window_ns;   /* default 2 min */
    int64_t min_requests;/* default 20 */
    double max_p;        /* 0..1; default 0.9 */
} rsl__throttle_conf;

#define RSL_THROTTLE_BUCKETS 24

typedef struct rsl__throttle rsl__throttle;

void rsl__throttle_conf_default(rsl__throttle_conf *c);
/* NULL on a bad conf or out of memory. */
rsl__throttle *rsl__throttle_new(const char *name, const rsl__throttle_conf *c);
void rsl__throttle_free(rsl__throttle *t);
const char *rsl__throttle_name(const rsl__throttle *t);
/* New settings in place (0), RSL_EINVAL; a new window clears the counts. */
int rsl__throttle_configure(rsl__throttle *t, const rsl__throttle_conf *c);
void rsl__throttle_conf_get(const rsl__throttle *t, rsl__throttle_conf *c);

/* One attempt at `now`: counted as a request; 1 when it may go on, with its bucket in
 * *slot and that bucket's epoch (its low 32 bits) in *tag, for rsl__throttle_accept; 0
 * when refused here. */
int rsl__throttle_allow(rsl__throttle *t, int64_t now, uint32_t *tag, uint8_t *slot);
/* The attempt (tag, slot) was served by the upstream: an accept, in its bucket. */
void rsl__throttle_accept(rsl__throttle *t, uint32_t tag, uint8_t slot);

/* Reads at `now`, any thread: the window's requests and accepts, and p. */
void rsl__throttle_counts(rsl__throttle *t, int64_t now, int64_t *requests, int64_t *accepts);
double rsl__throttle_p(rsl__throttle *t, int64_t now);
uint64_t rsl__throttle_rejections(const rsl__throttle *t);

#endif
