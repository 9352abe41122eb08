/*
 * window -- the striped sliding window of window.h: per-bucket counts and latency bins,
 * per-stripe running totals kept by subtract-on-evict.
 *
 * Layer: base (with clock): the guards count in windows.
 *
 * Threads: record/counts/quantile/clear from any thread, no lock, no allocation.  Each
 * stripe has a head word (newest bucket's epoch and index) advanced by CAS; the thread that
 * wins the CAS evicts the buckets that fell out.  Evicting and clearing take counts out of a
 * bucket with atomic exchange and subtract exactly what they took, so a total always equals
 * the sum of its buckets once in-flight records land (a record racing an eviction may be
 * lost, never double-counted).  Reads advance stale heads too, so an idle window reads
 * empty.  Ownership: rsl__window_new allocates one 64-byte-aligned block, _free frees it;
 * rsl__window_init builds one in the caller's memory (a breaker's own block).
 */
#include "window.h"

#include <stdalign.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* A cache line on every x86-64 and most arm64 parts; the unit of false sharing. */
#define LINE 64

/* Bucket epochs are packed with their index (< 128, as buckets <= 120) into the head. */
#define HEAD_IDX_BITS 8
#define HEAD_IDX_MASK ((UINT64_C(1) << HEAD_IDX_BITS) - 1)

/* Buckets at least 1 us wide keep epochs (now / bucket_ns) below 2^54, so epoch << 8 fits
 * 63 bits. */
#define MIN_BUCKET_NS INT64_C(1000)

_Static_assert((RSL_WINDOW_MAX_STRIPES & (RSL_WINDOW_MAX_STRIPES - 1)) == 0,
               "stripe slots are a thread index masked by RSL_WINDOW_MAX_STRIPES - 1");
_Static_assert(RSL_WINDOW_MAX_BUCKETS < (1 << HEAD_IDX_BITS), "bucket index fits the head");

/* 172 bytes.  No per-bucket call count: the bins sum to it (summed again on eviction).
 * max_us caps the interpolation in the top bin: without it, p99 of latencies uniform in
 * 1..100 ms reads 126 ms (the bin spans 92.7..131 ms). */
typedef struct bucket {
    _Atomic uint32_t failures;
    _Atomic uint32_t slow;
    _Atomic uint32_t max_us; /* largest latency recorded, rounded up to a us; 0: none */
    _Atomic uint32_t bins[RSL_WINDOW_BINS];
} bucket;

/* One copy of the window, starting on its own cache line; head and totals share the first
 * line, which only this stripe's recorders write. */
typedef struct stripe {
    _Atomic uint64_t head; /* epoch << 8 | index of the newest bucket */
    _Atomic int64_t calls;
    _Atomic int64_t failures;
    _Atomic int64_t slow;
    bucket b[];
} stripe;

struct rsl__window {
    int64_t width_ns;
    int64_t bucket_ns;
    uint64_t recip; /* UINT64_MAX / bucket_ns: epochs without a 64-bit divide (~40 cycles) */
    size_t stride;  /* bytes per stripe, a multiple of LINE */
    size_t size;    /* bytes allocated */
    int buckets;
    int stripes;
    uint8_t stripe_of[RSL_WINDOW_MAX_STRIPES]; /* thread slot -> stripe, no modulo per call */
};
/* The header gets a line of its own: it is read by every recorder and written by none. */
_Static_assert(sizeof(struct rsl__window) <= LINE, "window header fits one line");

/*
 * Lower bounds of histogram bins 1..39 in ns: 32 us * sqrt(2)^k, two bins per octave, so a
 * value is at most a factor sqrt(2) from its bin's ends.  Bin 0 is [0, 32 us), bin 39 is
 * >= 2^19 * 32 us (16.8 s).  Odd entries rounded to the nearest ns.
 */
static const int64_t bin_lo[RSL_WINDOW_BINS - 1] = {
    INT64_C(32000),      INT64_C(45255),       INT64_C(64000),       INT64_C(90510),
    INT64_C(128000),     INT64_C(181019),      INT64_C(256000),      INT64_C(362039),
    INT64_C(512000),     INT64_C(724077),      INT64_C(1024000),     INT64_C(1448155),
    INT64_C(2048000),    INT64_C(2896309),     INT64_C(4096000),     INT64_C(5792619),
    INT64_C(8192000),    INT64_C(11585238),    INT64_C(16384000),    INT64_C(23170475),
    INT64_C(32768000),   INT64_C(46340950),    INT64_C(65536000),    INT64_C(92681900),
    INT64_C(131072000),  INT64_C(185363800),   INT64_C(262144000),   INT64_C(370727600),
    INT64_C(524288000),  INT64_C(741455200),   INT64_C(1048576000),  INT64_C(1482910400),
    INT64_C(2097152000), INT64_C(2965820801),  INT64_C(4194304000),  INT64_C(5931641602),
    INT64_C(8388608000), INT64_C(11863283203), INT64_C(16777216000),
};

static int bin_of(int64_t ns) {
    if (ns < bin_lo[0]) {
        return 0;
    }
    uint64_t x = (uint64_t)ns / (uint64_t)bin_lo[0]; /* >= 1: octaves above 32 us */
    int o = 63 - __builtin_clzll(x);
    if (o >= (RSL_WINDOW_BINS - 2) / 2) {
        return RSL_WINDOW_BINS - 1;
    }
    int k = 2 * o + (ns >= bin_lo[2 * o + 1]);
    return 1 + k;
}

static uint32_t latency_us(int64_t ns) {
    if (ns <= 0) {
        return 0;
    }
    int64_t us = (ns + 999) / 1000; /* rounded up: the max never cuts a sample off */
    return us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

/* Threads get consecutive slots on first use, so two threads land on different stripes. */
static _Atomic unsigned next_slot;
static _Thread_local int my_slot = -1;

static stripe *stripe_at(const rsl__window *w, int i) {
    return (stripe *)((char *)w + LINE + (size_t)i * w->stride);
}

static stripe *my_stripe(const rsl__window *w) {
    if (w->stripes == 1) {
        return stripe_at(w, 0);
    }
    if (my_slot < 0) {
        my_slot = (int)(atomic_fetch_add_explicit(&next_slot, 1, memory_order_relaxed) &
                        (RSL_WINDOW_MAX_STRIPES - 1));
    }
    return stripe_at(w, w->stripe_of[my_slot]);
}

/* now / bucket_ns exactly: the reciprocal's quotient is low by at most 1 for n < 2^63. */
static int64_t epoch_of(const rsl__window *w, int64_t now) {
    uint64_t n = now > 0 ? (uint64_t)now : 0;
    uint64_t d = (uint64_t)w->bucket_ns;
    uint64_t q = (uint64_t)(((unsigned __int128)n * w->recip) >> 64);
    if (n - q * d >= d) {
        q++;
    }
    return (int64_t)q;
}

static uint32_t take(_Atomic uint32_t *c) {
    /* Skipping empty counters spares idle buckets the locked exchanges; a record landing
     * right after the load stays in the bucket and in the total: still consistent. */
    if (atomic_load_explicit(c, memory_order_relaxed) == 0) {
        return 0;
    }
    return atomic_exchange_explicit(c, 0, memory_order_relaxed);
}

static void evict(stripe *s, bucket *b) {
    int64_t calls = 0;
    for (int i = 0; i < RSL_WINDOW_BINS; i++) {
        calls += take(&b->bins[i]);
    }
    int64_t f = take(&b->failures);
    int64_t sl = take(&b->slow);
    take(&b->max_us);
    if (calls) {
        atomic_fetch_sub_explicit(&s->calls, calls, memory_order_relaxed);
    }
    if (f) {
        atomic_fetch_sub_explicit(&s->failures, f, memory_order_relaxed);
    }
    if (sl) {
        atomic_fetch_sub_explicit(&s->slow, sl, memory_order_relaxed);
    }
}

/* One attempt to move the head from `hw` to epoch e (> hw's); 1 when this thread won and
 * evicted the buckets between, 0 when another thread moved the head first. */
static int advance(const rsl__window *w, stripe *s, uint64_t hw, int64_t e) {
    int64_t he = (int64_t)(hw >> HEAD_IDX_BITS);
    uint64_t nw = ((uint64_t)e << HEAD_IDX_BITS) | (uint64_t)(e % w->buckets);
    if (!atomic_compare_exchange_strong_explicit(&s->head, &hw, nw, memory_order_acq_rel,
                                                 memory_order_acquire)) {
        return 0;
    }
    int64_t n = e - he < w->buckets ? e - he : w->buckets;
    int idx = (int)(hw & HEAD_IDX_MASK);
    for (int64_t k = 0; k < n; k++) {
        if (++idx == w->buckets) {
            idx = 0;
        }
        evict(s, &s->b[idx]);
    }
    return 1;
}

/* Brings a stripe's head up to epoch e (reads do this so an idle window empties). */
static void catch_up(const rsl__window *w, stripe *s, int64_t e) {
    for (;;) {
        uint64_t hw = atomic_load_explicit(&s->head, memory_order_acquire);
        if (e <= (int64_t)(hw >> HEAD_IDX_BITS) || advance(w, s, hw, e)) {
            return;
        }
    }
}

static size_t stride_of(int buckets) {
    size_t stride = sizeof(stripe) + (size_t)buckets * sizeof(bucket);
    return (stride + LINE - 1) / LINE * LINE;
}

size_t rsl__window_footprint(int64_t width_ns, int buckets, int stripes) {
    if (width_ns <= 0 || buckets < 1 || buckets > RSL_WINDOW_MAX_BUCKETS || stripes < 1 ||
        stripes > RSL_WINDOW_MAX_STRIPES || width_ns / buckets < MIN_BUCKET_NS) {
        return 0;
    }
    return LINE + (size_t)stripes * stride_of(buckets); /* a multiple of LINE */
}

rsl__window *rsl__window_init(void *mem, int64_t width_ns, int buckets, int stripes) {
    size_t size = rsl__window_footprint(width_ns, buckets, stripes);
    if (!mem || !size || (uintptr_t)mem % LINE != 0) {
        return NULL;
    }
    rsl__window *w = mem;
    memset(w, 0, size); /* all-zero atomics: empty buckets, heads at epoch 0 index 0 */
    w->width_ns = width_ns;
    w->bucket_ns = width_ns / buckets;
    w->recip = UINT64_MAX / (uint64_t)w->bucket_ns;
    w->stride = stride_of(buckets);
    w->size = size;
    w->buckets = buckets;
    w->stripes = stripes;
    for (int i = 0; i < RSL_WINDOW_MAX_STRIPES; i++) {
        w->stripe_of[i] = (uint8_t)(i % stripes);
    }
    return w;
}

rsl__window *rsl__window_new(int64_t width_ns, int buckets, int stripes) {
    size_t size = rsl__window_footprint(width_ns, buckets, stripes);
    if (!size) {
        return NULL;
    }
    void *mem = aligned_alloc(LINE, size); /* size is a multiple of LINE, as C11 wants */
    if (!mem) {
        return NULL;
    }
    return rsl__window_init(mem, width_ns, buckets, stripes);
}

void rsl__window_free(rsl__window *w) {
    free(w);
}

size_t rsl__window_size(const rsl__window *w) {
    return w ? w->size : 0;
}

/*
 * The bucket for epoch e when it is not the head's (once per bucket width per stripe, or a
 * late record): moves the head forward when e is newer, *moved = 1 when this thread did.
 * -1 when e is older than the window.  Out of line so the common path stays small.
 */
__attribute__((noinline)) static int locate(const rsl__window *w, stripe *s, int64_t e,
                                            int *moved) {
    for (;;) {
        uint64_t hw = atomic_load_explicit(&s->head, memory_order_acquire);
        int64_t he = (int64_t)(hw >> HEAD_IDX_BITS);
        if (e == he) {
            return (int)(hw & HEAD_IDX_MASK);
        }
        if (e > he) {
            if (advance(w, s, hw, e)) {
                *moved = 1;
                return (int)(e % w->buckets);
            }
            continue; /* another thread moved it: look again */
        }
        if (e > he - w->buckets) {
            return (int)(e % w->buckets); /* late, but its bucket is still in the window */
        }
        return -1;
    }
}

int64_t rsl__window_record(rsl__window *w, int64_t now, int failed, int slow, int64_t latency_ns) {
    stripe *s = my_stripe(w);
    int64_t e = epoch_of(w, now);
    int moved = 0;
    uint64_t hw = atomic_load_explicit(&s->head, memory_order_acquire);
    int idx = (int)(hw & HEAD_IDX_MASK);
    if (__builtin_expect((int64_t)(hw >> HEAD_IDX_BITS) != e, 0)) {
        idx = locate(w, s, e, &moved);
        if (idx < 0) {
            return atomic_load_explicit(&s->calls, memory_order_relaxed); /* too old */
        }
    }
    bucket *b = &s->b[idx];
    atomic_fetch_add_explicit(&b->bins[bin_of(latency_ns)], 1, memory_order_relaxed);
    uint32_t us = latency_us(latency_ns);
    uint32_t m = atomic_load_explicit(&b->max_us, memory_order_relaxed);
    while (us > m && !atomic_compare_exchange_weak_explicit(
                         &b->max_us, &m, us, memory_order_relaxed, memory_order_relaxed)) {
    }
    if (failed) {
        atomic_fetch_add_explicit(&b->failures, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&s->failures, 1, memory_order_relaxed);
    }
    if (slow) {
        atomic_fetch_add_explicit(&b->slow, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&s->slow, 1, memory_order_relaxed);
    }
    int64_t calls = atomic_fetch_add_explicit(&s->calls, 1, memory_order_relaxed) + 1;
    return moved ? -1 : calls;
}

void rsl__window_counts_at(rsl__window *w, int64_t now, rsl__window_counts *out) {
    int64_t e = epoch_of(w, now);
    int64_t calls = 0, failures = 0, slow = 0;
    for (int i = 0; i < w->stripes; i++) {
        stripe *s = stripe_at(w, i);
        catch_up(w, s, e);
        calls += atomic_load_explicit(&s->calls, memory_order_relaxed);
        failures += atomic_load_explicit(&s->failures, memory_order_relaxed);
        slow += atomic_load_explicit(&s->slow, memory_order_relaxed);
    }
    /* A reader between an eviction's exchange and a racing record's add can see a total
     * briefly below its parts (even negative): clamp to what can be true. */
    out->calls = calls > 0 ? calls : 0;
    out->failures = failures < 0 ? 0 : failures > out->calls ? out->calls : failures;
    out->slow = slow < 0 ? 0 : slow > out->calls ? out->calls : slow;
}

int64_t rsl__window_quantile(rsl__window *w, int64_t now, double q) {
    int64_t e = epoch_of(w, now);
    uint64_t bins[RSL_WINDOW_BINS] = {0};
    uint32_t max_us = 0;
    for (int i = 0; i < w->stripes; i++) {
        stripe *s = stripe_at(w, i);
        catch_up(w, s, e);
        for (int k = 0; k < w->buckets; k++) {
            uint32_t m = atomic_load_explicit(&s->b[k].max_us, memory_order_relaxed);
            max_us = m > max_us ? m : max_us;
            for (int j = 0; j < RSL_WINDOW_BINS; j++) {
                uint32_t c = atomic_load_explicit(&s->b[k].bins[j], memory_order_relaxed);
                bins[j] += c;
            }
        }
    }
    return rsl__window_bins_quantile(bins, q, (int64_t)max_us * 1000);
}

int rsl__window_bin(int64_t ns) {
    return bin_of(ns);
}

int64_t rsl__window_bins_quantile(const uint64_t *bins, double q, int64_t max_ns) {
    uint64_t total = 0;
    for (int j = 0; j < RSL_WINDOW_BINS; j++) {
        total += bins[j];
    }
    if (total == 0) {
        return 0;
    }
    q = q < 0 ? 0 : q > 1 ? 1 : q;
    double rank = q * (double)total;
    double cum = 0;
    for (int j = 0; j < RSL_WINDOW_BINS; j++) {
        if (bins[j] == 0) {
            continue;
        }
        double c = (double)bins[j];
        if (cum + c >= rank) {
            double lo = j == 0 ? 0 : (double)bin_lo[j - 1];
            /* The last bin is open-ended: one octave wide unless the max says better;
             * any bin ends at the largest latency seen when that falls inside it. */
            double hi = j == RSL_WINDOW_BINS - 1 ? 2 * lo : (double)bin_lo[j];
            double max = (double)max_ns;
            if (max > lo && max < hi) {
                hi = max;
            }
            double frac = (rank - cum) / c;
            return (int64_t)(lo + frac * (hi - lo));
        }
        cum += c;
    }
    return bin_lo[RSL_WINDOW_BINS - 2];
}

void rsl__window_clear(rsl__window *w) {
    for (int i = 0; i < w->stripes; i++) {
        stripe *s = stripe_at(w, i);
        for (int k = 0; k < w->buckets; k++) {
            evict(s, &s->b[k]);
        }
    }
}
