/*
 * req -- rsl_req: attributes and body.  The caller owns a request it made; a call owns
 * the frozen copy it took (one allocation).  Not thread-safe: one thread at a time.
 *
 * Layer: base: the request, read by the Lua binding and the steps.
 */
#include "req.h"

#include <stdlib.h>
#include <string.h>

static char *dupmem(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (p) {
        if (n) {
            memcpy(p, s, n);
        }
        p[n] = 0;
    }
    return p;
}

rsl_req *rsl_req_new(void) {
    return calloc(1, sizeof(rsl_req));
}

void rsl_req_clear(rsl_req *r) {
    if (!r || r->frozen) {
        return;
    }
    for (int i = 0; i < r->nattrs; i++) {
        free((char *)r->attrs[i].name);
        free((char *)r->attrs[i].val);
    }
    r->nattrs = 0;
    free((char *)r->body);
    r->body = NULL;
    r->body_len = 0;
    free((char *)r->tracestate);
    r->tracestate = NULL;
    r->tracestate_len = 0;
    r->has_trace = 0;
    r->deadline_ns = 0;
}

int rsl_req_set_trace(rsl_req *r, const char *traceparent, const char *tracestate) {
    if (!r || r->frozen) {
        return RSL_EINVAL;
    }
    free((char *)r->tracestate);
    r->tracestate = NULL;
    r->tracestate_len = 0;
    r->has_trace = 0;
    if (!traceparent) {
        return 0;
    }
    size_t tslen = tracestate ? strlen(tracestate) : 0;
    if (rsl__tctx_parse(traceparent, strlen(traceparent), &r->trace) < 0 ||
        tslen > RSL_TRACESTATE_MAX) {
        return RSL_EINVAL;
    }
    if (tslen) {
        if (!(r->tracestate = dupmem(tracestate, tslen))) {
            return RSL_ENOMEM;
        }
        r->tracestate_len = tslen;
    }
    r->has_trace = 1;
    return 0;
}

int rsl_req_trace(const rsl_req *r, char tp[56], const char **tracestate) {
    if (!r || !r->has_trace) {
        return RSL_ENOENT;
    }
    if (tp) {
        rsl__tctx_format(&r->trace, tp);
    }
    if (tracestate) {
        *tracestate = r->tracestate ? r->tracestate : "";
    }
    return 0;
}

int rsl_req_set_deadline(rsl_req *r, int64_t ns) {
    if (!r || r->frozen || ns < 0) {
        return RSL_EINVAL;
    }
    r->deadline_ns = ns;
    return 0;
}

void rsl_req_free(rsl_req *r) {
    if (!r) {
        return;
    }
    if (!r->frozen) {
        rsl_req_clear(r);
        free(r->attrs);
    }
    free(r);
}

int rsl_req_set(rsl_req *r, const char *name, const char *val, size_t len) {
    if (!r || !name || (!val && len) || r->frozen) {
        return RSL_EINVAL;
    }
    size_t nlen = strlen(name);
    char *v = dupmem(val ? val : "", len);
    if (!v) {
        return RSL_ENOMEM;
    }
    for (int i = 0; i < r->nattrs; i++) {
        if (r->attrs[i].nlen == nlen && memcmp(r->attrs[i].name, name, nlen) == 0) {
            free((char *)r->attrs[i].val);
            r->attrs[i].val = v;
            r->attrs[i].vlen = len;
            return 0;
        }
    }
    if (r->nattrs == r->cap) {
        int cap = r->cap ? r->cap * 2 : 8;
        rsl__attr *a = realloc(r->attrs, (size_t)cap * sizeof(*a));
        if (!a) {
            free(v);
            return RSL_ENOMEM;
        }
        r->attrs = a;
        r->cap = cap;
    }
    char *n = dupmem(name, nlen);
    if (!n) {
        free(v);
        return RSL_ENOMEM;
    }
    r->attrs[r->nattrs++] = (rsl__attr){n, nlen, v, len};
    return 0;
}

int rsl_req_set_body(rsl_req *r, const char *body, size_t len) {
    if (!r || (!body && len) || r->frozen) {
        return RSL_EINVAL;
    }
    char *b = dupmem(body ? body : "", len);
    if (!b) {
        return RSL_ENOMEM;
    }
    free((char *)r->body);
    r->body = b;
    r->body_len = len;
    return 0;
}

const char *rsl_req_get(const rsl_req *r, const char *name, size_t *len) {
    if (!r || !name) {
        return NULL;
    }
    size_t nlen = strlen(name);
    for (int i = 0; i < r->nattrs; i++) {
        if (r->attrs[i].nlen == nlen && memcmp(r->attrs[i].name, name, nlen) == 0) {
            if (len) {
                *len = r->attrs[i].vlen;
            }
            return r->attrs[i].val;
        }
    }
    return NULL;
}

rsl_req *rsl__req_dup(const rsl_req *r) {
    size_t size = 0;
    return rsl__req_copy(r, NULL, &size);
}

rsl_req *rsl__req_copy(const rsl_req *r, rsl_req *into, size_t *size) {
    size_t need = sizeof(rsl_req);
    int n = r ? r->nattrs : 0;
    need += (size_t)n * sizeof(rsl__attr);
    for (int i = 0; i < n; i++) {
        need += r->attrs[i].nlen + r->attrs[i].vlen + 2;
    }
    need += (r && r->body ? r->body_len : 0) + 1;
    need += (r && r->tracestate ? r->tracestate_len : 0) + 1;
    rsl_req *c = into;
    if (!c || *size < need) {
        free(into);
        c = malloc(need);
        *size = c ? need : 0;
        if (!c) {
            return NULL;
        }
    }
    c->attrs = (rsl__attr *)(c + 1);
    c->nattrs = c->cap = n;
    c->frozen = 1;
    char *p = (char *)(c->attrs + n);
    for (int i = 0; i < n; i++) {
        const rsl__attr *a = &r->attrs[i];
        memcpy(p, a->name, a->nlen);
        p[a->nlen] = 0;
        c->attrs[i].name = p;
        c->attrs[i].nlen = a->nlen;
        p += a->nlen + 1;
        memcpy(p, a->val, a->vlen);
        p[a->vlen] = 0;
        c->attrs[i].val = p;
        c->attrs[i].vlen = a->vlen;
        p += a->vlen + 1;
    }
    c->body_len = r && r->body ? r->body_len : 0;
    if (c->body_len) {
        memcpy(p, r->body, c->body_len);
    }
    p[c->body_len] = 0;
    c->body = (r && r->body) ? p : NULL;
    p += c->body_len + 1;
    c->has_trace = r ? r->has_trace : 0;
    if (c->has_trace) {
        c->trace = r->trace;
    }
    c->deadline_ns = r ? r->deadline_ns : 0;
    c->tracestate_len = r && r->tracestate ? r->tracestate_len : 0;
    c->tracestate = NULL;
    if (r && r->tracestate) {
        memcpy(p, r->tracestate, c->tracestate_len);
        p[c->tracestate_len] = 0;
        c->tracestate = p;
    }
    return c;
}
