/*
 * gauge -- named numbers the host sets (rsl_gauge_set) and policies read (sig.gauge).
 *
 * Layer: base.  Any thread: a gauge's value is one atomic word; creating a gauge takes the
 * table's lock, finding or reading one takes none (the count is published with release
 * after the slot is written, and slots are never removed).
 */
#ifndef RSL_GAUGE_H
#define RSL_GAUGE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Gauges per runtime: a fixed table, so that readers need no lock (72 KiB). */
#define RSL_MAX_GAUGES 1024

typedef struct rsl__gauge {
    char name[64];
    _Atomic uint64_t bits; /* a double */
} rsl__gauge;

typedef struct rsl__gauges {
    pthread_mutex_t lock; /* creation only */
    rsl__gauge g[RSL_MAX_GAUGES];
    _Atomic int n;
} rsl__gauges;

void rsl__gauges_init(rsl__gauges *t);
void rsl__gauges_close(rsl__gauges *t);
/* Index of the gauge named (name, len), or -1. */
int rsl__gauge_find(rsl__gauges *t, const char *name, size_t len);
double rsl__gauge_get(rsl__gauges *t, int i);
/* Creates the gauge on first use. 0, RSL_EINVAL (name empty or too long), RSL_ENOMEM
 * (table full). */
int rsl__gauge_set(rsl__gauges *t, const char *name, double value);

#endif
