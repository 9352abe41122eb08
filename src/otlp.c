/*
 * otlp -- a worker's span exporter (otlp.h).
 *
 * The body is OTLP/HTTP's JSON encoding of ExportTraceServiceRequest
 * (opentelemetry-proto, "JSON Protobuf Encoding": ids as lowercase hex, 64-bit integers
 * as strings, enums as numbers), one resource (service.name) and one scope ("resilua").
 * A span is encoded when it is added, straight into the batch (see rsl__otlp_encode), so
 * the batch is one growing buffer: the document's head, the spans separated by commas, and
 * its tail added when it is sent.
 *
 * Layer: the loop and its I/O.  Loop thread.
 */
#include "otlp.h"

#include "dec.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_TIMEOUT_NS (5 * RSL_NS_PER_S)
#define DEFAULT_FLUSH_NS RSL_NS_PER_S
#define DEFAULT_MAX_BATCH 512
#define DEFAULT_MAX_INFLIGHT 2
#define TAIL "]}]}]}"

typedef struct batch {
    struct rsl__otlp *e;
    rsl__buf body;
    int n;
    rsl__http_xfer *x;
    struct batch *next; /* on the wire */
} batch;

struct rsl__otlp {
    uv_loop_t *loop;
    rsl__http *http;
    rsl__otlp_conf c;
    rsl__otlp_stats *st;
    void (*hold)(void *ud, int d);
    void *ud;
    uv_timer_t timer;
    int timer_on;
    int closing;
    int failing; /* the last batch failed: logged once, until one succeeds */
    char *head;  /* the document up to the spans' array */
    size_t head_len;
    batch *cur;  /* filling; NULL: none yet */
    batch *wire; /* sent, not answered */
    int inflight;
    size_t last_len; /* the last full batch's size: a new one starts with that much room */
};

json_t *rsl__json_bytes(const char *s, size_t n) {
    json_t *j = json_stringn(s, n);
    if (j) {
        return j;
    }
    rsl__buf b = {0};
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        json_t *one = len && i + len <= n ? json_stringn(s + i, len) : NULL;
        if (one) {
            rsl__buf_append(&b, s + i, len);
            i += len;
        } else {
            rsl__buf_append(&b, "\xef\xbf\xbd", 3);
            i++;
        }
        json_decref(one);
    }
    j = json_stringn(b.p ? b.p : "", b.len);
    rsl__buf_free(&b);
    return j;
}

static json_t *jstr(const char *s) {
    return rsl__json_bytes(s ? s : "", s ? strlen(s) : 0);
}

/* ---- a span's encoding --------------------------------------------------------------------
 * Written straight into the batch: a span is a fixed shape, and building it as a jansson
 * tree to dump it was most of what tracing cost a sampled call (a tree of ~40 small
 * allocations, and a dump that ran twice to learn the size). */

typedef struct jw {
    rsl__buf *b;
    int oom;
} jw;

/* Inline while the batch has room (a span is ~240 small pieces; the batch's buffer is
 * kept between batches, so it nearly always has). */
static inline void put(jw *w, const char *s, size_t n) {
    rsl__buf *b = w->b;
    if (b->len + n + 1 <= b->cap) {
        memcpy(b->p + b->len, s, n);
        b->len += n;
        b->p[b->len] = 0;
    } else if (!w->oom && rsl__buf_append(b, s, n) < 0) {
        w->oom = 1;
    }
}

/* A string literal (only: its size is taken). */
#define PUT(w, lit) put((w), "" lit, sizeof(lit) - 1)

/* The length of the well-formed UTF-8 sequence at s (RFC 3629: no overlongs, no
 * surrogates, nothing past U+10FFFF), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xbf;
    if (c < 0x80) {
        return 1;
    } else if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        lo = c == 0xe0 ? 0xa0 : 0x80;
        hi = c == 0xed ? 0x9f : 0xbf;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        lo = c == 0xf0 ? 0x90 : 0x80;
        hi = c == 0xf4 ? 0x8f : 0xbf;
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi) {
        return 0;
    }
    for (size_t i = 2; i < len; i++) {
        if (s[i] < 0x80 || s[i] > 0xbf) {
            return 0;
        }
    }
    return len;
}

/* A JSON string of s (NULL: ""): quotes, backslashes and control bytes escaped, invalid
 * UTF-8 replaced by U+FFFD, as rsl__json_bytes does. */
static void put_str(jw *w, const char *str) {
    const unsigned char *s = (const unsigned char *)(str ? str : "");
    size_t n = strlen((const char *)s), run = 0;
    PUT(w, "\"");
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        size_t len = c >= 0x20 && c < 0x80 && c != '"' && c != '\\' ? 1
                     : c >= 0x80                                   ? utf8_seq(s + i, n - i)
                                                                   : 0;
        if (len) {
            i += len;
            run += len;
            continue;
        }
        put(w, (const char *)s + i - run, run);
        run = 0;
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            put(w, esc, 2);
        } else if (c == '\n') {
            PUT(w, "\\n");
        } else if (c == '\t') {
            PUT(w, "\\t");
        } else if (c == '\r') {
            PUT(w, "\\r");
        } else if (c < 0x20) {
            static const char hex[] = "0123456789abcdef";
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            put(w, esc, 6);
        } else {
            PUT(w, "\xef\xbf\xbd");
        }
        i++;
    }
    put(w, (const char *)s + n - run, run);
    PUT(w, "\"");
}

/* v in decimal; quoted: OTLP's JSON encodes 64-bit integers as strings. */
/* A string known to need no escaping: the hex ids this runtime formats, the attribute
 * names span.c writes as literals. */
static void put_plain(jw *w, const char *s) {
    PUT(w, "\"");
    put(w, s, strlen(s));
    PUT(w, "\"");
}

static void put_int(jw *w, int64_t v, int quoted) {
    char d[24], *p = d + sizeof(d);
    if (quoted) {
        *--p = '"';
    }
    p = rsl__dec(p, v);
    if (quoted) {
        *--p = '"';
    }
    put(w, p, (size_t)(d + sizeof(d) - p));
}

static void put_attrs(jw *w, const rsl_span_attr *a, size_t n) {
    PUT(w, "\"attributes\":[");
    for (size_t i = 0; i < n; i++) {
        PUT(w, "{\"key\":");
        put_plain(w, a[i].key); /* span.c's literals */
        if (a[i].type == RSL_ATTR_STRING) {
            PUT(w, ",\"value\":{\"stringValue\":");
            put_str(w, a[i].str);
        } else if (a[i].type == RSL_ATTR_BOOL) {
            if (a[i].num) {
                PUT(w, ",\"value\":{\"boolValue\":true");
            } else {
                PUT(w, ",\"value\":{\"boolValue\":false");
            }
        } else {
            PUT(w, ",\"value\":{\"intValue\":");
            put_int(w, a[i].num, 1);
        }
        if (i + 1 < n) {
            PUT(w, "}},");
        } else {
            PUT(w, "}}");
        }
    }
    PUT(w, "]");
}

int rsl__otlp_encode(rsl__buf *b, const rsl_span *s) {
    size_t mark = b->len;
    jw w = {b, 0};
    PUT(&w, "{\"traceId\":");
    put_plain(&w, s->trace_id);
    PUT(&w, ",\"spanId\":");
    put_plain(&w, s->span_id);
    if (s->parent_span_id[0]) {
        PUT(&w, ",\"parentSpanId\":");
        put_plain(&w, s->parent_span_id);
    }
    PUT(&w, ",\"name\":");
    put_str(&w, s->name);
    PUT(&w, ",\"kind\":");
    put_int(&w, s->kind, 0);
    PUT(&w, ",\"startTimeUnixNano\":");
    put_int(&w, s->start_unix_ns, 1);
    PUT(&w, ",\"endTimeUnixNano\":");
    put_int(&w, s->end_unix_ns, 1);
    PUT(&w, ",");
    put_attrs(&w, s->attrs, s->nattrs);
    if (s->nevents) {
        PUT(&w, ",\"events\":[");
        for (size_t i = 0; i < s->nevents; i++) {
            const rsl_span_event *e = &s->events[i];
            if (i) {
                PUT(&w, ",");
            }
            PUT(&w, "{\"timeUnixNano\":");
            put_int(&w, e->time_unix_ns, 1);
            PUT(&w, ",\"name\":");
            put_str(&w, e->name);
            PUT(&w, ",");
            put_attrs(&w, e->attrs, e->nattrs);
            PUT(&w, "}");
        }
        PUT(&w, "]");
    }
    if (s->error) { /* status code 2: ERROR; 1: OK */
        PUT(&w, ",\"status\":{\"code\":2");
        if (s->status_message) {
            PUT(&w, ",\"message\":");
            put_str(&w, s->status_message);
        }
        PUT(&w, "}}");
    } else {
        PUT(&w, ",\"status\":{\"code\":1}}");
    }
    if (w.oom) {
        b->len = mark;
        if (b->p) {
            b->p[mark] = 0;
        }
        return RSL_ENOMEM;
    }
    return 0;
}

static void on_timer(uv_timer_t *t);

rsl__otlp *rsl__otlp_new(uv_loop_t *loop, rsl__http *http, const rsl__otlp_conf *conf,
                         rsl__otlp_stats *stats, void (*hold)(void *ud, int d), void *ud) {
    rsl__otlp *e = calloc(1, sizeof(*e));
    if (!e) {
        return NULL;
    }
    e->loop = loop;
    e->http = http;
    e->c = *conf;
    e->c.timeout_ns = conf->timeout_ns > 0 ? conf->timeout_ns : DEFAULT_TIMEOUT_NS;
    e->c.flush_ns = conf->flush_ns > 0 ? conf->flush_ns : DEFAULT_FLUSH_NS;
    e->c.max_batch = conf->max_batch > 0 ? conf->max_batch : DEFAULT_MAX_BATCH;
    e->c.max_inflight = conf->max_inflight > 0 ? conf->max_inflight : DEFAULT_MAX_INFLIGHT;
    e->st = stats;
    e->hold = hold;
    e->ud = ud;
    /* The document's head: everything before the first span. */
    json_t *svc = json_pack("[{s:s,s:{s:o}}]", "key", "service.name", "value", "stringValue",
                            jstr(conf->service_name ? conf->service_name : "resilua"));
    char *a = svc ? json_dumps(svc, JSON_COMPACT) : NULL;
    json_decref(svc);
    char ver[32];
    snprintf(ver, sizeof(ver), "%d.%d.%d", RSL_VERSION_MAJOR, RSL_VERSION_MINOR,
             RSL_VERSION_PATCH);
    size_t n = (a ? strlen(a) : 0) + 160;
    e->head = malloc(n);
    if (!a || !e->head) {
        free(a);
        free(e->head);
        free(e);
        return NULL;
    }
    e->head_len = (size_t)snprintf(e->head, n,
                                   "{\"resourceSpans\":[{\"resource\":{\"attributes\":%s},"
                                   "\"scopeSpans\":[{\"scope\":{\"name\":\"resilua\","
                                   "\"version\":\"%s\"},\"spans\":[",
                                   a, ver);
    free(a);
    uv_timer_init(loop, &e->timer);
    e->timer.data = e;
    return e;
}

static void batch_free(batch *b) {
    if (b) {
        rsl__buf_free(&b->body);
        free(b);
    }
}

static void on_sent(void *ud, rsl__http_res *res) {
    batch *b = ud;
    rsl__otlp *e = b->e;
    for (batch **p = &e->wire; *p; p = &(*p)->next) {
        if (*p == b) {
            *p = b->next;
            break;
        }
    }
    e->inflight--;
    int ok = res->outcome == RSL_OUTCOME_OK && res->status >= 200 && res->status < 300;
    if (ok) {
        atomic_fetch_add_explicit(&e->st->exported, (uint64_t)b->n, memory_order_relaxed);
        if (e->failing) {
            e->failing = 0;
            rsl__log(e->c.env, RSL_LOG_WARN, "traces: %s takes spans again", e->c.url);
        }
    } else {
        atomic_fetch_add_explicit(&e->st->dropped_failed, (uint64_t)b->n, memory_order_relaxed);
        atomic_fetch_add_explicit(&e->st->batches_failed, 1, memory_order_relaxed);
        if (!e->failing) {
            e->failing = 1;
            char why[64];
            snprintf(why, sizeof(why), "status %d", res->status);
            rsl__log(e->c.env, RSL_LOG_WARN,
                     "traces: %s did not take a batch of %d spans (%s); spans are dropped and "
                     "counted until it does",
                     e->c.url, b->n,
                     res->outcome == RSL_OUTCOME_OK || res->outcome == RSL_OUTCOME_4XX ||
                             res->outcome == RSL_OUTCOME_5XX
                         ? why
                         : (res->error ? res->error : rsl_outcome_name(res->outcome)));
        }
    }
    batch_free(b);
    e->hold(e->ud, -1);
}

static const rsl__header json_header[] = {{"Content-Type", "application/json"}};

/* Puts the current batch on the wire (or drops it when that fails). */
static void send_cur(rsl__otlp *e) {
    batch *b = e->cur;
    if (!b) {
        return;
    }
    e->cur = NULL;
    if (e->timer_on) {
        uv_timer_stop(&e->timer);
        e->timer_on = 0;
    }
    if (b->n >= e->c.max_batch) {
        e->last_len = b->body.len + sizeof(TAIL);
    }
    if (rsl__buf_append(&b->body, TAIL, sizeof(TAIL) - 1) < 0) {
        atomic_fetch_add_explicit(&e->st->dropped_failed, (uint64_t)b->n, memory_order_relaxed);
        batch_free(b);
        return;
    }
    rsl__http_req r = {
        .method = "POST",
        .url = e->c.url,
        .headers = json_header,
        .nheaders = 1,
        .body = b->body.p,
        .body_len = b->body.len,
        .timeout_ns = e->c.timeout_ns,
    };
    if (rsl__http_start(e->http, &r, on_sent, b, &b->x) < 0) {
        atomic_fetch_add_explicit(&e->st->dropped_failed, (uint64_t)b->n, memory_order_relaxed);
        atomic_fetch_add_explicit(&e->st->batches_failed, 1, memory_order_relaxed);
        batch_free(b);
        return;
    }
    b->next = e->wire;
    e->wire = b;
    e->inflight++;
    e->hold(e->ud, +1);
}

static void on_timer(uv_timer_t *t) {
    rsl__otlp *e = t->data;
    e->timer_on = 0;
    if (e->inflight < e->c.max_inflight) {
        send_cur(e);
    } else if (e->cur) {
        /* The wire is full: look again later; the batch still takes spans until full. */
        uv_timer_start(&e->timer, on_timer, (uint64_t)(e->c.flush_ns / RSL_NS_PER_MS), 0);
        e->timer_on = 1;
    }
}

void rsl__otlp_add(rsl__otlp *e, const rsl_span *s) {
    if (e->closing) {
        atomic_fetch_add_explicit(&e->st->dropped_full, 1, memory_order_relaxed);
        return;
    }
    if (e->cur && e->cur->n >= e->c.max_batch) {
        if (e->inflight >= e->c.max_inflight) {
            atomic_fetch_add_explicit(&e->st->dropped_full, 1, memory_order_relaxed);
            return;
        }
        send_cur(e);
    }
    if (!e->cur) {
        batch *b = calloc(1, sizeof(*b));
        if (!b || rsl__buf_reserve(&b->body, e->last_len > e->head_len ? e->last_len : 4096) < 0 ||
            rsl__buf_append(&b->body, e->head, e->head_len) < 0) {
            if (b) {
                rsl__buf_free(&b->body);
            }
            free(b);
            atomic_fetch_add_explicit(&e->st->dropped_full, 1, memory_order_relaxed);
            return;
        }
        b->e = e;
        e->cur = b;
        uv_timer_start(&e->timer, on_timer, (uint64_t)(e->c.flush_ns / RSL_NS_PER_MS), 0);
        e->timer_on = 1;
    }
    batch *b = e->cur;
    size_t mark = b->body.len;
    if ((b->n && rsl__buf_append(&b->body, ",", 1) < 0) || rsl__otlp_encode(&b->body, s) < 0) {
        b->body.len = mark;
        b->body.p[mark] = 0;
        atomic_fetch_add_explicit(&e->st->dropped_full, 1, memory_order_relaxed);
        return;
    }
    b->n++;
    if (b->n >= e->c.max_batch && e->inflight < e->c.max_inflight) {
        send_cur(e);
    }
}

void rsl__otlp_flush(rsl__otlp *e) {
    if (e && !e->closing && e->inflight < e->c.max_inflight) {
        send_cur(e);
    }
}

static void on_closed(uv_handle_t *h) {
    rsl__otlp *e = h->data;
    free(e->head);
    free(e);
}

void rsl__otlp_close(rsl__otlp *e) {
    if (!e || e->closing) {
        return;
    }
    e->closing = 1;
    while (e->wire) {
        batch *b = e->wire;
        e->wire = b->next;
        rsl__http_cancel(e->http, b->x);
        atomic_fetch_add_explicit(&e->st->dropped_failed, (uint64_t)b->n, memory_order_relaxed);
        batch_free(b);
        e->inflight--;
        e->hold(e->ud, -1);
    }
    if (e->cur) {
        atomic_fetch_add_explicit(&e->st->dropped_failed, (uint64_t)e->cur->n,
                                  memory_order_relaxed);
        batch_free(e->cur);
        e->cur = NULL;
    }
    uv_close((uv_handle_t *)&e->timer, on_closed);
}
