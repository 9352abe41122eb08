/*
 * A runtime attached to the host's own libuv loop: calls run on the loop's thread, other
 * threads may still call (a call from the loop's thread starts at once), rsl_close cancels
 * what waits, and the loop closes cleanly once
 * the runtime's last handle and call are gone.
 */
// ctest-labels: tsan
#include "resilua.h"
#include "test.h"

#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>
#include <uv.h>

static const char *policy =
    "local r = require 'resilua'\n"
    "r.breaker 'b' {}\n"
    "r.policy 'p' { steps = { a = r.lua { run = function(req) return { body = 'hi ' .. req.n } end,\n"
    "                                     guards = { 'b' } } } }\n"
    "r.policy 'wait' { steps = { h = r.c 'park' } }\n"
    "r.policy 'slow' { steps = { a = r.lua { run = function() return nil, '5xx' end,\n"
    "  retry = { attempts = 2, base = '5s', backoff = 'constant', jitter = 'none' } } } }\n";

static uv_thread_t loop_thread;
static int done, wrong_thread, canceled, parked;

static void cb(const rsl_result *r, void *ud) {
    uv_thread_t me = uv_thread_self();
    if (!uv_thread_equal(&me, &loop_thread)) {
        wrong_thread++;
    }
    if (rsl_result_outcome(r) == RSL_OUTCOME_CANCELED) {
        canceled++;
    }
    done++;
}

static void park(rsl_step_call *sc, const rsl_req *req, void *ud) {
    parked++; /* never answered: rsl_close cancels it */
    *(rsl_step_call **)ud = sc;
}

static rsl_runtime *rt;
static _Atomic int other_ok;

static void *other_thread(void *arg) {
    for (int i = 0; i < 50; i++) {
        rsl_req *req = rsl_req_new();
        rsl_req_set(req, "n", "x", 1);
        rsl_result *r = NULL;
        if (rsl_call_sync(rt, "p", req, 5000000000LL, &r) == 0 &&
            rsl_result_outcome(r) == RSL_OUTCOME_OK) {
            atomic_fetch_add(&other_ok, 1);
        }
        rsl_result_free(r);
        rsl_req_free(req);
    }
    return NULL;
}

static void *queue_one(void *arg) {
    rsl_req *req = rsl_req_new();
    rsl_req_set(req, "n", "q", 1);
    if (rsl_call(rt, "p", req, cb, NULL) != 0) {
        abort();
    }
    rsl_req_free(req);
    return NULL;
}

TEST(calls_run_on_the_hosts_loop) {
    const char *dir = rsl_test_tmpdir();
    rsl_test_write(dir, "p.lua", policy);
    uv_loop_t loop;
    ASSERT_EQ(uv_loop_init(&loop), 0);
    loop_thread = uv_thread_self();
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    o.loop = &loop;
    char err[1024];
    ASSERT_EQ(rsl_open(&rt, &o, err, sizeof(err)), 0);
    rsl_step_call *sc = NULL;
    rsl_register_step(rt, "park", park, &sc);

    /* From the loop's thread: asynchronous calls; a synchronous one would wait for itself. */
    rsl_req *req = rsl_req_new();
    rsl_req_set(req, "n", "1", 1);
    for (int i = 0; i < 100; i++) {
        ASSERT_EQ(rsl_call(rt, "p", req, cb, NULL), 0);
    }
    rsl_result *r = NULL;
    ASSERT_EQ(rsl_call_sync(rt, "p", req, 0, &r), RSL_EINVAL);
    while (done < 100) {
        uv_run(&loop, UV_RUN_ONCE);
    }
    ASSERT_EQ(wrong_thread, 0);

    /* Another thread calls synchronously while this one runs the loop. */
    pthread_t t;
    pthread_create(&t, NULL, other_thread, NULL);
    while (atomic_load(&other_ok) < 50) {
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(100);
    }
    pthread_join(t, NULL);

    /* Waiting calls (a parked host step, a 5 s backoff) and one still queued. */
    ASSERT_EQ(rsl_call(rt, "wait", req, cb, NULL), 0);
    ASSERT_EQ(rsl_call(rt, "slow", req, cb, NULL), 0);
    while (parked < 1) {
        uv_run(&loop, UV_RUN_ONCE);
    }
    uv_run(&loop, UV_RUN_NOWAIT);
    /* On the loop's thread a call starts at once: a Lua step answers before rsl_call
     * returns. */
    int before = done;
    ASSERT_EQ(rsl_call(rt, "p", req, cb, NULL), 0);
    ASSERT_EQ(done, before + 1);
    pthread_create(&t, NULL, queue_one, NULL); /* queued when the close comes */
    pthread_join(t, NULL);
    before = done;
    rsl_close(rt);
    /* All three completed inside rsl_close: the queued call was posted before the close
     * and answers (a stub needs no waiting); the two waiting ones are canceled. */
    ASSERT_EQ(done, before + 3);
    ASSERT_EQ(canceled, 2);
    ASSERT_EQ(rsl_step_answer(sc, 200, "late", 4), RSL_EALREADY);
    rsl_req_free(req);

    /* The loop finishes closing the runtime's handles and then has nothing left. */
    ASSERT_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
    ASSERT_EQ(uv_loop_close(&loop), 0);
    ASSERT_EQ(wrong_thread, 0);
}
