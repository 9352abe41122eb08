/*
 * clock -- time for the runtime, in int64 nanoseconds on CLOCK_MONOTONIC.
 *
 * Layer: base, the bottom: it depends on nothing of the library.
 *
 * Guards never read a clock: every breaker/limiter/window function takes `now` from its
 * caller.  The runtime reads the clock once per call start and once per call end (or
 * uses the coarse clock), and tests pass whatever time they want.  Any thread.
 */
#ifndef RSL_CLOCK_H
#define RSL_CLOCK_H

#include <stdint.h>

#define RSL_NS_PER_US INT64_C(1000)
#define RSL_NS_PER_MS INT64_C(1000000)
#define RSL_NS_PER_S INT64_C(1000000000)

/* This thread's slot: 1 + its index among its runtime's worker threads (a worker sets it
 * when it starts, for indexes below RSL_THREAD_SLOTS - 1), 0 for any other thread.
 * Counters with a slot per worker let each add without an atomic read-modify-write (one
 * writer per slot: fleet.h); slot 0 is everyone else's and takes one. */
#define RSL_THREAD_SLOTS 16
extern _Thread_local int rsl__thread_slot;

/* CLOCK_MONOTONIC in ns: precise, ~20-45 ns a read. */
int64_t rsl__clock_now(void);
/* CLOCK_MONOTONIC_COARSE in ns: a few ns a read, resolution of a scheduler tick. */
int64_t rsl__clock_coarse(void);

/* A small, fast, per-thread pseudo-random generator (xorshift64*), for jitter. */
uint64_t rsl__rand64(void);
/* Uniform in [0, 1). */
double rsl__rand01(void);
/* Seeds the calling thread's generator (0 picks a seed from the clock and the thread). */
void rsl__rand_seed(uint64_t seed);

#endif
