/*
 * retry -- how long to wait before the next attempt of a step (backoff and jitter), and
 * the retry budget that keeps retries from turning a blip into a storm.
 *
 * Layer: above the policies (it reads a step's rsl__retry), below the chain that asks it.
 * A budget is shared by every worker: its slots are atomics.
 */
#ifndef RSL_RETRY_H
#define RSL_RETRY_H

#include "policy.h"

#include <stdatomic.h>
#include <stdint.h>

typedef struct rsl__budget {
    /* Retry budget of one step over the last 10 s, in 1 s slots (DESIGN.md `budget`). */
    _Atomic int64_t epoch[10];
    _Atomic int64_t first[10];
    _Atomic int64_t retries[10];
} rsl__budget;

/* A first attempt of the step began at `now`. */
void rsl__budget_note_first(rsl__budget *b, int64_t now);
/* 1 and the retry counted when the budget allows one more retry: retries over the last
 * 10 s may be at most budget * first attempts + 10; else 0. */
int rsl__budget_take_retry(rsl__budget *b, double budget, int64_t now);
/* The wait before attempt `attempt` + 1 (attempt >= 1 attempts begun); *last_sleep is the
 * previous wait (0: none yet), which decorrelated jitter grows from, and is updated. */
int64_t rsl__backoff_ns(const rsl__retry *r, int attempt, int64_t *last_sleep);

#endif
