/*
 * What a host (the sidecar, or any embedder) needs to work on the runtime's own workers:
 * rsl_workers, rsl_on_worker (a function run once on worker i's thread and loop), calls
 * made on a worker thread starting there at once (the callback may run before rsl_call
 * returns), cancel of such a call, rsl_call_sync still refused there, rsl_expose_match over
 * r.expose routes, and rsl_serve_start/stop (the sidecar on every worker; test_serve.sh
 * drives the rest of it over HTTP).
 */
// ctest-labels: tsan
#include "resilua.h"
#include "test.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

static const char *policy = "local r = require 'resilua'\n"
                            "r.policy 'p' { steps = { a = r.lua(function(req) return { body = 'hi "
                            "' .. tostring(req.n) } end) } }\n"
                            "r.policy 'slow' { steps = { a = r.stub { body = 'late', fault = { "
                            "delay = '5s', delay_percent = 100 } } } }\n"
                            "r.policy 'user' { steps = { a = r.lua(function(req) return { body = "
                            "'user ' .. req.id } end) } }\n"
                            "r.policy 'me' { steps = { a = r.stub { body = 'me' } } }\n"
                            "r.policy 'pair' { steps = { a = r.lua(function(req) return { body = "
                            "req.a .. '+' .. req.b } end) } }\n"
                            "r.policy 'create' { steps = { a = r.stub { status = 201 } } }\n"
                            "r.expose {\n"
                            "  ['GET /users/:id'] = 'user',\n"
                            "  ['GET /users/me'] = 'me',\n"
                            "  ['POST /users/:id'] = 'create',\n"
                            "  ['* /pair/:a/:b'] = 'pair',\n"
                            "}\n";

static rsl_runtime *open_rt(int workers) {
    const char *dir = rsl_test_tmpdir();
    rsl_test_write(dir, "p.lua", policy);
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    o.workers = workers;
    rsl_runtime *rt = NULL;
    char err[2048];
    int rc = rsl_open(&rt, &o, err, sizeof(err));
    if (rc != 0) {
        rsl_test_fail(__FILE__, __LINE__, "rsl_open: %s", err);
    }
    return rt;
}

/* ---- rsl_on_worker --------------------------------------------------------------------- */

typedef struct job {
    rsl_runtime *rt;
    uv_loop_t *loop;
    pthread_t thread;
    _Atomic int ran;
    int timer_fired;
    int closed;
    uv_timer_t timer;
    /* calls made on the worker */
    int cb_runs;
    int cb_before_return; /* the callback ran before rsl_call returned */
    int in_call;
    int same_thread;
    char body[64];
    int sync_rc;
    uint64_t id;
    int canceled;
    int done_at_end; /* the rsl_on_worker function says done, not the callback */
} job;

static void on_timer_closed(uv_handle_t *h) {
    job *j = h->data;
    j->closed = 1;
    atomic_store(&j->ran, 2);
}

static void on_timer(uv_timer_t *t) {
    job *j = t->data;
    j->timer_fired++;
    uv_close((uv_handle_t *)t, on_timer_closed);
}

static void put_timer(void *ud, uv_loop_t *loop) {
    job *j = ud;
    j->loop = loop;
    j->thread = pthread_self();
    uv_timer_init(loop, &j->timer);
    j->timer.data = j;
    uv_timer_start(&j->timer, on_timer, 1, 0);
    atomic_store(&j->ran, 1);
}

static void wait_for(_Atomic int *v, int want) {
    for (int i = 0; i < 5000 && atomic_load(v) != want; i++) {
        usleep(1000);
    }
    ASSERT_EQ(atomic_load(v), want);
}

TEST(on_worker_runs_on_that_workers_loop) {
    rsl_runtime *rt = open_rt(2);
    ASSERT_EQ(rsl_workers(rt), 2);
    job j[2] = {0};
    for (int i = 0; i < 2; i++) {
        ASSERT_EQ(rsl_on_worker(rt, i, put_timer, &j[i]), 0);
    }
    for (int i = 0; i < 2; i++) {
        wait_for(&j[i].ran, 2); /* the timer fired and closed on that loop */
        ASSERT_EQ(j[i].timer_fired, 1);
        ASSERT(j[i].loop != NULL);
        ASSERT(!pthread_equal(j[i].thread, pthread_self()));
    }
    ASSERT(j[0].loop != j[1].loop);
    ASSERT(!pthread_equal(j[0].thread, j[1].thread));
    ASSERT_EQ(rsl_on_worker(rt, 2, put_timer, &j[0]), RSL_EINVAL);
    ASSERT_EQ(rsl_on_worker(rt, -1, put_timer, &j[0]), RSL_EINVAL);
    ASSERT_EQ(rsl_on_worker(rt, 0, NULL, &j[0]), RSL_EINVAL);
    rsl_close(rt);
}

/* ---- calls made on a worker thread ------------------------------------------------------ */

static void local_cb(const rsl_result *r, void *ud) {
    job *j = ud;
    j->cb_runs++;
    j->cb_before_return = j->in_call;
    j->same_thread = pthread_equal(pthread_self(), j->thread);
    size_t len;
    const char *b = rsl_result_body(r, &len);
    snprintf(j->body, sizeof(j->body), "%.*s", (int)len, b ? b : "");
    if (rsl_result_outcome(r) == RSL_OUTCOME_CANCELED) {
        j->canceled = 1;
    }
    if (!j->done_at_end) {
        atomic_store(&j->ran, 2);
    }
}

static void call_here(void *ud, uv_loop_t *loop) {
    job *j = ud;
    j->thread = pthread_self();
    j->done_at_end = 1;
    rsl_req *req = rsl_req_new();
    rsl_req_set(req, "n", "7", 1);
    j->in_call = 1;
    int rc = rsl_call(j->rt, "p", req, local_cb, j);
    j->in_call = 0;
    rsl_result *res = NULL;
    j->sync_rc = rsl_call_sync(j->rt, "p", req, 0, &res);
    rsl_req_free(req);
    atomic_store(&j->ran, rc == 0 ? 2 : -1);
}

TEST(call_on_a_worker_starts_there_at_once) {
    rsl_runtime *rt = open_rt(2);
    for (int i = 0; i < 2; i++) {
        job j = {.rt = rt};
        ASSERT_EQ(rsl_on_worker(rt, i, call_here, &j), 0);
        wait_for(&j.ran, 2);
        ASSERT_EQ(j.cb_runs, 1);
        ASSERT_EQ(j.cb_before_return, 1); /* a Lua step answers without waiting */
        ASSERT_EQ(j.same_thread, 1);
        ASSERT_STR_EQ(j.body, "hi 7");
        ASSERT_EQ(j.sync_rc, RSL_EINVAL); /* it would wait for itself */
    }
    rsl_close(rt);
}

static void slow_here(void *ud, uv_loop_t *loop) {
    job *j = ud;
    j->thread = pthread_self();
    rsl_req *req = rsl_req_new();
    j->in_call = 1;
    int rc = rsl_call_id(j->rt, "slow", req, local_cb, j, &j->id);
    j->in_call = 0;
    rsl_req_free(req);
    /* Waiting on its 5 s injected delay: canceled from here, it completes at once. */
    if (rc != 0 || j->cb_runs != 0 || rsl_cancel(j->rt, j->id) != 0) {
        atomic_store(&j->ran, -1);
    }
}

TEST(call_on_a_worker_can_be_canceled) {
    rsl_runtime *rt = open_rt(1);
    job j = {.rt = rt};
    ASSERT_EQ(rsl_on_worker(rt, 0, slow_here, &j), 0);
    wait_for(&j.ran, 2);
    ASSERT_EQ(j.cb_runs, 1);
    ASSERT_EQ(j.cb_before_return, 0);
    ASSERT_EQ(j.canceled, 1);
    ASSERT(j.id != 0);
    rsl_close(rt);
}

static void slow_parked(void *ud, uv_loop_t *loop) {
    job *j = ud;
    j->thread = pthread_self();
    rsl_req *req = rsl_req_new();
    if (rsl_call(j->rt, "slow", req, local_cb, j) != 0) {
        atomic_store(&j->ran, -1);
    }
    rsl_req_free(req);
    atomic_store(&j->ran, 1);
}

TEST(close_cancels_a_call_made_on_a_worker) {
    rsl_runtime *rt = open_rt(1);
    job j = {.rt = rt};
    ASSERT_EQ(rsl_on_worker(rt, 0, slow_parked, &j), 0);
    wait_for(&j.ran, 1);
    rsl_close(rt);
    ASSERT_EQ(j.cb_runs, 1);
    ASSERT_EQ(j.canceled, 1);
}

/* ---- rsl_expose_match -------------------------------------------------------------------- */

static int match(rsl_runtime *rt, const char *method, const char *path, rsl_req *req, char *pol) {
    return rsl_expose_match(rt, method, path, strlen(path), req, pol, 64);
}

TEST(expose_match_routes_and_parameters) {
    rsl_runtime *rt = open_rt(1);
    rsl_req *req = rsl_req_new();
    char pol[64];

    ASSERT_EQ(match(rt, "GET", "/users/42", req, pol), 0);
    ASSERT_STR_EQ(pol, "user");
    ASSERT_STR_EQ(rsl_req_get(req, "id", NULL), "42");

    /* a literal segment beats a parameter */
    rsl_req_clear(req);
    ASSERT_EQ(match(rt, "GET", "/users/me", req, pol), 0);
    ASSERT_STR_EQ(pol, "me");
    ASSERT(rsl_req_get(req, "id", NULL) == NULL);

    /* the method picks the route; HEAD takes GET routes */
    ASSERT_EQ(match(rt, "POST", "/users/9", req, pol), 0);
    ASSERT_STR_EQ(pol, "create");
    ASSERT_EQ(match(rt, "HEAD", "/users/9", req, pol), 0);
    ASSERT_STR_EQ(pol, "user");
    ASSERT_EQ(match(rt, "DELETE", "/users/9", req, pol), RSL_ENOENT);

    /* "*" takes any method; parameters are percent-decoded */
    rsl_req_clear(req);
    ASSERT_EQ(match(rt, "PUT", "/pair/a%20b/%2Fc", req, pol), 0);
    ASSERT_STR_EQ(pol, "pair");
    ASSERT_STR_EQ(rsl_req_get(req, "a", NULL), "a b");
    ASSERT_STR_EQ(rsl_req_get(req, "b", NULL), "/c");

    /* segment counts must agree; an empty segment is no parameter */
    ASSERT_EQ(match(rt, "GET", "/users", req, pol), RSL_ENOENT);
    ASSERT_EQ(match(rt, "GET", "/users/", req, pol), RSL_ENOENT);
    ASSERT_EQ(match(rt, "GET", "/users/1/x", req, pol), RSL_ENOENT);
    ASSERT_EQ(match(rt, "GET", "/nothing", req, pol), RSL_ENOENT);
    ASSERT_EQ(match(rt, "GET", "", req, pol), RSL_ENOENT);
    ASSERT_EQ(match(rt, "GET", "users/1", req, pol), RSL_ENOENT);

    /* the name must fit */
    char small[4];
    ASSERT_EQ(rsl_expose_match(rt, "GET", "/users/1", 8, req, small, sizeof(small)), RSL_EINVAL);
    ASSERT_EQ(rsl_expose_match(rt, "GET", "/users/1", 8, req, NULL, 8), RSL_EINVAL);

    /* and the call it names answers with the parameters */
    rsl_req_clear(req);
    ASSERT_EQ(match(rt, "GET", "/users/42", req, pol), 0);
    rsl_result *res = NULL;
    ASSERT_EQ(rsl_call_sync(rt, pol, req, 0, &res), 0);
    size_t len;
    const char *b = rsl_result_body(res, &len);
    ASSERT_EQ(len, 7);
    ASSERT(memcmp(b, "user 42", 7) == 0);
    rsl_result_free(res);
    rsl_req_free(req);
    rsl_close(rt);
}

/* ---- rsl_serve_start / rsl_serve_stop ----------------------------------------------------- */

/* One HTTP/1.0 exchange on loopback: the answer's first line. */
static void http_get(int port, const char *path, char *line, size_t cap) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    ASSERT_EQ(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    char req[256];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\n\r\n", path);
    ASSERT_EQ(write(fd, req, (size_t)n), n);
    char buf[4096];
    size_t got = 0;
    ssize_t r;
    while (got < sizeof(buf) - 1 && (r = read(fd, buf + got, sizeof(buf) - 1 - got)) > 0) {
        got += (size_t)r;
    }
    buf[got] = 0;
    close(fd);
    char *eol = strstr(buf, "\r\n");
    snprintf(line, cap, "%.*s", eol ? (int)(eol - buf) : (int)got, buf);
}

TEST(serve_starts_on_every_worker_and_stops) {
    rsl_runtime *rt = open_rt(2);
    rsl_serve_options so;
    rsl_serve_options_init(&so);
    so.listen = "127.0.0.1:0";
    rsl_serve *s = NULL;
    char err[512];
    ASSERT_EQ(rsl_serve_start(rt, &so, &s, err, sizeof(err)), 0);
    int port = rsl_serve_port(s);
    ASSERT(port > 0);
    char line[256];
    for (int i = 0; i < 8; i++) { /* connections spread over both workers' sockets */
        http_get(port, "/users/42", line, sizeof(line));
        ASSERT_STR_EQ(line, "HTTP/1.1 200 OK");
    }
    http_get(port, "/healthz", line, sizeof(line));
    ASSERT_STR_EQ(line, "HTTP/1.1 200 OK");

    /* The port is taken by a socket without SO_REUSEPORT: a second server cannot bind. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    ASSERT_EQ(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    ASSERT_EQ(listen(fd, 1), 0);
    socklen_t al = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &al);
    char spec[64];
    snprintf(spec, sizeof(spec), "127.0.0.1:%d", ntohs(a.sin_port));
    so.listen = spec;
    rsl_serve *s2 = NULL;
    ASSERT_EQ(rsl_serve_start(rt, &so, &s2, err, sizeof(err)), RSL_ESYS);
    ASSERT_CONTAINS(err, "cannot listen on 127.0.0.1:");
    ASSERT(s2 == NULL);
    close(fd);

    so.listen = "localhost:80";
    ASSERT_EQ(rsl_serve_start(rt, &so, &s2, err, sizeof(err)), RSL_EINVAL);
    ASSERT_CONTAINS(err, "IPv4 address or [IPv6]");
    so.listen = "127.0.0.1:99999";
    ASSERT_EQ(rsl_serve_start(rt, &so, &s2, err, sizeof(err)), RSL_EINVAL);

    rsl_serve_stop(s);
    rsl_serve_stop(NULL);
    rsl_close(rt); /* returns: nothing of the server is left on the workers' loops */
}

/* ---- attached to a host's loop -------------------------------------------------------------- */

static void on_host_loop(void *ud, uv_loop_t *loop) {
    job *j = ud;
    j->loop = loop;
    j->thread = pthread_self();
    rsl_req *req = rsl_req_new();
    rsl_req_set(req, "n", "a", 1);
    j->in_call = 1;
    j->done_at_end = 1;
    if (rsl_call(j->rt, "p", req, local_cb, j) != 0) {
        atomic_store(&j->ran, -1);
    }
    j->in_call = 0;
    rsl_req_free(req);
    atomic_store(&j->ran, 2);
}

TEST(on_worker_attached_runs_on_the_hosts_loop) {
    const char *dir = rsl_test_tmpdir();
    rsl_test_write(dir, "p.lua", policy);
    uv_loop_t loop;
    ASSERT_EQ(uv_loop_init(&loop), 0);
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    o.loop = &loop;
    rsl_runtime *rt = NULL;
    char err[1024];
    ASSERT_EQ(rsl_open(&rt, &o, err, sizeof(err)), 0);
    ASSERT_EQ(rsl_workers(rt), 1);
    job j = {.rt = rt};
    ASSERT_EQ(rsl_on_worker(rt, 0, on_host_loop, &j), 0);
    ASSERT_EQ(atomic_load(&j.ran), 0); /* through the queue: never before it returns */
    while (atomic_load(&j.ran) == 0) {
        uv_run(&loop, UV_RUN_ONCE);
    }
    ASSERT_EQ(atomic_load(&j.ran), 2);
    ASSERT(j.loop == &loop);
    ASSERT(pthread_equal(j.thread, pthread_self()));
    ASSERT_EQ(j.cb_runs, 1);
    ASSERT_EQ(j.cb_before_return, 1);
    ASSERT_STR_EQ(j.body, "hi a");
    ASSERT_EQ(rsl_on_worker(rt, 1, on_host_loop, &j), RSL_EINVAL);
    rsl_close(rt);
    ASSERT_EQ(rsl_on_worker(rt, 0, on_host_loop, &j), RSL_ECLOSED); /* freed only by the loop */
    ASSERT_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
    ASSERT_EQ(uv_loop_close(&loop), 0);
}
