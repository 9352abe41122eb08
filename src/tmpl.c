/*
 * tmpl -- "${attr}" templates: parsed once at load into literal and attribute parts,
 * expanded per call into a reusable buffer.  Immutable after parse: any thread.
 *
 * Layer: base: templates and buffers, used by the steps, the caches and the policies.
 */
#include "tmpl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct part {
    int is_attr;
    char *s; /* literal bytes, or the attribute name (NUL-terminated) */
    size_t len;
} part;

struct rsl__tmpl {
    int nparts;
    part parts[];
};

static int add_part(part *parts, int *n, int is_attr, const char *s, size_t len) {
    char *c = malloc(len + 1);
    if (!c) {
        return -1;
    }
    memcpy(c, s, len);
    c[len] = 0;
    parts[*n].is_attr = is_attr;
    parts[*n].s = c;
    parts[*n].len = len;
    (*n)++;
    return 0;
}

rsl__tmpl *rsl__tmpl_parse(const char *s, size_t len, char *err, size_t errlen) {
    /* Upper bound on parts: every "${" opens one attribute and one literal before it. */
    size_t maxparts = 1;
    for (size_t i = 0; i + 1 < len; i++) {
        if (s[i] == '$' && s[i + 1] == '{') {
            maxparts += 2;
        }
    }
    rsl__tmpl *t = calloc(1, sizeof(*t) + maxparts * sizeof(part));
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    size_t lit = 0, i = 0;
    while (i < len) {
        if (s[i] == '$' && i + 1 < len && s[i + 1] == '{') {
            const char *end = memchr(s + i + 2, '}', len - i - 2);
            if (!end) {
                snprintf(err, errlen, "unclosed \"${\" at offset %zu", i);
                goto fail;
            }
            size_t nlen = (size_t)(end - (s + i + 2));
            if (nlen == 0) {
                snprintf(err, errlen, "empty \"${}\" at offset %zu", i);
                goto fail;
            }
            if ((i > lit && add_part(t->parts, &t->nparts, 0, s + lit, i - lit) < 0) ||
                add_part(t->parts, &t->nparts, 1, s + i + 2, nlen) < 0) {
                snprintf(err, errlen, "out of memory");
                goto fail;
            }
            i += 2 + nlen + 1;
            lit = i;
        } else {
            i++;
        }
    }
    if (len > lit && add_part(t->parts, &t->nparts, 0, s + lit, len - lit) < 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    return t;
fail:
    rsl__tmpl_free(t);
    return NULL;
}

void rsl__tmpl_free(rsl__tmpl *t) {
    if (!t) {
        return;
    }
    for (int i = 0; i < t->nparts; i++) {
        free(t->parts[i].s);
    }
    free(t);
}

int rsl__tmpl_is_literal(const rsl__tmpl *t) {
    for (int i = 0; i < t->nparts; i++) {
        if (t->parts[i].is_attr) {
            return 0;
        }
    }
    return 1;
}

int rsl__buf_reserve(rsl__buf *b, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1) {
            cap *= 2;
        }
        char *p = realloc(b->p, cap);
        if (!p) {
            return RSL_ENOMEM;
        }
        b->p = p;
        b->cap = cap;
    }
    return 0;
}

int rsl__buf_append(rsl__buf *b, const char *s, size_t n) {
    if (rsl__buf_reserve(b, n) < 0) {
        return RSL_ENOMEM;
    }
    if (n) {
        memcpy(b->p + b->len, s, n);
    }
    b->len += n;
    b->p[b->len] = 0;
    return 0;
}

void rsl__buf_empty(rsl__buf *b, size_t keep_max) {
    if (b->cap > keep_max) {
        rsl__buf_free(b);
    } else if (b->p) {
        b->len = 0;
        b->p[0] = 0;
    }
}

void rsl__buf_free(rsl__buf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

rsl__header *rsl__headers_unpack(const char *pairs, size_t len, int n) {
    if (n <= 0) {
        return NULL;
    }
    rsl__header *h = malloc((size_t)n * sizeof(*h) + len);
    if (!h) {
        return NULL;
    }
    char *p = memcpy(h + n, pairs, len);
    for (int i = 0; i < n; i++) {
        h[i].name = p;
        p += strlen(p) + 1;
        h[i].value = p;
        p += strlen(p) + 1;
    }
    return h;
}

rsl__header *rsl__headers_pack(const rsl__header *h, int n) {
    if (n <= 0) {
        return NULL;
    }
    size_t len = 0;
    for (int i = 0; i < n; i++) {
        len += strlen(h[i].name) + 1 + (h[i].value ? strlen(h[i].value) : 0) + 1;
    }
    rsl__header *out = malloc((size_t)n * sizeof(*out) + len);
    if (!out) {
        return NULL;
    }
    char *p = (char *)(out + n);
    for (int i = 0; i < n; i++) {
        const char *v = h[i].value ? h[i].value : "";
        size_t nl = strlen(h[i].name) + 1, vl = strlen(v) + 1;
        out[i].name = memcpy(p, h[i].name, nl);
        p += nl;
        out[i].value = memcpy(p, v, vl);
        p += vl;
    }
    return out;
}

static int unreserved(unsigned char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '.' || c == '_' || c == '~';
}

static int append_encoded(rsl__buf *b, const char *s, size_t n) {
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char e[3] = {'%', hex[c >> 4], hex[c & 15]};
        int rc = unreserved(c) ? rsl__buf_append(b, s + i, 1) : rsl__buf_append(b, e, 3);
        if (rc < 0) {
            return rc;
        }
    }
    return 0;
}

int rsl__tmpl_expand(const rsl__tmpl *t, const rsl_req *req, int urlencode, rsl__buf *out,
                     const char **missing) {
    if (rsl__buf_append(out, "", 0) < 0) {
        return RSL_ENOMEM;
    }
    for (int i = 0; i < t->nparts; i++) {
        const part *p = &t->parts[i];
        int rc;
        if (!p->is_attr) {
            rc = rsl__buf_append(out, p->s, p->len);
        } else {
            size_t vlen = 0;
            const char *v = req ? rsl_req_get(req, p->s, &vlen) : NULL;
            if (!v) {
                if (missing) {
                    *missing = p->s;
                }
                return RSL_EINVAL;
            }
            rc = urlencode ? append_encoded(out, v, vlen) : rsl__buf_append(out, v, vlen);
        }
        if (rc < 0) {
            return rc;
        }
    }
    return 0;
}
