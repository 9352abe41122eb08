/*
 * chain -- running one call through its policy: route, then steps one at a time, each
 * behind its guards, with timeouts, the deadline, retries and faults, until a step answers
 * with an outcome outside `fallback_on`.
 *
 * A call is a small state machine (rsl__call.phase) driven by advance(): synchronous steps
 * (stub, lua, local_cache) loop inside it; a host step that answers later, a retry backoff
 * or a fault delay park the call in RSL_PH_WAIT until a message or a timer resumes it.
 * Every way a call ends goes through finish(), which runs the callback exactly once and
 * frees the call (after its timer's close callback, if it has one).
 *
 * Guards are taken per attempt, in the step's order; a rejection releases what was taken
 * (a breaker permit without a verdict, a bulkhead slot) and is the outcome `rejected`.
 *
 * Threads: everything here runs on the call's worker thread, except rsl_step_answer /
 * rsl_step_fail, which any thread may call.
 */
#include "runtime.h"

#include "clock.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- answers ------------------------------------------------------------------------- */

void rsl__answer_reset(rsl__answer *a) {
    a->outcome = RSL_OUTCOME_OK;
    a->status = 200;
    a->body.len = 0;
    if (a->body.p) {
        a->body.p[0] = 0;
    }
    free(a->headers); /* packed: see tmpl.h */
    a->headers = NULL;
    a->nheaders = 0;
    free(a->error);
    a->error = NULL;
}

void rsl__answer_free(rsl__answer *a) {
    rsl__answer_reset(a);
    rsl__buf_free(&a->body);
}

void rsl__answer_fail(rsl__answer *a, rsl_outcome o, const char *fmt, ...) {
    rsl__answer_reset(a);
    a->outcome = o;
    a->status = rsl__outcome_status(o);
    if (fmt && strcmp(fmt, "%s") == 0) {
        va_list ap; /* the common case, a ready message: no formatting */
        va_start(ap, fmt);
        a->error = strdup(va_arg(ap, const char *));
        va_end(ap);
    } else if (fmt) {
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        a->error = strdup(msg);
    }
}

rsl_outcome rsl__status_outcome(int status) {
    if (status >= 500 && status <= 599) {
        return RSL_OUTCOME_5XX;
    }
    if (status >= 400 && status <= 499) {
        return RSL_OUTCOME_4XX;
    }
    return RSL_OUTCOME_OK;
}

int rsl__outcome_status(rsl_outcome o) {
    static const int st[] = {
#define RSL_X_(e, s, status) status,
        RSL_OUTCOMES(RSL_X_)
#undef RSL_X_
    };
    return (unsigned)o < RSL_OUTCOME__COUNT ? st[o] : 500;
}

/* Moves the answer a into b (b's old content is freed). */
static void answer_move(rsl__answer *dst, rsl__answer *src) {
    rsl__answer tmp = *dst;
    *dst = *src;
    *src = tmp;
    rsl__answer_reset(src);
}

static void answer_copy_headers(rsl__answer *a, const rsl__header *h, int n) {
    if (n <= 0) {
        return;
    }
    a->headers = rsl__headers_pack(h, n);
    a->nheaders = a->headers ? n : 0;
}

/* ---- generations ---------------------------------------------------------------------- */

void rsl__genr_ref(rsl__genr *G) {
    atomic_fetch_add_explicit(&G->refs, 1, memory_order_relaxed);
}

/* ---- results -------------------------------------------------------------------------- */

rsl_result *rsl__result_new(rsl__call *c) {
    rsl_result *r = c->res ? c->res : calloc(1, sizeof(*r)); /* a kept call's: scrubbed */
    if (!r) {
        return NULL;
    }
    r->policy = c->p->name;
    r->served_by = -1;
    return r;
}

void rsl_result_free(rsl_result *r) {
    if (!r) {
        return;
    }
    for (int i = 0; i < r->npath; i++) {
        free(r->path[i].error);
    }
    free(r->headers); /* packed: see tmpl.h */
    rsl__buf_free(&r->body);
    free(r->names);
    if (r->G) {
        rsl__genr_unref(r->G);
    }
    free(r);
}

const char *rsl_result_policy(const rsl_result *r) {
    return r->policy;
}
int rsl_result_status(const rsl_result *r) {
    return r->status;
}
const char *rsl_result_body(const rsl_result *r, size_t *len) {
    if (len) {
        *len = r->body.len;
    }
    return r->body.p ? r->body.p : "";
}
size_t rsl_result_header_count(const rsl_result *r) {
    return (size_t)r->nheaders;
}
int rsl_result_header(const rsl_result *r, size_t i, const char **name, const char **value) {
    if (i >= (size_t)r->nheaders) {
        return RSL_EINVAL;
    }
    *name = r->headers[i].name;
    *value = r->headers[i].value;
    return 0;
}
rsl_outcome rsl_result_outcome(const rsl_result *r) {
    return r->outcome;
}
const char *rsl_result_served_by(const rsl_result *r) {
    return r->served_by >= 0 ? r->path[r->served_by].step : NULL;
}
int rsl_result_degraded(const rsl_result *r) {
    return r->degraded;
}
double rsl_result_elapsed_ms(const rsl_result *r) {
    return r->elapsed_ms;
}
size_t rsl_result_path_len(const rsl_result *r) {
    return (size_t)r->npath;
}
int rsl_result_path(const rsl_result *r, size_t i, rsl_path_entry *e) {
    if (i >= (size_t)r->npath) {
        return RSL_EINVAL;
    }
    e->step = r->path[i].step;
    e->outcome = r->path[i].outcome;
    e->ms = r->path[i].ms;
    e->attempts = r->path[i].attempts;
    e->error = r->path[i].error;
    return 0;
}
int rsl_result_route_failed(const rsl_result *r) {
    return r->route_failed;
}

/* A JSON string of arbitrary bytes: invalid UTF-8 becomes U+FFFD, so a binary body can
 * never make the whole line fail to encode. */
static json_t *json_bytes(const char *s, size_t n) {
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

static double round_ms(double ms) {
    return (double)(int64_t)(ms * 1000.0 + 0.5) / 1000.0;
}

char *rsl_result_json(const rsl_result *r) {
    json_t *o = json_object();
    json_t *path = json_array();
    if (!o || !path) {
        json_decref(o);
        json_decref(path);
        return NULL;
    }
    json_object_set_new(o, "policy", json_string(r->policy));
    json_object_set_new(o, "status", json_integer(r->status));
    json_object_set_new(o, "outcome", json_string(rsl_outcome_name(r->outcome)));
    const char *sb = rsl_result_served_by(r);
    json_object_set_new(o, "served_by", sb ? json_string(sb) : json_null());
    json_object_set_new(o, "degraded", json_boolean(r->degraded));
    json_object_set_new(o, "body", json_bytes(r->body.p ? r->body.p : "", r->body.len));
    json_object_set_new(o, "elapsed_ms", json_real(round_ms(r->elapsed_ms)));
    if (r->route_failed) {
        json_object_set_new(o, "route_failed", json_true());
    }
    for (int i = 0; i < r->npath; i++) {
        json_t *e = json_object();
        json_object_set_new(e, "step", json_string(r->path[i].step));
        json_object_set_new(e, "outcome", json_string(rsl_outcome_name(r->path[i].outcome)));
        json_object_set_new(e, "ms", json_real(round_ms(r->path[i].ms)));
        json_object_set_new(e, "attempts", json_integer(r->path[i].attempts));
        if (r->path[i].error) {
            json_object_set_new(e, "error", json_string(r->path[i].error));
        }
        json_array_append_new(path, e);
    }
    json_object_set_new(o, "path", path);
    /* A body that is not UTF-8 is escaped by jansson only when valid; ensure_ascii keeps
     * the line printable whatever the bytes. */
    char *s = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    json_decref(o);
    return s;
}

/* ---- the call ------------------------------------------------------------------------- */

static void advance(rsl__call *c, int64_t now);

static double ms_since(int64_t from, int64_t now) {
    return (double)(now - from) / 1e6;
}

static int waits_on_io(const rsl__step *s) {
    return s->kind == RSL_STEP_C || s->kind == RSL_STEP_HTTP || s->kind == RSL_STEP_REDIS ||
           s->kind == RSL_STEP_REDIS_CACHE;
}

/* ---- call objects kept for reuse ------------------------------------------------------
 * A worker keeps the objects of up to SPARE_MAX finished calls for the calls made on its
 * own thread (the sidecar's, a callback's next call): such a call then allocates nothing
 * of its own, no call, request copy, result, names or buffers, which was a fifth of the
 * instructions of an r.redis call (callgrind, bench_io).  A buffer grown past
 * SPARE_BUF_MAX is freed, not kept.  Under ASan a kept object is poisoned until reused,
 * so a use of a finished call is still reported. */
#define SPARE_MAX 64
#define SPARE_BUF_MAX 8192

#if defined(__SANITIZE_ADDRESS__) /* gcc; clang says it with __has_feature */
#define RSL_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RSL_ASAN 1
#endif
#endif
#ifdef RSL_ASAN
#include <sanitizer/asan_interface.h>
/* The call object, its result, request block, names and buffers: all of it. */
static void spare_poison(rsl__call *c, int on) {
    void (*f)(void const volatile *, size_t) =
        on ? __asan_poison_memory_region : __asan_unpoison_memory_region;
    if (!on) {
        f(c, sizeof(*c));
    }
    rsl__buf *b[4] = {&c->ans.body, &c->prev_ans.body, &c->scratch, &c->io};
    for (int i = 0; i < 4; i++) {
        if (b[i]->p) {
            f(b[i]->p, b[i]->cap);
        }
    }
    if (c->req) {
        f(c->req, c->req_size);
    }
    rsl_result *r = c->res;
    if (r) {
        if (!on) {
            f(r, sizeof(*r));
        }
        if (r->body.p) {
            f(r->body.p, r->body.cap);
        }
        if (r->names) {
            f(r->names, r->names_size);
        }
        if (on) {
            f(r, sizeof(*r));
        }
    }
    if (on) {
        f(c, sizeof(*c));
    }
}
#define SPARE_POISON(c) spare_poison((c), 1)
#define SPARE_UNPOISON(c) spare_poison((c), 0)
#else
#define SPARE_POISON(c) ((void)(c))
#define SPARE_UNPOISON(c) ((void)(c))
#endif

/* Back to what calloc gives, but for the buffers and names it keeps. */
static void result_scrub(rsl_result *r) {
    for (int i = 0; i < r->npath; i++) {
        free(r->path[i].error);
    }
    free(r->headers);
    if (r->G) {
        rsl__genr_unref(r->G);
    }
    rsl__buf body = r->body;
    char *names = r->names;
    size_t names_size = r->names_size;
    memset(r, 0, sizeof(*r));
    rsl__buf_empty(&body, SPARE_BUF_MAX);
    r->body = body;
    r->names = names;
    r->names_size = names_size;
}

static void call_keep(rsl__call *c, rsl__worker *w) {
    rsl__answer_reset(&c->ans);
    rsl__answer_reset(&c->prev_ans);
    if (c->G) {
        rsl__genr_unref(c->G);
    }
    rsl__buf b[4] = {c->ans.body, c->prev_ans.body, c->scratch, c->io};
    rsl_result *res = c->res;
    rsl_req *req = c->req;
    size_t req_size = c->req_size;
    memset(c, 0, sizeof(*c));
    for (int i = 0; i < 4; i++) {
        rsl__buf_empty(&b[i], SPARE_BUF_MAX);
    }
    c->ans.body = b[0];
    c->prev_ans.body = b[1];
    c->scratch = b[2];
    c->io = b[3];
    if (res) {
        result_scrub(res);
    }
    c->res = res;
    if (req_size > SPARE_BUF_MAX) {
        rsl_req_free(req);
    } else {
        c->req = req;
        c->req_size = req_size;
    }
    c->next = w->spare;
    w->spare = c;
    w->nspare++;
    SPARE_POISON(c);
}

rsl__call *rsl__call_spare(rsl__worker *w) {
    rsl__call *c = w->spare;
    if (c) {
        SPARE_UNPOISON(c);
        w->spare = c->next;
        w->nspare--;
        c->next = NULL;
    }
    return c;
}

static void call_release(rsl__call *c) {
    rsl__answer_free(&c->ans);
    rsl__answer_free(&c->prev_ans);
    rsl__buf_free(&c->scratch);
    rsl__buf_free(&c->io);
    rsl_result_free(c->res);
    rsl_req_free(c->req);
    if (c->G) {
        rsl__genr_unref(c->G);
    }
    free(c);
}

void rsl__call_drop_spares(rsl__worker *w) {
    rsl__call *c;
    while ((c = rsl__call_spare(w)) != NULL) {
        call_release(c);
    }
}

void rsl__call_free(rsl__call *c) {
    struct rsl_runtime *rt = c->rt;
    rsl__worker *w = c->w;
    if (w && !w->stopping && w->nspare < SPARE_MAX && rsl__worker_self() == w) {
        call_keep(c, w);
    } else {
        call_release(c);
    }
    rsl__rt_call_freed(rt);
}

static void on_timer_closed(uv_handle_t *h) {
    rsl__call_free(h->data);
}

static void cache_write(rsl__call *c, const rsl__step *s, const rsl_result *r, int64_t now) {
    if (!s->u.cache.cache) {
        return;
    }
    const char *missing = NULL;
    c->scratch.len = 0;
    if (rsl__tmpl_expand(s->u.cache.key, c->req, 0, &c->scratch, &missing) < 0) {
        return; /* the key cannot be built for this request: nothing to write */
    }
    rsl__cache_put(s->u.cache.cache, c->scratch.p, c->scratch.len, r->status,
                   r->body.p ? r->body.p : "", r->body.len, now + s->u.cache.ttl_ns);
}

/* SET key body PX ttl, fire and forget: hiredis only appends it to the connection's
 * output buffer here, and the loop writes it after the call has answered.  No Redis, or
 * not connected right now: the write is skipped (a cache is allowed to forget). */
static void redis_cache_write(rsl__call *c, const rsl__step *s, const rsl_result *r) {
    rsl__redis *rd = c->w->redis;
    if (!rd || !rsl__redis_connected(rd)) {
        return;
    }
    const char *missing = NULL;
    c->scratch.len = 0;
    if (rsl__tmpl_expand(s->u.cache.key, c->req, 0, &c->scratch, &missing) < 0) {
        return;
    }
    char ttl[32];
    int64_t ms = s->u.cache.ttl_ns / RSL_NS_PER_MS;
    snprintf(ttl, sizeof(ttl), "%lld", (long long)(ms > 0 ? ms : 1));
    const char *argv[] = {"SET", c->scratch.p, r->body.p ? r->body.p : "", "PX", ttl};
    size_t lens[] = {3, c->scratch.len, r->body.len, 2, strlen(ttl)};
    rsl__redis_command(rd, 5, argv, lens, NULL, NULL, NULL);
}

/* Copies the names the result borrows from the generation into one block. */
static void result_own_names(rsl__call *c, rsl_result *r) {
    size_t need = strlen(r->policy) + 1;
    for (int i = 0; i < r->npath; i++) {
        need += strlen(r->path[i].step) + 1;
    }
    char *p = r->names;
    if (!p || r->names_size < need) { /* a kept result's block is reused when it fits */
        free(r->names);
        p = r->names = malloc(need);
        r->names_size = p ? need : 0;
    }
    if (!p) {
        rsl__genr_ref(c->G);
        r->G = c->G;
        return;
    }
    size_t n = strlen(r->policy) + 1;
    memcpy(p, r->policy, n);
    r->policy = p;
    p += n;
    for (int i = 0; i < r->npath; i++) {
        n = strlen(r->path[i].step) + 1;
        memcpy(p, r->path[i].step, n);
        r->path[i].step = p;
        p += n;
    }
}

/* The answer is final: build the result, run the callback, write caches, free. */
static void finish(rsl__call *c, int64_t now) {
    rsl_result *r = c->res;
    c->phase = RSL_PH_DONE;
    r->elapsed_ms = ms_since(c->start, now);
    r->outcome = c->ans.outcome;
    r->status = c->ans.status;
    rsl__buf tmpb = r->body;
    r->body = c->ans.body;
    c->ans.body = tmpb;
    r->headers = c->ans.headers;
    r->nheaders = c->ans.nheaders;
    c->ans.headers = NULL;
    c->ans.nheaders = 0;
    r->served_by = r->npath > 0 ? r->npath - 1 : -1;
    r->degraded = r->served_by > 0;
    rsl__pview *v = c->p->stats;
    if (v && (unsigned)r->outcome < RSL_OUTCOME__COUNT) {
        atomic_fetch_add_explicit(&v->ps->calls[r->outcome], 1, memory_order_relaxed);
    }

    /* Write-through: every cache step after the one that answered ok learns the answer.
     * A local cache write is a hash insert; it happens before the callback only so that
     * the callback may hand the result to another thread. */
    if (r->outcome == RSL_OUTCOME_OK && r->served_by >= 0) {
        for (int i = r->served_by + 1; i < c->npath; i++) {
            const rsl__step *s = &c->p->steps[c->path[i]];
            if (s->kind == RSL_STEP_LOCAL_CACHE) {
                cache_write(c, s, r, now);
            } else if (s->kind == RSL_STEP_REDIS_CACHE) {
                redis_cache_write(c, s, r);
            }
        }
    }
    result_own_names(c, r);
    if (c->tracked) {
        rsl__rt_untrack(c->rt, c);
    }
    rsl__worker_untrack(c->w, c);
    if (c->cb_keeps_result) {
        c->res = NULL; /* the callback's now: r may be freed before cb even returns */
        c->w->spin = 1;
    }
    c->cb(r, c->ud);
    rsl__worker *w = c->w;
    if (c->timer_inited) {
        uv_close((uv_handle_t *)&c->timer, on_timer_closed);
    } else {
        rsl__call_free(c);
    }
    rsl__worker_call_done(w);
}

void rsl__call_abort(rsl__call *c, rsl_outcome o, const char *msg) {
    rsl__worker_track(c->w, c);
    c->start = rsl__rt_now(c->rt);
    rsl__answer_fail(&c->ans, o, "%s", msg);
    finish(c, c->start);
}

/* ---- guards --------------------------------------------------------------------------- */

static int acquire_guards(rsl__call *c, const rsl__step *s, int64_t now) {
    c->held = 0;
    for (int i = 0; i < s->nguards; i++) {
        rsl__guard *g = s->guards[i];
        int ok = 0;
        const char *why = "";
        switch (g->kind) {
        case RSL_GUARD_LIMITER:
            ok = rsl__limiter_allow(g->u.limiter, now);
            why = "is empty";
            break;
        case RSL_GUARD_BULKHEAD:
            ok = rsl__bulkhead_acquire(g->u.bulkhead);
            why = "is full";
            break;
        case RSL_GUARD_BREAKER:
            ok = rsl__breaker_allow(g->u.breaker, now, &c->permits[i]);
            why = rsl__breaker_state_get(g->u.breaker) == RSL_BREAKER_HALF_OPEN
                      ? "is half_open with every probe slot taken"
                      : "is open";
            break;
        }
        if (!ok) {
            for (int j = 0; j < i; j++) {
                if (!(c->held & (1u << j))) {
                    continue;
                }
                rsl__guard *h = s->guards[j];
                if (h->kind == RSL_GUARD_BULKHEAD) {
                    rsl__bulkhead_release(h->u.bulkhead);
                } else if (h->kind == RSL_GUARD_BREAKER) {
                    rsl__breaker_release(h->u.breaker, &c->permits[j]);
                }
            }
            c->held = 0;
            rsl__answer_fail(&c->ans, RSL_OUTCOME_REJECTED, "%s \"%s\" %s",
                             rsl__guard_kind_name(g->kind), g->name, why);
            return 0;
        }
        if (g->kind != RSL_GUARD_LIMITER) {
            c->held |= 1u << i;
        }
    }
    return 1;
}

/* The attempt ended: verdicts to breakers (none when canceled), slots back. */
static void release_guards(rsl__call *c, const rsl__step *s, int64_t now, int verdict) {
    for (int i = 0; i < s->nguards && c->held; i++) {
        if (!(c->held & (1u << i))) {
            continue;
        }
        rsl__guard *g = s->guards[i];
        if (g->kind == RSL_GUARD_BULKHEAD) {
            rsl__bulkhead_release(g->u.bulkhead);
        } else if (g->kind == RSL_GUARD_BREAKER) {
            if (verdict) {
                rsl__breaker_record(g->u.breaker, &c->permits[i], now, c->ans.outcome,
                                    now - c->attempt_start);
            } else {
                rsl__breaker_release(g->u.breaker, &c->permits[i]);
            }
        }
        c->held &= ~(1u << i);
    }
}

/* ---- timers --------------------------------------------------------------------------- */

static void on_timer(uv_timer_t *t);

static void timer_start(rsl__call *c, int purpose, int64_t ns) {
    if (!c->timer_inited) {
        uv_timer_init(c->w->loop, &c->timer);
        c->timer.data = c;
        c->timer_inited = 1;
    }
    c->timer_purpose = purpose;
    uint64_t ms = ns <= 0 ? 0 : (uint64_t)((ns + RSL_NS_PER_MS - 1) / RSL_NS_PER_MS);
    /* libuv counts from the loop's cached time, taken when this turn began: on a busy
     * loop that is milliseconds ago, and a timeout would fire that much early (a 100 ms
     * timeout measured 95 ms on a loaded machine).  Count from now. */
    uv_update_time(c->w->loop);
    uv_timer_start(&c->timer, on_timer, ms, 0);
}

static void timer_stop(rsl__call *c) {
    if (c->timer_inited) {
        uv_timer_stop(&c->timer);
    }
    c->timer_purpose = RSL_TIMER_NONE;
}

/* ---- host steps ----------------------------------------------------------------------- */

void rsl__step_call_unref(rsl_step_call *sc) {
    if (atomic_fetch_sub_explicit(&sc->refs, 1, memory_order_acq_rel) == 1) {
        rsl__answer_free(&sc->ans);
        free(sc);
    }
}

/* The worker gives up on the host's answer (timeout, cancel). 1: abandoned; 0: the
 * answer won the race and its message is on the way. */
static int abandon_host(rsl__call *c) {
    rsl_step_call *sc = c->sc;
    int expect = RSL_SC_PENDING;
    if (atomic_compare_exchange_strong(&sc->state, &expect, RSL_SC_ABANDONED)) {
        c->sc = NULL;
        sc->call = NULL;
        rsl__step_call_unref(sc);
        return 1;
    }
    return 0;
}

static int host_answer(rsl_step_call *sc) {
    int expect = RSL_SC_PENDING;
    if (!atomic_compare_exchange_strong(&sc->state, &expect, RSL_SC_ANSWERED)) {
        rsl__step_call_unref(sc); /* abandoned: drop the host's reference */
        return RSL_EALREADY;
    }
    if (rsl__worker_self() == sc->w) {
        rsl__call *c = sc->call;
        if (c && c->in_attempt && c->sc == sc) {
            /* Answered from inside the step function: the attempt picks the answer up on
             * return and the worker's reference keeps sc alive until then. */
            rsl__step_call_unref(sc);
            return 0;
        }
    }
    /* The message carries the host's reference; sc may be gone once this returns. */
    rsl__worker_post(sc->w, &sc->msg);
    return 0;
}

/* The host's first answer: 1 to go on, 0 when it is a second answer, or a late one
 * (the worker gave up: the host's reference is dropped here). */
static int host_first(rsl_step_call *sc) {
    if (atomic_exchange(&sc->host_done, 1)) {
        return 0;
    }
    if (atomic_load(&sc->state) != RSL_SC_PENDING) {
        rsl__step_call_unref(sc);
        return 0;
    }
    return 1;
}

int rsl_step_answer(rsl_step_call *sc, int status, const char *body, size_t len) {
    if (!sc || (!body && len)) {
        return RSL_EINVAL;
    }
    if (!host_first(sc)) {
        return RSL_EALREADY;
    }
    /* Only the host writes sc->ans, and only before it wins the state CAS. */
    rsl__answer_reset(&sc->ans);
    sc->ans.status = status;
    sc->ans.outcome = rsl__status_outcome(status);
    if (rsl__buf_append(&sc->ans.body, body ? body : "", len) < 0) {
        rsl__answer_fail(&sc->ans, RSL_OUTCOME_ERROR, "out of memory copying the answer");
    } else if (sc->ans.outcome != RSL_OUTCOME_OK) {
        char msg[32];
        snprintf(msg, sizeof(msg), "status %d", status);
        sc->ans.error = strdup(msg);
    }
    return host_answer(sc);
}

int rsl_step_fail(rsl_step_call *sc, rsl_outcome o, const char *msg) {
    if (!sc || (unsigned)o >= RSL_OUTCOME__COUNT) {
        return RSL_EINVAL;
    }
    if (!host_first(sc)) {
        return RSL_EALREADY;
    }
    rsl__answer_fail(&sc->ans, o, "%s", msg ? msg : rsl_outcome_name(o));
    return host_answer(sc);
}

/* Takes the answer out of an answered handle and releases the worker's reference. */
static void take_host_answer(rsl__call *c, rsl_step_call *sc) {
    answer_move(&c->ans, &sc->ans);
    c->sc = NULL;
    sc->call = NULL;
    rsl__step_call_unref(sc);
}

static int start_host_step(rsl__call *c, const rsl__step *s, int64_t now) {
    rsl__hoststep hs;
    if (rsl__rt_hoststep(c->rt, s->u.c.name, &hs) < 0) {
        rsl__answer_fail(&c->ans, RSL_OUTCOME_ERROR, "no C step registered as \"%s\"",
                         s->u.c.name);
        return 1;
    }
    rsl_step_call *sc = calloc(1, sizeof(*sc));
    if (!sc) {
        rsl__answer_fail(&c->ans, RSL_OUTCOME_ERROR, "out of memory");
        return 1;
    }
    sc->msg.type = RSL_MSG_ANSWER;
    atomic_init(&sc->state, RSL_SC_PENDING);
    atomic_init(&sc->refs, 2);
    sc->call = c;
    sc->w = c->w;
    c->sc = sc;
    c->in_attempt = 1;
    hs.fn(sc, c->req, hs.ud);
    c->in_attempt = 0;
    if (atomic_load(&sc->state) == RSL_SC_ANSWERED && c->sc == sc) {
        take_host_answer(c, sc);
        return 1;
    }
    /* Pending: bounded by the step's timeout and the deadline, whichever comes first. */
    int64_t limit = s->timeout_ns;
    if (c->deadline && (limit == 0 || c->deadline - now < limit)) {
        limit = c->deadline - now;
    }
    if (limit > 0) {
        timer_start(c, RSL_TIMER_STEP_TIMEOUT, limit);
    }
    return 0;
}

void rsl__call_host_answered(rsl_step_call *sc) {
    rsl__call *c = sc->call;
    if (!c || c->sc != sc) {
        rsl__step_call_unref(sc); /* the message's (host's) reference */
        return;
    }
    timer_stop(c);
    take_host_answer(c, sc);  /* the worker's reference */
    rsl__step_call_unref(sc); /* the message's */
    if (c->canceled) {
        rsl__answer_fail(&c->ans, RSL_OUTCOME_CANCELED, "call canceled");
    }
    c->phase = RSL_PH_ATTEMPTED;
    advance(c, rsl__rt_now(c->rt));
}

/* ---- steps ---------------------------------------------------------------------------- */

static void cache_hit(void *ud, int status, const char *body, size_t len) {
    rsl__answer *a = ud;
    a->status = status;
    a->outcome = RSL_OUTCOME_OK;
    if (rsl__buf_append(&a->body, body, len) < 0) {
        rsl__answer_fail(a, RSL_OUTCOME_ERROR, "out of memory");
    }
}

static void run_local_cache(rsl__call *c, const rsl__step *s, int64_t now) {
    const char *missing = NULL;
    c->scratch.len = 0;
    int rc = rsl__tmpl_expand(s->u.cache.key, c->req, 0, &c->scratch, &missing);
    if (rc == RSL_EINVAL) {
        rsl__answer_fail(&c->ans, RSL_OUTCOME_ERROR, "missing attribute \"%s\"", missing);
        return;
    }
    if (rc < 0 || !s->u.cache.cache) {
        rsl__answer_fail(&c->ans, RSL_OUTCOME_ERROR, "out of memory");
        return;
    }
    if (!rsl__cache_get(s->u.cache.cache, c->scratch.p, c->scratch.len, now, cache_hit, &c->ans)) {
        rsl__answer_fail(&c->ans, RSL_OUTCOME_MISS, "no cached answer for key \"%s\"",
                         c->scratch.p);
    }
}

/* ---- I/O steps ------------------------------------------------------------------------ */

/* An I/O step with neither a timeout nor a deadline still ends: a hung upstream or a
 * stopped Redis must not hold a call (and its bulkhead slot) forever.  As Envoy's route
 * timeout, generous enough never to cut a real answer short. */
#define IO_DEFAULT_TIMEOUT_NS (30 * RSL_NS_PER_S)

/* The time this attempt may take: the step's timeout (IO_DEFAULT_TIMEOUT_NS when it has
 * none), cut by what is left of the deadline (DESIGN.md: "every step gets min(own,
 * left)").  Always > 0. */
static int64_t attempt_limit(const rsl__call *c, const rsl__step *s, int64_t now) {
    int64_t limit = s->timeout_ns ? s->timeout_ns : IO_DEFAULT_TIMEOUT_NS;
    if (c->deadline && (limit == 0 || c->deadline - now < limit)) {
        limit = c->deadline - now;
        if (limit < 1) {
            limit = 1;
        }
    }
    return limit;
}

/* Stops waiting on whatever I/O the call has in flight: the transfer is aborted, a Redis
 * reply will be dropped; neither callback runs afterwards. */
static void io_abort(rsl__call *c) {
    if (c->xfer) {
        rsl__http_cancel(c->w->http, c->xfer);
        c->xfer = NULL;
    }
    if (c->rcmd) {
        rsl__redis_cancel(c->w->redis, c->rcmd);
        c->rcmd = NULL;
    }
}

/* The I/O answered: the attempt is over (unless the call was canceled meanwhile, which
 * aborts the I/O, so this does not run then). */
static void io_answered(rsl__call *c) {
    timer_stop(c);
    c->phase = RSL_PH_ATTEMPTED;
    advance(c, rsl__rt_now(c->rt));
}

static void http_done(void *ud, rsl__http_res *res) {
    rsl__call *c = ud;
    c->xfer = NULL;
    rsl__answer_reset(&c->ans);
    c->ans.outcome = res->outcome;
    c->ans.status = res->status ? res->status : rsl__outcome_status(res->outcome);
    rsl__buf tmp = c->ans.body;
    c->ans.body = res->body;
    res->body = tmp; /* the client frees what it holds: our old (empty) buffer */
    c->ans.headers = res->headers;
    c->ans.nheaders = res->nheaders;
    res->headers = NULL;
    res->nheaders = 0;
    if (res->outcome != RSL_OUTCOME_OK) {
        c->ans.error = strdup(res->error ? res->error : rsl_outcome_name(res->outcome));
    }
    io_answered(c);
}

/* Request headers: the step's, then X-Resilua-Deadline-Ms.  Values are expanded into
 * c->scratch after the URL, at offsets fixed up once the buffer stops moving. */
#define MAX_REQ_HEADERS (RSL_POLICY_MAX_GUARDS + 48)

static int start_http(rsl__call *c, const rsl__step *s, int64_t now) {
    rsl__http *h = rsl__worker_http(c->w);
    if (!h) {
        rsl__answer_fail(&c->ans, RSL_OUTCOME_ERROR, "out of memory (HTTP client)");
        return 1;
    }
    const char *missing = NULL;
    c->scratch.len = 0;
    int rc = rsl__tmpl_expand(s->u.http.url, c->req, 1, &c->scratch, &missing);
    size_t off[MAX_REQ_HEADERS];
    rsl__header hd[MAX_REQ_HEADERS];
    int nh = 0;
    for (int i = 0; rc == 0 && i < s->u.http.nheaders && nh < MAX_REQ_HEADERS - 1; i++) {
        if (rsl__buf_append(&c->scratch, "", 1) < 0) { /* keep the previous NUL */
            rc = RSL_ENOMEM;
            break;
        }
        off[nh] = c->scratch.len;
        rc = rsl__tmpl_expand(s->u.http.hvalues[i], c->req, 0, &c->scratch, &missing);
        hd[nh].name = s->u.http.hnames[i];
        nh++;
    }
    int64_t limit = attempt_limit(c, s, now);
    if (rc == 0 && c->deadline) {
        /* What is left for this call, so that a resilua downstream can honour it. */
        int64_t left = (c->deadline - now) / RSL_NS_PER_MS;
        char v[24], *d = v + sizeof(v);
        uint64_t u = left > 0 ? (uint64_t)left : 0; /* by hand: snprintf cost ~0.7k insns */
        do {
            *--d = (char)('0' + u % 10);
            u /= 10;
        } while (u);
        if (rsl__buf_append(&c->scratch, "", 1) < 0) {
            rc = RSL_ENOMEM;
        } else {
            off[nh] = c->scratch.len;
            rc = rsl__buf_append(&c->scratch, d, (size_t)(v + sizeof(v) - d)) < 0 ? RSL_ENOMEM : 0;
            hd[nh].name = "X-Resilua-Deadline-Ms";
            nh++;
        }
    }
    c->io.len = 0;
    if (rc == 0 && s->u.http.body) {
        rc = rsl__tmpl_expand(s->u.http.body, c->req, 0, &c->io, &missing);
    }
    if (rc == RSL_EINVAL) {
        rsl__answer_fail(&c->ans, RSL_OUTCOME_ERROR, "missing attribute \"%s\"", missing);
        return 1;
    }
    if (rc < 0) {
        rsl__answer_fail(&c->ans, RSL_OUTCOME_ERROR, "out of memory");
        return 1;
    }
    for (int i = 0; i < nh; i++) {
        hd[i].value = c->scratch.p + off[i];
    }
    rsl__http_req r = {
        .method = s->u.http.method,
        .url = c->scratch.p,
        .headers = hd,
        .nheaders = nh,
        .body = NULL,
        .body_len = 0,
        /* None: the step timer below bounds the attempt (it also covers the deadline)
         * and aborts the transfer.  A curl timeout as a backstop 50 ms behind it never
         * decided an outcome, yet cost every call about 1 us of curl's timer
         * bookkeeping (two timeouts per transfer in its splay tree, the multi timer
         * moved as they finish): bench_io. */
        .timeout_ns = 0,
    };
    if (s->u.http.body) {
        r.body = c->io.p ? c->io.p : "";
        r.body_len = c->io.len;
    } else if (s->u.http.pass_body) {
        r.body = c->req->body ? c->req->body : "";
        r.body_len = c->req->body ? c->req->body_len : 0;
    }
    rc = rsl__http_start(h, &r, http_done, c, &c->xfer);
    if (rc < 0) {
        c->xfer = NULL;
        rsl__answer_fail(&c->ans, RSL_OUTCOME_ERROR, "HTTP request not started: %s",
                         rsl_strerror(rc));
        return 1;
    }
    if (limit > 0) {
        timer_start(c, RSL_TIMER_STEP_TIMEOUT, limit);
    }
    return 0;
}

static void redis_done(void *ud, const rsl__redis_reply *rep) {
    rsl__call *c = ud;
    c->rcmd = NULL;
    rsl__answer_reset(&c->ans);
    if (rep->outcome == RSL_OUTCOME_OK) {
        c->ans.outcome = RSL_OUTCOME_OK;
        c->ans.status = 200;
        if (rsl__buf_append(&c->ans.body, rep->str ? rep->str : "", rep->len) < 0) {
            rsl__answer_fail(&c->ans, RSL_OUTCOME_ERROR, "out of memory");
        }
    } else {
        rsl__answer_fail(&c->ans, rep->outcome, "%s",
                         rep->error ? rep->error : rsl_outcome_name(rep->outcome));
    }
    io_answered(c);
}

#define MAX_REDIS_ARGS 64

/* r.redis (argv templates) and r.redis_cache (GET key). */
static int start_redis(rsl__call *c, const rsl__step *s, int64_t now) {
    rsl__redis *rd = c->w->redis;
    if (!rd) {
        rsl__answer_fail(&c->ans, RSL_OUTCOME_CONNECT,
                         "no Redis configured (resilua --redis HOST:PORT, rsl_options.redis)");
        return 1;
    }
    const rsl__tmpl *const *tv;
    const rsl__tmpl *get[2];
    int argc;
    if (s->kind == RSL_STEP_REDIS_CACHE) {
        get[0] = NULL; /* "GET", literal */
        get[1] = s->u.cache.key;
        tv = get;
        argc = 2;
    } else {
        tv = (const rsl__tmpl *const *)s->u.redis.argv;
        argc = s->u.redis.argc < MAX_REDIS_ARGS ? s->u.redis.argc : MAX_REDIS_ARGS;
    }
    size_t off[MAX_REDIS_ARGS], len[MAX_REDIS_ARGS];
    const char *argv[MAX_REDIS_ARGS];
    const char *missing = NULL;
    int rc = 0;
    c->scratch.len = 0;
    for (int i = 0; i < argc && rc == 0; i++) {
        off[i] = c->scratch.len;
        if (!tv[i]) {
            rc = rsl__buf_append(&c->scratch, "GET", 3) < 0 ? RSL_ENOMEM : 0;
        } else {
            rc = rsl__tmpl_expand(tv[i], c->req, 0, &c->scratch, &missing);
        }
        len[i] = c->scratch.len - off[i];
    }
    if (rc == RSL_EINVAL) {
        rsl__answer_fail(&c->ans, RSL_OUTCOME_ERROR, "missing attribute \"%s\"", missing);
        return 1;
    }
    if (rc < 0) {
        rsl__answer_fail(&c->ans, RSL_OUTCOME_ERROR, "out of memory");
        return 1;
    }
    for (int i = 0; i < argc; i++) {
        argv[i] = c->scratch.p + off[i];
    }
    rc = rsl__redis_command(rd, argc, argv, len, redis_done, c, &c->rcmd);
    if (rc < 0) {
        c->rcmd = NULL;
        if (rc == RSL_ECLOSED) {
            rsl__answer_fail(&c->ans, RSL_OUTCOME_CONNECT, "Redis %s:%d is not connected",
                             c->rt->redis_host, c->rt->redis_port);
        } else {
            rsl__answer_fail(&c->ans, RSL_OUTCOME_ERROR, "Redis command not sent: %s",
                             rsl_strerror(rc));
        }
        return 1;
    }
    int64_t limit = attempt_limit(c, s, now);
    if (limit > 0) {
        timer_start(c, RSL_TIMER_STEP_TIMEOUT, limit);
    }
    return 0;
}

/* The attempt proper, guards held. 1: the answer is in c->ans; 0: waiting. */
static int attempt_body(rsl__call *c, const rsl__step *s, int64_t now) {
    switch (s->kind) {
    case RSL_STEP_STUB:
        c->ans.status = s->u.stub.status;
        c->ans.outcome = rsl__status_outcome(s->u.stub.status);
        if (rsl__buf_append(&c->ans.body, s->u.stub.body ? s->u.stub.body : "",
                            s->u.stub.body_len) < 0) {
            rsl__answer_fail(&c->ans, RSL_OUTCOME_ERROR, "out of memory");
            return 1;
        }
        answer_copy_headers(&c->ans, s->u.stub.headers, s->u.stub.nheaders);
        if (c->ans.outcome != RSL_OUTCOME_OK) {
            char msg[32];
            snprintf(msg, sizeof(msg), "status %d", c->ans.status);
            c->ans.error = strdup(msg);
        }
        return 1;
    case RSL_STEP_LUA:
        rsl__lapi_step(c->G->api[c->w->index], c, s);
        return 1;
    case RSL_STEP_LOCAL_CACHE:
        run_local_cache(c, s, now);
        return 1;
    case RSL_STEP_C:
        return start_host_step(c, s, now);
    case RSL_STEP_HTTP:
        return start_http(c, s, now);
    case RSL_STEP_REDIS:
    case RSL_STEP_REDIS_CACHE:
        return start_redis(c, s, now);
    }
    rsl__answer_fail(&c->ans, RSL_OUTCOME_ERROR, "unknown step kind");
    return 1;
}

/* One attempt of the current step: guards, then the fault roll, then the body.
 * 1: the answer is in c->ans; 0: waiting. */
static int attempt(rsl__call *c, const rsl__step *s, int64_t now) {
    rsl__answer_reset(&c->ans);
    c->attempt_start = now;
    if (s->nguards > RSL_MAX_GUARDS) {
        rsl__answer_fail(&c->ans, RSL_OUTCOME_ERROR, "more than %d guards on one step",
                         RSL_MAX_GUARDS);
        return 1;
    }
    if (!acquire_guards(c, s, now)) {
        return 1;
    }
    c->tries++;
    if (s->has_fault) {
        if (s->fault.abort >= 0 && rsl__rand01() * 100.0 < s->fault.abort_percent) {
            rsl_outcome o = (rsl_outcome)s->fault.abort;
            rsl__answer_fail(&c->ans, o, "fault injected: %s", rsl_outcome_name(o));
            if (o == RSL_OUTCOME_5XX) {
                c->ans.status = 503;
            }
            return 1;
        }
        if (s->fault.delay_ns > 0 && rsl__rand01() * 100.0 < s->fault.delay_percent) {
            timer_start(c, RSL_TIMER_DELAY, s->fault.delay_ns);
            return 0;
        }
    }
    return attempt_body(c, s, now);
}

/* ---- retries -------------------------------------------------------------------------- */

static void budget_slot(rsl__budget *b, int64_t sec, int *slot) {
    int i = (int)(sec % 10);
    int64_t e = atomic_load_explicit(&b->epoch[i], memory_order_acquire);
    if (e != sec && atomic_compare_exchange_strong(&b->epoch[i], &e, sec)) {
        atomic_store_explicit(&b->first[i], 0, memory_order_relaxed);
        atomic_store_explicit(&b->retries[i], 0, memory_order_relaxed);
    }
    *slot = i;
}

static void budget_note_first(rsl__budget *b, int64_t now) {
    int i;
    budget_slot(b, now / RSL_NS_PER_S, &i);
    atomic_fetch_add_explicit(&b->first[i], 1, memory_order_relaxed);
}

/* Retries over the last 10 s may be at most budget * first attempts + 10 (DESIGN.md:
 * "plus a floor of 10 retries per 10 s so low traffic can still retry"). */
static int budget_take_retry(rsl__budget *b, double budget, int64_t now) {
    int64_t sec = now / RSL_NS_PER_S;
    int64_t first = 0, retries = 0;
    for (int i = 0; i < 10; i++) {
        int64_t e = atomic_load_explicit(&b->epoch[i], memory_order_acquire);
        if (e > sec - 10 && e <= sec) {
            first += atomic_load_explicit(&b->first[i], memory_order_relaxed);
            retries += atomic_load_explicit(&b->retries[i], memory_order_relaxed);
        }
    }
    if ((double)retries >= budget * (double)first + 10.0) {
        return 0;
    }
    int i;
    budget_slot(b, sec, &i);
    atomic_fetch_add_explicit(&b->retries[i], 1, memory_order_relaxed);
    return 1;
}

static int64_t backoff_ns(rsl__call *c, const rsl__retry *r) {
    int64_t d = r->base_ns;
    if (r->exponential) {
        for (int i = 1; i < c->attempt && d < r->max_ns; i++) {
            d *= 2;
        }
    }
    if (r->max_ns > 0 && d > r->max_ns) {
        d = r->max_ns;
    }
    double u = rsl__rand01();
    switch (r->jitter) {
    case RSL_JITTER_NONE:
        break;
    case RSL_JITTER_FULL:
        d = (int64_t)(u * (double)d);
        break;
    case RSL_JITTER_EQUAL:
        d = d / 2 + (int64_t)(u * (double)(d / 2));
        break;
    case RSL_JITTER_DECORRELATED: {
        int64_t prev = c->last_sleep > 0 ? c->last_sleep : r->base_ns;
        int64_t hi = prev * 3;
        d = r->base_ns + (int64_t)(u * (double)(hi - r->base_ns));
        if (r->max_ns > 0 && d > r->max_ns) {
            d = r->max_ns;
        }
        break;
    }
    }
    c->last_sleep = d;
    return d;
}

/* After an attempt: 1 when a retry was scheduled. */
static int maybe_retry(rsl__call *c, const rsl__step *s, int64_t now) {
    const rsl__retry *r = &s->retry;
    if (c->canceled || c->attempt >= r->attempts || !(r->on_mask & (1u << c->ans.outcome))) {
        return 0;
    }
    int64_t wait = backoff_ns(c, r);
    if (c->deadline && now + wait >= c->deadline) {
        return 0; /* it could not finish before the deadline */
    }
    if (!budget_take_retry(&c->G->budgets[c->pidx][c->path[c->pos]], r->budget, now)) {
        return 0;
    }
    if (c->p->stats) {
        rsl__pview *v = c->p->stats;
        atomic_fetch_add_explicit(&v->steps[c->path[c->pos]]->retries, 1, memory_order_relaxed);
    }
    timer_start(c, RSL_TIMER_BACKOFF, wait);
    return 1;
}

/* ---- driving -------------------------------------------------------------------------- */

static void end_step(rsl__call *c, int64_t now) {
    rsl__entry *e = &c->res->path[c->res->npath++];
    e->step = c->p->steps[c->path[c->pos]].name;
    e->outcome = c->ans.outcome;
    e->ms = ms_since(c->step_start, now);
    e->attempts = c->tries; /* a rejection or a skipped step is no try */
    rsl__pview *v = c->p->stats;
    if (v) {
        rsl__stepstats_observe(v->steps[c->path[c->pos]], e->outcome, now - c->step_start);
    }
    if (c->ans.outcome != RSL_OUTCOME_OK) {
        e->error = c->ans.error ? strdup(c->ans.error) : strdup(rsl_outcome_name(e->outcome));
    }
}

/* Drives c from its phase until it waits or is done.  `now` is read from the clock only
 * where time has passed (after an attempt): a precise clock read costs ~25 ns, as much as
 * the rest of a stub step. */
static void advance(rsl__call *c, int64_t now) {
    for (;;) {
        const rsl__step *s = c->pos < c->npath ? &c->p->steps[c->path[c->pos]] : NULL;
        switch (c->phase) {
        case RSL_PH_STEP:
            if (!s) {
                finish(c, now);
                return;
            }
            c->step_start = now;
            c->attempt = 0;
            c->tries = 0;
            c->last_sleep = 0;
            if (atomic_load_explicit(&c->cancel_req, memory_order_relaxed)) {
                c->canceled = 1;
            }
            if (c->canceled) {
                rsl__answer_fail(&c->ans, RSL_OUTCOME_CANCELED, "call canceled");
                end_step(c, now);
                finish(c, now);
                return;
            }
            if (c->deadline && now >= c->deadline && waits_on_io(s)) {
                rsl__answer_fail(&c->ans, RSL_OUTCOME_TIMEOUT, "deadline passed before the step");
                c->phase = RSL_PH_ATTEMPTED;
                break;
            }
            budget_note_first(&c->G->budgets[c->pidx][c->path[c->pos]], now);
            c->phase = RSL_PH_ATTEMPT;
            break;
        case RSL_PH_ATTEMPT:
            c->attempt++;
            if (!attempt(c, s, now)) {
                c->phase = RSL_PH_WAIT;
                return;
            }
            now = rsl__rt_now(c->rt);
            c->phase = RSL_PH_ATTEMPTED;
            break;
        case RSL_PH_ATTEMPTED:
            release_guards(c, s, now, c->ans.outcome != RSL_OUTCOME_CANCELED);
            if (c->attempt > 0 && maybe_retry(c, s, now)) {
                c->phase = RSL_PH_WAIT;
                return;
            }
            end_step(c, now);
            if (c->ans.outcome != RSL_OUTCOME_CANCELED &&
                (c->p->fallback_mask & (1u << c->ans.outcome)) && c->pos + 1 < c->npath) {
                if (c->p->stats) {
                    rsl__pview *v = c->p->stats;
                    atomic_fetch_add_explicit(&v->steps[c->path[c->pos]]->fallbacks, 1,
                                              memory_order_relaxed);
                }
                answer_move(&c->prev_ans, &c->ans);
                c->prev_step = c->path[c->pos];
                c->pos++;
                c->phase = RSL_PH_STEP;
                break;
            }
            finish(c, now);
            return;
        case RSL_PH_WAIT:
        case RSL_PH_DONE:
            return;
        }
    }
}

static void on_timer(uv_timer_t *t) {
    rsl__call *c = t->data;
    int purpose = c->timer_purpose;
    c->timer_purpose = RSL_TIMER_NONE;
    if (c->phase != RSL_PH_WAIT) {
        return;
    }
    const rsl__step *s = &c->p->steps[c->path[c->pos]];
    int64_t now = rsl__rt_now(c->rt);
    switch (purpose) {
    case RSL_TIMER_STEP_TIMEOUT:
        if (c->sc && !abandon_host(c)) {
            return; /* the answer beat the timeout by a hair: its message is on the way */
        }
        io_abort(c);
        rsl__answer_fail(&c->ans, RSL_OUTCOME_TIMEOUT, "step timed out after %.1f ms",
                         ms_since(c->attempt_start, now));
        c->phase = RSL_PH_ATTEMPTED;
        break;
    case RSL_TIMER_BACKOFF:
        c->phase = RSL_PH_ATTEMPT;
        break;
    case RSL_TIMER_DELAY:
        /* The injected delay is over: the attempt proper, guards still held. */
        if (!attempt_body(c, s, now)) {
            return;
        }
        now = rsl__rt_now(c->rt);
        c->phase = RSL_PH_ATTEMPTED;
        break;
    default:
        return;
    }
    advance(c, now);
}

void rsl__call_cancel(rsl__call *c) {
    if (c->phase == RSL_PH_DONE) {
        return;
    }
    c->canceled = 1;
    if (c->phase != RSL_PH_WAIT) {
        return; /* running right now (cannot happen from a message); checked at each step */
    }
    if (c->sc && !abandon_host(c)) {
        return; /* the host's answer is on its way; it completes the call as canceled */
    }
    io_abort(c);
    timer_stop(c);
    rsl__answer_fail(&c->ans, RSL_OUTCOME_CANCELED, "call canceled");
    c->phase = RSL_PH_ATTEMPTED;
    advance(c, rsl__rt_now(c->rt));
}

void rsl__call_start(rsl__call *c) {
    if (atomic_load_explicit(&c->cancel_req, memory_order_relaxed)) {
        rsl__call_abort(c, RSL_OUTCOME_CANCELED, "call canceled before it started");
        return;
    }
    rsl__worker_track(c->w, c);
    c->start = rsl__rt_now(c->rt);
    c->deadline = c->p->deadline_ns ? c->start + c->p->deadline_ns : 0;
    c->prev_step = -1;
    if (c->p->route_refs) {
        char err[512];
        if (rsl__lapi_route(c->G->api[c->w->index], c, err, sizeof(err)) < 0) {
            rsl__log(c->rt, RSL_LOG_WARN, "%s:%d: policy \"%s\": route failed, taking chain: %s",
                     c->p->file, c->p->line, c->p->name, err);
            c->res->route_failed = 1;
            if (c->p->stats) {
                rsl__pview *v = c->p->stats;
                atomic_fetch_add_explicit(&v->ps->route_failures, 1, memory_order_relaxed);
            }
            c->npath = 0;
        }
    }
    if (c->npath == 0) {
        c->npath = c->p->nchain < RSL_MAX_PATH ? c->p->nchain : RSL_MAX_PATH;
        memcpy(c->path, c->p->chain, (size_t)c->npath * sizeof(int));
    }
    c->pos = 0;
    c->phase = RSL_PH_STEP;
    advance(c, c->p->route_refs ? rsl__rt_now(c->rt) : c->start);
}
