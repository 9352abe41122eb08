/*
 * serve_conn -- one connection of the sidecar: accepting it, reading into its buffer,
 * http_parser and the strict framer side by side, the limits a request can hit, writing
 * its answers (status line, headers, body), its timers (idle, reading, writing,
 * lingering) and its close.  What to answer a whole request is not decided here: it goes
 * to rsl_serve.dispatch (serve_answer.c).
 *
 * Layer: the sidecar, a client of resilua.h only; below serve_answer.c.  A connection
 * belongs to one worker and is used on its loop thread only.
 *
 * A connection (one worker, its loop thread only): bytes are read into a buffer and fed
 * to http_parser, which pauses at the end of each request.  The request is answered
 * (a call, or an endpoint of the server) and only once the answer is written is the next
 * one parsed: answers go out in request order, and a pipelining client cannot make the
 * server parse or call ahead.  While an answer is pending, reading goes on into the
 * buffer up to READ_AHEAD bytes and then stops (backpressure); reading on at all is what
 * lets the server see a client close its connection mid-call and cancel the call.
 *
 */
#include "serve_int.h"

#include "dec.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static const http_parser_settings settings; /* defined after its callbacks */

int rsl__srv_grow(char **p, size_t *cap, size_t need) {
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

/* ---- the worker's bookkeeping ---------------------------------------------------------- */

void rsl__srv_worker_check_done(srv_worker *w) {
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

void rsl__srv_conn_unref(conn *c) {
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
    rsl__srv_worker_check_done(w);
}

static void on_handle_closed(uv_handle_t *h) {
    conn *c = h->data;
    c->w->handles--;
    rsl__srv_conn_unref(c);
}

void rsl__srv_conn_close(conn *c) {
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

void rsl__srv_on_timer(uv_timer_t *t);

void rsl__srv_timer_set(conn *c, int state, int64_t ns) {
    c->timer_state = state;
    if (state == T_NONE || ns <= 0) {
        uv_timer_stop(&c->timer);
        c->timer_state = T_NONE;
        return;
    }
    uv_timer_start(&c->timer, rsl__srv_on_timer, (uint64_t)((ns + NS_PER_MS - 1) / NS_PER_MS), 0);
}

/* ---- after an answer: the next request, lingering or closing ---------------------- */

static void want_read(conn *c);

static void on_shutdown(uv_shutdown_t *req, int status) {
    conn *c = req->data;
    if (status < 0 && status != UV_ECANCELED && !c->closing) {
        rsl__srv_conn_close(c);
    }
}

static void start_linger(conn *c) {
    c->lingering = 1;
    c->in_off = c->in_len = 0;
    rsl__srv_timer_set(c, T_LINGER, LINGER_NS);
    c->shut.data = c;
    if (uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
        rsl__srv_conn_close(c);
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
        rsl__srv_conn_close(c);
        return;
    }
    c->busy = 0;
    rsl__srv_timer_set(c, T_NONE, 0);
    drive(c);
}

static void on_written(uv_write_t *wr, int status) {
    written(wr->data, status);
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
int rsl__srv_header_safe(const char *s) {
    return s && !strpbrk(s, "\r\n");
}

/* ---- answers ------------------------------------------------------------------------------ */


void rsl__srv_out_add(outbuf *b, const char *s, size_t n) {
    if (b->oom || rsl__srv_grow(&b->p, &b->cap, b->len + n + 1) < 0) {
        b->oom = 1;
        return;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0; /* headers built here are passed on as strings */
}

void rsl__srv_out_str(outbuf *b, const char *s) {
    rsl__srv_out_add(b, s, strlen(s));
}

/* A decimal number, without printf: a response's status and length, on every answer. */
static void out_uint(outbuf *b, unsigned long long v) {
    char tmp[24], *p = rsl__udec(tmp + sizeof(tmp), v);
    rsl__srv_out_add(b, p, (size_t)(tmp + sizeof(tmp) - p));
}

/* "name: value\r\n" */
void rsl__srv_out_header(outbuf *b, const char *name, const char *value) {
    rsl__srv_out_str(b, name);
    rsl__srv_out_add(b, ": ", 2);
    rsl__srv_out_str(b, value);
    rsl__srv_out_add(b, "\r\n", 2);
}

void rsl__srv_out_fmt(outbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void rsl__srv_out_fmt(outbuf *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0) {
        rsl__srv_out_add(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
    }
}

/* An answer is built in one buffer: answer_begin (the status line, room reserved for the
 * rest), the caller's header lines, then answer_send (length, connection, body). */
static int answer_status(int status) {
    return status < 100 || status > 599 ? 500 : status;
}

void rsl__srv_answer_begin(outbuf *b, int status, size_t reserve) {
    status = answer_status(status);
    /* The status line, the length and connection lines and their CRLFs fit in 128 bytes
     * beside what the caller reserves.  Formatted by hand: vsnprintf was about 7% of the
     * sidecar's instructions per proxied request (callgrind). */
    memset(b, 0, sizeof(*b));
    b->oom = rsl__srv_grow(&b->p, &b->cap, 128 + reserve) < 0;
    rsl__srv_out_add(b, "HTTP/1.1 ", 9);
    out_uint(b, (unsigned)status);
    rsl__srv_out_add(b, " ", 1);
    rsl__srv_out_str(b, reason_phrase(status));
    rsl__srv_out_add(b, "\r\n", 2);
}

/*
 * Finishes and writes an answer begun with answer_begin: the length, the connection
 * header and the body; takes b.  The connection closes after it when the request said so,
 * when close_after is set, or while draining.
 */
void rsl__srv_answer_send(conn *c, outbuf *b, int status, const char *body, size_t len,
                          int close_after) {
    srv_worker *w = c->w;
    status = answer_status(status);
    c->close_after = close_after || !c->keep_alive || w->draining;
    int no_body = status == 204 || status == 304 || status < 200;
    if (!no_body) {
        rsl__srv_out_add(b, "Content-Length: ", 16);
        out_uint(b, len);
        rsl__srv_out_add(b, "\r\n", 2);
    }
    if (c->close_after) {
        rsl__srv_out_str(b, "Connection: close\r\n");
    } else if (c->p.http_major == 1 && c->p.http_minor == 0) {
        rsl__srv_out_str(b, "Connection: keep-alive\r\n");
    }
    rsl__srv_out_add(b, "\r\n", 2);
    if (!no_body && !c->head && len) {
        rsl__srv_out_add(b, body, len);
    }
    relaxed_inc(&w->by_status[status]);
    if (w->s->alog) {
        rsl__srv_log_answer(c, status, no_body || c->head ? 0 : len);
    }
    if (b->oom) {
        free(b->p);
        rsl__srv_conn_close(c);
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
        uv_timer_start(&c->timer, rsl__srv_on_timer, 0, 0);
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
        rsl__srv_conn_close(c);
        return;
    }
    /* A client that stops reading cannot hold the connection forever. */
    rsl__srv_timer_set(c, T_WRITING, w->s->o.request_timeout_ns);
}

/* An answer with `headers` (lines ending in CRLF, may be NULL). */
void rsl__srv_respond(conn *c, int status, const char *headers, const char *body, size_t len,
                      int close_after) {
    size_t hlen = headers ? strlen(headers) : 0;
    outbuf b;
    rsl__srv_answer_begin(&b, status, hlen + len);
    if (headers) {
        rsl__srv_out_add(&b, headers, hlen);
    }
    rsl__srv_answer_send(c, &b, status, body, len, close_after);
}

/* {"error": msg} */
void rsl__srv_respond_error(conn *c, int status, const char *msg, int close_after) {
    json_t *o = json_pack("{s:s}", "error", msg);
    char *js = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    outbuf body = {0};
    rsl__srv_out_str(&body, js ? js : "{\"error\":\"out of memory\"}");
    rsl__srv_out_str(&body, "\n");
    free(js);
    rsl__srv_respond(c, status, "Content-Type: application/json\r\n", body.p ? body.p : "",
                     body.len, close_after);
    free(body.p);
}

void rsl__srv_respond_reject(conn *c, int rej, const char *msg) {
    relaxed_inc(&c->w->rejected[rej]);
    c->busy = 1;
    c->linger_wanted = 1;
    rsl__srv_respond_error(c, rsl__srv_reject_status[rej], msg, 1);
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
    c->hdr_keep = HK_NONE;
    memset(c->hk_len, 0, sizeof(c->hk_len));
    memset(c->hk_seen, 0, sizeof(c->hk_seen));
    if (c->w->s->alog) {
        c->t0 = uv_hrtime();
    }
    c->url_len = 0;
    c->body_len = 0;
    rsl__srv_timer_set(c, T_READING, c->w->s->o.request_timeout_ns);
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
    if (rsl__srv_grow(&c->url, &c->url_cap, c->url_len + n + 1) < 0) {
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

static int name_is(const conn *c, const char *lit) {
    size_t n = strlen(lit);
    return c->hname_len == n && memcmp(c->hname, lit, n) == 0;
}

/* The buffer kept for header kind k, and its size. */
static char *kept(conn *c, int k, size_t *cap) {
    switch (k) {
    case HK_TRACEPARENT:
        *cap = HK_TRACEPARENT_MAX;
        return c->traceparent;
    case HK_TRACESTATE:
        *cap = HK_TRACESTATE_MAX;
        return c->tracestate;
    case HK_DEADLINE_MS:
        *cap = HK_NUMBER_MAX;
        return c->deadline_ms;
    default:
        *cap = HK_NUMBER_MAX;
        return c->grpc_timeout;
    }
}

/* Appends a piece of a kept header's value (the parser may hand it over in pieces); a
 * value past its cap is marked (length cap + 1) and ignored. */
static void keep_value(conn *c, const char *at, size_t n, int first) {
    size_t cap;
    char *b = kept(c, c->hdr_keep, &cap);
    size_t *len = &c->hk_len[c->hdr_keep];
    if (first && c->hdr_keep == HK_TRACESTATE && *len > 0 && *len <= cap) {
        if (*len + 1 > cap) { /* tracestate headers combine into one list (W3C 3.3.1.1) */
            *len = cap + 1;
            return;
        }
        b[(*len)++] = ',';
    } else if (first) {
        *len = 0;
    }
    if (*len > cap || *len + n > cap) {
        *len = cap + 1;
        return;
    }
    memcpy(b + *len, at, n);
    *len += n;
    b[*len] = 0;
}

static int on_header_value(http_parser *p, const char *at, size_t n) {
    conn *c = p->data;
    int first = 0;
    if (c->in_field) {
        c->in_field = 0;
        first = 1;
        c->hdr_expect = name_is(c, "expect");
        c->hdr_keep = name_is(c, "traceparent")             ? HK_TRACEPARENT
                      : name_is(c, "tracestate")            ? HK_TRACESTATE
                      : name_is(c, "x-resilua-deadline-ms") ? HK_DEADLINE_MS
                      : name_is(c, "grpc-timeout")          ? HK_GRPC_TIMEOUT
                                                            : HK_NONE;
        if (c->hdr_keep) {
            c->hk_seen[c->hdr_keep]++;
        }
    }
    if (count_header_bytes(c, n) < 0) {
        return limit(c, REJ_HEADER_TOO_LARGE);
    }
    if (c->hdr_keep) {
        keep_value(c, at, n, first);
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
    if (rsl__srv_grow(&c->body, &c->body_cap, c->body_len + n + 1) < 0) {
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
            rsl__srv_conn_close(c);
        }
        return;
    }
    if (n < 0) {
        /* EOF or an error: the client is gone, or half-closed -- either way nothing more
         * will come, and a call it is waiting on has nobody to answer. */
        if (c->call_pending && c->call_id) {
            relaxed_inc(&c->w->client_aborts);
        }
        rsl__srv_conn_close(c);
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
                    rsl__srv_conn_close(c);
                    return;
                }
                rsl__srv_timer_set(c, T_IDLE, w->s->o.idle_timeout_ns);
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
            rsl__srv_respond_reject(c, rej, msg);
            return;
        }
        if (e == HPE_HEADER_OVERFLOW) {
            rsl__srv_respond_reject(c, REJ_HEADER_TOO_LARGE, "request header too large");
            return;
        }
        if (e != HPE_OK && e != HPE_PAUSED) {
            char msg[200];
            snprintf(msg, sizeof(msg), "malformed request: %s", http_errno_description(e));
            rsl__srv_respond_reject(c, REJ_MALFORMED, msg);
            return;
        }
        if (fr == RSL_FRAME_BAD || (fr == RSL_FRAME_DONE) != (e == HPE_PAUSED) || n != used) {
            char msg[200];
            snprintf(msg, sizeof(msg), "ambiguous request framing: %s",
                     why ? why : "the parsers disagree on where the request ends");
            rsl__srv_respond_reject(c, REJ_FRAMING, msg);
            return;
        }
        if (e == HPE_PAUSED) {
            http_parser_pause(&c->p, 0);
            c->w->s->dispatch(c);
            continue;
        }
    }
    if (c->busy) {
        want_read(c);
    }
}

void rsl__srv_on_timer(uv_timer_t *t) {
    conn *c = t->data;
    int state = c->timer_state;
    c->timer_state = T_NONE;
    switch (state) {
    case T_IDLE:
        relaxed_inc(&c->w->idle_closed);
        rsl__srv_conn_close(c);
        break;
    case T_READING:
        if (!c->busy) {
            rsl__srv_respond_reject(c, REJ_REQUEST_TIMEOUT, "request not complete in time");
        }
        break;
    case T_WRITING:
    case T_LINGER:
        rsl__srv_conn_close(c);
        break;
    case T_WRITTEN:
        written(c, 0);
        break;
    }
}

/* ---- accepting ----------------------------------------------------------------------------- */

void rsl__srv_on_connection(uv_stream_t *ls, int status) {
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
        rsl__srv_conn_close(c);
        return;
    }
    relaxed_inc(&w->accepted);
    uv_tcp_nodelay(&c->tcp, 1);
    drive(c); /* nothing buffered: arms the idle timer and starts reading */
}
