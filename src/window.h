/*
 * window -- a time-based sliding window of buckets: calls, failures, slow calls, and a
 * latency histogram for quantiles.  Shared by threads; lock-free; no allocation after init.
 *
 * Layer: base (with clock): the guards count in windows.
 *
 * Layout: `stripes` independent copies of the window, each on its own cache lines, so two
 * threads recording at once do not bounce one line between cores (measured: two threads
 * bumping one counter cost about 3x two threads on separate lines).  A thread records into
 * stripe (thread index % stripes); reads sum the stripes.
 *
 * Each stripe keeps running totals of calls/failures/slow that are maintained by
 * subtract-on-evict: advancing the head bucket zeroes the buckets that fall out of the
 * window and subtracts their counts from the totals, so reading a rate is O(stripes), not
 * O(buckets).  Quantiles sum the per-bucket histograms at read time (reads are rare; the
 * write path touches one bucket).  Counts that race with an eviction on a bucket boundary
 * may be lost: the window is a statistic, never a ledger.
 *
 * Histogram: bins two per octave of microseconds (factor sqrt(2)), RSL_WINDOW_BINS bins
 * from <32 us to >16 s, and each bucket's largest latency; quantiles interpolate inside a
 * bin, ending the top bin at that largest latency (error well under 20%).
 */
#ifndef RSL_WINDOW_H
#define RSL_WINDOW_H

#include <stddef.h>
#include <stdint.h>

#define RSL_WINDOW_BINS 40
#define RSL_WINDOW_MAX_BUCKETS 120
#define RSL_WINDOW_MAX_STRIPES 8

typedef struct rsl__window rsl__window;

typedef struct rsl__window_counts {
    int64_t calls;
    int64_t failures;
    int64_t slow;
} rsl__window_counts;

/* width_ns: the whole window (e.g. 10 s); buckets in 1..RSL_WINDOW_MAX_BUCKETS, each at
 * least 1 us wide; stripes in 1..RSL_WINDOW_MAX_STRIPES.  NULL on bad arguments or no
 * memory.  Times (`now`) are >= 0 (CLOCK_MONOTONIC); a negative one is taken as 0. */
rsl__window *rsl__window_new(int64_t width_ns, int buckets, int stripes);
void rsl__window_free(rsl__window *w);
/*
 * Embedding a window in a larger allocation (a breaker keeps its window in its own block,
 * saving an allocation's overhead): _footprint is the bytes needed (0 on bad arguments),
 * _init builds the window in `mem`, which must be 64-byte aligned and that large.  The
 * caller owns `mem`: never rsl__window_free such a window.
 */
size_t rsl__window_footprint(int64_t width_ns, int buckets, int stripes);
rsl__window *rsl__window_init(void *mem, int64_t width_ns, int buckets, int stripes);
/* Bytes this window occupies (for the memory-per-breaker figure). */
size_t rsl__window_size(const rsl__window *w);

/*
 * Records one call into the calling thread's stripe.  Returns the calls that stripe holds
 * after it, or -1 when this record moved the stripe's head (evicted buckets, so the rates
 * may have jumped): a breaker re-reads the rates after a plain success only then or while
 * the stripe holds at most min_calls, which keeps the success path off other stripes'
 * cache lines (see breaker.c).
 */
int64_t rsl__window_record(rsl__window *w, int64_t now, int failed, int slow, int64_t latency_ns);
void rsl__window_counts_at(rsl__window *w, int64_t now, rsl__window_counts *out);
/* Latency quantile q in [0,1] over the window, in ns; 0 when the window is empty. */
int64_t rsl__window_quantile(rsl__window *w, int64_t now, double q);
/* The histogram bin of a latency, and the quantile q of summed bins (RSL_WINDOW_BINS of
 * them; max_ns, when > 0, ends the interpolation in the bin holding it): the same binning
 * for other statistics (trip.c's periods). */
int rsl__window_bin(int64_t ns);
int64_t rsl__window_bins_quantile(const uint64_t *bins, double q, int64_t max_ns);
/* Empties the window (a breaker closing starts afresh). */
void rsl__window_clear(rsl__window *w);

#endif
