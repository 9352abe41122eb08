/*
 * clock -- monotonic time in int64 ns, and a per-thread pseudo-random generator.
 *
 * This is the only file of the guard layer that reads a clock: breakers, limiters and
 * windows take `now` from their caller.  The generator is xorshift64* (Vigna, "An
 * experimental exploration of Marsaglia's xorshift generators", 2016): one 64-bit word of
 * state per thread (_Thread_local, so no sharing and no lock), seeded lazily from the clock
 * and the address of that state when the thread never seeded it.  Any thread.
 */
#include "clock.h"

#include <time.h>

/* 0 means "never seeded": xorshift's state must never be 0. */
static _Thread_local uint64_t rng_state;
_Thread_local int rsl__thread_slot;

static int64_t read_clock(clockid_t id) {
    struct timespec ts;
    if (clock_gettime(id, &ts) != 0) {
        return 0;
    }
    return (int64_t)ts.tv_sec * RSL_NS_PER_S + ts.tv_nsec;
}

int64_t rsl__clock_now(void) {
    return read_clock(CLOCK_MONOTONIC);
}

int64_t rsl__clock_coarse(void) {
#ifdef CLOCK_MONOTONIC_COARSE
    return read_clock(CLOCK_MONOTONIC_COARSE);
#else
    return read_clock(CLOCK_MONOTONIC);
#endif
}

/* splitmix64's finaliser: spreads a weak seed (a clock value, an address) over all bits. */
static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

void rsl__rand_seed(uint64_t seed) {
    if (seed == 0) {
        seed = (uint64_t)rsl__clock_now() ^ ((uint64_t)(uintptr_t)&rng_state << 16);
    }
    uint64_t s = mix64(seed);
    rng_state = s ? s : UINT64_C(0x9e3779b97f4a7c15);
}

uint64_t rsl__rand64(void) {
    uint64_t x = rng_state;
    if (x == 0) {
        rsl__rand_seed(0);
        x = rng_state;
    }
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * UINT64_C(0x2545f4914f6cdd1d);
}

double rsl__rand01(void) {
    /* The top 53 bits: every double in [0, 1) on a 2^-53 grid. */
    return (double)(rsl__rand64() >> 11) * (1.0 / 9007199254740992.0);
}
