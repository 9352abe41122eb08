/*
 * serve -- the sidecar: an HTTP/1.1 server on the runtime's own workers (rsl_serve_*).
 *
 * A client of resilua.h like any embedder (STYLE.md): it reaches the workers only through
 * rsl_on_worker and calls policies with rsl_call_id, which on a worker thread starts the
 * call right there.
 *
 * Listening: one socket per worker, all bound to the same address with SO_REUSEPORT, each
 * on its worker's loop.  The kernel spreads new connections over the sockets, so a
 * connection is accepted, parsed, called and answered on one thread with no hand-off, and
 * a busy worker does not take connections from an idle one's queue by racing it (one
 * shared listening socket polled by every loop wakes them all on each connection and
 * lets whoever wins take it).  Port 0: worker 0 binds first and the others bind to the
 * port it got.
 *
 * A connection (one worker, its loop thread only): bytes are read into a buffer and fed
 * to http_parser, which pauses at the end of each request.  The request is answered
 * (a call, or an endpoint of the server) and only once the answer is written is the next
 * one parsed: answers go out in request order, and a pipelining client cannot make the
 * server parse or call ahead.  While an answer is pending, reading goes on into the
 * buffer up to READ_AHEAD bytes and then stops (backpressure); reading on at all is what
 * lets the server see a client close its connection mid-call and cancel the call.
 *
 * Lifetime: a conn is freed once its socket and timer handles have closed and no call or
 * reload answers to it any more (refs).  A worker is "done" when draining and nothing of
 * the server is left on it; rsl_serve_stop waits for every worker to be done, so no
 * handle of ours is left on a loop when the host calls rsl_close.
 */
#include "resilua.h"
#include "framing.h"

#include <arpa/inet.h>
#include <errno.h>
#include <http_parser.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <uv.h>

#define NS_PER_MS 1000000LL

/* Unparsed bytes a connection may hold while its answer is pending: a few pipelined
 * requests, no more (64 KiB: libuv's own suggested read size). */
#define READ_AHEAD (64 * 1024)
/* The input buffer starts at this size and grows (doubling) to READ_AHEAD + this. */
#define READ_CHUNK 4096
/* listen(2) backlog: Linux clamps it to net.core.somaxconn (4096 on recent kernels). */
#define BACKLOG 511

/* X(enum, label, status): the limits a request can hit. */
#define REJECTS(X)                                                                                 \
    X(HEADER_TOO_LARGE, "header_too_large", 431)                                                   \
    X(TOO_MANY_HEADERS, "too_many_headers", 431)                                                   \
    X(BODY_TOO_LARGE, "body_too_large", 413)                                                       \
    X(REQUEST_TIMEOUT, "request_timeout", 408)                                                     \
    X(MALFORMED, "malformed", 400)                                                                 \
    X(FRAMING, "framing", 400)                                                                     \
    X(BAD_TARGET, "bad_target", 400)

enum {
#define X_(e, s, st) REJ_##e,
    REJECTS(X_)
#undef X_
        REJ__COUNT
};
static const char *const reject_names[] = {
#define X_(e, s, st) s,
    REJECTS(X_)
#undef X_
};
static const int reject_status[] = {
#define X_(e, s, st) st,
    REJECTS(X_)
#undef X_
};

enum { T_NONE, T_IDLE, T_READING, T_WRITING, T_LINGER, T_WRITTEN };

/* After refusing a request the server closes the connection, but a client still sending
 * its body would then get a reset that can destroy the answer before it reads it: the
 * server shuts its side down and reads on, discarding, until the client closes or this
 * long has passed (nginx's lingering_close does the same, 5 s; a refused client has had
 * its answer by then). */
#define LINGER_NS (2000 * NS_PER_MS)

typedef struct srv_worker srv_worker;

typedef struct conn {
    srv_worker *w;
    struct conn *prev, *next;
    uv_tcp_t tcp;
    uv_timer_t timer;
    int refs;        /* tcp handle, timer handle, an answer (call or reload) pending */
    int timer_state; /* T_* */
    http_parser p;
    rsl__framer fr; /* the strict framing rules, checked beside the parser */
    /* input */
    char *in;
    size_t in_len, in_off, in_cap;
    int reading;
    /* the request being parsed */
    int in_message;
    int in_field; /* the parser is inside a header name */
    size_t header_bytes;
    int nheaders;
    char hname[16]; /* the current header's name, lowercased, truncated */
    size_t hname_len;
    int hdr_expect; /* the current header is Expect */
    int expect_continue;
    char *url;
    size_t url_len, url_cap;
    char *body;
    size_t body_len, body_cap;
    int reject; /* REJ_* + 1 when the request broke a limit */
    /* the answer */
    int busy; /* a request is being answered (until its answer is written) */
    int call_pending;
    uint64_t call_id;
    int keep_alive;
    int head;
    int closing;
    int close_after;
    int linger_wanted; /* the answer refuses the request: linger after it */
    int lingering;
    uv_shutdown_t shut;
    uv_write_t wr;
    char *out;
} conn;

struct srv_worker {
    rsl_serve *s;
    int index;
    uv_loop_t *loop;
    uv_tcp_t listener;
    int listener_open;
    conn *conns;
    int handles; /* our handles open on this loop */
    int live;    /* conns not yet freed */
    int draining;
    int done; /* reported done to rsl_serve_stop */
    int rc;   /* listen result */
    char err[256];
    /* counters: written by this worker only, read by /metrics on any worker */
    _Atomic uint64_t by_status[600];
    _Atomic uint64_t rejected[REJ__COUNT];
    _Atomic uint64_t accepted, idle_closed, client_aborts;
    _Atomic int64_t open;
};

struct rsl_serve {
    rsl_runtime *rt;
    rsl_serve_options o;
    struct sockaddr_storage addr;
    int port;
    int nworkers;
    srv_worker *w;
    _Atomic int draining;
    pthread_mutex_t m;
    pthread_cond_t cv;
    int step_done; /* workers that finished the step rsl_serve_start/stop waits on */
};

static const http_parser_settings settings; /* defined after its callbacks */

/* ---- small helpers ------------------------------------------------------------------- */

static void relaxed_inc(_Atomic uint64_t *v) {
    atomic_fetch_add_explicit(v, 1, memory_order_relaxed);
}

static uint64_t relaxed(_Atomic uint64_t *v) {
    return atomic_load_explicit(v, memory_order_relaxed);
}

static int grow(char **p, size_t *cap, size_t need) {
    if (need <= *cap) {
        return 0;
    }
    size_t c = *cap ? *cap : 256;
    while (c < need) {
        c *= 2;
    }
    char *n = realloc(*p, c);
    if (!n) {
        return -1;
    }
    *p = n;
    *cap = c;
    return 0;
}

static int hexval(int ch) {
    if (ch >= '0' && ch <= '9') {
        return ch - '0';
    }
    ch |= 0x20;
    return ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

/* Decodes %XX (and '+' as a space when `plus`: a query component) into out (n bytes of
 * room); returns the decoded length. */
static size_t pct_decode(const char *s, size_t n, char *out, int plus) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int hi, lo;
        if (s[i] == '%' && i + 2 < n && (hi = hexval((unsigned char)s[i + 1])) >= 0 &&
            (lo = hexval((unsigned char)s[i + 2])) >= 0) {
            out[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            out[o++] = plus && s[i] == '+' ? ' ' : s[i];
        }
    }
    return o;
}

static const char *reason_phrase(int status) {
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 413:
        return "Content Too Large";
    case 422:
        return "Unprocessable Content";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 499:
        return "Client Closed Request";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return status < 300   ? "OK"
               : status < 400 ? "Redirect"
               : status < 500 ? "Client Error"
                              : "Server Error";
    }
}

/* A header name or value from a policy goes out only without CR, LF or NUL. */
static int header_safe(const char *s) {
    return s && !strpbrk(s, "\r\n");
}

/* ---- the worker's bookkeeping ---------------------------------------------------------- */

static void worker_check_done(srv_worker *w) {
    if (!w->draining || w->done || w->handles > 0 || w->live > 0) {
        return;
    }
    w->done = 1;
    rsl_serve *s = w->s;
    pthread_mutex_lock(&s->m);
    s->step_done++;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->m);
}

static void conn_unref(conn *c) {
    if (--c->refs > 0) {
        return;
    }
    srv_worker *w = c->w;
    free(c->in);
    free(c->url);
    free(c->body);
    free(c->out);
    free(c);
    w->live--;
    worker_check_done(w);
}

static void on_handle_closed(uv_handle_t *h) {
    conn *c = h->data;
    c->w->handles--;
    conn_unref(c);
}

static void conn_close(conn *c) {
    if (c->closing) {
        return;
    }
    srv_worker *w = c->w;
    c->closing = 1;
    if (c->prev) {
        c->prev->next = c->next;
    } else {
        w->conns = c->next;
    }
    if (c->next) {
        c->next->prev = c->prev;
    }
    atomic_fetch_sub_explicit(&w->open, 1, memory_order_relaxed);
    if (c->call_pending && c->call_id) {
        /* The client is gone (or the drain gave up): its call has nobody to answer.  The
         * completion still comes, and drops the answer. */
        (void)rsl_cancel(w->s->rt, c->call_id);
    }
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

static void drive(conn *c);

static void on_timer(uv_timer_t *t);

static void timer_set(conn *c, int state, int64_t ns) {
    c->timer_state = state;
    if (state == T_NONE || ns <= 0) {
        uv_timer_stop(&c->timer);
        c->timer_state = T_NONE;
        return;
    }
    uv_timer_start(&c->timer, on_timer, (uint64_t)((ns + NS_PER_MS - 1) / NS_PER_MS), 0);
}

/* ---- answers ------------------------------------------------------------------------------ */

static void want_read(conn *c);

static void on_shutdown(uv_shutdown_t *req, int status) {
    conn *c = req->data;
    if (status < 0 && status != UV_ECANCELED && !c->closing) {
        conn_close(c);
    }
}

static void start_linger(conn *c) {
    c->lingering = 1;
    c->in_off = c->in_len = 0;
    timer_set(c, T_LINGER, LINGER_NS);
    c->shut.data = c;
    if (uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
        conn_close(c);
        return;
    }
    want_read(c);
}

/* The answer is written (or failed): on to the next request, or close. */
static void written(conn *c, int status) {
    free(c->out);
    c->out = NULL;
    if (c->closing) {
        return;
    }
    if (status >= 0 && c->close_after && c->linger_wanted) {
        start_linger(c);
        return;
    }
    if (status < 0 || c->close_after) {
        conn_close(c);
        return;
    }
    c->busy = 0;
    timer_set(c, T_NONE, 0);
    drive(c);
}

static void on_written(uv_write_t *wr, int status) {
    written(wr->data, status);
}

typedef struct outbuf {
    char *p;
    size_t len, cap;
    int oom;
} outbuf;

static void out_add(outbuf *b, const char *s, size_t n) {
    if (b->oom || grow(&b->p, &b->cap, b->len + n + 1) < 0) {
        b->oom = 1;
        return;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0; /* headers built here are passed on as strings */
}

static void out_str(outbuf *b, const char *s) {
    out_add(b, s, strlen(s));
}

/* A decimal number, without printf: a response's status and length, on every answer. */
static void out_uint(outbuf *b, unsigned long long v) {
    char tmp[24], *p = tmp + sizeof(tmp);
    do {
        *--p = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    out_add(b, p, (size_t)(tmp + sizeof(tmp) - p));
}

/* "name: value\r\n" */
static void out_header(outbuf *b, const char *name, const char *value) {
    out_str(b, name);
    out_add(b, ": ", 2);
    out_str(b, value);
    out_add(b, "\r\n", 2);
}

static void out_fmt(outbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void out_fmt(outbuf *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0) {
        out_add(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
    }
}

/* An answer is built in one buffer: answer_begin (the status line, room reserved for the
 * rest), the caller's header lines, then answer_send (length, connection, body). */
static int answer_status(int status) {
    return status < 100 || status > 599 ? 500 : status;
}

static void answer_begin(outbuf *b, int status, size_t reserve) {
    status = answer_status(status);
    /* The status line, the length and connection lines and their CRLFs fit in 128 bytes
     * beside what the caller reserves.  Formatted by hand: vsnprintf was about 7% of the
     * sidecar's instructions per proxied request (callgrind). */
    memset(b, 0, sizeof(*b));
    b->oom = grow(&b->p, &b->cap, 128 + reserve) < 0;
    out_add(b, "HTTP/1.1 ", 9);
    out_uint(b, (unsigned)status);
    out_add(b, " ", 1);
    out_str(b, reason_phrase(status));
    out_add(b, "\r\n", 2);
}

/*
 * Finishes and writes an answer begun with answer_begin: the length, the connection
 * header and the body; takes b.  The connection closes after it when the request said so,
 * when close_after is set, or while draining.
 */
static void answer_send(conn *c, outbuf *b, int status, const char *body, size_t len,
                        int close_after) {
    srv_worker *w = c->w;
    status = answer_status(status);
    c->close_after = close_after || !c->keep_alive || w->draining;
    int no_body = status == 204 || status == 304 || status < 200;
    if (!no_body) {
        out_add(b, "Content-Length: ", 16);
        out_uint(b, len);
        out_add(b, "\r\n", 2);
    }
    if (c->close_after) {
        out_str(b, "Connection: close\r\n");
    } else if (c->p.http_major == 1 && c->p.http_minor == 0) {
        out_str(b, "Connection: keep-alive\r\n");
    }
    out_add(b, "\r\n", 2);
    if (!no_body && !c->head && len) {
        out_add(b, body, len);
    }
    relaxed_inc(&w->by_status[status]);
    if (b->oom) {
        free(b->p);
        conn_close(c);
        return;
    }
    c->out = b->p;
    uv_buf_t buf = uv_buf_init(b->p, (unsigned)b->len);
    /* Most answers fit the socket's buffer: written here, and what follows a write left
     * to a 0 ms timer, as libuv defers a write callback to the next loop turn.  A queued
     * uv_write that completes at once still costs an epoll_ctl per answer (libuv 1.44
     * re-registers the fd when its write queue empties). */
    int n = uv_try_write((uv_stream_t *)&c->tcp, &buf, 1);
    if (n == (int)b->len) {
        c->timer_state = T_WRITTEN;
        uv_timer_start(&c->timer, on_timer, 0, 0);
        return;
    }
    if (n > 0) {
        buf.base += n;
        buf.len -= (size_t)n;
    }
    c->wr.data = c;
    if (uv_write(&c->wr, (uv_stream_t *)&c->tcp, &buf, 1, on_written) < 0) {
        free(c->out);
        c->out = NULL;
        conn_close(c);
        return;
    }
    /* A client that stops reading cannot hold the connection forever. */
    timer_set(c, T_WRITING, w->s->o.request_timeout_ns);
}

/* An answer with `headers` (lines ending in CRLF, may be NULL). */
static void respond(conn *c, int status, const char *headers, const char *body, size_t len,
                    int close_after) {
    size_t hlen = headers ? strlen(headers) : 0;
    outbuf b;
    answer_begin(&b, status, hlen + len);
    if (headers) {
        out_add(&b, headers, hlen);
    }
    answer_send(c, &b, status, body, len, close_after);
}

/* {"error": msg} */
static void respond_error(conn *c, int status, const char *msg, int close_after) {
    json_t *o = json_pack("{s:s}", "error", msg);
    char *js = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    outbuf body = {0};
    out_str(&body, js ? js : "{\"error\":\"out of memory\"}");
    out_str(&body, "\n");
    free(js);
    respond(c, status, "Content-Type: application/json\r\n", body.p ? body.p : "", body.len,
            close_after);
    free(body.p);
}

static void respond_reject(conn *c, int rej, const char *msg) {
    relaxed_inc(&c->w->rejected[rej]);
    c->busy = 1;
    c->linger_wanted = 1;
    respond_error(c, reject_status[rej], msg, 1);
}

/* ---- calls -------------------------------------------------------------------------------- */

/* Headers that describe this connection, not the answer (RFC 9110 7.6.1), and the length,
 * which the server sets: a policy's (or, with r.http, an upstream's) are dropped. */
static int hop_by_hop(const char *name) {
    static const char *const names[] = {
        "content-length", "connection", "keep-alive",      "transfer-encoding", "te",
        "trailer",        "upgrade",    "proxy-connection"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strcasecmp(name, names[i]) == 0) {
            return 1;
        }
    }
    return 0;
}

static void on_call_done(const rsl_result *r, void *ud) {
    conn *c = ud;
    c->call_pending = 0;
    if (c->closing) {
        conn_unref(c);
        return;
    }
    size_t len = 0;
    const char *body = rsl_result_body(r, &len);
    if (!body) {
        body = "";
        len = 0;
    }
    int status = rsl_result_status(r);
    outbuf h;
    answer_begin(&h, status, 384 + len); /* the X-Resilua-* headers and a few others */
    size_t n = rsl_result_header_count(r);
    for (size_t i = 0; i < n; i++) {
        const char *name, *value;
        if (rsl_result_header(r, i, &name, &value) != 0 || !header_safe(name) ||
            !header_safe(value) || !name[0] || hop_by_hop(name)) {
            continue;
        }
        out_header(&h, name, value);
    }
    const char *served = rsl_result_served_by(r);
    out_header(&h, "X-Resilua-Served-By", served ? served : "none");
    out_header(&h, "X-Resilua-Outcome", rsl_outcome_name(rsl_result_outcome(r)));
    out_header(&h, "X-Resilua-Degraded", rsl_result_degraded(r) ? "1" : "0");
    out_str(&h, "X-Resilua-Path: ");
    size_t np = rsl_result_path_len(r);
    for (size_t i = 0; i < np; i++) {
        rsl_path_entry e;
        if (rsl_result_path(r, i, &e) == 0) {
            if (i) {
                out_add(&h, ",", 1);
            }
            out_str(&h, e.step);
            out_add(&h, "=", 1);
            out_str(&h, rsl_outcome_name(e.outcome));
        }
    }
    out_str(&h, "\r\n");
    answer_send(c, &h, status, body, len, 0);
    conn_unref(c);
}

/* Sets the query's attributes (and `body`, unless the request has one) on req. */
static int add_query(rsl_req *req, const char *q, size_t n, int has_body) {
    if (n == 0) {
        return 0;
    }
    char *tmp = malloc(n + 1);
    if (!tmp) {
        return RSL_ENOMEM;
    }
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0;) {
        size_t j = i;
        while (j < n && q[j] != '&') {
            j++;
        }
        const char *eq = memchr(q + i, '=', j - i);
        size_t klen = eq ? (size_t)(eq - (q + i)) : j - i;
        size_t kd = pct_decode(q + i, klen, tmp, 1);
        tmp[kd] = 0;
        if (kd > 0 && strlen(tmp) == kd) { /* a name with a NUL in it is no name */
            const char *v = eq ? eq + 1 : q + j;
            size_t vlen = eq ? (size_t)(q + j - v) : 0;
            char *val = malloc(vlen + 1);
            if (!val) {
                rc = RSL_ENOMEM;
                break;
            }
            size_t vd = pct_decode(v, vlen, val, 1);
            if (strcmp(tmp, "body") == 0) {
                rc = has_body ? 0 : rsl_req_set_body(req, val, vd);
            } else {
                rc = rsl_req_set(req, tmp, val, vd);
            }
            free(val);
        }
        i = j + 1;
    }
    free(tmp);
    return rc;
}

static void start_call(conn *c, const char *policy, rsl_req *req) {
    c->call_pending = 1;
    c->refs++;
    int rc = rsl_call_id(c->w->s->rt, policy, req, on_call_done, c, &c->call_id);
    if (rc == 0) {
        return; /* on_call_done may already have run */
    }
    c->call_pending = 0;
    c->refs--;
    char msg[600];
    if (rc == RSL_ENOENT) {
        snprintf(msg, sizeof(msg), "unknown policy \"%s\"", policy);
        respond_error(c, 404, msg, 0);
    } else {
        snprintf(msg, sizeof(msg), "cannot call \"%s\": %s", policy, rsl_strerror(rc));
        respond_error(c, rc == RSL_ECLOSED ? 503 : 500, msg, 0);
    }
}

/* ---- /reload: off the worker (rsl_reload refuses workers: a load would stall its calls) */

typedef struct reload_job {
    conn *c;
    rsl_runtime *rt;
    int worker;
    int rc;
    char *answer;
    char err[8192];
} reload_job;

static void reload_answer(void *ud, uv_loop_t *loop) {
    reload_job *j = ud;
    conn *c = j->c;
    c->call_pending = 0;
    if (!c->closing) {
        int status = j->rc == 0 ? 200 : j->rc == RSL_ELOAD ? 422 : 500;
        const char *a = j->answer ? j->answer : "{\"ok\":false,\"error\":\"out of memory\"}\n";
        respond(c, status, "Content-Type: application/json\r\n", a, strlen(a), 0);
    }
    conn_unref(c);
    free(j->answer);
    free(j);
}

static void *reload_main(void *arg) {
    reload_job *j = arg;
    j->rc = rsl_reload(j->rt, j->err, sizeof(j->err));
    /* The record this reload left in /state (a SIGHUP right after may already have
     * replaced it: then the answer shows that one, which is as current). */
    char *state = rsl_state_json(j->rt);
    json_t *root = state ? json_loads(state, 0, NULL) : NULL;
    json_t *rec = json_object_get(root, "last_reload");
    json_t *o = rec ? json_deep_copy(rec) : json_object();
    if (o && j->rc != 0) {
        json_object_set_new(o, "ok", json_false());
        json_object_set_new(o, "error", json_string(j->err[0] ? j->err : rsl_strerror(j->rc)));
    }
    if (o) {
        json_object_set_new(o, "generation",
                            json_object_get(root, "generation")
                                ? json_incref(json_object_get(root, "generation"))
                                : json_null());
    }
    char *js = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    if (js) {
        size_t n = strlen(js);
        j->answer = malloc(n + 2);
        if (j->answer) {
            memcpy(j->answer, js, n);
            memcpy(j->answer + n, "\n", 2);
        }
    }
    free(js);
    json_decref(o);
    json_decref(root);
    rsl_free(state);
    /* Back to the connection's worker.  rsl_serve_stop waits for this answer before the
     * host may close the runtime, so the runtime is open here. */
    if (rsl_on_worker(j->rt, j->worker, reload_answer, j) != 0) {
        fprintf(stderr, "resilua: serve: cannot hand the reload answer back to worker %d\n",
                j->worker);
    }
    return NULL;
}

static void start_reload(conn *c) {
    reload_job *j = calloc(1, sizeof(*j));
    pthread_t t;
    pthread_attr_t attr;
    if (!j) {
        respond_error(c, 500, "out of memory", 0);
        return;
    }
    j->c = c;
    j->rt = c->w->s->rt;
    j->worker = c->w->index;
    c->call_pending = 1; /* nothing to cancel: call_id 0 is no call */
    c->call_id = 0;
    c->refs++;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&t, &attr, reload_main, j);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        c->call_pending = 0;
        c->refs--;
        free(j);
        respond_error(c, 500, "cannot start the reload thread", 0);
    }
}

/* ---- the server's own series for /metrics ----------------------------------------------- */

static void metrics_append(rsl_serve *s, outbuf *b) {
    out_str(b, "# HELP resilua_http_requests_total HTTP requests the sidecar answered, by "
               "status.\n# TYPE resilua_http_requests_total counter\n");
    for (int st = 100; st < 600; st++) {
        uint64_t v = 0;
        for (int i = 0; i < s->nworkers; i++) {
            v += relaxed(&s->w[i].by_status[st]);
        }
        if (v) {
            out_fmt(b, "resilua_http_requests_total{code=\"%d\"} %llu\n", st,
                    (unsigned long long)v);
        }
    }
    out_str(b, "# HELP resilua_http_rejected_total Requests refused by a limit of the "
               "sidecar, by reason.\n# TYPE resilua_http_rejected_total counter\n");
    for (int r = 0; r < REJ__COUNT; r++) {
        uint64_t v = 0;
        for (int i = 0; i < s->nworkers; i++) {
            v += relaxed(&s->w[i].rejected[r]);
        }
        out_fmt(b, "resilua_http_rejected_total{reason=\"%s\"} %llu\n", reject_names[r],
                (unsigned long long)v);
    }
    uint64_t acc = 0, idle = 0, aborts = 0;
    int64_t open = 0;
    for (int i = 0; i < s->nworkers; i++) {
        acc += relaxed(&s->w[i].accepted);
        idle += relaxed(&s->w[i].idle_closed);
        aborts += relaxed(&s->w[i].client_aborts);
        open += atomic_load_explicit(&s->w[i].open, memory_order_relaxed);
    }
    out_fmt(b,
            "# HELP resilua_http_connections_total Connections the sidecar accepted.\n"
            "# TYPE resilua_http_connections_total counter\n"
            "resilua_http_connections_total %llu\n"
            "# HELP resilua_http_open_connections Connections open now.\n"
            "# TYPE resilua_http_open_connections gauge\n"
            "resilua_http_open_connections %lld\n",
            (unsigned long long)acc, (long long)(open > 0 ? open : 0));
    out_fmt(b,
            "# HELP resilua_http_idle_closed_total Keep-alive connections closed after the "
            "idle timeout.\n"
            "# TYPE resilua_http_idle_closed_total counter\n"
            "resilua_http_idle_closed_total %llu\n"
            "# HELP resilua_http_client_aborts_total Calls canceled because their client "
            "closed the connection.\n"
            "# TYPE resilua_http_client_aborts_total counter\n"
            "resilua_http_client_aborts_total %llu\n",
            (unsigned long long)idle, (unsigned long long)aborts);
}

/* ---- routing -------------------------------------------------------------------------------- */

static int path_is(const char *path, size_t n, const char *lit) {
    return strlen(lit) == n && memcmp(path, lit, n) == 0;
}

static void not_allowed(conn *c, const char *allow) {
    char h[64];
    snprintf(h, sizeof(h), "Allow: %s\r\n", allow);
    json_t *o = json_pack("{s:s}", "error", "method not allowed");
    char *js = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    outbuf hb = {0};
    out_str(&hb, h);
    out_str(&hb, "Content-Type: application/json\r\n");
    respond(c, 405, hb.p, js ? js : "", js ? strlen(js) : 0, 0);
    free(hb.p);
    free(js);
}

/* The request is complete: answer it. */
static void dispatch(conn *c) {
    srv_worker *w = c->w;
    rsl_serve *s = w->s;
    c->busy = 1;
    c->keep_alive = http_should_keep_alive(&c->p) && !c->p.upgrade;
    c->head = c->p.method == HTTP_HEAD;
    timer_set(c, T_NONE, 0);
    size_t poff;
    const char *bad = rsl__target_check(c->url ? c->url : "", c->url_len,
                                        c->p.method == HTTP_OPTIONS, &poff);
    if (bad) {
        relaxed_inc(&w->rejected[REJ_BAD_TARGET]);
        respond_error(c, 400, bad, 1);
        return;
    }
    if (c->url_len == 1 && c->url[0] == '*') { /* OPTIONS *: what the server offers */
        respond(c, 200, "Allow: GET, HEAD, POST, OPTIONS\r\n", "", 0, 0);
        return;
    }
    /* From here the target is a path (absolute-form: the part after the authority) and a
     * query, every %-escape in it valid and none of them %00. */
    const char *path = c->url + poff;
    size_t plen = c->url_len - poff;
    const char *q = memchr(path, '?', plen);
    const char *query = "";
    size_t qlen = 0;
    if (q) {
        query = q + 1;
        qlen = plen - (size_t)(query - path);
        plen = (size_t)(q - path);
    }
    if (plen == 0) { /* "http://host" or "http://host?q" */
        path = "/";
        plen = 1;
    }
    int get = c->p.method == HTTP_GET || c->p.method == HTTP_HEAD;
    int post = c->p.method == HTTP_POST;

    if (path_is(path, plen, "/healthz")) {
        if (!get) {
            not_allowed(c, "GET");
        } else if (atomic_load(&s->draining)) {
            respond(c, 503, "Content-Type: text/plain\r\n", "draining\n", 9, 0);
        } else {
            respond(c, 200, "Content-Type: text/plain\r\n", "ok\n", 3, 0);
        }
        return;
    }
    if (path_is(path, plen, "/metrics")) {
        if (!get) {
            not_allowed(c, "GET");
            return;
        }
        char *m = rsl_metrics_text(s->rt);
        outbuf b = {0};
        out_str(&b, m ? m : "");
        rsl_free(m);
        metrics_append(s, &b);
        if (b.oom || !m) {
            free(b.p);
            respond_error(c, 500, "cannot render the metrics", 0);
            return;
        }
        respond(c, 200, "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n", b.p, b.len,
                0);
        free(b.p);
        return;
    }
    if (path_is(path, plen, "/state")) {
        if (!get) {
            not_allowed(c, "GET");
            return;
        }
        char *st = rsl_state_json(s->rt);
        if (!st) {
            respond_error(c, 500, "cannot render the state", 0);
            return;
        }
        size_t n = strlen(st);
        outbuf b = {0};
        out_add(&b, st, n);
        out_str(&b, "\n");
        rsl_free(st);
        respond(c, 200, "Content-Type: application/json\r\n", b.p ? b.p : "", b.len, 0);
        free(b.p);
        return;
    }
    if (path_is(path, plen, "/reload")) {
        if (!post) {
            not_allowed(c, "POST");
            return;
        }
        start_reload(c);
        return;
    }

    rsl_req *req = rsl_req_new();
    char policy[256];
    int rc = req ? 0 : RSL_ENOMEM;
    int is_call = plen > 6 && memcmp(path, "/call/", 6) == 0;
    if (rc == 0 && c->body_len) {
        rc = rsl_req_set_body(req, c->body, c->body_len);
    }
    if (rc == 0) {
        rc = add_query(req, query, qlen, c->body_len > 0);
    }
    if (rc == 0 && is_call) {
        if (!get && !post) {
            rsl_req_free(req);
            not_allowed(c, "GET, POST");
            return;
        }
        size_t n = plen - 6;
        if (n >= sizeof(policy)) {
            rsl_req_free(req);
            respond_error(c, 404, "unknown policy (name too long)", 0);
            return;
        }
        n = pct_decode(path + 6, n, policy, 0);
        policy[n] = 0;
    } else if (rc == 0) {
        const char *method = http_method_str((enum http_method)c->p.method);
        rc = rsl_expose_match(s->rt, method, path, plen, req, policy, sizeof(policy));
        if (rc == RSL_ENOENT) {
            rsl_req_free(req);
            char msg[300];
            snprintf(msg, sizeof(msg), "no route for %s %.*s", method,
                     (int)(plen < 200 ? plen : 200), path);
            respond_error(c, 404, msg, 0);
            return;
        }
    }
    if (rc != 0) {
        rsl_req_free(req);
        respond_error(c, rc == RSL_ECLOSED ? 503 : 500, rsl_strerror(rc), 0);
        return;
    }
    start_call(c, policy, req);
    rsl_req_free(req);
}

/* ---- parsing ------------------------------------------------------------------------------- */

static int limit(conn *c, int rej) {
    c->reject = rej + 1;
    return -1; /* http_parser stops with a callback error; drive() answers */
}

static int on_message_begin(http_parser *p) {
    conn *c = p->data;
    c->in_message = 1;
    c->in_field = 0;
    c->header_bytes = 0;
    c->nheaders = 0;
    c->expect_continue = 0;
    c->hdr_expect = 0;
    c->url_len = 0;
    c->body_len = 0;
    timer_set(c, T_READING, c->w->s->o.request_timeout_ns);
    return 0;
}

static int count_header_bytes(conn *c, size_t n) {
    c->header_bytes += n;
    return c->header_bytes > c->w->s->o.max_header_bytes ? -1 : 0;
}

static int on_url(http_parser *p, const char *at, size_t n) {
    conn *c = p->data;
    if (count_header_bytes(c, n) < 0) {
        return limit(c, REJ_HEADER_TOO_LARGE);
    }
    if (grow(&c->url, &c->url_cap, c->url_len + n + 1) < 0) {
        return limit(c, REJ_HEADER_TOO_LARGE);
    }
    memcpy(c->url + c->url_len, at, n);
    c->url_len += n;
    c->url[c->url_len] = 0;
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t n) {
    conn *c = p->data;
    if (!c->in_field) {
        c->in_field = 1;
        c->hname_len = 0;
        if (++c->nheaders > c->w->s->o.max_headers) {
            return limit(c, REJ_TOO_MANY_HEADERS);
        }
    }
    if (count_header_bytes(c, n) < 0) {
        return limit(c, REJ_HEADER_TOO_LARGE);
    }
    for (size_t i = 0; i < n; i++) {
        if (c->hname_len < sizeof(c->hname)) {
            char ch = at[i];
            c->hname[c->hname_len] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
        }
        c->hname_len++; /* counts on past the array: a long name is no name we look for */
    }
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t n) {
    conn *c = p->data;
    if (c->in_field) {
        c->in_field = 0;
        c->hdr_expect = c->hname_len == 6 && memcmp(c->hname, "expect", 6) == 0;
    }
    if (count_header_bytes(c, n) < 0) {
        return limit(c, REJ_HEADER_TOO_LARGE);
    }
    /* "100-continue" is the only expectation there is (RFC 9110 10.1.1). */
    if (c->hdr_expect && n >= 12 && strncasecmp(at, "100-continue", 12) == 0) {
        c->expect_continue = 1;
    }
    return 0;
}

static void on_continue_written(uv_write_t *wr, int status) {
    free(wr);
}

static int on_headers_complete(http_parser *p) {
    conn *c = p->data;
    int has_length = p->content_length != ULLONG_MAX && p->content_length > 0;
    if (has_length && p->content_length > c->w->s->o.max_body) {
        return limit(c, REJ_BODY_TOO_LARGE);
    }
    if (c->expect_continue && (has_length || (p->flags & F_CHUNKED))) {
        static char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        uv_write_t *wr = malloc(sizeof(*wr));
        uv_buf_t b = uv_buf_init(cont, sizeof(cont) - 1);
        if (wr && uv_write(wr, (uv_stream_t *)&c->tcp, &b, 1, on_continue_written) < 0) {
            free(wr);
        }
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t n) {
    conn *c = p->data;
    if (c->body_len + n > c->w->s->o.max_body) {
        return limit(c, REJ_BODY_TOO_LARGE);
    }
    if (grow(&c->body, &c->body_cap, c->body_len + n + 1) < 0) {
        return limit(c, REJ_BODY_TOO_LARGE);
    }
    memcpy(c->body + c->body_len, at, n);
    c->body_len += n;
    return 0;
}

static int on_message_complete(http_parser *p) {
    conn *c = p->data;
    c->in_message = 0;
    http_parser_pause(p, 1); /* one request at a time: drive() answers it first */
    return 0;
}

static const http_parser_settings settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- reading ------------------------------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    conn *c = h->data;
    if (c->in_off > 0) { /* the parser keeps no pointer into the buffer between runs */
        memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
        c->in_len -= c->in_off;
        c->in_off = 0;
    }
    if (c->in_cap - c->in_len < READ_CHUNK && c->in_cap < READ_AHEAD + READ_CHUNK) {
        size_t cap = c->in_cap ? c->in_cap * 2 : READ_CHUNK;
        if (cap > READ_AHEAD + READ_CHUNK) {
            cap = READ_AHEAD + READ_CHUNK;
        }
        char *n = realloc(c->in, cap);
        if (n) {
            c->in = n;
            c->in_cap = cap;
        }
    }
    *buf = uv_buf_init(c->in + c->in_len, (unsigned)(c->in_cap - c->in_len));
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
    conn *c = st->data;
    if (n == 0) {
        return;
    }
    if (n == UV_ENOBUFS) {
        uv_read_stop(st);
        c->reading = 0;
        return;
    }
    if (c->lingering) { /* discarding until the client closes */
        c->in_off = c->in_len = 0;
        if (n < 0) {
            conn_close(c);
        }
        return;
    }
    if (n < 0) {
        /* EOF or an error: the client is gone, or half-closed -- either way nothing more
         * will come, and a call it is waiting on has nobody to answer. */
        if (c->call_pending && c->call_id) {
            relaxed_inc(&c->w->client_aborts);
        }
        conn_close(c);
        return;
    }
    c->in_len += (size_t)n;
    if (!c->busy) {
        drive(c);
    } else {
        want_read(c);
    }
}

/* Reads on while fewer than READ_AHEAD unparsed bytes wait. */
static void want_read(conn *c) {
    if (c->closing) {
        return;
    }
    int room = c->in_len - c->in_off < READ_AHEAD;
    if (room && !c->reading) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0) {
            c->reading = 1;
        }
    } else if (!room && c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = 0;
    }
}

/* Parses what is buffered and answers, one request at a time. */
static void drive(conn *c) {
    srv_worker *w = c->w;
    while (!c->busy && !c->closing) {
        if (c->in_off == c->in_len) {
            c->in_off = c->in_len = 0;
            if (!c->in_message) {
                if (w->draining) {
                    conn_close(c);
                    return;
                }
                timer_set(c, T_IDLE, w->s->o.idle_timeout_ns);
            }
            want_read(c);
            return;
        }
        /* The framer reads first, to the end of the request or the byte that breaks its
         * rules; the parser then reads as far (through the bad byte: what the parser
         * refuses itself stays "malformed").  Both must see the request end at the same
         * byte, or it is refused as ambiguous. */
        size_t avail = c->in_len - c->in_off, used;
        const char *why = NULL;
        int fr = rsl__frame_feed(&c->fr, c->in + c->in_off, avail, &used, &why);
        size_t n = http_parser_execute(&c->p, &settings, c->in + c->in_off,
                                       fr == RSL_FRAME_BAD ? used + 1 : used);
        c->in_off += n;
        enum http_errno e = HTTP_PARSER_ERRNO(&c->p);
        if (c->reject) {
            int rej = c->reject - 1;
            const char *msg = rej == REJ_HEADER_TOO_LARGE   ? "request header too large"
                              : rej == REJ_TOO_MANY_HEADERS ? "too many header fields"
                                                            : "request body too large";
            respond_reject(c, rej, msg);
            return;
        }
        if (e == HPE_HEADER_OVERFLOW) {
            respond_reject(c, REJ_HEADER_TOO_LARGE, "request header too large");
            return;
        }
        if (e != HPE_OK && e != HPE_PAUSED) {
            char msg[200];
            snprintf(msg, sizeof(msg), "malformed request: %s", http_errno_description(e));
            respond_reject(c, REJ_MALFORMED, msg);
            return;
        }
        if (fr == RSL_FRAME_BAD || (fr == RSL_FRAME_DONE) != (e == HPE_PAUSED) || n != used) {
            char msg[200];
            snprintf(msg, sizeof(msg), "ambiguous request framing: %s",
                     why ? why : "the parsers disagree on where the request ends");
            respond_reject(c, REJ_FRAMING, msg);
            return;
        }
        if (e == HPE_PAUSED) {
            http_parser_pause(&c->p, 0);
            dispatch(c);
            continue;
        }
    }
    if (c->busy) {
        want_read(c);
    }
}

static void on_timer(uv_timer_t *t) {
    conn *c = t->data;
    int state = c->timer_state;
    c->timer_state = T_NONE;
    switch (state) {
    case T_IDLE:
        relaxed_inc(&c->w->idle_closed);
        conn_close(c);
        break;
    case T_READING:
        if (!c->busy) {
            respond_reject(c, REJ_REQUEST_TIMEOUT, "request not complete in time");
        }
        break;
    case T_WRITING:
    case T_LINGER:
        conn_close(c);
        break;
    case T_WRITTEN:
        written(c, 0);
        break;
    }
}

/* ---- accepting ----------------------------------------------------------------------------- */

static void on_connection(uv_stream_t *ls, int status) {
    srv_worker *w = ls->data;
    if (status < 0 || w->draining) {
        return;
    }
    conn *c = calloc(1, sizeof(*c));
    if (!c) {
        return; /* the connection waits in the backlog; the next one may fit */
    }
    c->w = w;
    uv_tcp_init(w->loop, &c->tcp);
    uv_timer_init(w->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->refs = 2;
    w->handles += 2;
    w->live++;
    c->next = w->conns;
    if (w->conns) {
        w->conns->prev = c;
    }
    w->conns = c;
    atomic_fetch_add_explicit(&w->open, 1, memory_order_relaxed);
    http_parser_init(&c->p, HTTP_REQUEST);
    c->p.data = c;
    rsl__frame_init(&c->fr);
    if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    relaxed_inc(&w->accepted);
    uv_tcp_nodelay(&c->tcp, 1);
    drive(c); /* nothing buffered: arms the idle timer and starts reading */
}

static void on_listener_closed(uv_handle_t *h) {
    srv_worker *w = h->data;
    w->handles--;
    worker_check_done(w);
}

static void step_finished(rsl_serve *s) {
    pthread_mutex_lock(&s->m);
    s->step_done++;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->m);
}

/* On worker w: its listening socket, SO_REUSEPORT, on the server's address. */
static void listen_here(void *ud, uv_loop_t *loop) {
    srv_worker *w = ud;
    rsl_serve *s = w->s;
    w->loop = loop;
    int rc = uv_tcp_init_ex(loop, &w->listener, s->addr.ss_family);
    if (rc == 0) {
        w->listener.data = w;
        w->listener_open = 1;
        w->handles++;
        uv_os_fd_t fd;
        int one = 1;
        if ((rc = uv_fileno((uv_handle_t *)&w->listener, &fd)) == 0 &&
            setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) {
            rc = uv_translate_sys_error(errno);
        }
        if (rc == 0) {
            rc = uv_tcp_bind(&w->listener, (const struct sockaddr *)&s->addr, 0);
        }
        if (rc == 0) {
            rc = uv_listen((uv_stream_t *)&w->listener, BACKLOG, on_connection);
        }
        if (rc == 0 && s->port == 0) {
            struct sockaddr_storage got;
            int len = sizeof(got);
            if ((rc = uv_tcp_getsockname(&w->listener, (struct sockaddr *)&got, &len)) == 0) {
                s->port = ntohs(got.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&got)->sin6_port
                                                          : ((struct sockaddr_in *)&got)->sin_port);
                if (s->addr.ss_family == AF_INET6) {
                    ((struct sockaddr_in6 *)&s->addr)->sin6_port = htons((uint16_t)s->port);
                } else {
                    ((struct sockaddr_in *)&s->addr)->sin_port = htons((uint16_t)s->port);
                }
            }
        }
    }
    if (rc != 0) {
        snprintf(w->err, sizeof(w->err), "%s", uv_strerror(rc));
        if (w->listener_open) {
            w->listener_open = 0;
            uv_close((uv_handle_t *)&w->listener, on_listener_closed);
        }
    }
    w->rc = rc;
    step_finished(s);
}

/* On worker w: stop accepting; close what is idle; the rest closes after its answer. */
static void drain_here(void *ud, uv_loop_t *loop) {
    srv_worker *w = ud;
    w->draining = 1;
    if (w->listener_open) {
        w->listener_open = 0;
        uv_close((uv_handle_t *)&w->listener, on_listener_closed);
    }
    for (conn *c = w->conns, *next; c; c = next) {
        next = c->next;
        if (!c->busy && !c->in_message) {
            conn_close(c);
        }
    }
    worker_check_done(w);
}

/* On worker w, once the drain took too long: close everything (pending calls are canceled
 * and answer into closed connections). */
static void force_close_here(void *ud, uv_loop_t *loop) {
    srv_worker *w = ud;
    while (w->conns) {
        if (w->conns->call_pending && w->conns->call_id) {
            relaxed_inc(&w->client_aborts);
        }
        conn_close(w->conns);
    }
    worker_check_done(w);
}

/* ---- the public face ------------------------------------------------------------------------ */

void rsl_serve_options_init(rsl_serve_options *o) {
    memset(o, 0, sizeof(*o));
    o->size = sizeof(*o);
    o->listen = "127.0.0.1:8700";
    /* 8 KiB of request line + headers and 100 fields: nginx's and Node's defaults are
     * 8 KiB and 100/2000; a sidecar's callers send few, short headers. */
    o->max_header_bytes = 8 * 1024;
    o->max_headers = 100;
    o->max_body = (size_t)1 << 20;
    o->idle_timeout_ns = 60000 * NS_PER_MS;
    o->request_timeout_ns = 10000 * NS_PER_MS;
    o->drain_timeout_ns = 30000 * NS_PER_MS;
}

int rsl_serve_port(const rsl_serve *s) {
    return s ? s->port : 0;
}

static int parse_listen(const char *spec, struct sockaddr_storage *ss, char *err, size_t errlen) {
    const char *colon = strrchr(spec, ':');
    char host[256];
    if (!colon || colon == spec || (size_t)(colon - spec) >= sizeof(host)) {
        snprintf(err, errlen, "listen address \"%s\": expected HOST:PORT", spec);
        return RSL_EINVAL;
    }
    char *end;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || errno || port < 0 || port > 65535) {
        snprintf(err, errlen, "listen address \"%s\": port must be 0..65535", spec);
        return RSL_EINVAL;
    }
    size_t hl = (size_t)(colon - spec);
    memcpy(host, spec, hl);
    host[hl] = 0;
    memset(ss, 0, sizeof(*ss));
    if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') {
        host[hl - 1] = 0;
        if (uv_ip6_addr(host + 1, (int)port, (struct sockaddr_in6 *)ss) == 0) {
            return 0;
        }
    } else if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0) {
        return 0;
    }
    snprintf(err, errlen, "listen address \"%s\": HOST must be an IPv4 address or [IPv6]", spec);
    return RSL_EINVAL;
}

/* Runs fn on every worker and waits until `want` more workers counted themselves done. */
static int on_every_worker(rsl_serve *s, void (*fn)(void *, uv_loop_t *), int from, int to) {
    int rc = 0;
    for (int i = from; i < to; i++) {
        if ((rc = rsl_on_worker(s->rt, i, fn, &s->w[i])) != 0) {
            break;
        }
    }
    return rc;
}

static void wait_steps(rsl_serve *s, int want, int64_t timeout_ns) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    int64_t ns = until.tv_nsec + (timeout_ns > 0 ? timeout_ns : 0);
    until.tv_sec += (time_t)(ns / 1000000000LL);
    until.tv_nsec = (long)(ns % 1000000000LL);
    pthread_mutex_lock(&s->m);
    while (s->step_done < want) {
        if (timeout_ns > 0) {
            if (pthread_cond_timedwait(&s->cv, &s->m, &until) != 0) {
                break;
            }
        } else {
            pthread_cond_wait(&s->cv, &s->m);
        }
    }
    pthread_mutex_unlock(&s->m);
}

static void serve_free(rsl_serve *s) {
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->m);
    free(s->w);
    free(s);
}

/* Drains the workers [0, n) that started, waits for them, frees s. */
static void serve_down(rsl_serve *s, int n) {
    atomic_store(&s->draining, 1);
    pthread_mutex_lock(&s->m);
    s->step_done = 0;
    pthread_mutex_unlock(&s->m);
    int posted = 0;
    for (int i = 0; i < n; i++) {
        posted += rsl_on_worker(s->rt, i, drain_here, &s->w[i]) == 0;
    }
    wait_steps(s, posted, s->o.drain_timeout_ns);
    pthread_mutex_lock(&s->m);
    int done = s->step_done;
    pthread_mutex_unlock(&s->m);
    if (done < posted) {
        for (int i = 0; i < n; i++) {
            (void)rsl_on_worker(s->rt, i, force_close_here, &s->w[i]);
        }
        wait_steps(s, posted, 0);
    }
    serve_free(s);
}

int rsl_serve_start(rsl_runtime *rt, const rsl_serve_options *o, rsl_serve **out, char *err,
                    size_t errlen) {
    char dummy[1];
    if (!err || !errlen) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    err[0] = 0;
    if (!rt || !out) {
        return RSL_EINVAL;
    }
    *out = NULL;
    rsl_serve *s = calloc(1, sizeof(*s));
    if (!s) {
        return RSL_ENOMEM;
    }
    rsl_serve_options_init(&s->o);
    if (o) {
        memcpy(&s->o, o, o->size < sizeof(s->o) ? o->size : sizeof(s->o));
        s->o.size = sizeof(s->o);
    }
    s->rt = rt;
    s->nworkers = rsl_workers(rt);
    pthread_mutex_init(&s->m, NULL);
    pthread_cond_init(&s->cv, NULL);
    int rc = s->o.listen ? parse_listen(s->o.listen, &s->addr, err, errlen) : RSL_EINVAL;
    if (rc == 0 && s->nworkers < 1) {
        rc = RSL_ECLOSED;
    }
    if (rc == 0 && !(s->w = calloc((size_t)s->nworkers, sizeof(*s->w)))) {
        rc = RSL_ENOMEM;
    }
    if (rc != 0) {
        serve_free(s);
        return rc;
    }
    s->port = ntohs(s->addr.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&s->addr)->sin6_port
                                                  : ((struct sockaddr_in *)&s->addr)->sin_port);
    for (int i = 0; i < s->nworkers; i++) {
        s->w[i].s = s;
        s->w[i].index = i;
    }
    /* Worker 0 first: with port 0 the others bind to the port it got. */
    int started = 0;
    for (int step = 0; step < 2 && rc == 0; step++) {
        int from = step == 0 ? 0 : 1, to = step == 0 ? 1 : s->nworkers;
        if (from >= to) {
            break;
        }
        pthread_mutex_lock(&s->m);
        s->step_done = 0;
        pthread_mutex_unlock(&s->m);
        rc = on_every_worker(s, listen_here, from, to);
        int posted = rc == 0 ? to - from : 0;
        wait_steps(s, posted, 0);
        started = rc == 0 ? to : from;
        for (int i = from; rc == 0 && i < to; i++) {
            if (s->w[i].rc != 0) {
                snprintf(err, errlen, "cannot listen on %s: %s", s->o.listen, s->w[i].err);
                rc = RSL_ESYS;
            }
        }
    }
    if (rc != 0) {
        if (!err[0]) {
            snprintf(err, errlen, "cannot listen on %s: %s", s->o.listen, rsl_strerror(rc));
        }
        serve_down(s, started);
        return rc;
    }
    *out = s;
    return 0;
}

void rsl_serve_stop(rsl_serve *s) {
    if (s) {
        serve_down(s, s->nworkers);
    }
}
