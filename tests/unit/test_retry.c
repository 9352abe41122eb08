/* test_retry.c -- backoff with each jitter, and the retry budget on a frozen clock. */
#include "test.h"

#include "clock.h"
#include "retry.h"

#include <stdlib.h>

#define MS RSL_NS_PER_MS

static rsl__retry conf(int exponential, rsl__jitter j) {
    rsl__retry r = {.attempts = 5,
                    .exponential = exponential,
                    .base_ns = 20 * MS,
                    .max_ns = 100 * MS,
                    .jitter = j,
                    .budget = 0.2};
    return r;
}

TEST(backoff_exponential_without_jitter_doubles_up_to_max) {
    rsl__retry r = conf(1, RSL_JITTER_NONE);
    int64_t last = 0;
    ASSERT_EQ(rsl__backoff_ns(&r, 1, &last), 20 * MS);
    ASSERT_EQ(last, 20 * MS);
    ASSERT_EQ(rsl__backoff_ns(&r, 2, &last), 40 * MS);
    ASSERT_EQ(rsl__backoff_ns(&r, 3, &last), 80 * MS);
    ASSERT_EQ(rsl__backoff_ns(&r, 4, &last), 100 * MS);
    ASSERT_EQ(rsl__backoff_ns(&r, 30, &last), 100 * MS);
    rsl__retry c = conf(0, RSL_JITTER_NONE);
    ASSERT_EQ(rsl__backoff_ns(&c, 4, &last), 20 * MS);
}

TEST(backoff_jitters_stay_in_their_ranges) {
    rsl__rand_seed(42);
    for (int i = 0; i < 2000; i++) {
        int attempt = 1 + i % 4;
        int64_t cap = 20 * MS << (attempt - 1);
        cap = cap > 100 * MS ? 100 * MS : cap;
        int64_t last = 0;
        rsl__retry full = conf(1, RSL_JITTER_FULL);
        int64_t d = rsl__backoff_ns(&full, attempt, &last);
        ASSERT(d >= 0 && d <= cap);
        rsl__retry equal = conf(1, RSL_JITTER_EQUAL);
        d = rsl__backoff_ns(&equal, attempt, &last);
        ASSERT(d >= cap / 2 && d <= cap);
        /* decorrelated: base .. 3 x the previous sleep, capped */
        rsl__retry dec = conf(1, RSL_JITTER_DECORRELATED);
        int64_t prev = (i % 3) * 10 * MS;
        last = prev;
        d = rsl__backoff_ns(&dec, attempt, &last);
        int64_t hi = 3 * (prev > 0 ? prev : 20 * MS);
        ASSERT(d >= 20 * MS && d <= (hi < 100 * MS ? hi : 100 * MS));
        ASSERT_EQ(last, d);
    }
}

TEST(budget_allows_a_floor_then_a_share_of_first_attempts) {
    rsl__budget *b = calloc(1, sizeof(*b));
    ASSERT(b);
    int64_t now = 1000 * RSL_NS_PER_S; /* frozen */
    int granted = 0;
    for (int i = 0; i < 50; i++) {
        granted += rsl__budget_take_retry(b, 0.2, now);
    }
    ASSERT_EQ(granted, 10); /* the floor: 10 retries per 10 s with no traffic */
    for (int i = 0; i < 100; i++) {
        rsl__budget_note_first(b, now);
    }
    granted = 0;
    for (int i = 0; i < 50; i++) {
        granted += rsl__budget_take_retry(b, 0.2, now);
    }
    ASSERT_EQ(granted, 20); /* 0.2 x 100 first attempts + 10, 10 of them spent */
    /* 10 s later the old slots have aged out: the floor again. */
    granted = 0;
    for (int i = 0; i < 50; i++) {
        granted += rsl__budget_take_retry(b, 0.2, now + 10 * RSL_NS_PER_S);
    }
    ASSERT_EQ(granted, 10);
    free(b);
}
