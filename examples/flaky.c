/*
 * flaky -- a small HTTP/1.1 upstream that misbehaves on request, for tests, the demo and
 * benchmarks.  One thread, one libuv loop, http_parser; keep-alive and pipelining
 * (requests are parsed in order and answered in order, even when an earlier answer is
 * delayed); Content-Length bodies only.
 *
 *   example_flaky [--listen 127.0.0.1:0] [--fail PCT] [--slow MS] [--slow-percent PCT]
 *                 [--down-every SEC --down-for SEC] [--seed N] [--quiet]
 *
 * Prints one line "listening HOST:PORT" on stdout (the real port when given 0), then
 * serves until SIGTERM or SIGINT (exit 0).  Every answer is 200 with
 * {"path":"<url path>","n":<request counter>} unless a mode or the query says otherwise:
 *   --fail PCT            that share answers 503 {"error":"injected"}
 *   --slow MS             answers are delayed by MS (a timer: nothing blocks) ...
 *   --slow-percent PCT    ... for that share of them (default 100)
 *   --capacity N          a server of N workers: at most N delayed answers are in service
 *                         at once; more wait their turn in a queue of at most N, and
 *                         beyond that an answer is 503 {"error":"over capacity"} at once.
 *                         The queue is what makes latency rise with load, as a real
 *                         server's does (0: no limit, the default)
 *   --down-every/--for    periodically closes the listening socket (connects are refused)
 *                         and resets open connections, then listens again on the port
 *   query: status=NNN (answer that status), delay=MS, bytes=N (a body of N 'x'),
 *          close=1 (close the connection instead of answering), chunked=1 (send the body
 *          as one chunk, without Content-Length: clients cannot size it in advance)
 * Control endpoints (not counted, never failed or delayed):
 *   POST /_control?fail=PCT&slow=MS&slow_percent=PCT&capacity=N&down=MS   change modes; down=MS goes
 *        down now for MS ms, after this answer is written
 *   GET /_stats   {"requests":N,"connections":N,"over_capacity":N,"peak_in_service":N,
 *                 "paths":{"/a":3,...}} (connections
 *                 accepted: a client that reuses its keep-alive connections keeps it low)
 *   POST /_reset  zeroes them
 *   GET /_last    {"method":..,"url":..,"headers":{..},"body":..} of the last request
 * A request the parser rejects gets 400 and the connection is closed.
 *
 * The fast path (a plain 200) allocates nothing per request once warm: request bytes go
 * into per-connection buffers that are reused, the answers of one read are rendered into
 * one buffer and sent with one uv_write whose request and buffer come from a pool.
 */
#include <http_parser.h>
#include <jansson.h>
#include <uv.h>

#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- buffers ------------------------------------------------------------------------------ */

typedef struct sbuf {
    char *p;
    size_t len, cap;
} sbuf;

/* Room for n more bytes plus a NUL; aborts on OOM (a test server has no better answer). */
static void sb_reserve(sbuf *b, size_t n) {
    if (b->len + n + 1 <= b->cap) {
        return;
    }
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1) {
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (!p) {
        fprintf(stderr, "flaky: out of memory\n");
        abort();
    }
    b->p = p;
    b->cap = cap;
}

static void sb_add(sbuf *b, const char *s, size_t n) {
    sb_reserve(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void sb_addf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_addf(sbuf *b, const char *fmt, ...) {
    va_list ap;
    for (;;) {
        size_t room = b->cap > b->len ? b->cap - b->len : 0;
        va_start(ap, fmt);
        int n = vsnprintf(room ? b->p + b->len : NULL, room, fmt, ap);
        va_end(ap);
        if (n < 0) {
            return;
        }
        if ((size_t)n < room) {
            b->len += (size_t)n;
            return;
        }
        sb_reserve(b, (size_t)n);
    }
}

static void sb_free(sbuf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ---- state ------------------------------------------------------------------------------- */

typedef struct conn conn;

/* An answer that cannot go out yet: it is delayed, or an earlier one on its connection
 * is.  Only the slow paths allocate one. */
typedef struct pending {
    struct pending *next;
    conn *c;
    uv_timer_t timer; /* when has_timer; the pending is freed from its close callback */
    int has_timer;
    int ready;
    int close; /* close=1: the connection closes here instead of answering */
    sbuf data;
    /* --capacity: in service (counted in in_service while its timer runs), or waiting for
     * a worker in the global queue, its timer not started yet. */
    int service, waiting;
    int64_t svc_ms;
    struct pending *wnext;
} pending;

struct conn {
    uv_tcp_t tcp; /* first: callbacks get the handle */
    http_parser parser;
    conn *prev, *next;
    /* The request being parsed: target, "name\0value\0" pairs (names lowercased), body. */
    sbuf url, hdrs, body;
    int nhdrs;
    int hstate; /* 0 start, 1 in a name, 2 in a value */
    pending *head, *tail;
    sbuf out;    /* answers ready to send, written once per read (or timer) */
    int nwrites; /* uv_writes in flight */
    int refs;    /* the tcp handle + pending timers */
    int no_more; /* no further requests: close once everything before is written */
    int closing;
    int graceful;    /* asked for down=MS: gets a FIN after its answer, not a reset */
    int64_t down_ms; /* go down once the current output is written */
};

typedef struct wreq {
    uv_write_t req;
    conn *c;
    sbuf buf;
    int64_t down_ms;
    struct wreq *next;
} wreq;

static uv_loop_t *loop;
static http_parser_settings settings;
static struct sockaddr_storage listen_addr;
static char listen_host[64];
static uv_tcp_t *server;       /* NULL while down */
static uv_timer_t up_timer;    /* ends a down period */
static uv_timer_t every_timer; /* starts the periodic ones */
static uv_signal_t sig_term, sig_int;
static conn *conns;
static wreq *wpool;
static int nwpool;
static char rbuf[64 * 1024]; /* one thread: every read lands here and is consumed at once */

static int quiet;
static double fail_pct, slow_pct = 100;
static int64_t slow_ms, down_every_ms, down_for_ms;
static uint64_t rng = 0x9E3779B97F4A7C15ULL;

static int64_t requests, connections;
static int64_t capacity, in_service, peak_in_service, nwaiting, over_capacity;
static pending *wait_head, *wait_tail;
static json_t *paths; /* path -> count */
static sbuf last_url, last_hdrs, last_body;
static int last_nhdrs;
static const char *last_method;

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...) {
    if (quiet) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "flaky: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* xorshift64*: reproducible with --seed, and cheap. */
static double pct_draw(void) {
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (double)((rng * 0x2545F4914F6CDD1DULL) >> 11) / (double)(1ULL << 53) * 100.0;
}

/* ---- connections ----------------------------------------------------------------------- */

static void conn_unref(conn *c) {
    if (--c->refs > 0) {
        return;
    }
    sb_free(&c->url);
    sb_free(&c->hdrs);
    sb_free(&c->body);
    sb_free(&c->out);
    free(c);
}

static void on_conn_closed(uv_handle_t *h) {
    conn_unref((conn *)h);
}

static void on_pending_timer(uv_timer_t *t);

/* A worker is free: the next waiting answer starts its service. */
static void service_done(void) {
    in_service--;
    while (wait_head && (capacity <= 0 || in_service < capacity)) {
        pending *n = wait_head;
        wait_head = n->wnext;
        if (!wait_head) {
            wait_tail = NULL;
        }
        nwaiting--;
        n->waiting = 0;
        n->service = 1;
        if (++in_service > peak_in_service) {
            peak_in_service = in_service;
        }
        uv_timer_start(&n->timer, on_pending_timer, (uint64_t)n->svc_ms, 0);
    }
}

static void unwait(pending *p) {
    pending **pp = &wait_head, *prev = NULL;
    while (*pp && *pp != p) {
        prev = *pp;
        pp = &(*pp)->wnext;
    }
    if (*pp) {
        *pp = p->wnext;
        if (wait_tail == p) {
            wait_tail = prev;
        }
        nwaiting--;
    }
    p->waiting = 0;
}

static void on_pending_closed(uv_handle_t *h) {
    pending *p = h->data;
    conn *c = p->c;
    sb_free(&p->data);
    free(p);
    conn_unref(c);
}

static void pending_free(pending *p) {
    if (p->waiting) {
        unwait(p);
    }
    if (p->service) {
        p->service = 0;
        service_done();
    }
    if (p->has_timer) {
        uv_close((uv_handle_t *)&p->timer, on_pending_closed);
    } else {
        sb_free(&p->data);
        free(p);
    }
}

/* reset: an RST (the "down" mode), unless the connection asked for the down itself. */
static void conn_close(conn *c, int reset) {
    if (c->closing) {
        return;
    }
    c->closing = 1;
    if (c->prev) {
        c->prev->next = c->next;
    } else {
        conns = c->next;
    }
    if (c->next) {
        c->next->prev = c->prev;
    }
    while (c->head) {
        pending *p = c->head;
        c->head = p->next;
        pending_free(p);
    }
    c->tail = NULL;
    uv_read_stop((uv_stream_t *)&c->tcp);
    if (!reset || c->graceful || uv_tcp_close_reset(&c->tcp, on_conn_closed) != 0) {
        uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    }
}

static void conn_check_close(conn *c) {
    if (!c->closing && c->no_more && !c->head && c->out.len == 0 && c->nwrites == 0) {
        conn_close(c, 0);
    }
}

static void go_down(int64_t ms);

static void on_written(uv_write_t *req, int status) {
    wreq *w = (wreq *)req;
    conn *c = w->c;
    int64_t down = w->down_ms;
    c->nwrites--;
    if (w->buf.cap > 256 * 1024 || nwpool >= 1024) {
        sb_free(&w->buf); /* do not hoard the buffers of large bodies */
    }
    w->buf.len = 0;
    w->next = wpool;
    wpool = w;
    nwpool++;
    if (status < 0) {
        conn_close(c, 0);
    } else {
        conn_check_close(c);
    }
    if (down > 0) {
        go_down(down);
    }
}

/* Sends what is in c->out with one uv_write; the buffer moves to a pooled write request
 * and the connection takes that request's old (empty) buffer. */
static void flush(conn *c) {
    if (c->closing || c->out.len == 0) {
        return;
    }
    wreq *w = wpool;
    if (w) {
        wpool = w->next;
        nwpool--;
    } else {
        w = calloc(1, sizeof(*w));
        if (!w) {
            abort();
        }
    }
    sbuf t = w->buf;
    w->buf = c->out;
    c->out = t;
    c->out.len = 0;
    w->c = c;
    w->down_ms = c->down_ms;
    c->down_ms = 0;
    uv_buf_t b = uv_buf_init(w->buf.p, (unsigned)w->buf.len);
    c->nwrites++;
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_written);
    if (rc != 0) {
        on_written(&w->req, rc);
    }
}

/* Moves every answer that may go out now (in order) to c->out. */
static void drain_queue(conn *c) {
    while (c->head && c->head->ready) {
        pending *p = c->head;
        c->head = p->next;
        if (!c->head) {
            c->tail = NULL;
        }
        if (p->close) {
            c->no_more = 1;
            while (c->head) { /* nothing is parsed after a close, but be sure */
                pending *q = c->head;
                c->head = q->next;
                pending_free(q);
            }
            c->tail = NULL;
        } else {
            sb_add(&c->out, p->data.p, p->data.len);
        }
        pending_free(p);
    }
}

static void on_pending_timer(uv_timer_t *t) {
    pending *p = t->data;
    conn *c = p->c;
    p->ready = 1;
    if (p->service) {
        p->service = 0;
        service_done();
    }
    drain_queue(c);
    flush(c);
    conn_check_close(c);
}

/* ---- answers ----------------------------------------------------------------------------- */

static const char *reason(int status) {
    const char *r = http_status_str((enum http_status)status);
    return r && r[0] != '<' ? r : "Unknown";
}

/* One whole answer.  body == NULL: a body of nx 'x'.  No body (and no Content-Length)
 * for 1xx, 204 and 304; a HEAD answer has the length but no body.  chunked: the body as
 * one chunk and the terminating one. */
static void render(sbuf *out, int status, const char *ctype, const char *body, size_t blen,
                   size_t nx, int head, int close, int chunked) {
    size_t len = body ? blen : nx;
    const char *conn_hdr = close ? "Connection: close\r\n" : "";
    if (status < 200 || status == 204 || status == 304) {
        sb_addf(out, "HTTP/1.1 %d %s\r\n%s\r\n", status, reason(status), conn_hdr);
        return;
    }
    if (chunked) {
        sb_addf(out, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n%s\r\n",
                status, reason(status), ctype, conn_hdr);
        if (head) {
            return;
        }
        if (len) {
            sb_addf(out, "%zx\r\n", len);
        }
    } else {
        sb_addf(out, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s\r\n", status,
                reason(status), ctype, len, conn_hdr);
        if (head) {
            return;
        }
    }
    if (body) {
        sb_add(out, body, blen);
    } else {
        sb_reserve(out, nx);
        memset(out->p + out->len, 'x', nx);
        out->len += nx;
        out->p[out->len] = 0;
    }
    if (chunked) {
        sb_add(out, len ? "\r\n0\r\n\r\n" : "0\r\n\r\n", len ? 7 : 5);
    }
}

/* Where an answer goes: straight to c->out when nothing is ahead of it and it is not
 * delayed (the fast path), else into a queued pending. */
static sbuf *answer_slot(conn *c, int64_t delay_ms, int close, pending **pp) {
    *pp = NULL;
    if (!c->head && delay_ms <= 0 && !close) {
        return &c->out;
    }
    pending *p = calloc(1, sizeof(*p));
    if (!p) {
        abort();
    }
    p->c = c;
    p->close = close;
    p->ready = delay_ms <= 0;
    if (delay_ms > 0) {
        uv_timer_init(loop, &p->timer);
        p->timer.data = p;
        p->has_timer = 1;
        c->refs++;
        uv_timer_start(&p->timer, on_pending_timer, (uint64_t)delay_ms, 0);
    }
    if (c->tail) {
        c->tail->next = p;
    } else {
        c->head = p;
    }
    c->tail = p;
    *pp = p;
    return &p->data;
}

static void answer_json(conn *c, int status, const char *json, int head, int close) {
    pending *p;
    sbuf *out = answer_slot(c, 0, 0, &p);
    render(out, status, "application/json", json, strlen(json), 0, head, close, 0);
}

static void json_escape(sbuf *b, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            char e[2] = {'\\', (char)ch};
            sb_add(b, e, 2);
        } else if (ch < 0x20) {
            sb_addf(b, "\\u%04x", ch);
        } else {
            sb_add(b, (const char *)&ch, 1);
        }
    }
}

/* The value of `key` in a query string as an integer, or dflt. */
static int64_t qint(const char *q, size_t qlen, const char *key, int64_t dflt) {
    size_t kl = strlen(key);
    const char *p = q, *end = q + qlen;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *e = amp ? amp : end;
        if ((size_t)(e - p) > kl && memcmp(p, key, kl) == 0 && p[kl] == '=') {
            char num[32];
            size_t nl = (size_t)(e - p - (ptrdiff_t)kl - 1);
            if (nl >= sizeof(num)) {
                nl = sizeof(num) - 1;
            }
            memcpy(num, p + kl + 1, nl);
            num[nl] = 0;
            return strtoll(num, NULL, 10);
        }
        p = e + 1;
    }
    return dflt;
}

/* A JSON string of arbitrary bytes: as is when valid UTF-8, else with '?' for the bytes
 * above 0x7f (the answer must stay JSON). */
static json_t *json_bytes(const char *s, size_t n) {
    json_t *j = json_stringn(s, n);
    if (j) {
        return j;
    }
    char *t = malloc(n + 1);
    if (!t) {
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        t[i] = (unsigned char)s[i] < 0x80 ? s[i] : '?';
    }
    j = json_stringn(t, n);
    free(t);
    return j;
}

static void answer_dump(conn *c, int status, json_t *j, int head, int close) {
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    answer_json(c, s ? status : 500, s ? s : "{\"error\":\"out of memory\"}", head, close);
    free(s);
    json_decref(j);
}

static void control(conn *c, const char *path, const char *q, size_t qlen, int head, int close) {
    if (strcmp(path, "/_stats") == 0) {
        answer_dump(c, 200,
                    json_pack("{s:I,s:I,s:I,s:I,s:O}", "requests", (json_int_t)requests,
                              "connections", (json_int_t)connections, "over_capacity",
                              (json_int_t)over_capacity, "peak_in_service",
                              (json_int_t)peak_in_service, "paths", paths),
                    head, close);
    } else if (strcmp(path, "/_reset") == 0) {
        requests = connections = over_capacity = peak_in_service = 0;
        json_object_clear(paths);
        answer_json(c, 200, "{\"ok\":true}", head, close);
    } else if (strcmp(path, "/_last") == 0) {
        if (!last_method) {
            answer_json(c, 404, "{\"error\":\"no request yet\"}", head, close);
            return;
        }
        json_t *h = json_object();
        const char *p = last_hdrs.p;
        for (int i = 0; i < last_nhdrs && h; i++) {
            const char *v = p + strlen(p) + 1;
            json_object_set_new(h, p, json_bytes(v, strlen(v)));
            p = v + strlen(v) + 1;
        }
        answer_dump(c, 200,
                    json_pack("{s:s,s:o,s:o,s:o}", "method", last_method, "url",
                              json_bytes(last_url.p ? last_url.p : "", last_url.len), "headers", h,
                              "body", json_bytes(last_body.p ? last_body.p : "", last_body.len)),
                    head, close);
    } else { /* /_control */
        fail_pct = (double)qint(q, qlen, "fail", (int64_t)fail_pct);
        slow_ms = qint(q, qlen, "slow", slow_ms);
        slow_pct = (double)qint(q, qlen, "slow_percent", (int64_t)slow_pct);
        capacity = qint(q, qlen, "capacity", capacity);
        int64_t down = qint(q, qlen, "down", 0);
        char s[200];
        snprintf(s, sizeof(s),
                 "{\"fail\":%g,\"slow\":%lld,\"slow_percent\":%g,\"capacity\":%lld,"
                 "\"down\":%lld}",
                 fail_pct, (long long)slow_ms, slow_pct, (long long)capacity, (long long)down);
        logf_("control: %s", s);
        if (down > 0) {
            /* The answer goes out first, with a FIN; then the server goes down. */
            c->graceful = 1;
            c->down_ms = down;
            close = 1;
            c->no_more = 1;
        }
        answer_json(c, 200, s, head, close);
    }
}

static int is_control(const char *path) {
    return strcmp(path, "/_control") == 0 || strcmp(path, "/_stats") == 0 ||
           strcmp(path, "/_reset") == 0 || strcmp(path, "/_last") == 0;
}

static void bad_request(conn *c, const char *why) {
    char s[128];
    snprintf(s, sizeof(s), "{\"error\":\"%s\"}", why);
    c->no_more = 1;
    answer_json(c, 400, s, 0, 1);
}

/* A whole request has been parsed (c->url, c->hdrs, c->body): answer it or queue the
 * answer. */
static int on_message_complete(http_parser *hp) {
    conn *c = hp->data;
    int head = hp->method == HTTP_HEAD;
    int close = !http_should_keep_alive(hp);
    if (close) {
        c->no_more = 1;
        http_parser_pause(hp, 1); /* nothing after it is read */
    }
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (!c->url.p || http_parser_parse_url(c->url.p, c->url.len, 0, &u) != 0) {
        bad_request(c, "bad request target");
        http_parser_pause(hp, 1);
        return 0;
    }
    const char *path = "/";
    size_t plen = 1;
    char *cut = NULL, saved = 0;
    if (u.field_set & (1 << UF_PATH)) {
        cut = c->url.p + u.field_data[UF_PATH].off + u.field_data[UF_PATH].len;
        saved = *cut;
        *cut = 0; /* restored below: the URL stays whole for /_last */
        path = c->url.p + u.field_data[UF_PATH].off;
        plen = u.field_data[UF_PATH].len;
    }
    const char *q = "";
    size_t qlen = 0;
    if (u.field_set & (1 << UF_QUERY)) {
        q = c->url.p + u.field_data[UF_QUERY].off;
        qlen = u.field_data[UF_QUERY].len;
    }
    if (is_control(path)) {
        control(c, path, q, qlen, head, close);
        if (cut) {
            *cut = saved;
        }
        return 0;
    }

    requests++;
    json_t *cnt = json_object_get(paths, path);
    if (cnt) {
        json_integer_set(cnt, json_integer_value(cnt) + 1);
    } else {
        json_object_set_new(paths, path, json_integer(1));
    }

    int64_t status = qint(q, qlen, "status", 0);
    int64_t delay = qint(q, qlen, "delay", -1);
    int64_t bytes = qint(q, qlen, "bytes", -1);
    int closenow = qint(q, qlen, "close", 0) != 0;
    int chunked = qint(q, qlen, "chunked", 0) != 0;
    int injected = 0;
    if (status == 0) {
        injected = fail_pct > 0 && pct_draw() < fail_pct;
        status = injected ? 503 : 200;
    } else if (status < 200 || status > 599) {
        status = 400;
    }
    if (delay < 0) {
        delay = slow_ms > 0 && (slow_pct >= 100 || pct_draw() < slow_pct) ? slow_ms : 0;
    }
    if (bytes > 256LL << 20) {
        bytes = 256LL << 20;
    }
    if (closenow) {
        c->no_more = 1;
        http_parser_pause(hp, 1);
    }

    /* --capacity: a delayed answer needs a worker; it waits for one, or is turned away. */
    int queue = 0;
    if (capacity > 0 && delay > 0 && !closenow && in_service >= capacity) {
        if (nwaiting >= capacity) {
            over_capacity++;
            status = 503;
            injected = 2;
            delay = 0;
        } else {
            queue = 1;
        }
    }
    pending *p;
    sbuf *out = answer_slot(c, delay, closenow, &p);
    if (p && p->has_timer && capacity > 0) {
        p->svc_ms = delay;
        if (queue) {
            uv_timer_stop(&p->timer);
            p->waiting = 1;
            if (wait_tail) {
                wait_tail->wnext = p;
            } else {
                wait_head = p;
            }
            wait_tail = p;
            nwaiting++;
        } else {
            p->service = 1;
            if (++in_service > peak_in_service) {
                peak_in_service = in_service;
            }
        }
    }
    if (!closenow) {
        if (bytes >= 0) {
            render(out, (int)status, "text/plain", NULL, 0, (size_t)bytes, head, close, chunked);
        } else if (injected == 2) {
            static const char over[] = "{\"error\":\"over capacity\"}";
            render(out, (int)status, "application/json", over, sizeof(over) - 1, 0, head, close,
                   chunked);
        } else if (injected) {
            static const char inj[] = "{\"error\":\"injected\"}";
            render(out, (int)status, "application/json", inj, sizeof(inj) - 1, 0, head, close,
                   chunked);
        } else {
            char body[512];
            size_t bl = 0;
            if (plen < 400) { /* the common case on the stack, escaped in place */
                bl = (size_t)snprintf(body, sizeof(body), "{\"path\":\"");
                for (size_t i = 0; i < plen; i++) {
                    unsigned char ch = (unsigned char)path[i];
                    if (ch == '"' || ch == '\\' || ch < 0x20) {
                        bl = 0;
                        break;
                    }
                    body[bl++] = (char)ch;
                }
                if (bl) {
                    bl += (size_t)snprintf(body + bl, sizeof(body) - bl, "\",\"n\":%lld}",
                                           (long long)requests);
                }
            }
            if (bl) {
                render(out, (int)status, "application/json", body, bl, 0, head, close, chunked);
            } else {
                sbuf b = {0};
                sb_add(&b, "{\"path\":\"", 9);
                json_escape(&b, path, plen);
                sb_addf(&b, "\",\"n\":%lld}", (long long)requests);
                render(out, (int)status, "application/json", b.p, b.len, 0, head, close, chunked);
                sb_free(&b);
            }
        }
    }
    if (cut) {
        *cut = saved;
    }

    /* Keep this request for /_last: swap buffers, no copy. */
    sbuf t;
    t = last_url, last_url = c->url, c->url = t;
    t = last_hdrs, last_hdrs = c->hdrs, c->hdrs = t;
    t = last_body, last_body = c->body, c->body = t;
    last_nhdrs = c->nhdrs;
    last_method = http_method_str((enum http_method)hp->method);
    return 0;
}

static int on_message_begin(http_parser *hp) {
    conn *c = hp->data;
    c->url.len = c->hdrs.len = c->body.len = 0;
    c->nhdrs = 0;
    c->hstate = 0;
    return 0;
}

static int on_url(http_parser *hp, const char *at, size_t n) {
    sb_add(&((conn *)hp->data)->url, at, n);
    return 0;
}

static int on_header_field(http_parser *hp, const char *at, size_t n) {
    conn *c = hp->data;
    if (c->hstate != 1) {
        if (c->hstate == 2) {
            sb_add(&c->hdrs, "", 1); /* ends the previous value */
        }
        c->nhdrs++;
        c->hstate = 1;
    }
    sb_reserve(&c->hdrs, n);
    for (size_t i = 0; i < n; i++) {
        char ch = at[i];
        c->hdrs.p[c->hdrs.len++] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
    }
    c->hdrs.p[c->hdrs.len] = 0;
    return 0;
}

static int on_header_value(http_parser *hp, const char *at, size_t n) {
    conn *c = hp->data;
    if (c->hstate == 1) {
        sb_add(&c->hdrs, "", 1); /* ends the name */
        c->hstate = 2;
    }
    sb_add(&c->hdrs, at, n);
    return 0;
}

static int on_headers_complete(http_parser *hp) {
    conn *c = hp->data;
    if (c->hstate == 1) {
        sb_add(&c->hdrs, "", 1); /* a name with no value at all */
        sb_add(&c->hdrs, "", 1);
    } else if (c->hstate == 2) {
        sb_add(&c->hdrs, "", 1);
    }
    c->hstate = 0;
    return 0;
}

static int on_body(http_parser *hp, const char *at, size_t n) {
    sb_add(&((conn *)hp->data)->body, at, n);
    return 0;
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
    *buf = uv_buf_init(rbuf, sizeof(rbuf));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    conn *c = (conn *)s;
    if (nread < 0) {
        if (nread == UV_EOF) { /* half-closed: finish what was asked, then close */
            c->no_more = 1;
            uv_read_stop(s);
            conn_check_close(c);
        } else {
            conn_close(c, 0);
        }
        return;
    }
    if (nread == 0 || c->no_more) {
        return;
    }
    http_parser_execute(&c->parser, &settings, buf->base, (size_t)nread);
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    if (!c->no_more && (e != HPE_OK || c->parser.upgrade)) {
        bad_request(c, e != HPE_OK ? http_errno_name(e) : "upgrade not supported");
    }
    if (c->no_more) {
        uv_read_stop(s);
    }
    drain_queue(c);
    flush(c);
    conn_check_close(c);
}

static void on_unaccepted_closed(uv_handle_t *h) {
    free(h);
}

static void on_connection(uv_stream_t *srv, int status) {
    if (status < 0) {
        return;
    }
    conn *c = calloc(1, sizeof(*c));
    if (!c) {
        abort();
    }
    uv_tcp_init(loop, &c->tcp);
    if (uv_accept(srv, (uv_stream_t *)&c->tcp) != 0) {
        uv_close((uv_handle_t *)&c->tcp, on_unaccepted_closed);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    c->refs = 1;
    connections++;
    c->next = conns;
    if (conns) {
        conns->prev = c;
    }
    conns = c;
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

/* ---- listening, down and up ------------------------------------------------------------- */

static void on_server_closed(uv_handle_t *h) {
    free(h);
}

static int do_listen(void) {
    uv_tcp_t *t = malloc(sizeof(*t));
    if (!t) {
        return UV_ENOMEM;
    }
    uv_tcp_init(loop, t);
    int rc = uv_tcp_bind(t, (const struct sockaddr *)&listen_addr, 0);
    if (rc == 0) {
        /* The backlog bounds connects in flight from a benchmark; the kernel caps it at
         * net.core.somaxconn anyway. */
        rc = uv_listen((uv_stream_t *)t, 4096, on_connection);
    }
    if (rc != 0) {
        uv_close((uv_handle_t *)t, on_server_closed);
        return rc;
    }
    int len = sizeof(listen_addr);
    uv_tcp_getsockname(t, (struct sockaddr *)&listen_addr, &len); /* the real port */
    server = t;
    return 0;
}

static void on_up(uv_timer_t *t) {
    int rc = do_listen();
    if (rc != 0) {
        logf_("listen again: %s; retrying", uv_strerror(rc));
        uv_timer_start(&up_timer, on_up, 50, 0);
        return;
    }
    logf_("up");
}

static void go_down(int64_t ms) {
    if (server) {
        uv_close((uv_handle_t *)server, on_server_closed);
        server = NULL;
    }
    while (conns) {
        conn_close(conns, 1);
    }
    logf_("down for %lld ms", (long long)ms);
    uv_timer_start(&up_timer, on_up, (uint64_t)ms, 0);
}

static void on_every(uv_timer_t *t) {
    go_down(down_for_ms);
}

static void on_signal(uv_signal_t *s, int signum) {
    uv_stop(loop);
}

/* ---- main -------------------------------------------------------------------------------- */

static void usage(void) {
    fprintf(stderr, "usage: example_flaky [--listen HOST:PORT] [--fail PCT] [--slow MS] "
                    "[--slow-percent PCT]\n"
                    "                     [--capacity N] [--down-every SEC --down-for SEC] [--seed N] "
                    "[--quiet]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *listen = "127.0.0.1:0";
    double every_s = 0, for_s = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--quiet") == 0) {
            quiet = 1;
            continue;
        }
        if (!v) {
            usage();
        }
        i++;
        if (strcmp(a, "--listen") == 0) {
            listen = v;
        } else if (strcmp(a, "--fail") == 0) {
            fail_pct = atof(v);
        } else if (strcmp(a, "--slow") == 0) {
            slow_ms = atoll(v);
        } else if (strcmp(a, "--slow-percent") == 0) {
            slow_pct = atof(v);
        } else if (strcmp(a, "--capacity") == 0) {
            capacity = atoll(v);
        } else if (strcmp(a, "--down-every") == 0) {
            every_s = atof(v);
        } else if (strcmp(a, "--down-for") == 0) {
            for_s = atof(v);
        } else if (strcmp(a, "--seed") == 0) {
            rng = strtoull(v, NULL, 10) * 0x9E3779B97F4A7C15ULL + 1; /* never 0 */
        } else {
            usage();
        }
    }
    const char *colon = strrchr(listen, ':');
    if (!colon || (size_t)(colon - listen) >= sizeof(listen_host)) {
        usage();
    }
    memcpy(listen_host, listen, (size_t)(colon - listen));
    int port = atoi(colon + 1);
    if (uv_ip4_addr(listen_host, port, (struct sockaddr_in *)&listen_addr) != 0 &&
        uv_ip6_addr(listen_host, port, (struct sockaddr_in6 *)&listen_addr) != 0) {
        fprintf(stderr, "example_flaky: bad --listen address %s\n", listen);
        return 2;
    }
    down_every_ms = (int64_t)(every_s * 1000);
    down_for_ms = (int64_t)(for_s * 1000);
    if ((down_every_ms > 0) != (down_for_ms > 0)) {
        fprintf(stderr, "example_flaky: --down-every and --down-for go together\n");
        return 2;
    }

    signal(SIGPIPE, SIG_IGN);
    loop = uv_default_loop();
    paths = json_object();
    settings.on_message_begin = on_message_begin;
    settings.on_url = on_url;
    settings.on_header_field = on_header_field;
    settings.on_header_value = on_header_value;
    settings.on_headers_complete = on_headers_complete;
    settings.on_body = on_body;
    settings.on_message_complete = on_message_complete;

    int rc = do_listen();
    if (rc != 0) {
        fprintf(stderr, "example_flaky: listen on %s: %s\n", listen, uv_strerror(rc));
        return 1;
    }
    int real_port =
        ntohs(listen_addr.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&listen_addr)->sin6_port
                                                : ((struct sockaddr_in *)&listen_addr)->sin_port);
    printf("listening %s:%d\n", listen_host, real_port);
    fflush(stdout);

    uv_timer_init(loop, &up_timer);
    uv_timer_init(loop, &every_timer);
    if (down_every_ms > 0) {
        uv_timer_start(&every_timer, on_every, (uint64_t)down_every_ms, (uint64_t)down_every_ms);
    }
    uv_signal_init(loop, &sig_term);
    uv_signal_start(&sig_term, on_signal, SIGTERM);
    uv_signal_init(loop, &sig_int);
    uv_signal_start(&sig_int, on_signal, SIGINT);
    if (fail_pct > 0 || slow_ms > 0 || down_every_ms > 0) {
        logf_("fail %g%%, slow %lld ms for %g%%, down every %lld ms for %lld ms", fail_pct,
              (long long)slow_ms, slow_pct, (long long)down_every_ms, (long long)down_for_ms);
    }

    uv_run(loop, UV_RUN_DEFAULT);
    /* Stopped by a signal: exit without tearing down (the kernel closes the sockets). */
    return 0;
}
