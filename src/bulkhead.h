/*
 * bulkhead -- at most `max` concurrent calls.  One atomic counter on its own cache line.
 * Any thread.
 *
 * Layer: the guards.
 */
#ifndef RSL_BULKHEAD_H
#define RSL_BULKHEAD_H

#include <stdint.h>

typedef struct rsl__bulkhead rsl__bulkhead;

rsl__bulkhead *rsl__bulkhead_new(const char *name, int64_t max);
void rsl__bulkhead_free(rsl__bulkhead *b);
const char *rsl__bulkhead_name(const rsl__bulkhead *b);
/* New max in place (calls above it finish; new ones wait for room). Negative if max < 1. */
int rsl__bulkhead_configure(rsl__bulkhead *b, int64_t max);
int64_t rsl__bulkhead_max(const rsl__bulkhead *b);
/* 1: a slot is taken, release it exactly once; 0: full (counted as a rejection). */
int rsl__bulkhead_acquire(rsl__bulkhead *b);
/* The same for a caller that may fill only `usable` per mille of max (1000: all of it; the
 * rest is kept for higher priorities): -1 when the bulkhead has room but not within that
 * share (counted as a rejection too). */
int rsl__bulkhead_acquire_upto(rsl__bulkhead *b, int usable);
void rsl__bulkhead_release(rsl__bulkhead *b);
/* Takes a slot whatever the count (a disabled bulkhead still counts what is inside). */
void rsl__bulkhead_enter(rsl__bulkhead *b);
int64_t rsl__bulkhead_inflight(const rsl__bulkhead *b);
/* inflight / max */
double rsl__bulkhead_load(const rsl__bulkhead *b);
uint64_t rsl__bulkhead_rejections(const rsl__bulkhead *b);

#endif
