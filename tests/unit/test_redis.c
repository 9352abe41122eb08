/* The Redis connection (src/redis.c) against a real redis-server on loopback: replies and
 * their outcomes, pipelining, fire and forget, cancel, close, and the connection's life
 * when Redis is absent, killed, restarted or paused.  Each test runs its own loop, bounded
 * in time, and ends by closing everything and checking that the loop closes cleanly.
 * ctest-labels below: also run under TSan (single-threaded: it should have nothing to say). */
// ctest-labels: tsan
#include <stdarg.h>
#include <uv.h>

#include "redis.h"
#include "redis_server.h"
#include "test.h"

/* What one command's callback saw. */
typedef struct got {
    int calls;
    rsl_outcome outcome;
    char str[512];
    size_t len;
    char error[256];
} got;

typedef struct fx {
    uv_loop_t loop;
    uv_timer_t tick; /* keeps uv_run(ONCE) from blocking for long while we wait */
    rsl_redis_server srv;
    rsl__redis *r;
    int logs[3]; /* by level */
    char last_log[256];
} fx;

static void on_log(void *ud, int level, const char *msg) {
    fx *f = ud;
    ASSERT(level >= 0 && level <= 2);
    f->logs[level]++;
    if (getenv("RSL_TEST_VERBOSE")) {
        fprintf(stderr, "log %d: %s\n", level, msg);
    }
    snprintf(f->last_log, sizeof(f->last_log), "%s", msg);
}

static void on_reply(void *ud, const rsl__redis_reply *rep) {
    got *g = ud;
    g->calls++;
    g->outcome = rep->outcome;
    g->len = rep->len;
    if (rep->outcome == RSL_OUTCOME_OK) {
        ASSERT(rep->str != NULL);
        ASSERT(rep->len < sizeof(g->str));
        memcpy(g->str, rep->str, rep->len);
        g->str[rep->len] = '\0';
    } else {
        ASSERT(rep->error != NULL);
        snprintf(g->error, sizeof(g->error), "%s", rep->error);
    }
}

static void never(void *ud, const rsl__redis_reply *rep) {
    ASSERT(!"a canceled or closed command's callback ran");
}

static void noop_timer(uv_timer_t *t) {}

static int64_t now_ms(void) {
    return (int64_t)(uv_hrtime() / 1000000);
}

/* Runs the loop until *flag becomes nonzero or ms pass; returns *flag. */
static int run_until(fx *f, const int *flag, int ms) {
    int64_t deadline = now_ms() + ms;
    while (!*flag && now_ms() < deadline) {
        uv_run(&f->loop, UV_RUN_ONCE);
    }
    return *flag;
}

/* Runs the loop for ms, and for a few turns at least (a test descheduled for all of ms
 * still lets the loop do what a few turns do: connect, write, read). */
static void run_for(fx *f, int ms) {
    int64_t deadline = now_ms() + ms;
    for (int turns = 0; turns < 5 || now_ms() < deadline; turns++) {
        uv_run(&f->loop, UV_RUN_ONCE);
    }
}

static int connected_flag(fx *f, int ms) {
    int64_t deadline = now_ms() + ms;
    while (!rsl__redis_connected(f->r) && now_ms() < deadline) {
        uv_run(&f->loop, UV_RUN_ONCE);
    }
    return rsl__redis_connected(f->r);
}

/* A loop and a connection; with_server: a fresh redis-server, connected. */
static void fx_open(fx *f, int with_server) {
    memset(f, 0, sizeof(*f));
    signal(SIGPIPE, SIG_IGN);
    ASSERT_EQ(uv_loop_init(&f->loop), 0);
    uv_timer_init(&f->loop, &f->tick);
    uv_timer_start(&f->tick, noop_timer, 5, 5);
    if (with_server) {
        ASSERT_EQ(rsl_redis_start(&f->srv), 0);
    } else {
        f->srv.port = rsl_redis_free_port_();
        ASSERT(f->srv.port > 0);
    }
    f->r = rsl__redis_new(&f->loop, "127.0.0.1", f->srv.port, on_log, f);
    ASSERT(f->r != NULL);
    if (with_server) {
        ASSERT(connected_flag(f, 10000));
    }
}

/* Closes the connection and the loop; the loop must end on its own and close cleanly
 * (every handle closed: nothing leaks a handle, LeakSanitizer checks the memory). */
static void fx_close(fx *f) {
    rsl__redis_close(f->r);
    uv_close((uv_handle_t *)&f->tick, NULL);
    int64_t t0 = now_ms();
    uv_run(&f->loop, UV_RUN_DEFAULT);
    ASSERT(now_ms() - t0 < 5000); /* generous: the close never waits for replies */
    ASSERT_EQ(uv_loop_close(&f->loop), 0);
    rsl_redis_stop(&f->srv);
}

static int cmd(fx *f, got *g, rsl__redis_cmd **out, int argc, ...) {
    const char *argv[16];
    size_t lens[16];
    va_list ap;
    va_start(ap, argc);
    for (int i = 0; i < argc; i++) {
        argv[i] = va_arg(ap, const char *);
        lens[i] = strlen(argv[i]);
    }
    va_end(ap);
    return rsl__redis_command(f->r, argc, argv, lens, g ? on_reply : NULL, g, out);
}

/* Sends a command and waits (10 s at most) for its one answer. */
#define CALL(f, g, ...)                                                                            \
    do {                                                                                           \
        memset((g), 0, sizeof(*(g)));                                                              \
        ASSERT_EQ(cmd((f), (g), NULL, __VA_ARGS__), 0);                                            \
        ASSERT_EQ((g)->calls, 0); /* never inside rsl__redis_command */                            \
        ASSERT(run_until((f), &(g)->calls, 10000));                                                \
        ASSERT_EQ((g)->calls, 1);                                                                  \
    } while (0)

TEST(get_set_key_missing_key_and_incr) {
    fx f;
    fx_open(&f, 1);
    char out[64];
    ASSERT_EQ(rsl_redis_cmd(&f.srv, "SET k hello", out, sizeof(out)), 0);
    got g;
    CALL(&f, &g, 2, "GET", "k");
    ASSERT_EQ(g.outcome, RSL_OUTCOME_OK);
    ASSERT_STR_EQ(g.str, "hello");
    ASSERT_EQ(g.len, 5);
    CALL(&f, &g, 2, "GET", "nope");
    ASSERT_EQ(g.outcome, RSL_OUTCOME_MISS);
    CALL(&f, &g, 2, "INCR", "n");
    ASSERT_EQ(g.outcome, RSL_OUTCOME_OK);
    ASSERT_STR_EQ(g.str, "1");
    CALL(&f, &g, 3, "INCRBY", "n", "-5");
    ASSERT_STR_EQ(g.str, "-4");
    CALL(&f, &g, 3, "SET", "k", "v2"); /* a status reply */
    ASSERT_EQ(g.outcome, RSL_OUTCOME_OK);
    ASSERT_STR_EQ(g.str, "OK");
    ASSERT_EQ(f.logs[1] + f.logs[0], 0);
    ASSERT_EQ(f.logs[2], 1);
    ASSERT_STR_EQ(f.last_log, "connected");
    fx_close(&f);
}

TEST(error_replies) {
    fx f;
    fx_open(&f, 1);
    got g;
    CALL(&f, &g, 2, "NOSUCHCOMMAND", "x");
    ASSERT_EQ(g.outcome, RSL_OUTCOME_ERROR);
    ASSERT_CONTAINS(g.error, "unknown command");
    CALL(&f, &g, 3, "LPUSH", "list", "a");
    CALL(&f, &g, 2, "GET", "list");
    ASSERT_EQ(g.outcome, RSL_OUTCOME_ERROR);
    ASSERT_CONTAINS(g.error, "WRONGTYPE");
    CALL(&f, &g, 2, "GET", "list2"); /* the connection is fine afterwards */
    ASSERT_EQ(g.outcome, RSL_OUTCOME_MISS);
    fx_close(&f);
}

TEST(binary_safe_values) {
    fx f;
    fx_open(&f, 1);
    const char key[] = "k\0ey", val[] = "a\0b\r\n\0c";
    const char *argv[] = {"SET", key, val};
    size_t lens[] = {3, sizeof(key) - 1, sizeof(val) - 1};
    got g = {0};
    ASSERT_EQ(rsl__redis_command(f.r, 3, argv, lens, on_reply, &g, NULL), 0);
    ASSERT(run_until(&f, &g.calls, 10000));
    ASSERT_EQ(g.outcome, RSL_OUTCOME_OK);
    memset(&g, 0, sizeof(g));
    argv[0] = "GET";
    lens[0] = 3;
    ASSERT_EQ(rsl__redis_command(f.r, 2, argv, lens, on_reply, &g, NULL), 0);
    ASSERT(run_until(&f, &g.calls, 10000));
    ASSERT_EQ(g.outcome, RSL_OUTCOME_OK);
    ASSERT_EQ(g.len, sizeof(val) - 1);
    ASSERT(memcmp(g.str, val, sizeof(val) - 1) == 0);
    CALL(&f, &g, 2, "GET", "k"); /* "k" is not "k\0ey" */
    ASSERT_EQ(g.outcome, RSL_OUTCOME_MISS);
    fx_close(&f);
}

TEST(arrays_as_json) {
    fx f;
    fx_open(&f, 1);
    got g;
    CALL(&f, &g, 5, "RPUSH", "l", "a", "say \"hi\"\n", "\xc3\xa9\xff");
    ASSERT_STR_EQ(g.str, "3");
    CALL(&f, &g, 4, "LRANGE", "l", "0", "-1");
    ASSERT_EQ(g.outcome, RSL_OUTCOME_OK);
    /* UTF-8 passes through; a byte that is not UTF-8 reads as Latin-1 */
    ASSERT_STR_EQ(g.str, "[\"a\",\"say \\\"hi\\\"\\n\",\"\xc3\xa9\\u00ff\"]");
    CALL(&f, &g, 3, "SET", "s", "v");
    CALL(&f, &g, 3, "MGET", "s", "missing");
    ASSERT_STR_EQ(g.str, "[\"v\",null]");
    CALL(&f, &g, 4, "LRANGE", "empty", "0", "-1");
    ASSERT_EQ(g.outcome, RSL_OUTCOME_OK); /* an empty array is an answer, not a miss */
    ASSERT_STR_EQ(g.str, "[]");
    /* nested, with integers: EXEC's replies */
    CALL(&f, &g, 1, "MULTI");
    got q1, q2;
    memset(&q1, 0, sizeof(q1));
    memset(&q2, 0, sizeof(q2));
    ASSERT_EQ(cmd(&f, &q1, NULL, 2, "INCR", "c"), 0);
    ASSERT_EQ(cmd(&f, &q2, NULL, 4, "LRANGE", "l", "0", "0"), 0);
    CALL(&f, &g, 1, "EXEC");
    ASSERT_STR_EQ(q1.str, "QUEUED");
    ASSERT_STR_EQ(g.str, "[1,[\"a\"]]");
    fx_close(&f);
}

/* 1000 commands in flight at once: each answered exactly once, in order. */
typedef struct seq {
    int next; /* the index expected next */
    int calls[1000];
    int bad;
} seq;

typedef struct slot {
    seq *s;
    int i;
} slot;

static void on_seq(void *ud, const rsl__redis_reply *rep) {
    slot *sl = ud;
    seq *s = sl->s;
    s->calls[sl->i]++;
    char want[16];
    snprintf(want, sizeof(want), "%d", sl->i + 1);
    if (sl->i != s->next || rep->outcome != RSL_OUTCOME_OK || strcmp(rep->str, want) != 0) {
        s->bad++;
    }
    s->next++;
}

TEST(pipelined_1000_in_order) {
    fx f;
    fx_open(&f, 1);
    static seq s;
    static slot slots[1000];
    memset(&s, 0, sizeof(s));
    const char *argv[] = {"INCR", "ctr"};
    size_t lens[] = {4, 3};
    for (int i = 0; i < 1000; i++) {
        slots[i] = (slot){&s, i};
        ASSERT_EQ(rsl__redis_command(f.r, 2, argv, lens, on_seq, &slots[i], NULL), 0);
    }
    ASSERT_EQ(s.next, 0);
    int done = 0;
    int64_t deadline = now_ms() + 10000;
    while (s.next < 1000 && now_ms() < deadline) {
        uv_run(&f.loop, UV_RUN_ONCE);
    }
    done = s.next;
    ASSERT_EQ(done, 1000);
    ASSERT_EQ(s.bad, 0);
    for (int i = 0; i < 1000; i++) {
        ASSERT_EQ(s.calls[i], 1);
    }
    fx_close(&f);
}

TEST(fire_and_forget_then_get) {
    fx f;
    fx_open(&f, 1);
    rsl__redis_cmd *h = (rsl__redis_cmd *)&f; /* must be overwritten with NULL */
    ASSERT_EQ(cmd(&f, NULL, &h, 5, "SET", "ff", "value", "PX", "60000"), 0);
    ASSERT(h == NULL);
    got g;
    CALL(&f, &g, 2, "GET", "ff"); /* pipelined after the SET: sees it */
    ASSERT_EQ(g.outcome, RSL_OUTCOME_OK);
    ASSERT_STR_EQ(g.str, "value");
    fx_close(&f);
}

TEST(cancel_then_later_commands_work) {
    fx f;
    fx_open(&f, 1);
    const char *argv[] = {"GET", "x"};
    size_t lens[] = {3, 1};
    rsl__redis_cmd *h = NULL;
    ASSERT_EQ(rsl__redis_command(f.r, 2, argv, lens, never, NULL, &h), 0);
    ASSERT(h != NULL);
    rsl__redis_cancel(f.r, h);
    rsl__redis_cancel(f.r, NULL); /* a no-op */
    got g;
    CALL(&f, &g, 2, "INCR", "y"); /* answered after the canceled one was dropped */
    ASSERT_STR_EQ(g.str, "1");
    /* cancel from another command's callback, before its reply arrives */
    ASSERT_EQ(rsl__redis_command(f.r, 2, argv, lens, never, NULL, &h), 0);
    rsl__redis_cancel(f.r, h);
    CALL(&f, &g, 2, "INCR", "y");
    ASSERT_STR_EQ(g.str, "2");
    fx_close(&f);
}

TEST(invalid_commands_are_refused) {
    fx f;
    fx_open(&f, 1);
    got g = {0};
    ASSERT_EQ(cmd(&f, &g, NULL, 2, "SUBSCRIBE", "ch"), RSL_EINVAL);
    ASSERT_EQ(cmd(&f, &g, NULL, 1, "monitor"), RSL_EINVAL);
    ASSERT_EQ(rsl__redis_command(f.r, 0, NULL, NULL, on_reply, &g, NULL), RSL_EINVAL);
    run_for(&f, 50);
    ASSERT_EQ(g.calls, 0);
    fx_close(&f);
}

TEST(not_running_at_start_then_comes_up) {
    fx f;
    fx_open(&f, 0);
    got g = {0};
    rsl__redis_cmd *h = (rsl__redis_cmd *)&f;
    ASSERT_EQ(cmd(&f, &g, &h, 2, "GET", "k"), RSL_ECLOSED); /* at once */
    ASSERT(h == NULL);
    /* The first attempt fails (and says so), then several more (50, 100, 200, 400,
     * 800 ms). */
    for (int64_t until = now_ms() + 10000; f.logs[1] == 0 && now_ms() < until;) {
        uv_run(&f.loop, UV_RUN_ONCE);
    }
    run_for(&f, 1500);
    ASSERT(!rsl__redis_connected(f.r));
    ASSERT_EQ(cmd(&f, &g, NULL, 2, "GET", "k"), RSL_ECLOSED);
    ASSERT_EQ(g.calls, 0);
    ASSERT_EQ(f.logs[1], 1); /* "cannot connect" once, not per retry */
    ASSERT_CONTAINS(f.last_log, "cannot connect");
    ASSERT_EQ(rsl_redis_restart(&f.srv), 0); /* on the port it was told */
    int64_t t0 = now_ms();
    ASSERT(connected_flag(&f, 10000));
    /* The next attempt is due within the backoff's 2 s cap: generous slack on top. */
    ASSERT(now_ms() - t0 <= 4000);
    ASSERT_EQ(f.logs[2], 1);
    ASSERT_STR_EQ(f.last_log, "connected");
    CALL(&f, &g, 2, "INCR", "k");
    ASSERT_STR_EQ(g.str, "1");
    fx_close(&f);
}

/* Commands in flight when Redis dies: each answered once with connect; sending from
 * that callback is refused; the connection comes back with the server. */
typedef struct lost {
    int calls;
    int connect;
    int resend_rc;
    rsl__redis *r;
} lost;

static void on_lost(void *ud, const rsl__redis_reply *rep) {
    lost *l = ud;
    l->calls++;
    if (rep->outcome == RSL_OUTCOME_CONNECT) {
        l->connect++;
        ASSERT_CONTAINS(rep->error, "connection lost");
    }
    const char *argv[] = {"PING"};
    size_t lens[] = {4};
    l->resend_rc = rsl__redis_command(l->r, 1, argv, lens, never, NULL, NULL);
}

TEST(killed_with_commands_in_flight_then_restarted) {
    fx f;
    fx_open(&f, 1);
    /* Paused first, so that the commands are written and wait in Redis's socket: a
     * SIGKILL then resets the connection (unread data) rather than closing it. */
    rsl_redis_pause(&f.srv);
    static lost l[100];
    memset(l, 0, sizeof(l));
    const char *argv[] = {"GET", "k"};
    size_t lens[] = {3, 1};
    for (int i = 0; i < 100; i++) {
        l[i].r = f.r;
        ASSERT_EQ(rsl__redis_command(f.r, 2, argv, lens, on_lost, &l[i], NULL), 0);
    }
    run_for(&f, 100);
    ASSERT_EQ(l[0].calls, 0);
    rsl_redis_kill(&f.srv);
    int64_t deadline = now_ms() + 10000;
    while (l[99].calls == 0 && now_ms() < deadline) {
        uv_run(&f.loop, UV_RUN_ONCE);
    }
    for (int i = 0; i < 100; i++) {
        ASSERT_EQ(l[i].calls, 1);
        ASSERT_EQ(l[i].connect, 1);
        ASSERT_EQ(l[i].resend_rc, RSL_ECLOSED);
    }
    ASSERT(!rsl__redis_connected(f.r));
    got g = {0};
    ASSERT_EQ(cmd(&f, &g, NULL, 2, "GET", "k"), RSL_ECLOSED);
    ASSERT_CONTAINS(f.last_log, "connection lost");
    run_for(&f, 300); /* failed reconnects: still down, nothing more to log */
    ASSERT_EQ(f.logs[1], 1);
    ASSERT_EQ(rsl_redis_restart(&f.srv), 0);
    ASSERT(connected_flag(&f, 10000));
    CALL(&f, &g, 2, "INCR", "k");
    ASSERT_STR_EQ(g.str, "1");
    /* and once more, a clean stop while idle */
    rsl_redis_stop(&f.srv);
    deadline = now_ms() + 10000;
    while (rsl__redis_connected(f.r) && now_ms() < deadline) {
        uv_run(&f.loop, UV_RUN_ONCE);
    }
    ASSERT(!rsl__redis_connected(f.r));
    ASSERT_EQ(rsl_redis_restart(&f.srv), 0);
    ASSERT(connected_flag(&f, 10000));
    CALL(&f, &g, 2, "GET", "k");
    ASSERT_EQ(g.outcome, RSL_OUTCOME_MISS); /* a fresh server */
    fx_close(&f);
}

/* A stopped Redis never blocks the loop: a timer fires on time while commands wait and
 * megabytes of writes pile up, and a waiting command can be canceled. */
typedef struct tick {
    int fired;
    int64_t at;
} tick;

static void on_tick(uv_timer_t *t) {
    tick *k = t->data;
    k->fired++;
    k->at = now_ms();
}

TEST(paused_redis_never_blocks_the_loop) {
    fx f;
    fx_open(&f, 1);
    rsl_redis_pause(&f.srv);
    rsl__redis_cmd *h = NULL;
    const char *argv[] = {"GET", "k"};
    size_t lens[] = {3, 1};
    ASSERT_EQ(rsl__redis_command(f.r, 2, argv, lens, never, NULL, &h), 0);
    got g = {0};
    ASSERT_EQ(cmd(&f, &g, NULL, 2, "INCR", "n"), 0);
    /* 16 MB of fire-and-forget writes: far more than the socket buffers hold */
    static char big[64 * 1024];
    memset(big, 'x', sizeof(big));
    const char *sargv[] = {"SET", "big", big};
    size_t slens[] = {3, 3, sizeof(big)};
    for (int i = 0; i < 256; i++) {
        ASSERT_EQ(rsl__redis_command(f.r, 3, sargv, slens, NULL, NULL, NULL), 0);
    }
    uv_timer_t t;
    tick k = {0, 0};
    uv_timer_init(&f.loop, &t);
    t.data = &k;
    uv_update_time(&f.loop); /* sending the 16 MB took a while: due 100 ms from now */
    int64_t t0 = now_ms();
    uv_timer_start(&t, on_tick, 100, 0);
    /* Redis stays stopped until the timer has fired: a write that blocked the loop would
     * never return, so the timer firing at all is the proof (no upper bound on when: a
     * loaded machine may deschedule the test). */
    ASSERT(run_until(&f, &k.fired, 30000));
    ASSERT(k.at - t0 >= 99);
    ASSERT(rsl__redis_connected(f.r)); /* the TCP connection stays up */
    ASSERT_EQ(g.calls, 0);
    rsl__redis_cancel(f.r, h); /* the caller's timeout */
    rsl_redis_resume(&f.srv);
    ASSERT(run_until(&f, &g.calls, 5000));
    ASSERT_EQ(g.outcome, RSL_OUTCOME_OK);
    ASSERT_STR_EQ(g.str, "1");
    CALL(&f, &g, 2, "STRLEN", "big");
    ASSERT_STR_EQ(g.str, "65536");
    uv_close((uv_handle_t *)&t, NULL);
    fx_close(&f);
}

TEST(in_flight_commands_are_bounded) {
    fx f;
    fx_open(&f, 1);
    rsl_redis_pause(&f.srv);
    const char *argv[] = {"PING"};
    size_t lens[] = {4};
    for (int i = 0; i < RSL_REDIS_MAX_INFLIGHT; i++) {
        ASSERT_EQ(rsl__redis_command(f.r, 1, argv, lens, NULL, NULL, NULL), 0);
    }
    ASSERT_EQ(rsl__redis_command(f.r, 1, argv, lens, NULL, NULL, NULL), RSL_ECLOSED);
    rsl_redis_resume(&f.srv);
    got g = {0};
    int64_t deadline = now_ms() + 5000;
    int rc;
    /* room again once Redis answers */
    while ((rc = cmd(&f, &g, NULL, 1, "PING")) == RSL_ECLOSED && now_ms() < deadline) {
        uv_run(&f.loop, UV_RUN_ONCE);
    }
    ASSERT_EQ(rc, 0);
    ASSERT(run_until(&f, &g.calls, 5000));
    ASSERT_STR_EQ(g.str, "PONG");
    fx_close(&f);
}

TEST(close_with_commands_in_flight) {
    fx f;
    fx_open(&f, 1);
    rsl_redis_pause(&f.srv); /* nothing gets answered */
    const char *argv[] = {"GET", "k"};
    size_t lens[] = {3, 1};
    for (int i = 0; i < 50; i++) {
        ASSERT_EQ(rsl__redis_command(f.r, 2, argv, lens, never, NULL, NULL), 0);
        ASSERT_EQ(rsl__redis_command(f.r, 2, argv, lens, NULL, NULL, NULL), 0);
    }
    run_for(&f, 50);               /* written, waiting */
    for (int i = 0; i < 50; i++) { /* and some still in the output buffer */
        ASSERT_EQ(rsl__redis_command(f.r, 2, argv, lens, never, NULL, NULL), 0);
    }
    rsl_redis_resume(&f.srv);
    fx_close(&f); /* no callback, the loop ends, no leak */
}

/* The first reply's callback closes the connection: the other replies, already read in
 * the same buffer, are dropped, their callbacks never run. */
typedef struct closer {
    int calls;
    rsl__redis *r;
} closer;

static void on_close_from_cb(void *ud, const rsl__redis_reply *rep) {
    closer *c = ud;
    c->calls++;
    ASSERT_EQ(rep->outcome, RSL_OUTCOME_OK);
    rsl__redis_close(c->r);
    rsl__redis_close(c->r); /* twice is harmless */
    const char *argv[] = {"PING"};
    size_t lens[] = {4};
    ASSERT_EQ(rsl__redis_command(c->r, 1, argv, lens, never, NULL, NULL), RSL_ECLOSED);
}

TEST(close_from_a_reply_callback) {
    fx f;
    fx_open(&f, 1);
    closer c = {0, f.r};
    const char *argv[] = {"PING"};
    size_t lens[] = {4};
    ASSERT_EQ(rsl__redis_command(f.r, 1, argv, lens, on_close_from_cb, &c, NULL), 0);
    for (int i = 0; i < 20; i++) {
        ASSERT_EQ(rsl__redis_command(f.r, 1, argv, lens, never, NULL, NULL), 0);
    }
    ASSERT(run_until(&f, &c.calls, 10000));
    f.r = NULL; /* closed already */
    fx_close(&f);
    ASSERT_EQ(c.calls, 1);
}

TEST(close_while_connecting_and_while_down) {
    fx f;
    fx_open(&f, 0);
    fx_close(&f); /* mid-connect (refused, or not yet) */
    fx_open(&f, 0);
    run_for(&f, 200); /* between retries */
    fx_close(&f);
}

/* A host name is resolved off the loop; "localhost" may list ::1 first while the server
 * listens on 127.0.0.1 only: the next attempt takes the next address. */
TEST(host_name_resolved_and_close_while_resolving) {
    fx f;
    fx_open(&f, 1);
    rsl__redis_close(f.r);
    f.r = rsl__redis_new(&f.loop, "localhost", f.srv.port, on_log, &f);
    ASSERT(f.r != NULL);
    ASSERT(connected_flag(&f, 10000));
    got g;
    CALL(&f, &g, 1, "PING");
    ASSERT_STR_EQ(g.str, "PONG");
    rsl__redis_close(f.r);
    f.r = rsl__redis_new(&f.loop, "localhost", f.srv.port, on_log, &f);
    fx_close(&f); /* the lookup is in flight (or canceled): r waits for its callback */
}
