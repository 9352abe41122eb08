/* test_bulkhead.c -- max concurrent calls, load, configure, and two threads. */
// ctest-labels: tsan
#include "test.h"

#include "bulkhead.h"

#include <pthread.h>
#include <stdatomic.h>

TEST(bulkhead_max_respected) {
    ASSERT(rsl__bulkhead_new("b", 0) == NULL);
    ASSERT(rsl__bulkhead_new(NULL, 3) == NULL);
    rsl__bulkhead *b = rsl__bulkhead_new("users-conc", 3);
    ASSERT(b);
    ASSERT_STR_EQ(rsl__bulkhead_name(b), "users-conc");
    ASSERT_EQ(rsl__bulkhead_max(b), 3);
    ASSERT_NEAR(rsl__bulkhead_load(b), 0, 1e-12);
    ASSERT(rsl__bulkhead_acquire(b));
    ASSERT(rsl__bulkhead_acquire(b));
    ASSERT_NEAR(rsl__bulkhead_load(b), 2.0 / 3, 1e-12);
    ASSERT(rsl__bulkhead_acquire(b));
    ASSERT(!rsl__bulkhead_acquire(b));
    ASSERT(!rsl__bulkhead_acquire(b));
    ASSERT_EQ(rsl__bulkhead_inflight(b), 3);
    ASSERT_NEAR(rsl__bulkhead_load(b), 1, 1e-12);
    ASSERT_EQ(rsl__bulkhead_rejections(b), 2);
    rsl__bulkhead_release(b);
    ASSERT_EQ(rsl__bulkhead_inflight(b), 2);
    ASSERT(rsl__bulkhead_acquire(b));
    for (int i = 0; i < 3; i++) {
        rsl__bulkhead_release(b);
    }
    ASSERT_EQ(rsl__bulkhead_inflight(b), 0);
    rsl__bulkhead_free(b);
    rsl__bulkhead_free(NULL);
}

TEST(bulkhead_configure) {
    rsl__bulkhead *b = rsl__bulkhead_new("b", 4);
    for (int i = 0; i < 4; i++) {
        ASSERT(rsl__bulkhead_acquire(b));
    }
    ASSERT(rsl__bulkhead_configure(b, 0) < 0);
    ASSERT_EQ(rsl__bulkhead_max(b), 4);
    /* lower: the calls above it finish, new ones wait for room */
    ASSERT_EQ(rsl__bulkhead_configure(b, 2), 0);
    ASSERT_NEAR(rsl__bulkhead_load(b), 2, 1e-12);
    ASSERT(!rsl__bulkhead_acquire(b));
    rsl__bulkhead_release(b);
    rsl__bulkhead_release(b);
    ASSERT(!rsl__bulkhead_acquire(b)); /* 2 in flight, max 2 */
    rsl__bulkhead_release(b);
    ASSERT(rsl__bulkhead_acquire(b));
    /* higher: room at once */
    ASSERT_EQ(rsl__bulkhead_configure(b, 10), 0);
    ASSERT(rsl__bulkhead_acquire(b));
    ASSERT_EQ(rsl__bulkhead_inflight(b), 3);
    for (int i = 0; i < 3; i++) {
        rsl__bulkhead_release(b);
    }
    rsl__bulkhead_free(b);
}

typedef struct {
    rsl__bulkhead *b;
    _Atomic long *inside;
    _Atomic long *peak;
    long acquired, rejected;
} worker_arg;

static void *worker(void *p) {
    worker_arg *a = p;
    for (int i = 0; i < 200000; i++) {
        if (!rsl__bulkhead_acquire(a->b)) {
            a->rejected++;
            continue;
        }
        a->acquired++;
        /* our own count of holders, independent of the bulkhead's */
        long n = atomic_fetch_add(a->inside, 1) + 1;
        long m = atomic_load(a->peak);
        while (n > m && !atomic_compare_exchange_weak(a->peak, &m, n)) {
        }
        int64_t load = rsl__bulkhead_inflight(a->b);
        ASSERT(load >= 1 && load <= rsl__bulkhead_max(a->b));
        atomic_fetch_sub(a->inside, 1);
        rsl__bulkhead_release(a->b);
    }
    return NULL;
}

TEST(bulkhead_two_threads_never_exceed_max) {
    static const int64_t maxes[] = {1, 2};
    for (int k = 0; k < 2; k++) {
        rsl__bulkhead *b = rsl__bulkhead_new("b", maxes[k]);
        _Atomic long inside = 0, peak = 0;
        worker_arg a[3] = {
            {b, &inside, &peak, 0, 0}, {b, &inside, &peak, 0, 0}, {b, &inside, &peak, 0, 0}};
        pthread_t th[3];
        for (int i = 0; i < 3; i++) {
            ASSERT(pthread_create(&th[i], NULL, worker, &a[i]) == 0);
        }
        for (int i = 0; i < 3; i++) {
            pthread_join(th[i], NULL);
        }
        ASSERT(atomic_load(&peak) <= maxes[k]);
        ASSERT_EQ(rsl__bulkhead_inflight(b), 0);
        ASSERT_EQ(a[0].rejected + a[1].rejected + a[2].rejected, rsl__bulkhead_rejections(b));
        ASSERT_EQ(a[0].acquired + a[1].acquired + a[2].acquired + a[0].rejected + a[1].rejected +
                      a[2].rejected,
                  3 * 200000);
        rsl__bulkhead_free(b);
    }
}
