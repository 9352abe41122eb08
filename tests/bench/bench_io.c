/*
 * bench_io -- what a call through resilua's I/O steps costs next to the same I/O done
 * plainly, measured in the same run against the same servers on loopback:
 *   - HTTP: calls/s of a policy with one r.http step (1 worker) versus a plain libcurl
 *     multi loop (curl_multi_poll, easy handles re-added as they finish) with the same
 *     number of requests in flight, and versus plain libcurl multi_socket driven by a libuv
 *     loop on the calling thread (the wiring of curl's docs/examples/multi-uv.c: one
 *     uv_poll per socket, one uv_timer), all against examples/flaky in its fast mode;
 *   - Redis: calls/s of a policy with one r.redis GET step versus a plain hiredis async
 *     loop on libuv (redisLibuvAttach) with the same number of commands in flight, both
 *     against one redis-server.
 * Each side also reports CPU time per call (getrusage of this process: the servers are
 * other processes).  The target (issue 4) is a ratio >= 0.9 for both.
 *
 * Sides alternate over --rounds (default 7), resilua first in every other round; each
 * figure is the median of the rounds, and the ratio is taken round by round (its median,
 * lowest and highest are printed).
 *
 * Usage: bench_io [--smoke] [--inflight N] [--calls N] [--rounds N]
 *                 [--profile http|redis|plain-http|plain-uv|plain-redis]
 */
#include "bench.h"
#include "resilua.h"

#include "../redis_server.h"
#include "../upstream.h"

#include <curl/curl.h>
#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

static int inflight = 32;
static int ncalls = 100000;
static const char *profile;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

typedef struct run {
    double wall, cpu;
    int n, failed;
} run;

static void report(const char *what, const run *r) {
    printf("  %-34s %9.0f calls/s  %6.1f us CPU/call  (%d calls, %d not ok)\n", what,
           r->n / r->wall, r->cpu / r->n * 1e6, r->n, r->failed);
}

/* Rounds alternate the sides, so a noisy stretch of the machine hits both; the figures
 * are medians over the rounds. */
#define MAX_ROUNDS 15
static int rounds = 7;

/* One side over the rounds: median calls/s and CPU per call, as one run to report. */
static run median_run(const run *r, int n) {
    double rate[MAX_ROUNDS], cpu[MAX_ROUNDS];
    int failed = 0;
    for (int i = 0; i < n; i++) {
        rate[i] = r[i].n / r[i].wall;
        cpu[i] = r[i].cpu / r[i].n;
        failed += r[i].failed;
    }
    run m = {.n = r[0].n, .failed = failed};
    m.wall = m.n / rsl_bench_median(rate, n);
    m.cpu = rsl_bench_median(cpu, n) * m.n;
    return m;
}

/* The ratio of calls/s of a to b, round by round: median, min and max. */
static void print_ratio(const char *what, const run *a, const run *b, int n) {
    double q[MAX_ROUNDS], c[MAX_ROUNDS];
    for (int i = 0; i < n; i++) {
        q[i] = (a[i].n / a[i].wall) / (b[i].n / b[i].wall);
        c[i] = (a[i].cpu / a[i].n) / (b[i].cpu / b[i].n);
    }
    double cm = rsl_bench_median(c, n), qm = rsl_bench_median(q, n); /* sorts q: min and max at its ends */
    printf("  ratio (%s): %.2f calls/s (rounds %.2f..%.2f), %.2f CPU per call\n", what, qm,
           q[0], q[n - 1], cm);
}

/* ---- plain libcurl multi ----------------------------------------------------------------- */
static size_t sink(char *p, size_t size, size_t n, void *ud) {
    (void)p;
    (void)ud;
    return size * n;
}

static run plain_curl(const char *url, int n) {
    CURLM *m = curl_multi_init();
    curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, (long)inflight * 2);
    CURL **e = calloc((size_t)inflight, sizeof(*e));
    run r = {0};
    int started = 0, done = 0;
    double t0 = now_s(), c0 = cpu_s();
    for (int i = 0; i < inflight && started < n; i++, started++) {
        e[i] = curl_easy_init();
        curl_easy_setopt(e[i], CURLOPT_URL, url);
        curl_easy_setopt(e[i], CURLOPT_WRITEFUNCTION, sink);
        curl_easy_setopt(e[i], CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e[i], CURLOPT_PROXY, "");
        curl_multi_add_handle(m, e[i]);
    }
    while (done < n) {
        int running = 0;
        curl_multi_perform(m, &running);
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(m, &left))) {
            if (msg->msg != CURLMSG_DONE) {
                continue;
            }
            CURL *h = msg->easy_handle;
            long status = 0;
            curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
            r.failed += msg->data.result != CURLE_OK || status != 200;
            done++;
            curl_multi_remove_handle(m, h);
            if (started < n) {
                started++;
                curl_multi_add_handle(m, h);
            }
        }
        if (done < n) {
            curl_multi_poll(m, NULL, 0, 1000, NULL);
        }
    }
    r.wall = now_s() - t0;
    r.cpu = cpu_s() - c0;
    r.n = n;
    for (int i = 0; i < inflight; i++) {
        if (e[i]) {
            curl_easy_cleanup(e[i]);
        }
    }
    free(e);
    curl_multi_cleanup(m);
    return r;
}

/* ---- plain libcurl multi_socket on a libuv loop ------------------------------------------
 * The wiring of curl's docs/examples/multi-uv.c on a loop of this thread: one uv_poll per
 * socket (curl_multi_assign), one uv_timer for CURLMOPT_TIMERFUNCTION, finished transfers
 * taken off curl_multi_info_read after each socket action and their easy handles re-added
 * as they are (same requests in flight as the other loops). */
typedef struct uvcurl {
    uv_loop_t loop;
    uv_timer_t timer;
    CURLM *m;
    int started, done, failed, n;
} uvcurl;

typedef struct uvsock {
    uv_poll_t poll;
    uvcurl *u;
    curl_socket_t fd;
} uvsock;

static void uv_check_done(uvcurl *u) {
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(u->m, &left))) {
        if (msg->msg != CURLMSG_DONE) {
            continue;
        }
        CURL *h = msg->easy_handle;
        long status = 0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        u->failed += msg->data.result != CURLE_OK || status != 200;
        u->done++;
        curl_multi_remove_handle(u->m, h);
        if (u->started < u->n) {
            u->started++;
            curl_multi_add_handle(u->m, h);
        }
    }
    if (u->done == u->n) {
        uv_stop(&u->loop);
    }
}

static void uv_on_poll(uv_poll_t *p, int status, int events) {
    uvsock *s = (uvsock *)p;
    int flags = 0, running;
    if (status < 0) {
        flags = CURL_CSELECT_ERR;
    } else {
        flags |= (events & UV_READABLE) ? CURL_CSELECT_IN : 0;
        flags |= (events & UV_WRITABLE) ? CURL_CSELECT_OUT : 0;
    }
    uvcurl *u = s->u;
    curl_multi_socket_action(u->m, s->fd, flags, &running);
    uv_check_done(u);
}

static void uv_on_timeout(uv_timer_t *t) {
    uvcurl *u = t->data;
    int running;
    curl_multi_socket_action(u->m, CURL_SOCKET_TIMEOUT, 0, &running);
    uv_check_done(u);
}

static int uv_start_timeout(CURLM *m, long ms, void *ud) {
    (void)m;
    uvcurl *u = ud;
    if (ms < 0) {
        uv_timer_stop(&u->timer);
    } else {
        /* 0 means directly call socket_action, but we will do it in a bit */
        uv_timer_start(&u->timer, uv_on_timeout, ms == 0 ? 1 : (uint64_t)ms, 0);
    }
    return 0;
}

static void uv_sock_closed(uv_handle_t *h) {
    free(h);
}

static int uv_handle_socket(CURL *e, curl_socket_t fd, int what, void *ud, void *sockp) {
    (void)e;
    uvcurl *u = ud;
    uvsock *s = sockp;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            uv_poll_stop(&s->poll);
            uv_close((uv_handle_t *)&s->poll, uv_sock_closed);
            curl_multi_assign(u->m, fd, NULL);
        }
        return 0;
    }
    if (!s) {
        s = calloc(1, sizeof(*s));
        s->u = u;
        s->fd = fd;
        uv_poll_init_socket(&u->loop, &s->poll, fd);
        curl_multi_assign(u->m, fd, s);
    }
    int events =
        ((what & CURL_POLL_IN) ? UV_READABLE : 0) | ((what & CURL_POLL_OUT) ? UV_WRITABLE : 0);
    uv_poll_start(&s->poll, events, uv_on_poll);
    return 0;
}

static void uv_walk_close(uv_handle_t *h, void *ud) {
    (void)ud;
    if (!uv_is_closing(h)) {
        uv_close(h, h->type == UV_POLL ? uv_sock_closed : NULL);
    }
}

static run plain_uv(const char *url, int n) {
    uvcurl u = {.n = n};
    uv_loop_init(&u.loop);
    uv_timer_init(&u.loop, &u.timer);
    u.timer.data = &u;
    u.m = curl_multi_init();
    curl_multi_setopt(u.m, CURLMOPT_MAXCONNECTS, (long)inflight * 2);
    curl_multi_setopt(u.m, CURLMOPT_SOCKETFUNCTION, uv_handle_socket);
    curl_multi_setopt(u.m, CURLMOPT_SOCKETDATA, &u);
    curl_multi_setopt(u.m, CURLMOPT_TIMERFUNCTION, uv_start_timeout);
    curl_multi_setopt(u.m, CURLMOPT_TIMERDATA, &u);
    CURL **e = calloc((size_t)inflight, sizeof(*e));
    double t0 = now_s(), c0 = cpu_s();
    for (int i = 0; i < inflight && u.started < n; i++, u.started++) {
        e[i] = curl_easy_init();
        curl_easy_setopt(e[i], CURLOPT_URL, url);
        curl_easy_setopt(e[i], CURLOPT_WRITEFUNCTION, sink);
        curl_easy_setopt(e[i], CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e[i], CURLOPT_PROXY, "");
        curl_multi_add_handle(u.m, e[i]);
    }
    if (n > 0) {
        uv_run(&u.loop, UV_RUN_DEFAULT);
    }
    run r = {.wall = now_s() - t0, .cpu = cpu_s() - c0, .n = n, .failed = u.failed};
    for (int i = 0; i < inflight; i++) {
        if (e[i]) {
            curl_multi_remove_handle(u.m, e[i]);
            curl_easy_cleanup(e[i]);
        }
    }
    free(e);
    /* Polls first, while their fds are open (curl_multi_cleanup closes the connections). */
    curl_multi_setopt(u.m, CURLMOPT_SOCKETFUNCTION, NULL);
    curl_multi_setopt(u.m, CURLMOPT_TIMERFUNCTION, NULL);
    uv_walk(&u.loop, uv_walk_close, NULL);
    uv_run(&u.loop, UV_RUN_DEFAULT);
    curl_multi_cleanup(u.m);
    uv_loop_close(&u.loop);
    return r;
}

/* ---- resilua: each completion starts the next call ---------------------------------- */
typedef struct driver {
    rsl_runtime *rt;
    const char *policy;
    rsl_req *req;
    atomic_int started, done, failed;
    int n;
    uv_sem_t finished;
} driver;

static void on_done(const rsl_result *res, void *ud) {
    driver *d = ud;
    if (rsl_result_outcome(res) != RSL_OUTCOME_OK) {
        atomic_fetch_add(&d->failed, 1);
    }
    if (atomic_fetch_add(&d->started, 1) < d->n) {
        if (rsl_call(d->rt, d->policy, d->req, on_done, d) != 0) {
            atomic_fetch_add(&d->failed, 1);
            atomic_fetch_add(&d->done, 1);
        }
    }
    if (atomic_fetch_add(&d->done, 1) + 1 == d->n) {
        uv_sem_post(&d->finished);
    }
}

static run through_resilua(rsl_runtime *rt, const char *policy, int n) {
    driver d = {.rt = rt, .policy = policy, .n = n};
    d.req = rsl_req_new();
    rsl_req_set(d.req, "id", "1", 1);
    uv_sem_init(&d.finished, 0);
    int first = inflight < n ? inflight : n;
    atomic_store(&d.started, first);
    double t0 = now_s(), c0 = cpu_s();
    for (int i = 0; i < first; i++) {
        rsl_call(rt, policy, d.req, on_done, &d);
    }
    uv_sem_wait(&d.finished);
    run r = {.wall = now_s() - t0, .cpu = cpu_s() - c0, .n = n, .failed = atomic_load(&d.failed)};
    uv_sem_destroy(&d.finished);
    rsl_req_free(d.req);
    return r;
}

/* ---- plain hiredis async on libuv ---------------------------------------------------------- */
typedef struct hdriver {
    redisAsyncContext *ac;
    int started, done, failed, n;
} hdriver;

static void on_reply(redisAsyncContext *ac, void *reply, void *ud) {
    hdriver *d = ud;
    redisReply *rep = reply;
    d->failed += !rep || rep->type != REDIS_REPLY_STRING;
    d->done++;
    if (d->started < d->n) {
        d->started++;
        redisAsyncCommand(ac, on_reply, d, "GET %s", "bench:1");
    } else if (d->done == d->n) {
        redisAsyncDisconnect(ac);
    }
}

static run plain_hiredis(int port, int n) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    hdriver d = {.n = n};
    d.ac = redisAsyncConnect("127.0.0.1", port);
    redisLibuvAttach(d.ac, &loop);
    double t0 = now_s(), c0 = cpu_s();
    for (; d.started < inflight && d.started < n; d.started++) {
        redisAsyncCommand(d.ac, on_reply, &d, "GET %s", "bench:1");
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    run r = {.wall = now_s() - t0, .cpu = cpu_s() - c0, .n = n, .failed = d.failed};
    uv_loop_close(&loop);
    return r;
}

/* ---- main ------------------------------------------------------------------------------------ */
static int write_policy(const char *dir, int http_port) {
    char path[512];
    snprintf(path, sizeof(path), "%s/bench.lua", dir);
    FILE *f = fopen(path, "w");
    if (!f) {
        return -1;
    }
    fprintf(f,
            "local r = require \"resilua\"\n"
            "r.policy \"http\" {\n"
            "  steps = { up = r.http { url = \"http://127.0.0.1:%d/items/${id}\", timeout = \"2s\" } },\n"
            "  chain = { \"up\" },\n"
            "}\n"
            "r.policy \"redis\" {\n"
            "  steps = { get = r.redis { cmd = { \"GET\", \"bench:${id}\" }, timeout = \"2s\" } },\n"
            "  chain = { \"get\" },\n"
            "}\n",
            http_port);
    return fclose(f);
}

int main(int argc, char **argv) {
    int smoke = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--smoke") == 0) {
            smoke = 1;
        } else if (strcmp(argv[i], "--inflight") == 0 && i + 1 < argc) {
            inflight = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--calls") == 0 && i + 1 < argc) {
            ncalls = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) {
            rounds = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--profile") == 0 && i + 1 < argc) {
            profile = argv[++i]; /* one side only, for perf: see Usage */
        }
    }
    if (smoke) {
        ncalls = 2000;
        rounds = 1;
    }
    rounds = rounds < 1 ? 1 : rounds > MAX_ROUNDS ? MAX_ROUNDS : rounds;
    if (inflight < 1) {
        inflight = 1;
    }
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);

    rsl_upstream up;
    if (rsl_up_start("--quiet", &up) != 0) {
        fprintf(stderr, "bench_io: cannot start examples/flaky\n");
        return 1;
    }
    rsl_redis_server rs;
    if (rsl_redis_start(&rs) != 0) {
        fprintf(stderr, "bench_io: cannot start redis-server\n");
        rsl_up_stop(&up);
        return 1;
    }
    char out[256];
    rsl_redis_cmd(&rs, "SET bench:1 hello", out, sizeof(out));

    char dir[] = "/tmp/rsl-bench-io-XXXXXX";
    if (!mkdtemp(dir) || write_policy(dir, up.port) != 0) {
        return 1;
    }
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", rs.port);
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    o.workers = 1;
    o.redis = addr;
    rsl_runtime *rt = NULL;
    char err[1024];
    if (rsl_open(&rt, &o, err, sizeof(err)) != 0) {
        fprintf(stderr, "bench_io: %s\n", err);
        return 1;
    }
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/items/1", up.port);

    snprintf(url, sizeof(url), "http://127.0.0.1:%d/items/1", up.port);
    if (profile) {
        if (strcmp(profile, "redis") == 0) {
            usleep(300 * 1000); /* the connection comes up in the background */
        }
        run p = strcmp(profile, "plain-redis") == 0  ? plain_hiredis(rs.port, ncalls)
                : strcmp(profile, "plain-http") == 0 ? plain_curl(url, ncalls)
                : strcmp(profile, "plain-uv") == 0   ? plain_uv(url, ncalls)
                                                     : through_resilua(rt, profile, ncalls);
        report(profile, &p);
        rsl_close(rt);
        rsl_up_stop(&up);
        rsl_redis_stop(&rs);
        return 0;
    }
    printf("bench_io: %d calls per side per round, %d rounds, %d in flight, 1 worker; "
           "servers on loopback\n",
           ncalls, rounds, inflight);
    /* Warm both sides (connections opened, caches hot), then measure. */
    plain_curl(url, inflight * 4);
    plain_uv(url, inflight * 4);
    through_resilua(rt, "http", inflight * 4);
    run pcs[MAX_ROUNDS], pus[MAX_ROUNDS], rhs[MAX_ROUNDS];
    for (int i = 0; i < rounds; i++) {
        if (i % 2) { /* every other round resilua goes first: no side always follows */
            rhs[i] = through_resilua(rt, "http", ncalls);
        }
        pcs[i] = plain_curl(url, ncalls);
        pus[i] = plain_uv(url, ncalls);
        if (i % 2 == 0) {
            rhs[i] = through_resilua(rt, "http", ncalls);
        }
    }
    run pc = median_run(pcs, rounds), pu = median_run(pus, rounds), rh = median_run(rhs, rounds);
    printf("HTTP (examples/flaky, fast mode), medians of the rounds\n");
    report("plain libcurl multi loop", &pc);
    report("plain libcurl multi_socket (libuv)", &pu);
    report("resilua r.http", &rh);
    print_ratio("resilua / plain", rhs, pcs, rounds);
    print_ratio("resilua / plain libuv", rhs, pus, rounds);

    /* Redis: the runtime's connection comes up in the background; give it a moment. */
    rsl_req *one = rsl_req_new();
    rsl_req_set(one, "id", "1", 1);
    for (int i = 0; i < 200; i++) {
        rsl_result *res = NULL;
        if (rsl_call_sync(rt, "redis", one, 1000000000, &res) == 0 &&
            rsl_result_outcome(res) == RSL_OUTCOME_OK) {
            rsl_result_free(res);
            break;
        }
        rsl_result_free(res);
        usleep(10000);
    }
    rsl_req_free(one);
    plain_hiredis(rs.port, inflight * 4);
    through_resilua(rt, "redis", inflight * 4);
    run phs[MAX_ROUNDS], rrs[MAX_ROUNDS];
    for (int i = 0; i < rounds; i++) {
        if (i % 2) {
            rrs[i] = through_resilua(rt, "redis", ncalls);
        }
        phs[i] = plain_hiredis(rs.port, ncalls);
        if (i % 2 == 0) {
            rrs[i] = through_resilua(rt, "redis", ncalls);
        }
    }
    run ph = median_run(phs, rounds), rr = median_run(rrs, rounds);
    printf("Redis (GET of one key), medians of the rounds\n");
    report("plain hiredis async (libuv)", &ph);
    report("resilua r.redis", &rr);
    print_ratio("resilua / plain", rrs, phs, rounds);

    int bad = pc.failed + pu.failed + rh.failed + ph.failed + rr.failed;
    rsl_close(rt);
    rsl_up_stop(&up);
    rsl_redis_stop(&rs);
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "bench_io: could not remove %s\n", dir);
    }
    curl_global_cleanup();
    if (bad) {
        fprintf(stderr, "bench_io: %d calls did not answer ok\n", bad);
        return 1;
    }
    return 0;
}
