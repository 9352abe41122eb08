/*
 * expose -- r.expose's routes: which policy serves "METHOD /path", with the path's
 * `:name` segments as request attributes (rsl_expose_match).
 *
 * Layer: the runtime (runtime.h).  Any thread: it reads the current generation, which is
 * immutable, under a reference.
 */
#include "runtime.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- r.expose routes ------------------------------------------------------------------ */

static int hexval(int ch) {
    if (ch >= '0' && ch <= '9') {
        return ch - '0';
    }
    if (ch >= 'a' && ch <= 'f') {
        return ch - 'a' + 10;
    }
    if (ch >= 'A' && ch <= 'F') {
        return ch - 'A' + 10;
    }
    return -1;
}

/* Percent-decodes n bytes of a path segment into out (n bytes of room); a '%' without two
 * hex digits stays as it is.  Returns the decoded length. */
static size_t pct_decode(const char *s, size_t n, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int hi, lo;
        if (s[i] == '%' && i + 2 < n && (hi = hexval((unsigned char)s[i + 1])) >= 0 &&
            (lo = hexval((unsigned char)s[i + 2])) >= 0) {
            out[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            out[o++] = s[i];
        }
    }
    return o;
}

/* Segments of a request path: at most this many are matched (a route has as many as its
 * own path, and no sane route has 64). */
#define EXPOSE_MAX_SEGS 64

int rsl_expose_match(rsl_runtime *rt, const char *method, const char *path, size_t len,
                     rsl_req *req, char *policy, size_t policy_cap) {
    if (!rt || !method || (!path && len) || !req || !policy || !policy_cap) {
        return RSL_EINVAL;
    }
    if (atomic_load(&rt->closing)) {
        return RSL_ECLOSED;
    }
    if (len == 0 || path[0] != '/') {
        return RSL_ENOENT;
    }
    /* The request's segments, decoded once into one block. */
    const char *seg[EXPOSE_MAX_SEGS];
    size_t segn[EXPOSE_MAX_SEGS];
    int nseg = 0;
    char stack[512];
    char *dec = len <= sizeof(stack) ? stack : malloc(len);
    if (!dec) {
        return RSL_ENOMEM;
    }
    size_t used = 0;
    for (size_t i = 1; i <= len && nseg < EXPOSE_MAX_SEGS;) {
        size_t j = i;
        while (j < len && path[j] != '/') {
            j++;
        }
        seg[nseg] = dec + used;
        segn[nseg] = pct_decode(path + i, j - i, dec + used);
        used += segn[nseg];
        nseg++;
        i = j + 1;
    }
    rsl__genr *G = rsl__rt_current(rt);
    if (!G) {
        if (dec != stack) {
            free(dec);
        }
        return RSL_ECLOSED;
    }
    const rsl__expose *best = NULL;
    uint64_t best_score = 0;
    int get_like = strcmp(method, "HEAD") == 0;
    for (int k = 0; k < G->g->nexpose; k++) {
        const rsl__expose *e = &G->g->expose[k];
        int exact = strcmp(e->method, method) == 0;
        if (!exact && strcmp(e->method, "*") != 0 && !(get_like && strcmp(e->method, "GET") == 0)) {
            continue;
        }
        /* Walk the route's segments beside the request's; literal segments earlier in the
         * path weigh more (bit 62 - position), the exact method breaks ties. */
        uint64_t score = 0;
        int n = 0, ok = 1;
        for (const char *p = e->path + 1;; n++) {
            const char *q = strchr(p, '/');
            size_t pl = q ? (size_t)(q - p) : strlen(p);
            if (n >= nseg) {
                ok = 0;
                break;
            }
            if (pl > 0 && p[0] == ':') {
                ok = segn[n] > 0;
            } else {
                ok = pl == segn[n] && memcmp(p, seg[n], pl) == 0;
                if (n < 62) {
                    score |= (uint64_t)1 << (62 - n);
                }
            }
            if (!ok || !q) {
                break;
            }
            p = q + 1;
        }
        if (!ok || n + 1 != nseg) {
            continue;
        }
        score = score * 2 + (uint64_t)exact;
        if (!best || score > best_score) {
            best = e;
            best_score = score;
        }
    }
    int rc = RSL_ENOENT;
    if (best && best->policy >= 0) {
        const char *name = G->g->policies[best->policy].name;
        size_t nl = strlen(name);
        rc = nl < policy_cap ? 0 : RSL_EINVAL;
        int n = 0;
        for (const char *p = best->path + 1; rc == 0; n++) {
            const char *q = strchr(p, '/');
            size_t pl = q ? (size_t)(q - p) : strlen(p);
            if (pl > 1 && p[0] == ':') {
                char pname[128];
                if (pl - 1 >= sizeof(pname)) {
                    rc = RSL_EINVAL;
                    break;
                }
                memcpy(pname, p + 1, pl - 1);
                pname[pl - 1] = 0;
                rc = rsl_req_set(req, pname, seg[n], segn[n]);
            }
            if (!q) {
                break;
            }
            p = q + 1;
        }
        if (rc == 0) {
            memcpy(policy, name, nl + 1);
        }
    }
    rsl__genr_unref(G);
    if (dec != stack) {
        free(dec);
    }
    return rc;
}
