/*
 * result -- a finished call's result: accessors and JSON (result.h).
 *
 * Layer: the calls.  Any thread: a result is immutable once handed out.
 */
#include "result.h"

#include "otlp.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

rsl_result *rsl__result_new(rsl_result *reuse, const char *policy) {
    rsl_result *r = reuse ? reuse : calloc(1, sizeof(*r)); /* a kept call's: scrubbed */
    if (!r) {
        return NULL;
    }
    r->policy = policy;
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
int rsl_result_trace(const rsl_result *r, char tp[56]) {
    if (!r || !r->has_trace) {
        return RSL_ENOENT;
    }
    rsl__tctx_format(&r->trace, tp);
    return 0;
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
    json_object_set_new(o, "body", rsl__json_bytes(r->body.p ? r->body.p : "", r->body.len));
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

void rsl__result_scrub(rsl_result *r, size_t keep_max) {
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
    rsl__buf_empty(&body, keep_max);
    r->body = body;
    r->names = names;
    r->names_size = names_size;
}

void rsl__result_own_names(rsl_result *r, rsl__genr *G) {
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
        rsl__genr_ref(G);
        r->G = G;
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
