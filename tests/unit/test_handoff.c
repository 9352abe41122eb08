/*
 * The hand-off from host threads to a worker: no message is stranded in the queue.  Two
 * host threads calling one worker back to back are the worst case for a lost wake-up: when
 * both messages are stranded nobody else posts, and each rsl_call_sync waits out its
 * timeout (see the fence in rsl__worker_post: without it this test saw about one stall per
 * second on libuv 1.44).
 */
// ctest-labels: tsan
#include "resilua.h"
#include "test.h"

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

static rsl_runtime *rt;
static _Atomic int stop, stalls;
static _Atomic long calls;

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void *caller(void *arg) {
    while (!atomic_load(&stop)) {
        rsl_result *r = NULL;
        /* 5 s: far beyond any stall of a loaded machine, so only a stranded call misses
         * it (a stranded call waits out the whole timeout: nobody else posts). */
        int rc = rsl_call_sync(rt, "p", NULL, 5000000000LL, &r);
        if (rc != 0) {
            atomic_fetch_add(&stalls, 1);
        }
        rsl_result_free(r);
        atomic_fetch_add(&calls, 1);
    }
    return NULL;
}

TEST(two_threads_one_worker_no_stranded_call) {
    const char *dir = rsl_test_tmpdir();
    rsl_test_write(dir, "p.lua",
                   "local r = require 'resilua'\n"
                   "r.policy 'p' { steps = { s = r.stub { status = 200, body = 'x' } } }\n");
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    char err[512];
    ASSERT_EQ(rsl_open(&rt, &o, err, sizeof(err)), 0);
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        ASSERT_EQ(pthread_create(&t[i], NULL, caller, NULL), 0);
    }
    double end = now_ms() + 1500;
    while (now_ms() < end) {
        struct timespec ts = {0, 10 * 1000000};
        nanosleep(&ts, NULL);
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
    }
    rsl_close(rt);
    ASSERT(atomic_load(&calls) > 0);
    ASSERT_EQ(atomic_load(&stalls), 0);
}
