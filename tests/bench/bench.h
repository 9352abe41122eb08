/*
 * bench.h -- what the benchmarks share, header-only: the median of a set of runs (the
 * figure each prints, so that a preempted run or two does not move it).
 */
#ifndef RSL_BENCH_H
#define RSL_BENCH_H

#include <stdlib.h>

static inline int rsl_bench_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sorts v[0..n) and returns its median (the mean of the middle two when n is even). */
static inline double rsl_bench_median(double *v, int n) {
    qsort(v, (size_t)n, sizeof(*v), rsl_bench_cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

#endif
