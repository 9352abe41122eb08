/*
 * fake_clock -- the injected clock of the tests that open a runtime: rsl_options.clock =
 * fake_clock, and time moves only when a test moves it (advance_ms, or fake_now itself).
 * It starts at 1000 s, far from 0.  One per test file: include it from the .c only.
 */
#ifndef RSL_TEST_FAKE_CLOCK_H
#define RSL_TEST_FAKE_CLOCK_H

#include <stdatomic.h>
#include <stdint.h>

static _Atomic int64_t fake_now = 1000000000000LL;

static inline int64_t fake_clock(void *ud) {
    (void)ud;
    return atomic_load(&fake_now);
}

static inline void advance_ms(int64_t ms) {
    atomic_fetch_add(&fake_now, ms * 1000000);
}

#endif
