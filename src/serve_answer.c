/*
 * serve_answer -- what the sidecar answers a request: routing it (its own endpoints, then
 * r.expose's routes), the call and its result as a response, /reload off the worker, and
 * the server's own series for /metrics.  The writing is the connection's (serve_conn.c).
 *
 * Layer: the sidecar, a client of resilua.h only; above serve_conn.c.  Loop thread of the connection's worker
 * (a /reload runs on a thread of its own and comes back through rsl_on_worker).
 */
#include "serve_int.h"

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

const char *const rsl__srv_reject_names[] = {
#define X_(e, s, st) s,
    REJECTS(X_)
#undef X_
};
const int rsl__srv_reject_status[] = {
#define X_(e, s, st) st,
    REJECTS(X_)
#undef X_
};

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
        rsl__srv_conn_unref(c);
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
    rsl__srv_answer_begin(&h, status, 384 + len); /* the X-Resilua-* headers and a few others */
    size_t n = rsl_result_header_count(r);
    for (size_t i = 0; i < n; i++) {
        const char *name, *value;
        if (rsl_result_header(r, i, &name, &value) != 0 || !rsl__srv_header_safe(name) ||
            !rsl__srv_header_safe(value) || !name[0] || hop_by_hop(name)) {
            continue;
        }
        rsl__srv_out_header(&h, name, value);
    }
    const char *served = rsl_result_served_by(r);
    rsl__srv_out_header(&h, "X-Resilua-Served-By", served ? served : "none");
    rsl__srv_out_header(&h, "X-Resilua-Outcome", rsl_outcome_name(rsl_result_outcome(r)));
    rsl__srv_out_header(&h, "X-Resilua-Degraded", rsl_result_degraded(r) ? "1" : "0");
    rsl__srv_out_str(&h, "X-Resilua-Path: ");
    size_t np = rsl_result_path_len(r);
    for (size_t i = 0; i < np; i++) {
        rsl_path_entry e;
        if (rsl_result_path(r, i, &e) == 0) {
            if (i) {
                rsl__srv_out_add(&h, ",", 1);
            }
            rsl__srv_out_str(&h, e.step);
            rsl__srv_out_add(&h, "=", 1);
            rsl__srv_out_str(&h, rsl_outcome_name(e.outcome));
        }
    }
    rsl__srv_out_str(&h, "\r\n");
    c->log_result = r;
    rsl__srv_answer_send(c, &h, status, body, len, 0);
    c->log_result = NULL;
    rsl__srv_conn_unref(c);
}

/* The caller's deadline in ns from X-Resilua-Deadline-Ms (whole milliseconds) or
 * grpc-timeout (1-8 digits and a unit: H M S m u n), the sooner of the two; 0: none (or
 * neither parses). */
static int64_t caller_deadline(const conn *c) {
    int64_t best = 0;
    size_t n = c->hk_len[HK_DEADLINE_MS];
    if (c->hk_seen[HK_DEADLINE_MS] == 1 && n > 0 && n <= 12) {
        int64_t v = 0;
        size_t i = 0;
        while (i < n && c->deadline_ms[i] >= '0' && c->deadline_ms[i] <= '9') {
            v = v * 10 + (c->deadline_ms[i++] - '0');
        }
        if (i == n) {
            best = v * 1000000 > 0 ? v * 1000000 : 1; /* 0 ms: already due */
        }
    }
    n = c->hk_len[HK_GRPC_TIMEOUT];
    if (c->hk_seen[HK_GRPC_TIMEOUT] == 1 && n >= 2 && n <= 9) {
        int64_t v = 0;
        size_t i = 0;
        while (i < n - 1 && c->grpc_timeout[i] >= '0' && c->grpc_timeout[i] <= '9') {
            v = v * 10 + (c->grpc_timeout[i++] - '0');
        }
        int64_t unit = 0;
        switch (c->grpc_timeout[n - 1]) {
        case 'H': unit = 3600LL * 1000000000; break;
        case 'M': unit = 60LL * 1000000000; break;
        case 'S': unit = 1000000000; break;
        case 'm': unit = 1000000; break;
        case 'u': unit = 1000; break;
        case 'n': unit = 1; break;
        }
        if (i == n - 1 && unit) {
            int64_t ns = v > INT64_MAX / unit ? INT64_MAX : v * unit;
            if (ns < 1) {
                ns = 1;
            }
            if (!best || ns < best) {
                best = ns;
            }
        }
    }
    return best;
}

/* The request's trace context and deadline onto req.  A traceparent that does not parse,
 * or more than one, is no context: the call starts a trace of its own (W3C 3.2.2.x). */
static int add_context(conn *c, rsl_req *req) {
    if (c->hk_seen[HK_TRACEPARENT] == 1 && c->hk_len[HK_TRACEPARENT] <= HK_TRACEPARENT_MAX) {
        const char *ts = c->hk_seen[HK_TRACESTATE] && c->hk_len[HK_TRACESTATE] <= HK_TRACESTATE_MAX
                             ? c->tracestate
                             : NULL;
        int rc = rsl_req_set_trace(req, c->traceparent, ts);
        if (rc == RSL_ENOMEM) {
            return rc;
        }
    }
    int64_t dl = caller_deadline(c);
    return dl ? rsl_req_set_deadline(req, dl) : 0;
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
        rsl__srv_respond_error(c, 404, msg, 0);
    } else {
        snprintf(msg, sizeof(msg), "cannot call \"%s\": %s", policy, rsl_strerror(rc));
        rsl__srv_respond_error(c, rc == RSL_ECLOSED ? 503 : 500, msg, 0);
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
        rsl__srv_respond(c, status, "Content-Type: application/json\r\n", a, strlen(a), 0);
    }
    rsl__srv_conn_unref(c);
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
        rsl__srv_respond_error(c, 500, "out of memory", 0);
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
        rsl__srv_respond_error(c, 500, "cannot start the reload thread", 0);
    }
}

/* ---- POST /guards/NAME/ACTION: admin overrides -------------------------------------------
 * Only from the machine itself: a peer that is not loopback gets a 403 whatever address
 * the server listens on (an operator who exposes the sidecar does not expose its switches
 * with it).  The answer is the guard's state after the override. */

static void not_allowed(conn *c, const char *allow);

static int peer_is_loopback(conn *c) {
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0) {
        return 0;
    }
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
        return (ntohl(a->sin_addr.s_addr) >> 24) == 127;
    }
    if (ss.ss_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)&ss)->sin6_addr;
        if (IN6_IS_ADDR_LOOPBACK(a)) {
            return 1;
        }
        return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
    }
    return 0;
}

static void guard_admin(conn *c, const char *rest, size_t n) {
    static const struct {
        const char *name;
        rsl_override a;
    } actions[] = {{"force_open", RSL_OVERRIDE_FORCE_OPEN},
                   {"disable", RSL_OVERRIDE_DISABLE},
                   {"reset", RSL_OVERRIDE_RESET},
                   {"auto", RSL_OVERRIDE_AUTO}};
    if (c->p.method != HTTP_POST) {
        not_allowed(c, "POST");
        return;
    }
    if (!peer_is_loopback(c)) {
        rsl__srv_respond_error(c, 403, "guard overrides are taken from loopback only", 0);
        return;
    }
    const char *slash = NULL;
    for (size_t i = n; i > 0 && !slash; i--) {
        slash = rest[i - 1] == '/' ? rest + i - 1 : NULL;
    }
    char name[256];
    if (!slash || slash == rest || (size_t)(slash - rest) >= sizeof(name)) {
        rsl__srv_respond_error(c, 404, "expected POST /guards/NAME/force_open|disable|reset|auto",
                               0);
        return;
    }
    size_t nl = pct_decode(rest, (size_t)(slash - rest), name, 0);
    name[nl] = 0;
    const char *act = slash + 1;
    size_t al = n - (size_t)(act - rest);
    int which = -1;
    for (size_t i = 0; i < sizeof(actions) / sizeof(actions[0]); i++) {
        if (strlen(actions[i].name) == al && memcmp(actions[i].name, act, al) == 0) {
            which = (int)i;
        }
    }
    if (which < 0 || strlen(name) != nl) {
        rsl__srv_respond_error(c, 404, "expected POST /guards/NAME/force_open|disable|reset|auto",
                               0);
        return;
    }
    int rc = rsl_guard_override(c->w->s->rt, name, actions[which].a);
    if (rc == RSL_ENOENT) {
        char msg[300];
        snprintf(msg, sizeof(msg), "no guard named \"%s\"", name);
        rsl__srv_respond_error(c, 404, msg, 0);
        return;
    }
    if (rc != 0) {
        rsl__srv_respond_error(c, 500, rsl_strerror(rc), 0);
        return;
    }
    /* The guard's state after it, from the runtime's own document. */
    char *st = rsl_state_json(c->w->s->rt);
    json_t *doc = st ? json_loads(st, 0, NULL) : NULL;
    rsl_free(st);
    json_t *g = json_object_get(json_object_get(doc, "guards"), name);
    json_t *o = json_pack("{s:s,s:s,s:O?}", "guard", name, "action", actions[which].name, "state",
                          g);
    char *js = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    json_decref(doc);
    if (!js) {
        rsl__srv_respond_error(c, 500, "cannot render the state", 0);
        return;
    }
    outbuf b = {0};
    rsl__srv_out_str(&b, js);
    rsl__srv_out_str(&b, "\n");
    free(js);
    rsl__srv_respond(c, 200, "Content-Type: application/json\r\n", b.p ? b.p : "", b.len, 0);
    free(b.p);
}

/* ---- the server's own series for /metrics ----------------------------------------------- */

static void metrics_append(rsl_serve *s, outbuf *b) {
    rsl__srv_out_str(b, "# HELP resilua_http_requests_total HTTP requests the sidecar answered, by "
                     "status.\n# TYPE resilua_http_requests_total counter\n");
    for (int st = 100; st < 600; st++) {
        uint64_t v = 0;
        for (int i = 0; i < s->nworkers; i++) {
            v += relaxed(&s->w[i].by_status[st]);
        }
        if (v) {
            rsl__srv_out_fmt(b, "resilua_http_requests_total{code=\"%d\"} %llu\n", st,
                             (unsigned long long)v);
        }
    }
    rsl__srv_out_str(b, "# HELP resilua_http_rejected_total Requests refused by a limit of the "
                     "sidecar, by reason.\n# TYPE resilua_http_rejected_total counter\n");
    for (int r = 0; r < REJ__COUNT; r++) {
        uint64_t v = 0;
        for (int i = 0; i < s->nworkers; i++) {
            v += relaxed(&s->w[i].rejected[r]);
        }
        rsl__srv_out_fmt(b, "resilua_http_rejected_total{reason=\"%s\"} %llu\n",
                         rsl__srv_reject_names[r], (unsigned long long)v);
    }
    uint64_t acc = 0, idle = 0, aborts = 0;
    int64_t open = 0;
    for (int i = 0; i < s->nworkers; i++) {
        acc += relaxed(&s->w[i].accepted);
        idle += relaxed(&s->w[i].idle_closed);
        aborts += relaxed(&s->w[i].client_aborts);
        open += atomic_load_explicit(&s->w[i].open, memory_order_relaxed);
    }
    rsl__srv_out_fmt(b,
                     "# HELP resilua_http_connections_total Connections the sidecar accepted.\n"
                     "# TYPE resilua_http_connections_total counter\n"
                     "resilua_http_connections_total %llu\n"
                     "# HELP resilua_http_open_connections Connections open now.\n"
                     "# TYPE resilua_http_open_connections gauge\n"
                     "resilua_http_open_connections %lld\n",
                     (unsigned long long)acc, (long long)(open > 0 ? open : 0));
    rsl__srv_out_fmt(b,
                     "# HELP resilua_http_idle_closed_total Keep-alive connections closed after "
                     "the idle timeout.\n"
                     "# TYPE resilua_http_idle_closed_total counter\n"
                     "resilua_http_idle_closed_total %llu\n"
                     "# HELP resilua_http_client_aborts_total Calls canceled because their client "
                     "closed the connection.\n"
                     "# TYPE resilua_http_client_aborts_total counter\n"
                     "resilua_http_client_aborts_total %llu\n",
                     (unsigned long long)idle, (unsigned long long)aborts);
    if (s->alog) {
        uint64_t lines, dropped;
        rsl__alog_counts(s->alog, &lines, &dropped);
        rsl__srv_out_fmt(b,
                         "# HELP resilua_access_log_lines_total Lines given to the access log.\n"
                         "# TYPE resilua_access_log_lines_total counter\n"
                         "resilua_access_log_lines_total %llu\n"
                         "# HELP resilua_access_log_dropped_total Access log lines dropped: its "
                         "buffer was full.\n"
                         "# TYPE resilua_access_log_dropped_total counter\n"
                         "resilua_access_log_dropped_total %llu\n",
                         (unsigned long long)lines, (unsigned long long)dropped);
    }
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
    rsl__srv_out_str(&hb, h);
    rsl__srv_out_str(&hb, "Content-Type: application/json\r\n");
    rsl__srv_respond(c, 405, hb.p, js ? js : "", js ? strlen(js) : 0, 0);
    free(hb.p);
    free(js);
}

/* The request is complete: answer it. */
void rsl__srv_dispatch(conn *c) {
    srv_worker *w = c->w;
    rsl_serve *s = w->s;
    c->busy = 1;
    c->keep_alive = http_should_keep_alive(&c->p) && !c->p.upgrade;
    c->head = c->p.method == HTTP_HEAD;
    rsl__srv_timer_set(c, T_NONE, 0);
    size_t poff;
    const char *bad = rsl__target_check(c->url ? c->url : "", c->url_len,
                                        c->p.method == HTTP_OPTIONS, &poff);
    if (bad) {
        relaxed_inc(&w->rejected[REJ_BAD_TARGET]);
        rsl__srv_respond_error(c, 400, bad, 1);
        return;
    }
    if (c->url_len == 1 && c->url[0] == '*') { /* OPTIONS *: what the server offers */
        rsl__srv_respond(c, 200, "Allow: GET, HEAD, POST, OPTIONS\r\n", "", 0, 0);
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
            rsl__srv_respond(c, 503, "Content-Type: text/plain\r\n", "draining\n", 9, 0);
        } else {
            rsl__srv_respond(c, 200, "Content-Type: text/plain\r\n", "ok\n", 3, 0);
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
        rsl__srv_out_str(&b, m ? m : "");
        rsl_free(m);
        metrics_append(s, &b);
        if (b.oom || !m) {
            free(b.p);
            rsl__srv_respond_error(c, 500, "cannot render the metrics", 0);
            return;
        }
        rsl__srv_respond(c, 200, "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n", b.p,
                         b.len, 0);
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
            rsl__srv_respond_error(c, 500, "cannot render the state", 0);
            return;
        }
        size_t n = strlen(st);
        outbuf b = {0};
        rsl__srv_out_add(&b, st, n);
        rsl__srv_out_str(&b, "\n");
        rsl_free(st);
        rsl__srv_respond(c, 200, "Content-Type: application/json\r\n", b.p ? b.p : "", b.len, 0);
        free(b.p);
        return;
    }
    if (plen > 8 && memcmp(path, "/guards/", 8) == 0) {
        guard_admin(c, path + 8, plen - 8);
        return;
    }
    if (path_is(path, plen, "/reload")) {
        if (!post) {
            not_allowed(c, "POST");
            return;
        }
        if (!peer_is_loopback(c)) { /* as the overrides: exposing the sidecar does not */
            rsl__srv_respond_error(c, 403, "reloads are taken from loopback only", 0);
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
    if (rc == 0) {
        rc = add_context(c, req);
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
            rsl__srv_respond_error(c, 404, "unknown policy (name too long)", 0);
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
            rsl__srv_respond_error(c, 404, msg, 0);
            return;
        }
    }
    if (rc != 0) {
        rsl_req_free(req);
        rsl__srv_respond_error(c, rc == RSL_ECLOSED ? 503 : 500, rsl_strerror(rc), 0);
        return;
    }
    start_call(c, policy, req);
    rsl_req_free(req);
}
