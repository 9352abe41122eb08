/*
 * span -- a call's trace (span.h).
 *
 * Layer: the calls.  A call's functions run on its worker's thread; the tracer's set-up
 * on the opening thread.
 */
#include "span.h"

#include "call.h"
#include "clock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

_Thread_local struct rsl__call *rsl__trace_sink;

/* ---- the tracer ------------------------------------------------------------------------ */

static const char *env_or(const char *v, const char *name) {
    if (v) {
        return v;
    }
    const char *e = getenv(name);
    return e && e[0] ? e : NULL;
}

int rsl__tracer_init(rsl__tracer *t, const rsl_options *o, int64_t now, int nworkers) {
    memset(t, 0, sizeof(*t));
    char *url = NULL;
    if (o->otlp_endpoint) {
        url = o->otlp_endpoint[0] ? strdup(o->otlp_endpoint) : NULL;
    } else if (env_or(NULL, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) {
        url = strdup(getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"));
    } else if (env_or(NULL, "OTEL_EXPORTER_OTLP_ENDPOINT")) {
        /* The base URL: the signal's path is added (OTLP exporter specification). */
        const char *b = getenv("OTEL_EXPORTER_OTLP_ENDPOINT");
        size_t n = strlen(b);
        while (n && b[n - 1] == '/') {
            n--;
        }
        if ((url = malloc(n + 11))) {
            memcpy(url, b, n);
            memcpy(url + n, "/v1/traces", 11);
        }
    }
    if (!url && !o->on_span) {
        return 0;
    }
    const char *svc = env_or(o->service_name, "OTEL_SERVICE_NAME");
    t->otlp.service_name = strdup(svc ? svc : "resilua");
    t->otlp.url = url;
    t->nstats = nworkers;
    /* Each worker's counters on a line of their own: the type's alignment, which calloc
     * does not give (sizeof is a multiple of it, as aligned_alloc wants). */
    size_t ssize = (size_t)nworkers * sizeof(*t->stats);
    t->stats = aligned_alloc(_Alignof(rsl__otlp_stats), ssize);
    if (t->stats) {
        memset(t->stats, 0, ssize);
    }
    if (!t->otlp.service_name || !t->stats) {
        rsl__tracer_close(t);
        return RSL_ENOMEM;
    }
    t->ratio = o->trace_sample;
    if (t->ratio < 0) {
        const char *a = env_or(NULL, "OTEL_TRACES_SAMPLER_ARG");
        char *end = NULL;
        double r = a ? strtod(a, &end) : 1.0;
        t->ratio = a && (end == a || *end || !(r >= 0 && r <= 1)) ? 1.0 : r;
    }
    if (t->ratio > 1) {
        t->ratio = 1;
    }
    t->errors = o->trace_errors;
    t->skip_unsampled = o->trace_skip_unsampled;
    t->on_span = o->on_span;
    t->on_span_ud = o->on_span_ud;
    t->exporting = url != NULL;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    t->wall_offset = (int64_t)ts.tv_sec * RSL_NS_PER_S + ts.tv_nsec - now;
    return 1;
}

void rsl__tracer_close(rsl__tracer *t) {
    free((char *)t->otlp.url);
    free((char *)t->otlp.service_name);
    free(t->stats);
    memset(t, 0, sizeof(*t));
}

void rsl__tracer_counts(const rsl__tracer *t, uint64_t *exported, uint64_t *dropped_full,
                        uint64_t *dropped_failed) {
    uint64_t e = 0, f = 0, x = 0;
    for (int i = 0; t && i < t->nstats; i++) {
        e += atomic_load_explicit(&t->stats[i].exported, memory_order_relaxed);
        f += atomic_load_explicit(&t->stats[i].dropped_full, memory_order_relaxed);
        x += atomic_load_explicit(&t->stats[i].dropped_failed, memory_order_relaxed);
    }
    *exported = e;
    *dropped_full = f;
    *dropped_failed = x;
}

/* ---- a call's trace --------------------------------------------------------------------- */

void rsl__trace_reset(rsl__trace *t) {
    rsl__buf text = t->text;
    rsl__buf_empty(&text, 4096);
    t->n = t->nevents = t->lost = 0;
    t->cur = -1;
    t->has_parent = t->sampled = t->recording = 0;
    t->text = text;
}

void rsl__trace_free(rsl__trace *t) {
    if (t) {
        rsl__buf_free(&t->text);
        free(t);
    }
}

/* Adds a string to the trace's text: its offset, or -1. */
static int64_t keep_text(rsl__trace *t, const char *s, size_t n) {
    int64_t at = (int64_t)t->text.len;
    if (rsl__buf_append(&t->text, s, n) < 0 || rsl__buf_append(&t->text, "", 1) < 0) {
        return -1;
    }
    return at;
}

void rsl__trace_start(rsl__call *c) {
    const rsl__tracer *tr = c->cs->tracer;
    if (!tr) {
        return;
    }
    rsl__trace *t = c->tr;
    if (!t) {
        if (!(t = c->tr = malloc(sizeof(*t)))) {
            return; /* no trace for this call: it runs as with tracing off */
        }
        memset(&t->text, 0, sizeof(t->text));
    }
    rsl__trace_reset(t);
    const rsl_req *req = c->req;
    if (req->has_trace) {
        memcpy(t->ctx.trace_id, req->trace.trace_id, 16);
        memcpy(t->parent, req->trace.span_id, 8);
        t->has_parent = 1;
        t->sampled = req->trace.flags & 1; /* parent-based */
    } else {
        rsl__trace_id_new(t->ctx.trace_id);
        t->sampled = rsl__trace_sampled(t->ctx.trace_id, tr->ratio);
    }
    rsl__span_id_new(t->ctx.span_id);
    t->ctx.flags = (uint8_t)t->sampled;
    t->recording = t->sampled || tr->errors;
}

void rsl__trace_attempt(rsl__call *c, const rsl__step *s, int64_t now) {
    rsl__trace *t = c->tr;
    t->cur = -1;
    if (t->n == RSL_TRACE_MAX_ATTEMPTS) {
        t->lost++;
        return;
    }
    rsl__tattempt *a = &t->a[t->cur = t->n++];
    a->step = (int)(s - c->p->steps);
    a->attempt = c->attempt;
    a->start = a->end = now;
    a->outcome = RSL_OUTCOME_OK;
    a->status = 0;
    a->error = a->server = -1;
    a->port = 0;
    a->refused_by = NULL;
    rsl__span_id_new(a->id);
}

void rsl__trace_attempt_end(rsl__call *c, const rsl__step *s, int64_t now) {
    rsl__trace *t = c->tr;
    if (t->cur < 0 && c->attempt == 0) { /* skipped: the deadline had passed */
        rsl__trace_attempt(c, s, now);
    }
    if (t->cur < 0) {
        return;
    }
    rsl__tattempt *a = &t->a[t->cur];
    t->cur = -1;
    if (!t->recording) {
        t->n = 0; /* only the ids were needed (for the context sent on) */
        return;
    }
    a->end = now;
    a->outcome = c->ans.outcome;
    a->status = c->ans.status;
    if (c->ans.outcome != RSL_OUTCOME_OK && c->ans.error) {
        a->error = keep_text(t, c->ans.error, strlen(c->ans.error));
    }
}

void rsl__trace_refused(rsl__call *c, const rsl__guard *g) {
    rsl__trace *t = c->tr;
    if (t->cur >= 0) {
        t->a[t->cur].refused_by = g;
    }
}

void rsl__trace_server(rsl__call *c, const char *url) {
    rsl__trace *t = c->tr;
    if (t->cur < 0 || !t->recording) {
        return;
    }
    /* scheme://[userinfo@]host[:port]/... */
    const char *p = strstr(url, "://");
    if (!p) {
        return;
    }
    int https = p - url == 5 && strncmp(url, "https", 5) == 0;
    p += 3;
    size_t n = strcspn(p, "/?#");
    const char *at = memchr(p, '@', n);
    if (at) {
        n -= (size_t)(at + 1 - p);
        p = at + 1;
    }
    const char *host = p, *colon = NULL;
    size_t hn = n;
    if (*p == '[') { /* [v6]:port */
        const char *rb = memchr(p, ']', n);
        if (rb) {
            host = p + 1;
            hn = (size_t)(rb - host);
            colon = rb + 1 < p + n && rb[1] == ':' ? rb + 1 : NULL;
        }
    } else if ((colon = memchr(p, ':', n)) != NULL) {
        hn = (size_t)(colon - p);
    }
    rsl__tattempt *a = &t->a[t->cur];
    a->server = keep_text(t, host, hn);
    a->port = colon ? atoi(colon + 1) : https ? 443 : 80;
}

int rsl__trace_outgoing(const rsl__call *c, char *tp, const char **ts) {
    const rsl__trace *t = c->tr;
    if (t && !t->sampled && !t->has_parent && c->cs->tracer->skip_unsampled) {
        return 0; /* its own trace, not sampled: downstream decides (trace_skip_unsampled) */
    }
    if (t && t->cur >= 0) {
        rsl__tctx x = t->ctx;
        memcpy(x.span_id, t->a[t->cur].id, 8);
        rsl__tctx_format(&x, tp);
    } else if (t) {
        rsl__tctx_format(&t->ctx, tp);
    } else if (c->req->has_trace) {
        rsl__tctx_format(&c->req->trace, tp); /* not a participant: sent on unchanged */
    } else {
        return 0;
    }
    *ts = c->req->tracestate;
    return 1;
}

void rsl__trace_transition(const char *breaker, const char *from, const char *to,
                           const char *reason) {
    rsl__call *c = rsl__trace_sink;
    rsl__trace *t = c ? c->tr : NULL;
    if (!t || !t->recording) {
        return;
    }
    if (t->nevents == RSL_TRACE_MAX_EVENTS || t->cur < 0) {
        t->lost++;
        return;
    }
    rsl__tevent *e = &t->ev[t->nevents++];
    e->attempt = t->cur;
    e->at = rsl__call_now(c);
    e->breaker = breaker;
    e->from = from;
    e->to = to;
    e->reason = keep_text(t, reason, strlen(reason));
}

void rsl__trace_result(rsl__call *c, rsl_result *r) {
    if (c->tr) {
        r->has_trace = 1;
        r->trace = c->tr->ctx;
    } else if (c->req->has_trace) {
        r->has_trace = 1;
        r->trace = c->req->trace;
    }
}

/* ---- handing the spans on ---------------------------------------------------------------- */

#define SATTR(k, v) (rsl_span_attr){(k), RSL_ATTR_STRING, (v), 0}
#define IATTR(k, v) (rsl_span_attr){(k), RSL_ATTR_INT, NULL, (v)}
#define BATTR(k, v) (rsl_span_attr){(k), RSL_ATTR_BOOL, NULL, (v) ? 1 : 0}

static void hand_on(rsl__call *c, const rsl__tracer *tr, const rsl_span *s) {
    if (tr->on_span) {
        tr->on_span(tr->on_span_ud, s);
    }
    if (tr->exporting) {
        rsl__otlp *e = rsl__worker_otlp(c->w);
        if (e) {
            rsl__otlp_add(e, s);
        } else {
            atomic_fetch_add_explicit(&tr->stats[c->w->index].dropped_full, 1,
                                      memory_order_relaxed);
        }
    }
}

static const char *text_at(const rsl__trace *t, int64_t off) {
    return off >= 0 ? t->text.p + off : NULL;
}

void rsl__trace_emit(rsl__call *c, const rsl_result *r, int64_t now) {
    rsl__trace *t = c->tr;
    const rsl__tracer *tr = c->cs->tracer;
    if (!t || !t->recording ||
        !(t->sampled || (tr->errors && (r->degraded || r->outcome != RSL_OUTCOME_OK)))) {
        return;
    }
    int64_t off = tr->wall_offset;
    rsl_span s;
    char call_id[17];
    rsl__hex(t->ctx.trace_id, 16, s.trace_id);
    rsl__hex(t->ctx.span_id, 8, call_id);

    /* The attempts, children of the call. */
    for (int i = 0; i < t->n; i++) {
        const rsl__tattempt *a = &t->a[i];
        const rsl__step *st = &c->p->steps[a->step];
        rsl_span_attr at[16];
        size_t na = 0;
        at[na++] = SATTR("resilua.step", st->name);
        at[na++] = SATTR("resilua.step.kind", st->ops ? st->ops->name : "unknown");
        at[na++] = IATTR("resilua.attempt", a->attempt);
        at[na++] = SATTR("resilua.outcome", rsl_outcome_name(a->outcome));
        if (st->kind == RSL_STEP_HTTP) {
            at[na++] = SATTR("http.request.method", st->u.http.method);
            if (a->server >= 0) {
                at[na++] = SATTR("server.address", text_at(t, a->server));
                at[na++] = IATTR("server.port", a->port);
            }
        }
        if (a->status > 0 && a->outcome != RSL_OUTCOME_REJECTED) {
            at[na++] = IATTR("http.response.status_code", a->status);
        }
        if (a->outcome != RSL_OUTCOME_OK) {
            at[na++] = SATTR("error.type", rsl_outcome_name(a->outcome));
            if (a->error >= 0) {
                at[na++] = SATTR("resilua.error", text_at(t, a->error));
            }
        }
        if (a->refused_by) {
            at[na++] = SATTR("resilua.guard", a->refused_by->name);
            at[na++] = SATTR("resilua.guard.kind", rsl__guard_kind_name(a->refused_by->kind));
        }
        rsl_span_event ev[RSL_TRACE_MAX_EVENTS];
        rsl_span_attr eat[RSL_TRACE_MAX_EVENTS][4];
        size_t ne = 0;
        for (int j = 0; j < t->nevents; j++) {
            const rsl__tevent *e = &t->ev[j];
            if (e->attempt != i) {
                continue;
            }
            eat[ne][0] = SATTR("resilua.guard", e->breaker);
            eat[ne][1] = SATTR("resilua.from", e->from);
            eat[ne][2] = SATTR("resilua.to", e->to);
            eat[ne][3] = SATTR("resilua.reason", text_at(t, e->reason) ? text_at(t, e->reason) : "");
            ev[ne] = (rsl_span_event){"resilua.breaker.transition", off + e->at, eat[ne], 4};
            ne++;
        }
        rsl__hex(a->id, 8, s.span_id);
        memcpy(s.parent_span_id, call_id, sizeof(call_id));
        s.name = st->name;
        s.kind = st->ops && st->ops->waits ? RSL_SPAN_CLIENT : RSL_SPAN_INTERNAL;
        s.start_unix_ns = off + a->start;
        s.end_unix_ns = off + a->end;
        s.error = a->outcome != RSL_OUTCOME_OK;
        s.status_message = s.error ? text_at(t, a->error) : NULL;
        s.attrs = at;
        s.nattrs = na;
        s.events = ev;
        s.nevents = ne;
        hand_on(c, tr, &s);
    }

    /* The call. */
    char path[512];
    size_t pl = 0;
    path[0] = 0;
    for (int i = 0; i < r->npath && pl < sizeof(path); i++) {
        int n = snprintf(path + pl, sizeof(path) - pl, "%s%s=%s", i ? "," : "", r->path[i].step,
                         rsl_outcome_name(r->path[i].outcome));
        pl += n > 0 ? (size_t)n : 0;
    }
    rsl_span_attr at[12];
    size_t na = 0;
    at[na++] = SATTR("resilua.policy", r->policy);
    at[na++] = SATTR("resilua.outcome", rsl_outcome_name(r->outcome));
    at[na++] = SATTR("resilua.served_by",
                     r->served_by >= 0 ? r->path[r->served_by].step : "none");
    at[na++] = BATTR("resilua.degraded", r->degraded);
    at[na++] = BATTR("resilua.route_failed", r->route_failed);
    if (c->has_priority) {
        at[na++] = IATTR("resilua.priority", c->priority);
    }
    at[na++] = SATTR("resilua.path", path);
    at[na++] = IATTR("http.response.status_code", r->status);
    if (r->outcome != RSL_OUTCOME_OK) {
        at[na++] = SATTR("error.type", rsl_outcome_name(r->outcome));
    }
    if (t->lost) {
        at[na++] = IATTR("resilua.spans_lost", t->lost);
    }
    memcpy(s.span_id, call_id, sizeof(call_id));
    if (t->has_parent) {
        rsl__hex(t->parent, 8, s.parent_span_id);
    } else {
        s.parent_span_id[0] = 0;
    }
    s.name = r->policy;
    s.kind = RSL_SPAN_INTERNAL;
    s.start_unix_ns = off + c->start;
    s.end_unix_ns = off + now;
    s.error = r->outcome != RSL_OUTCOME_OK;
    s.status_message = NULL;
    if (s.error && r->npath > 0) {
        s.status_message = r->path[r->npath - 1].error;
    }
    s.attrs = at;
    s.nattrs = na;
    s.events = NULL;
    s.nevents = 0;
    hand_on(c, tr, &s);
}
