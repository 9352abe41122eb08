/*
 * step_http -- r.http: one HTTP request per attempt through the worker's libcurl multi
 * client on its loop (http.c), the URL, headers and body expanded from the request; the
 * answer's status, body and headers become the step's answer.
 *
 * Layer: a step kind (step.h).  Worker thread.
 */
#include "chain.h"
#include "dec.h"
#include "steps.h"

#include <string.h>

/* Stops the transfer: its callback does not run afterwards. */
static int http_abort(rsl__call *c) {
    if (c->wait) {
        rsl__http_cancel(c->w->http, c->wait);
        c->wait = NULL;
    }
    return 1;
}

static void http_done(void *ud, rsl__http_res *res) {
    rsl__call *c = ud;
    c->wait = NULL;
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
    rsl__chain_answered(c);
}

/* Request headers: the step's, then X-Resilua-Deadline-Ms, traceparent and tracestate.
 * Values are expanded into c->scratch after the URL, at offsets fixed up once the buffer
 * stops moving. */
#define MAX_REQ_HEADERS (RSL_POLICY_MAX_GUARDS + 48)

static int http_start(rsl__call *c, const rsl__step *s, int64_t now) {
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
    for (int i = 0; rc == 0 && i < s->u.http.nheaders && nh < MAX_REQ_HEADERS - 3; i++) {
        if (rsl__buf_append(&c->scratch, "", 1) < 0) { /* keep the previous NUL */
            rc = RSL_ENOMEM;
            break;
        }
        off[nh] = c->scratch.len;
        rc = rsl__tmpl_expand(s->u.http.hvalues[i], c->req, 0, &c->scratch, &missing);
        hd[nh].name = s->u.http.hnames[i];
        nh++;
    }
    int64_t limit = rsl__chain_attempt_limit(c, s, now);
    if (rc == 0 && c->deadline) {
        /* What is left for this call, so that a resilua downstream can honour it. */
        int64_t left = (c->deadline - now) / RSL_NS_PER_MS;
        char v[24], *d = rsl__dec(v + sizeof(v), left > 0 ? left : 0); /* dec.h */
        if (rsl__buf_append(&c->scratch, "", 1) < 0) {
            rc = RSL_ENOMEM;
        } else {
            off[nh] = c->scratch.len;
            rc = rsl__buf_append(&c->scratch, d, (size_t)(v + sizeof(v) - d)) < 0 ? RSL_ENOMEM : 0;
            hd[nh].name = "X-Resilua-Deadline-Ms";
            nh++;
        }
    }
    /* W3C trace context, the attempt's span as the parent (span.h).  A step's own header
     * of either name is sent too: the policy asked for it. */
    char tp[RSL_TRACEPARENT_LEN + 1];
    const char *ts = NULL;
    if (rc == 0 && rsl__trace_outgoing(c, tp, &ts)) {
        hd[nh].name = "traceparent";
        hd[nh].value = tp;
        off[nh] = (size_t)-1; /* not in scratch */
        nh++;
        if (ts && ts[0]) {
            hd[nh].name = "tracestate";
            hd[nh].value = (char *)ts;
            off[nh] = (size_t)-1;
            nh++;
        }
    }
    c->io.len = 0;
    if (rc == 0 && s->u.http.body) {
        rc = rsl__tmpl_expand(s->u.http.body, c->req, 0, &c->io, &missing);
    }
    if (rc < 0) {
        rsl__answer_unexpanded(&c->ans, rc, missing);
        return 1;
    }
    for (int i = 0; i < nh; i++) {
        if (off[i] != (size_t)-1) {
            hd[i].value = c->scratch.p + off[i];
        }
    }
    if (c->tr) {
        rsl__trace_server(c, c->scratch.p);
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
    rsl__http_xfer *x = NULL;
    rc = rsl__http_start(h, &r, http_done, c, &x);
    if (rc < 0) {
        rsl__answer_fail(&c->ans, RSL_OUTCOME_ERROR, "HTTP request not started: %s",
                         rsl_strerror(rc));
        return 1;
    }
    c->wait = x;
    if (limit > 0) {
        rsl__chain_timer(c, RSL_TIMER_STEP_TIMEOUT, limit);
    }
    return 0;
}

const rsl__step_ops rsl__step_http = {
    .name = "http",
    .kind = RSL_STEP_HTTP,
    .waits = 1,
    .start = http_start,
    .abort = http_abort,
};
