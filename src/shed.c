/*
 * shed -- the load signal, the shedding controller and a step's recent median (shed.h).
 *
 * Layer: the guards' level.
 *
 * Threads: see shed.h.  Ownership: rsl__load_new allocates the load and its per-worker
 * slots; rsl__load_free frees them.
 */
#include "shed.h"

#include "clock.h"

#include <stdalign.h>
#include <stdatomic.h>
#include <stdlib.h>

#define LINE           64
#define BEATS_PER_SEEN 20  /* the seen priorities rotate every second of beats */
#define LEVEL_UNIT     1e6 /* L in millionths of a priority */

/* ---- the median ----------------------------------------------------------------------- */

void rsl__median_observe(rsl__median *m, int64_t ns) {
    if (ns < 1) {
        ns = 1;
    }
    int64_t n = atomic_load_explicit(&m->n, memory_order_relaxed);
    int64_t cur = atomic_load_explicit(&m->m_ns, memory_order_relaxed);
    if (n == 0 || cur <= 0) {
        cur = ns;
    } else if (ns > cur) {
        cur += cur / 32 + 1;
    } else if (ns < cur) {
        cur -= cur / 32 + (cur > 1);
    }
    atomic_store_explicit(&m->m_ns, cur, memory_order_relaxed);
    atomic_store_explicit(&m->n, n + 1, memory_order_relaxed);
}

int64_t rsl__median_get(const rsl__median *m) {
    if (atomic_load_explicit(&m->n, memory_order_relaxed) < RSL_MEDIAN_MIN_SAMPLES) {
        return 0;
    }
    return atomic_load_explicit(&m->m_ns, memory_order_relaxed);
}

/* ---- the load ------------------------------------------------------------------------- */

typedef struct slot {
    alignas(LINE) _Atomic int64_t lag_ns; /* EWMA over beats */
    _Atomic int64_t sojourn_ns;           /* EWMA over beats of each beat's longest wait */
    int64_t longest;                      /* this beat's longest wait (the worker's own) */
} slot;

struct rsl__load {
    rsl__load_conf conf;
    int nworkers;
    slot *slots;
    alignas(LINE) _Atomic int64_t level; /* L x LEVEL_UNIT */
    _Atomic unsigned seen_now, seen_before;
    int beats; /* worker 0's */
    alignas(LINE) _Atomic uint64_t shed[RSL_PRIORITIES];
    _Atomic uint64_t deadline_sheds;
};

rsl__load *rsl__load_new(int workers, const rsl__load_conf *c) {
    rsl__load *l = aligned_alloc(LINE, (sizeof(*l) + LINE - 1) / LINE * LINE);
    if (!l) {
        return NULL;
    }
    *l = (rsl__load){0};
    l->nworkers = workers < 1 ? 1 : workers;
    l->slots = aligned_alloc(LINE, sizeof(slot) * (size_t)l->nworkers);
    if (!l->slots) {
        free(l);
        return NULL;
    }
    for (int i = 0; i < l->nworkers; i++) {
        l->slots[i] = (slot){0};
    }
    if (c) {
        l->conf = *c;
    }
    double a = l->conf.above, m = l->conf.max_shed;
    l->conf.above = !(a > 0) ? 0 : a > 0.99 ? 0.99 : a;
    l->conf.max_shed = !(m > 0) ? 0 : m > 1 ? 1 : m;
    return l;
}

void rsl__load_free(rsl__load *l) {
    if (l) {
        free(l->slots);
        free(l);
    }
}

static int64_t ewma(int64_t old, int64_t sample) {
    return old - old / 4 + sample / 4;
}

static double pressure_of(int64_t d) {
    return d <= 0 ? 0 : (double)d / (double)(d + RSL_SHED_HALF_NS);
}

double rsl__load_pressure(const rsl__load *l) {
    int64_t d = 0;
    for (int i = 0; i < l->nworkers; i++) {
        int64_t lag = atomic_load_explicit(&l->slots[i].lag_ns, memory_order_relaxed);
        int64_t soj = atomic_load_explicit(&l->slots[i].sojourn_ns, memory_order_relaxed);
        d = lag > d ? lag : d;
        d = soj > d ? soj : d;
    }
    return pressure_of(d);
}

double rsl__load_level(const rsl__load *l) {
    return (double)atomic_load_explicit(&l->level, memory_order_relaxed) / LEVEL_UNIT;
}

static unsigned seen(const rsl__load *l) {
    return atomic_load_explicit(&l->seen_now, memory_order_relaxed) |
           atomic_load_explicit(&l->seen_before, memory_order_relaxed);
}

/* One beat of the controller (worker 0's thread). */
static void control(rsl__load *l) {
    if (++l->beats >= BEATS_PER_SEEN) {
        l->beats = 0;
        unsigned now = atomic_exchange_explicit(&l->seen_now, 0, memory_order_relaxed);
        atomic_store_explicit(&l->seen_before, now, memory_order_relaxed);
    }
    double lv = rsl__load_level(l), p = rsl__load_pressure(l), a = l->conf.above;
    if (a > 0 && p > a) {
        lv += RSL_SHED_GAIN * (p - a) / (1 - a);
    } else {
        lv -= RSL_SHED_DECAY;
    }
    double top = (double)__builtin_popcount(seen(l));
    lv = lv < 0 ? 0 : lv > top ? top : lv;
    atomic_store_explicit(&l->level, (int64_t)(lv * LEVEL_UNIT), memory_order_relaxed);
}

void rsl__load_beat(rsl__load *l, int w, int64_t lag_ns) {
    if (w < 0 || w >= l->nworkers) {
        return;
    }
    slot *s = &l->slots[w];
    int64_t lag = atomic_load_explicit(&s->lag_ns, memory_order_relaxed);
    atomic_store_explicit(&s->lag_ns, ewma(lag, lag_ns > 0 ? lag_ns : 0), memory_order_relaxed);
    int64_t soj = atomic_load_explicit(&s->sojourn_ns, memory_order_relaxed);
    atomic_store_explicit(&s->sojourn_ns, ewma(soj, s->longest), memory_order_relaxed);
    s->longest = 0;
    if (w == 0) {
        control(l);
    }
}

void rsl__load_sojourn(rsl__load *l, int w, int64_t ns) {
    if (w >= 0 && w < l->nworkers && ns > l->slots[w].longest) {
        l->slots[w].longest = ns;
    }
}

int rsl__load_shed(rsl__load *l, int p) {
    p = p < 0 ? 0 : p >= RSL_PRIORITIES ? RSL_PRIORITIES - 1 : p;
    unsigned bit = 1u << p;
    if (!(atomic_load_explicit(&l->seen_now, memory_order_relaxed) & bit)) {
        atomic_fetch_or_explicit(&l->seen_now, bit, memory_order_relaxed);
    }
    int64_t lv = atomic_load_explicit(&l->level, memory_order_relaxed);
    if (lv <= 0) {
        return 0;
    }
    unsigned below = seen(l) & ~((bit << 1) - 1); /* the priorities under p */
    double prob = (double)lv / LEVEL_UNIT - (double)__builtin_popcount(below);
    if (p == 0 && prob > l->conf.max_shed) {
        prob = l->conf.max_shed;
    }
    if (prob <= 0 || (prob < 1 && rsl__rand01() >= prob)) {
        return 0;
    }
    atomic_fetch_add_explicit(&l->shed[p], 1, memory_order_relaxed);
    return 1;
}

void rsl__load_note_deadline_shed(rsl__load *l) {
    atomic_fetch_add_explicit(&l->deadline_sheds, 1, memory_order_relaxed);
}

uint64_t rsl__load_shed_count(const rsl__load *l, int p) {
    return p < 0 || p >= RSL_PRIORITIES ? 0
                                        : atomic_load_explicit(&l->shed[p], memory_order_relaxed);
}

uint64_t rsl__load_deadline_sheds(const rsl__load *l) {
    return atomic_load_explicit(&l->deadline_sheds, memory_order_relaxed);
}
