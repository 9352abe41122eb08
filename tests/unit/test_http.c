/*
 * The HTTP client (src/http.c) against the real examples/flaky on an ephemeral port: no
 * mocks.  Every test runs its own uv loop, counts callbacks, closes the client and checks
 * that the loop then closes cleanly (every handle went through its close callback).
 */
#include "http.h"
#include "test.h"
#include "upstream.h"

#include <uv.h>

#define MS (1000000LL)

static double now_ms(void) {
    return (double)uv_hrtime() / 1e6;
}

static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ASSERT(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
    socklen_t len = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &len);
    close(fd);
    return ntohs(a.sin_port);
}

/* One answer, copied out of the callback. */
typedef struct got {
    int calls;
    rsl_outcome outcome;
    int status;
    char *body;
    size_t body_len;
    char *error;
    char ctype[64];
    int nheaders;
    double at_ms; /* when the callback ran */
} got;

static void got_free(got *g) {
    free(g->body);
    free(g->error);
    memset(g, 0, sizeof(*g));
}

static void on_got(void *ud, rsl__http_res *res) {
    got *g = ud;
    g->calls++;
    g->at_ms = now_ms();
    g->outcome = res->outcome;
    g->status = res->status;
    ASSERT(res->body.p != NULL);
    /* Steal the body and the headers, as a caller may. */
    g->body = res->body.p;
    g->body_len = res->body.len;
    memset(&res->body, 0, sizeof(res->body));
    g->error = res->error ? strdup(res->error) : NULL;
    g->nheaders = res->nheaders;
    for (int i = 0; i < res->nheaders; i++) {
        if (strcasecmp(res->headers[i].name, "content-type") == 0) {
            snprintf(g->ctype, sizeof(g->ctype), "%s", res->headers[i].value);
        }
    }
    free(res->headers); /* packed: one allocation */
    res->headers = NULL;
    res->nheaders = 0;
}

typedef struct env {
    uv_loop_t loop;
    rsl__http *h;
    rsl_upstream up;
} env;

static void env_open(env *e, const char *args, size_t max_body) {
    memset(e, 0, sizeof(*e));
    ASSERT(uv_loop_init(&e->loop) == 0);
    e->h = rsl__http_new(&e->loop, max_body);
    ASSERT(e->h != NULL);
    if (args) {
        ASSERT(rsl_up_start(args, &e->up) == 0);
    }
}

/* Closes the client, runs the loop to its end, and checks it closes cleanly. */
static void env_close(env *e) {
    rsl__http_close(e->h);
    ASSERT_EQ(uv_run(&e->loop, UV_RUN_DEFAULT), 0);
    ASSERT_EQ(uv_loop_close(&e->loop), 0);
    rsl_up_stop(&e->up);
}

static void url_of(const env *e, char *out, size_t n, const char *path) {
    snprintf(out, n, "%s%s", e->up.base, path);
}

/* Starts one request and runs the loop until its callback ran. */
static void fetch(env *e, const rsl__http_req *r, got *g) {
    memset(g, 0, sizeof(*g));
    ASSERT_EQ(rsl__http_start(e->h, r, on_got, g, NULL), 0);
    ASSERT_EQ(g->calls, 0); /* never from inside start */
    ASSERT_EQ(rsl__http_inflight(e->h), 1);
    double t0 = now_ms();
    while (g->calls == 0 && now_ms() - t0 < 30000) {
        uv_run(&e->loop, UV_RUN_ONCE);
    }
    ASSERT_EQ(g->calls, 1);
    ASSERT_EQ(rsl__http_inflight(e->h), 0);
}

static void get(env *e, const char *path, int64_t timeout_ns, got *g) {
    char url[256];
    url_of(e, url, sizeof(url), path);
    rsl__http_req r = {.method = "GET", .url = url, .timeout_ns = timeout_ns};
    fetch(e, &r, g);
}

/* A number after "key": in the upstream's JSON. */
static long json_num(const char *json, const char *key) {
    char k[64];
    snprintf(k, sizeof(k), "\"%s\":", key);
    const char *p = strstr(json, k);
    return p ? atol(p + strlen(k)) : -1;
}

static int cmp_ms(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The median of n values (sorts them): timing bounds on a shared machine hold for the
 * median of several runs, while each run only has to be within a generous limit. */
static double median_ms(double *v, int n) {
    qsort(v, (size_t)n, sizeof(*v), cmp_ms);
    return v[n / 2];
}

TEST(ok_with_body_and_headers) {
    env e;
    env_open(&e, "", 0);
    got g;
    get(&e, "/items/7?x=1", 5000 * MS, &g);
    ASSERT_EQ(g.outcome, RSL_OUTCOME_OK);
    ASSERT_EQ(g.status, 200);
    ASSERT_STR_EQ(g.body, "{\"path\":\"/items/7\",\"n\":1}");
    ASSERT_EQ(g.body_len, strlen(g.body));
    ASSERT_STR_EQ(g.ctype, "application/json");
    ASSERT(g.nheaders >= 2); /* Content-Type, Content-Length */
    ASSERT(g.error == NULL);
    got_free(&g);
    /* An empty body is still a NUL-terminated buffer. */
    get(&e, "/empty?bytes=0", 5000 * MS, &g);
    ASSERT_EQ(g.outcome, RSL_OUTCOME_OK);
    ASSERT_STR_EQ(g.body, "");
    got_free(&g);
    /* A chunked body (no Content-Length) arrives whole. */
    get(&e, "/ch?chunked=1&bytes=5000", 5000 * MS, &g);
    ASSERT_EQ(g.outcome, RSL_OUTCOME_OK);
    ASSERT_EQ(g.body_len, 5000);
    got_free(&g);
    env_close(&e);
}

TEST(status_decides_5xx_and_4xx) {
    env e;
    env_open(&e, "", 0);
    got g;
    get(&e, "/a?status=503", 0, &g);
    ASSERT_EQ(g.outcome, RSL_OUTCOME_5XX);
    ASSERT_EQ(g.status, 503);
    ASSERT_STR_EQ(g.error, "status 503");
    ASSERT_CONTAINS(g.body, "\"path\":\"/a\"");
    got_free(&g);
    get(&e, "/a?status=404", 0, &g);
    ASSERT_EQ(g.outcome, RSL_OUTCOME_4XX);
    ASSERT_EQ(g.status, 404);
    ASSERT_STR_EQ(g.error, "status 404");
    got_free(&g);
    get(&e, "/a?status=302", 0, &g); /* not followed: the answer is the redirect */
    ASSERT_EQ(g.outcome, RSL_OUTCOME_OK);
    ASSERT_EQ(g.status, 302);
    got_free(&g);
    env_close(&e);
}

TEST(methods_bodies_and_headers_reach_the_upstream) {
    env e;
    env_open(&e, "", 0);
    char url[256], last[8192];
    url_of(&e, url, sizeof(url), "/post?q=1");
    static const char body[] = "hello upstream";
    rsl__header hd[] = {{"X-Tier", "vip gold"}, {"X-Empty", ""}, {"Content-Type", "text/x"}};
    rsl__http_req r = {.method = "POST",
                       .url = url,
                       .headers = hd,
                       .nheaders = 3,
                       .body = body,
                       .body_len = sizeof(body) - 1,
                       .timeout_ns = 5000 * MS};
    got g;
    fetch(&e, &r, &g);
    ASSERT_EQ(g.outcome, RSL_OUTCOME_OK);
    got_free(&g);
    ASSERT_EQ(rsl_up_get(&e.up, "GET", "/_last", last, sizeof(last)), 200);
    ASSERT_CONTAINS(last, "\"method\":\"POST\"");
    ASSERT_CONTAINS(last, "\"url\":\"/post?q=1\"");
    ASSERT_CONTAINS(last, "\"body\":\"hello upstream\"");
    ASSERT_CONTAINS(last, "\"x-tier\":\"vip gold\"");
    ASSERT_CONTAINS(last, "\"x-empty\":\"\"");
    ASSERT_CONTAINS(last, "\"content-type\":\"text/x\"");
    ASSERT(strstr(last, "\"expect\"") == NULL);

    /* PUT with a body larger than curl's Expect: 100-continue threshold: no Expect header
     * (so no wait for a 100 Continue, which curl gives up on after 1 s), and no invented
     * form Content-Type. */
    static char big[2 << 20];
    memset(big, 'b', sizeof(big));
    r = (rsl__http_req){
        .method = "PUT", .url = url, .body = big, .body_len = sizeof(big), .timeout_ns = 5000 * MS};
    double t0 = now_ms();
    fetch(&e, &r, &g);
    ASSERT_EQ(g.outcome, RSL_OUTCOME_OK);
    ASSERT(now_ms() - t0 < 900); /* generous, yet below curl's 1 s Expect wait */
    got_free(&g);
    ASSERT_EQ(rsl_up_get(&e.up, "GET", "/_last", last, sizeof(last)), 200);
    ASSERT_CONTAINS(last, "\"method\":\"PUT\"");
    ASSERT_CONTAINS(last, "\"content-length\":\"2097152\"");
    ASSERT(strstr(last, "\"content-type\"") == NULL);
    ASSERT(strstr(last, "\"expect\"") == NULL);

    /* DELETE without a body; GET with one; HEAD has no answer body. */
    r = (rsl__http_req){.method = "DELETE", .url = url};
    fetch(&e, &r, &g);
    ASSERT_EQ(g.outcome, RSL_OUTCOME_OK);
    got_free(&g);
    ASSERT_EQ(rsl_up_get(&e.up, "GET", "/_last", last, sizeof(last)), 200);
    ASSERT_CONTAINS(last, "\"method\":\"DELETE\"");
    ASSERT_CONTAINS(last, "\"body\":\"\"");
    r = (rsl__http_req){.method = "GET", .url = url, .body = "q", .body_len = 1};
    fetch(&e, &r, &g);
    got_free(&g);
    ASSERT_EQ(rsl_up_get(&e.up, "GET", "/_last", last, sizeof(last)), 200);
    ASSERT_CONTAINS(last, "\"method\":\"GET\"");
    ASSERT_CONTAINS(last, "\"body\":\"q\"");
    r = (rsl__http_req){.method = "HEAD", .url = url, .timeout_ns = 5000 * MS};
    fetch(&e, &r, &g);
    ASSERT_EQ(g.outcome, RSL_OUTCOME_OK);
    ASSERT_EQ(g.status, 200);
    ASSERT_STR_EQ(g.body, "");
    got_free(&g);
    env_close(&e);
}

/* A 100 ms timeout against an upstream that would answer after 2 s: never early, always
 * cut far before the answer, and on time (within 20 ms) on the median of five. */
TEST(timeout_answers_on_time) {
    env e;
    env_open(&e, "", 0);
    double tooks[5];
    for (int i = 0; i < 5; i++) {
        got g;
        double t0 = now_ms();
        get(&e, "/slow?delay=2000", 100 * MS, &g);
        double took = g.at_ms - t0;
        ASSERT_EQ(g.outcome, RSL_OUTCOME_TIMEOUT);
        ASSERT_EQ(g.status, 0);
        ASSERT(g.error && *g.error);
        if (took < 99.0 || took >= 1000.0) {
            rsl_test_fail(__FILE__, __LINE__, "timeout after %.1f ms", took);
        }
        tooks[i] = took;
        got_free(&g);
    }
    double med = median_ms(tooks, 5);
    if (med > 120.0) {
        rsl_test_fail(__FILE__, __LINE__, "median timeout after %.1f ms", med);
    }
    /* The upstream is still fine for the next call (and its delayed answers went to
     * connections curl closed). */
    got g;
    get(&e, "/after", 5000 * MS, &g);
    ASSERT_EQ(g.outcome, RSL_OUTCOME_OK);
    got_free(&g);
    env_close(&e);
}

TEST(refused_is_connect_under_100ms) {
    env e;
    env_open(&e, NULL, 0);
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/x", free_port());
    double tooks[5];
    for (int i = 0; i < 5; i++) {
        rsl__http_req r = {.method = "GET", .url = url, .timeout_ns = 2000 * MS};
        got g;
        double t0 = now_ms();
        fetch(&e, &r, &g);
        tooks[i] = g.at_ms - t0;
        ASSERT(tooks[i] < 1000.0); /* far from the 2 s timeout: refused, not timed out */
        ASSERT_EQ(g.outcome, RSL_OUTCOME_CONNECT);
        ASSERT_EQ(g.status, 0);
        ASSERT(g.error && *g.error);
        got_free(&g);
    }
    ASSERT(median_ms(tooks, 5) < 100.0);
    env_close(&e);
}

/* A server that answers its first n connections with raw bytes, one answer each (for
 * answers examples/flaky would never give).  A forked child on a loopback port. */
typedef struct raw_answer {
    const char *p;
    size_t len;
} raw_answer;

/* A listening socket on an ephemeral loopback port; *sa gets its address. */
static int loopback_listener(int backlog, struct sockaddr_in *sa) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    *sa = (struct sockaddr_in){.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ASSERT(bind(l, (struct sockaddr *)sa, sizeof(*sa)) == 0);
    ASSERT(listen(l, backlog) == 0);
    socklen_t len = sizeof(*sa);
    getsockname(l, (struct sockaddr *)sa, &len);
    return l;
}

static int raw_server(const raw_answer *a, int n, pid_t *pid) {
    struct sockaddr_in sa;
    int l = loopback_listener(16, &sa);
    *pid = fork();
    ASSERT(*pid >= 0);
    if (*pid == 0) {
        alarm(10); /* never outlives the test */
        for (int i = 0; i < n; i++) {
            int c = accept(l, NULL, NULL);
            char buf[4096];
            if (c < 0 || read(c, buf, sizeof(buf)) <= 0 || write(c, a[i].p, a[i].len) < 0) {
                _exit(1);
            }
            shutdown(c, SHUT_WR);
            while (read(c, buf, sizeof(buf)) > 0) {
            }
            close(c);
        }
        _exit(0);
    }
    close(l);
    return ntohs(sa.sin_port);
}

#define RAW(s) {s, sizeof(s) - 1}

/* Malformed answers are the outcome `error` with curl's reason, and the client serves on. */
TEST(malformed_answers_are_errors_and_the_client_serves_on) {
    static const raw_answer answers[] = {
        RAW("hello, this is not HTTP\r\n\r\n"),
        RAW("HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 2\r\n\r\nok"),
        RAW("HTTP/1.1 abc Nope\r\nContent-Length: 2\r\n\r\nok"),
        RAW("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"),
    };
    int n = (int)(sizeof(answers) / sizeof(answers[0]));
    pid_t pid;
    int port = raw_server(answers, n, &pid);
    env e;
    env_open(&e, "", 0);
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/x", port);
    for (int i = 0; i < n; i++) {
        rsl__http_req r = {.method = "GET", .url = url, .timeout_ns = 5000 * MS};
        got g;
        fetch(&e, &r, &g);
        /* The first three are answers curl refuses; the last one is cut short. */
        ASSERT_EQ(g.outcome, i < 3 ? RSL_OUTCOME_ERROR : RSL_OUTCOME_CONNECT);
        ASSERT(g.error && *g.error);
        got_free(&g);
    }
    int st = 0;
    ASSERT_EQ(waitpid(pid, &st, 0), pid);
    ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    got g;
    get(&e, "/after", 5000 * MS, &g);
    ASSERT_EQ(g.outcome, RSL_OUTCOME_OK);
    got_free(&g);
    env_close(&e);
}

TEST(closed_without_answer_is_connect) {
    env e;
    env_open(&e, "", 0);
    got g;
    get(&e, "/c?close=1", 5000 * MS, &g);
    ASSERT_EQ(g.outcome, RSL_OUTCOME_CONNECT);
    ASSERT_EQ(g.status, 0);
    got_free(&g);
    /* Also on a reused keep-alive connection (curl retries once on a fresh one). */
    get(&e, "/warm", 5000 * MS, &g);
    ASSERT_EQ(g.outcome, RSL_OUTCOME_OK);
    got_free(&g);
    get(&e, "/c?close=1", 5000 * MS, &g);
    ASSERT_EQ(g.outcome, RSL_OUTCOME_CONNECT);
    got_free(&g);
    env_close(&e);
}

/* The upstream goes down for 2 s (long enough that the first request surely falls in it):
 * the cached keep-alive connection is reset and the new one refused, promptly; then it is
 * back on the same port, not before the down period ended. */
TEST(upstream_down_resets_connections_and_refuses) {
    env e;
    env_open(&e, "", 0);
    got g;
    get(&e, "/warm", 5000 * MS, &g); /* a keep-alive connection in curl's cache */
    ASSERT_EQ(g.outcome, RSL_OUTCOME_OK);
    got_free(&g);
    char out[256];
    double t0 = now_ms(); /* before the down period begins */
    ASSERT_EQ(rsl_up_get(&e.up, "POST", "/_control?down=2000", out, sizeof(out)), 200);
    ASSERT_CONTAINS(out, "\"down\":2000");
    get(&e, "/x", 5000 * MS, &g);
    ASSERT_EQ(g.outcome, RSL_OUTCOME_CONNECT); /* not a timeout: the reset is noticed */
    ASSERT(g.at_ms - t0 < 1500.0);             /* and well within the down period */
    got_free(&g);
    /* Back on the same port after the down period. */
    for (;;) {
        get(&e, "/x", 5000 * MS, &g);
        int ok = g.outcome == RSL_OUTCOME_OK;
        got_free(&g);
        if (ok) {
            break;
        }
        ASSERT(now_ms() - t0 < 30000);
        usleep(20 * 1000);
    }
    ASSERT(now_ms() - t0 >= 1990);
    env_close(&e);
}

TEST(body_over_the_cap_is_an_error_naming_it) {
    env e;
    env_open(&e, "", 1000);
    got g;
    get(&e, "/big?bytes=1000", 5000 * MS, &g);
    ASSERT_EQ(g.outcome, RSL_OUTCOME_OK);
    ASSERT_EQ(g.body_len, 1000);
    got_free(&g);
    /* Content-Length says too much: refused before reading the body. */
    get(&e, "/big?bytes=1001", 5000 * MS, &g);
    ASSERT_EQ(g.outcome, RSL_OUTCOME_ERROR);
    ASSERT_STR_EQ(g.error, "answer body larger than the 1000-byte cap");
    ASSERT_EQ(g.body_len, 0);
    got_free(&g);
    /* No Content-Length: the write callback stops it. */
    get(&e, "/big?bytes=200000&chunked=1", 5000 * MS, &g);
    ASSERT_EQ(g.outcome, RSL_OUTCOME_ERROR);
    ASSERT_STR_EQ(g.error, "answer body larger than the 1000-byte cap");
    ASSERT(g.body_len <= 1000);
    got_free(&g);
    get(&e, "/big?bytes=1000&chunked=1", 5000 * MS, &g);
    ASSERT_EQ(g.outcome, RSL_OUTCOME_OK);
    ASSERT_EQ(g.body_len, 1000);
    got_free(&g);
    env_close(&e);

    /* The default cap is 4 MiB. */
    env_open(&e, "", 0);
    get(&e, "/big?bytes=4194305", 5000 * MS, &g);
    ASSERT_EQ(g.outcome, RSL_OUTCOME_ERROR);
    ASSERT_STR_EQ(g.error, "answer body larger than the 4194304-byte cap");
    got_free(&g);
    env_close(&e);
}

TEST(bad_input) {
    env e;
    env_open(&e, NULL, 0);
    got g;
    memset(&g, 0, sizeof(g));
    rsl__http_xfer *x = (rsl__http_xfer *)&g;
    rsl__http_req r = {.method = "GET", .url = ""};
    ASSERT_EQ(rsl__http_start(e.h, &r, on_got, &g, &x), RSL_EINVAL);
    ASSERT(x == NULL);
    r.url = "http://127.0.0.1:1/";
    r.method = NULL;
    ASSERT_EQ(rsl__http_start(e.h, &r, on_got, &g, NULL), RSL_EINVAL);
    r.method = "GET";
    ASSERT_EQ(rsl__http_start(e.h, &r, NULL, &g, NULL), RSL_EINVAL);
    ASSERT_EQ(rsl__http_start(NULL, &r, on_got, &g, NULL), RSL_EINVAL);
    rsl__header inj[] = {{"X-A", "v\r\nX-Evil: 1"}};
    r.headers = inj;
    r.nheaders = 1;
    ASSERT_EQ(rsl__http_start(e.h, &r, on_got, &g, NULL), RSL_EINVAL);
    ASSERT_EQ(rsl__http_inflight(e.h), 0);
    ASSERT_EQ(g.calls, 0);
    /* What curl cannot parse fails through the callback, asynchronously. */
    static const char *bad[] = {"not a url", "ftp://127.0.0.1/x", "file:///etc/passwd", "http://"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        r = (rsl__http_req){.method = "GET", .url = bad[i], .timeout_ns = 5000 * MS};
        fetch(&e, &r, &g);
        ASSERT_EQ(g.outcome, RSL_OUTCOME_ERROR);
        ASSERT(g.error && *g.error);
        got_free(&g);
    }
    /* NULL is a no-op for cancel and close. */
    rsl__http_cancel(e.h, NULL);
    rsl__http_cancel(NULL, NULL);
    rsl__http_close(NULL);
    env_close(&e);
}

static void on_never(void *ud, rsl__http_res *res) {
    rsl_test_fail(__FILE__, __LINE__, "a canceled transfer's callback ran");
}

typedef struct cancel_ctx {
    env *e;
    rsl__http_xfer *x;
} cancel_ctx;

static void on_cancel_timer(uv_timer_t *t) {
    cancel_ctx *c = t->data;
    rsl__http_cancel(c->e->h, c->x);
    uv_close((uv_handle_t *)t, NULL);
}

TEST(cancel_in_flight_never_calls_back) {
    env e;
    env_open(&e, "", 0);
    char url[256];
    url_of(&e, url, sizeof(url), "/c?delay=20000");
    rsl__http_req r = {.method = "GET", .url = url, .timeout_ns = 30000 * MS};
    cancel_ctx c = {&e, NULL};
    ASSERT_EQ(rsl__http_start(e.h, &r, on_never, NULL, &c.x), 0);
    ASSERT(c.x != NULL);
    uv_timer_t t;
    uv_timer_init(&e.loop, &t);
    t.data = &c;
    uv_timer_start(&t, on_cancel_timer, 50, 0);
    double t0 = now_ms();
    uv_run(&e.loop, UV_RUN_DEFAULT); /* ends once nothing is left: the transfer is gone */
    ASSERT(now_ms() - t0 < 10000);   /* long before the 20 s answer or the 30 s timeout */
    ASSERT_EQ(rsl__http_inflight(e.h), 0);
    /* Canceled before it even connected. */
    ASSERT_EQ(rsl__http_start(e.h, &r, on_never, NULL, &c.x), 0);
    rsl__http_cancel(e.h, c.x);
    ASSERT_EQ(rsl__http_inflight(e.h), 0);
    /* The client and the upstream are still usable. */
    got g;
    get(&e, "/after", 5000 * MS, &g);
    ASSERT_EQ(g.outcome, RSL_OUTCOME_OK);
    got_free(&g);
    env_close(&e);
}

/* A listener whose accept queue is full: the kernel drops further SYNs, so a connect to
 * it stays in progress (loopback only).  Returns the port; fds[] keeps it full. */
static int stuck_listener(int fds[4]) {
    struct sockaddr_in a;
    fds[0] = loopback_listener(0, &a);
    for (int i = 1; i < 4; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        connect(fds[i], (struct sockaddr *)&a, sizeof(a));
    }
    return ntohs(a.sin_port);
}

static void on_tick(uv_timer_t *t) {
    (void)t;
}

static void run_for(env *e, double ms) {
    uv_timer_t t;
    uv_timer_init(&e->loop, &t);
    uv_timer_start(&t, on_tick, 5, 5);
    double t0 = now_ms();
    while (now_ms() - t0 < ms) {
        uv_run(&e->loop, UV_RUN_ONCE);
    }
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&e->loop, UV_RUN_NOWAIT);
}

/* curl 7.88 closes a connect attempt that never connected with a bare close(2) and
 * tells the socket hook only afterwards: the next socket gets the same fd.  Canceled
 * while connecting, then another request at once (the new socket must be watched, not
 * taken for the old one's poll) and after a loop turn. */
TEST(cancel_while_connecting_then_the_fd_is_reused) {
    env e;
    env_open(&e, "", 0);
    int fds[4];
    int port = stuck_listener(fds);
    char stuck[128];
    snprintf(stuck, sizeof(stuck), "http://127.0.0.1:%d/x", port);
    rsl__http_req r = {.method = "GET", .url = stuck, .timeout_ns = 60000 * MS};
    for (int round = 0; round < 6; round++) {
        cancel_ctx c = {&e, NULL};
        ASSERT_EQ(rsl__http_start(e.h, &r, on_never, NULL, &c.x), 0);
        if (round % 3 == 0) {
            /* In the timer phase that opens the socket, right after curl's action: its
             * poll is started but not yet registered with epoll when curl closes it. */
            uv_timer_t t;
            uv_timer_init(&e.loop, &t);
            t.data = &c;
            uv_timer_start(&t, on_cancel_timer, 0, 0);
            uv_run(&e.loop, UV_RUN_ONCE);
            run_for(&e, 5);
        } else {
            run_for(&e, 20); /* connecting: curl watches the socket for writing */
            ASSERT_EQ(rsl__http_inflight(e.h), 1);
            rsl__http_cancel(e.h, c.x);
            if (round % 3 == 2) {
                run_for(&e, 5);
            }
        }
        ASSERT_EQ(rsl__http_inflight(e.h), 0);
        got g;
        get(&e, "/after", 5000 * MS, &g);
        ASSERT_EQ(g.outcome, RSL_OUTCOME_OK);
        got_free(&g);
    }
    for (int i = 0; i < 4; i++) {
        close(fds[i]);
    }
    env_close(&e);
}

/* Two transfers race; whichever answers first cancels the other: exactly one callback,
 * even when both finished in the same turn (curl then holds the other's DONE message). */
typedef struct pair {
    env *e;
    rsl__http_xfer *x[2];
    int calls[2];
} pair;

static void on_pair(pair *p, int i, rsl__http_res *res) {
    p->calls[i]++;
    ASSERT_EQ(res->outcome, RSL_OUTCOME_OK);
    rsl__http_cancel(p->e->h, p->x[1 - i]);
    rsl__http_cancel(p->e->h, p->x[i]); /* its own: a no-op while its callback runs */
}
static void on_pair0(void *ud, rsl__http_res *res) {
    on_pair(ud, 0, res);
}
static void on_pair1(void *ud, rsl__http_res *res) {
    on_pair(ud, 1, res);
}

TEST(cancel_from_inside_another_callback) {
    env e;
    env_open(&e, "", 0);
    char url[256];
    url_of(&e, url, sizeof(url), "/race");
    for (int round = 0; round < 20; round++) {
        pair p = {.e = &e};
        rsl__http_req r = {.method = "GET", .url = url, .timeout_ns = 5000 * MS};
        ASSERT_EQ(rsl__http_start(e.h, &r, on_pair0, &p, &p.x[0]), 0);
        ASSERT_EQ(rsl__http_start(e.h, &r, on_pair1, &p, &p.x[1]), 0);
        uv_run(&e.loop, UV_RUN_DEFAULT);
        ASSERT_EQ(p.calls[0] + p.calls[1], 1);
        ASSERT_EQ(rsl__http_inflight(e.h), 0);
    }
    env_close(&e);
}

/* Each callback starts the next request: re-entrant start. */
typedef struct seq {
    env *e;
    char url[256];
    int left, calls, ok;
} seq;

static void on_seq(void *ud, rsl__http_res *res) {
    seq *s = ud;
    s->calls++;
    s->ok += res->outcome == RSL_OUTCOME_OK;
    if (--s->left > 0) {
        rsl__http_req r = {.method = "GET", .url = s->url, .timeout_ns = 5000 * MS};
        ASSERT_EQ(rsl__http_start(s->e->h, &r, on_seq, s, NULL), 0);
    }
}

TEST(start_from_a_callback_reuses_the_connection) {
    env e;
    env_open(&e, "", 0);
    char out[4096];
    ASSERT_EQ(rsl_up_get(&e.up, "POST", "/_reset", out, sizeof(out)), 200);
    seq s = {.e = &e, .left = 50};
    url_of(&e, s.url, sizeof(s.url), "/seq");
    rsl__http_req r = {.method = "GET", .url = s.url, .timeout_ns = 5000 * MS};
    ASSERT_EQ(rsl__http_start(e.h, &r, on_seq, &s, NULL), 0);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    ASSERT_EQ(s.calls, 50);
    ASSERT_EQ(s.ok, 50);
    ASSERT_EQ(rsl_up_get(&e.up, "GET", "/_stats", out, sizeof(out)), 200);
    ASSERT_EQ(json_num(out, "requests"), 50);
    ASSERT_EQ(json_num(out, "connections"), 2); /* ours, and this /_stats request */
    env_close(&e);
}

/* A host name goes through curl's resolver, whose socketpair curl closes without the
 * close-socket hook: its fd number is soon reused by a connection, which must still be
 * watched (a poll left on the closed fd would hang the next request). */
TEST(host_names_resolve_and_reuse_fds_safely) {
    env e;
    env_open(&e, "", 0);
    char out[4096];
    ASSERT_EQ(rsl_up_get(&e.up, "POST", "/_reset", out, sizeof(out)), 200);
    seq s = {.e = &e, .left = 30};
    snprintf(s.url, sizeof(s.url), "http://localhost:%d/seq", e.up.port);
    rsl__http_req r = {.method = "GET", .url = s.url, .timeout_ns = 5000 * MS};
    ASSERT_EQ(rsl__http_start(e.h, &r, on_seq, &s, NULL), 0);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    ASSERT_EQ(s.calls, 30);
    ASSERT_EQ(s.ok, 30);
    env_close(&e);
}

typedef struct many {
    int calls[200];
    int outcomes[RSL_OUTCOME__COUNT];
    int done;
} many;

typedef struct slot {
    many *m;
    int i;
} slot;

static void on_many(void *ud, rsl__http_res *res) {
    slot *s = ud;
    s->m->calls[s->i]++;
    s->m->outcomes[res->outcome]++;
    s->m->done++;
}

static void run_many(env *e, many *m, slot *slots, const char *path) {
    char url[256];
    url_of(e, url, sizeof(url), path);
    memset(m, 0, sizeof(*m));
    for (int i = 0; i < 200; i++) {
        slots[i] = (slot){m, i};
        rsl__http_req r = {.method = "GET", .url = url, .timeout_ns = 10000 * MS};
        ASSERT_EQ(rsl__http_start(e->h, &r, on_many, &slots[i], NULL), 0);
    }
    ASSERT_EQ(rsl__http_inflight(e->h), 200);
    double t0 = now_ms();
    uv_run(&e->loop, UV_RUN_DEFAULT);
    ASSERT(now_ms() - t0 < 30000);
    ASSERT_EQ(m->done, 200);
    for (int i = 0; i < 200; i++) {
        ASSERT_EQ(m->calls[i], 1);
    }
    ASSERT_EQ(m->outcomes[RSL_OUTCOME_OK], 200);
    ASSERT_EQ(rsl__http_inflight(e->h), 0);
}

TEST(two_hundred_concurrent_complete_once_and_reuse_connections) {
    env e;
    env_open(&e, "--quiet", 0);
    char out[8192];
    ASSERT_EQ(rsl_up_get(&e.up, "POST", "/_reset", out, sizeof(out)), 200);
    static many m;
    static slot slots[200];
    run_many(&e, &m, slots, "/many?delay=20"); /* slow enough that all overlap */
    ASSERT_EQ(rsl_up_get(&e.up, "GET", "/_stats", out, sizeof(out)), 200);
    ASSERT_EQ(json_num(out, "requests"), 200);
    long conns = json_num(out, "connections");
    ASSERT(conns >= 2 && conns <= 201);
    /* A second burst finds those connections in curl's cache (256 kept): none new but
     * the /_stats ones. */
    run_many(&e, &m, slots, "/many?delay=20");
    run_many(&e, &m, slots, "/many");
    ASSERT_EQ(rsl_up_get(&e.up, "GET", "/_stats", out, sizeof(out)), 200);
    ASSERT_EQ(json_num(out, "requests"), 600);
    ASSERT_EQ(json_num(out, "connections"), conns + 1);
    ASSERT_EQ(json_num(out, "/many"), 600);
    env_close(&e);
}

/* Requests the upstream has received so far (its /_stats). */
static long upstream_requests(env *e) {
    char out[8192];
    ASSERT_EQ(rsl_up_get(&e->up, "GET", "/_stats", out, sizeof(out)), 200);
    return json_num(out, "requests");
}

/* A client closed with transfers in flight: no callback, every handle closed, nothing
 * leaked (LeakSanitizer checks the last part under ASan), and the close does not wait for
 * the answers (due 20 s later). */
TEST(close_with_transfers_in_flight) {
    env e;
    env_open(&e, "", 0);
    char url[256];
    url_of(&e, url, sizeof(url), "/slow?delay=20000");
    for (int i = 0; i < 20; i++) {
        rsl__http_req r = {.method = i % 2 ? "POST" : "GET",
                           .url = url,
                           .body = i % 2 ? "b" : NULL,
                           .body_len = 1,
                           .timeout_ns = 30000 * MS};
        ASSERT_EQ(rsl__http_start(e.h, &r, on_never, NULL, NULL), 0);
    }
    /* Until the upstream has all 20 requests: connected and sent, so sockets and polls
     * exist. */
    double w0 = now_ms();
    while (upstream_requests(&e) < 20) {
        ASSERT(now_ms() - w0 < 20000);
        run_for(&e, 10);
    }
    ASSERT_EQ(rsl__http_inflight(e.h), 20);
    double t0 = now_ms();
    rsl__http_close(e.h);
    ASSERT_EQ(uv_run(&e.loop, UV_RUN_DEFAULT), 0); /* the loop ends */
    double took = now_ms() - t0;
    ASSERT(took < 5000); /* generous, and far before the answers */
    ASSERT_EQ(uv_loop_close(&e.loop), 0);
    rsl_up_stop(&e.up);

    /* Closed right after starting (nothing connected yet), and closed while idle. */
    env_open(&e, NULL, 0);
    rsl__http_req r = {.method = "GET", .url = "http://127.0.0.1:1/"};
    ASSERT_EQ(rsl__http_start(e.h, &r, on_never, NULL, NULL), 0);
    env_close(&e);
    env_open(&e, NULL, 0);
    env_close(&e);
}

/* A callback closes the client while other transfers are in flight or finishing. */
typedef struct closer {
    env *e;
    int calls;
} closer;

static void on_close_client(void *ud, rsl__http_res *res) {
    closer *c = ud;
    c->calls++;
    rsl__http_close(c->e->h);
    rsl__http_close(c->e->h); /* twice: a no-op */
}

TEST(close_from_inside_a_callback) {
    env e;
    env_open(&e, "", 0);
    char fast[256], slow[256];
    url_of(&e, fast, sizeof(fast), "/fast");
    url_of(&e, slow, sizeof(slow), "/slow?delay=20000");
    closer c = {&e, 0};
    for (int i = 0; i < 10; i++) {
        rsl__http_req r = {.method = "GET", .url = slow, .timeout_ns = 30000 * MS};
        ASSERT_EQ(rsl__http_start(e.h, &r, on_never, NULL, NULL), 0);
    }
    /* Several fast ones: the first callback closes; the others must not run. */
    for (int i = 0; i < 5; i++) {
        rsl__http_req r = {.method = "GET", .url = fast, .timeout_ns = 5000 * MS};
        ASSERT_EQ(rsl__http_start(e.h, &r, on_close_client, &c, NULL), 0);
    }
    double t0 = now_ms();
    ASSERT_EQ(uv_run(&e.loop, UV_RUN_DEFAULT), 0);
    ASSERT(now_ms() - t0 < 5000); /* generous, and far before the slow answers (20 s) */
    ASSERT_EQ(c.calls, 1);
    ASSERT_EQ(uv_loop_close(&e.loop), 0);
    rsl_up_stop(&e.up);
}

TEST(injected_failures_and_slowness_from_the_command_line) {
    env e;
    /* Slow answers take 150 ms: a fast one counted as slow would need a 149 ms stall. */
    env_open(&e, "--fail 50 --slow 150 --slow-percent 50 --seed 3 --quiet", 0);
    int fails = 0, slow = 0;
    for (int i = 0; i < 40; i++) {
        got g;
        double t0 = now_ms();
        get(&e, "/f", 5000 * MS, &g);
        if (g.outcome == RSL_OUTCOME_5XX) {
            fails++;
            ASSERT_STR_EQ(g.body, "{\"error\":\"injected\"}");
        } else {
            ASSERT_EQ(g.outcome, RSL_OUTCOME_OK);
        }
        slow += g.at_ms - t0 >= 149.0;
        got_free(&g);
    }
    printf("    %d failed, %d slow of 40\n", fails, slow);
    ASSERT(fails >= 8 && fails <= 32);
    ASSERT(slow >= 8 && slow <= 32);
    /* Changed at run time. */
    char out[256];
    ASSERT_EQ(rsl_up_get(&e.up, "POST", "/_control?fail=0&slow=0", out, sizeof(out)), 200);
    for (int i = 0; i < 10; i++) {
        got g;
        get(&e, "/f", 5000 * MS, &g);
        ASSERT_EQ(g.outcome, RSL_OUTCOME_OK);
        got_free(&g);
    }
    env_close(&e);
}

/* Connection churn: answers, timeouts (curl closes those connections), closes without an
 * answer and 5xx mixed, so sockets close and fd numbers are reused while others are in
 * flight.  Every transfer ends once, with the outcome its kind implies, in bounded time. */
typedef struct mixed {
    int kind;
    int calls;
    rsl_outcome outcome;
} mixed;

static void on_mixed(void *ud, rsl__http_res *res) {
    mixed *m = ud;
    m->calls++;
    m->outcome = res->outcome;
}

TEST(mixed_churn_completes_each_once_with_its_outcome) {
    env e;
    env_open(&e, "--quiet", 0);
    enum { N = 600 };
    static mixed ms[N];
    /* The timeouts (500 ms) against answers due after 20 s; every other kind gets 10 s,
     * enough for a loaded machine to see its answer, the close=1 or the 503. */
    static const char *paths[] = {"/m", "/m?delay=20000", "/m?close=1", "/m?status=503",
                                  "/m?delay=5"};
    static const int64_t timeouts[] = {10000 * MS, 500 * MS, 10000 * MS, 10000 * MS, 10000 * MS};
    static const rsl_outcome want[] = {RSL_OUTCOME_OK, RSL_OUTCOME_TIMEOUT, RSL_OUTCOME_CONNECT,
                                       RSL_OUTCOME_5XX, RSL_OUTCOME_OK};
    char url[5][256];
    for (int k = 0; k < 5; k++) {
        url_of(&e, url[k], sizeof(url[k]), paths[k]);
    }
    double t0 = now_ms();
    for (int wave = 0; wave < 3; wave++) {
        for (int i = wave * (N / 3); i < (wave + 1) * (N / 3); i++) {
            ms[i] = (mixed){.kind = i % 5, .outcome = -1};
            rsl__http_req r = {.method = "GET", .url = url[i % 5], .timeout_ns = timeouts[i % 5]};
            ASSERT_EQ(rsl__http_start(e.h, &r, on_mixed, &ms[i], NULL), 0);
        }
        /* Part of the next wave starts while this one is still in flight. */
        for (int turns = 0; turns < 50 && rsl__http_inflight(e.h) > N / 6; turns++) {
            uv_run(&e.loop, UV_RUN_ONCE);
        }
    }
    uv_run(&e.loop, UV_RUN_DEFAULT);
    ASSERT(now_ms() - t0 < 30000);
    for (int i = 0; i < N; i++) {
        ASSERT_EQ(ms[i].calls, 1);
        if (ms[i].outcome != want[ms[i].kind]) {
            rsl_test_fail(__FILE__, __LINE__, "transfer %d (%s): %s", i, paths[ms[i].kind],
                          rsl_outcome_name(ms[i].outcome));
        }
    }
    got g;
    get(&e, "/after", 5000 * MS, &g);
    ASSERT_EQ(g.outcome, RSL_OUTCOME_OK);
    got_free(&g);
    env_close(&e);
}
