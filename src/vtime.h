/*
 * vtime -- virtual time (rsl_options.virtual_time): a clock the runtime owns and moves only
 * when told (rsl_vt_advance), and the timers on it, kept in a binary min-heap ordered by
 * time and then by arming order, so that a run is the same every time.  `resilua
 * simulate` runs hours of traffic through the real guards and policies this way, as fast
 * as the CPU goes.
 *
 * Layer: the clock's, beside clock.h: it knows nothing of calls.  An item is any object
 * with a size_t slot of its own, where the heap keeps the item's place (0: not armed), so
 * that disarming is O(log n) and an object never outlives its entry.
 *
 * Threads: one, the loop's (virtual time needs an attached loop); the clock is atomic so
 * that a reader elsewhere (rsl_state_json) sees a whole value.
 */
#ifndef RSL_VTIME_H
#define RSL_VTIME_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct rsl__vt_entry {
    int64_t at;
    uint64_t seq;
    void *item;
    size_t *slot;
} rsl__vt_entry;

typedef struct rsl__vtime {
    _Atomic int64_t now;
    rsl__vt_entry *h;
    size_t n, cap;
    uint64_t seq;
} rsl__vtime;

void rsl__vt_init(rsl__vtime *v, int64_t start);
void rsl__vt_close(rsl__vtime *v);
static inline int64_t rsl__vt_now(const rsl__vtime *v) {
    return atomic_load_explicit(&v->now, memory_order_relaxed);
}
/* Arms (or re-arms) item at time `at`: 0, or RSL_ENOMEM. */
int rsl__vt_arm(rsl__vtime *v, void *item, size_t *slot, int64_t at);
/* Disarms it; a no-op when it is not armed. */
void rsl__vt_disarm(rsl__vtime *v, size_t *slot);
/* The earliest item due at or before `until`, removed, its time in *at; NULL when none. */
void *rsl__vt_pop(rsl__vtime *v, int64_t until, int64_t *at);
/* The time of the earliest item, or INT64_MAX. */
int64_t rsl__vt_next(const rsl__vtime *v);

#endif
