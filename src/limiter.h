/*
 * limiter -- a rate limiter (GCRA, the token bucket as one atomic "theoretical arrival
 * time"): `rate` calls per `per`, up to `burst` at once.  One CAS per admission, no lock,
 * no allocation.  Any thread.
 *
 * Layer: the guards, above clock.
 *
 * emission interval T = per / rate; a call is admitted when max(tat, now) + T - now <=
 * burst * T, and tat moves to max(tat, now) + T.  tokens = burst - (max(tat, now) - now)/T.
 */
#ifndef RSL_LIMITER_H
#define RSL_LIMITER_H

#include <stdint.h>

typedef struct rsl__limiter rsl__limiter;

typedef struct rsl__limiter_conf {
    double rate;    /* calls per `per`, > 0 */
    int64_t per_ns; /* default 1 s */
    double burst;   /* bucket capacity in calls, >= 1; default: rate */
} rsl__limiter_conf;

rsl__limiter *rsl__limiter_new(const char *name, const rsl__limiter_conf *c);
void rsl__limiter_free(rsl__limiter *l);
const char *rsl__limiter_name(const rsl__limiter *l);
/* New rate/burst in place; the bucket keeps its fill: the tokens available at `now` stay
 * available (at most the new burst) and refill at the new rate.  Negative on a bad conf. */
int rsl__limiter_configure(rsl__limiter *l, const rsl__limiter_conf *c, int64_t now);
void rsl__limiter_conf_get(const rsl__limiter *l, rsl__limiter_conf *c);
/* 1: admitted; 0: rejected (counted). */
int rsl__limiter_allow(rsl__limiter *l, int64_t now);
/* The same for a caller that may spend only down to the last (1000 - usable) per mille of
 * the burst (kept for higher priorities; usable 1000: all of it): admitted while
 * max(tat, now) + T - now <= burst * T * usable / 1000.  -1 when a token is there but
 * only within the kept share (counted as a rejection too). */
int rsl__limiter_allow_upto(rsl__limiter *l, int64_t now, int usable);
/* Full again: burst tokens (an admin reset). */
void rsl__limiter_reset(rsl__limiter *l);
/* Tokens available at `now` (fractional). */
double rsl__limiter_tokens(rsl__limiter *l, int64_t now);
uint64_t rsl__limiter_rejections(const rsl__limiter *l);

#endif
