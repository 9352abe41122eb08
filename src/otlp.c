/*
 * otlp -- a worker's span exporter (otlp.h).
 *
 * The body is OTLP/HTTP's JSON encoding of ExportTraceServiceRequest
 * (opentelemetry-proto, "JSON Protobuf Encoding": ids as lowercase hex, 64-bit integers
 * as strings, enums as numbers), one resource (service.name) and one scope ("resilua").
 * A span is encoded (jansson) when it is added, so the batch is one growing buffer: the
 * document's head, the spans separated by commas, and its tail added when it is sent.
 *
 * Layer: the loop and its I/O.  Loop thread.
 */
#include "otlp.h"

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

static json_t *jint(int64_t v) {
    char b[24];
    snprintf(b, sizeof(b), "%lld", (long long)v);
    return json_string(b);
}

static json_t *attrs_json(const rsl_span_attr *a, size_t n) {
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++) {
        json_t *v = json_object(), *kv = json_object();
        if (a[i].type == RSL_ATTR_STRING) {
            json_object_set_new(v, "stringValue", jstr(a[i].str));
        } else if (a[i].type == RSL_ATTR_BOOL) {
            json_object_set_new(v, "boolValue", json_boolean(a[i].num));
        } else {
            json_object_set_new(v, "intValue", jint(a[i].num));
        }
        json_object_set_new(kv, "key", jstr(a[i].key));
        json_object_set_new(kv, "value", v);
        json_array_append_new(arr, kv);
    }
    return arr;
}

static json_t *span_json(const rsl_span *s) {
    json_t *o = json_object();
    if (!o) {
        return NULL;
    }
    json_object_set_new(o, "traceId", json_string(s->trace_id));
    json_object_set_new(o, "spanId", json_string(s->span_id));
    if (s->parent_span_id[0]) {
        json_object_set_new(o, "parentSpanId", json_string(s->parent_span_id));
    }
    json_object_set_new(o, "name", jstr(s->name));
    json_object_set_new(o, "kind", json_integer(s->kind));
    json_object_set_new(o, "startTimeUnixNano", jint(s->start_unix_ns));
    json_object_set_new(o, "endTimeUnixNano", jint(s->end_unix_ns));
    json_object_set_new(o, "attributes", attrs_json(s->attrs, s->nattrs));
    if (s->nevents) {
        json_t *ev = json_array();
        for (size_t i = 0; i < s->nevents; i++) {
            const rsl_span_event *e = &s->events[i];
            json_t *eo = json_object();
            json_object_set_new(eo, "timeUnixNano", jint(e->time_unix_ns));
            json_object_set_new(eo, "name", jstr(e->name));
            json_object_set_new(eo, "attributes", attrs_json(e->attrs, e->nattrs));
            json_array_append_new(ev, eo);
        }
        json_object_set_new(o, "events", ev);
    }
    json_t *st = json_object();
    json_object_set_new(st, "code", json_integer(s->error ? 2 : 1)); /* ERROR : OK */
    if (s->error && s->status_message) {
        json_object_set_new(st, "message", jstr(s->status_message));
    }
    json_object_set_new(o, "status", st);
    return o;
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
        if (!b || rsl__buf_append(&b->body, e->head, e->head_len) < 0) {
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
    json_t *o = span_json(s);
    size_t need = o ? json_dumpb(o, NULL, 0, JSON_COMPACT) : 0;
    if (!need || rsl__buf_reserve(&b->body, need + 1) < 0) {
        json_decref(o);
        atomic_fetch_add_explicit(&e->st->dropped_full, 1, memory_order_relaxed);
        return;
    }
    if (b->n) {
        b->body.p[b->body.len++] = ',';
    }
    b->body.len += json_dumpb(o, b->body.p + b->body.len, need, JSON_COMPACT);
    b->body.p[b->body.len] = 0;
    json_decref(o);
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
