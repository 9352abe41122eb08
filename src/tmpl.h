/*
 * tmpl -- "${attr}" templates (cache keys, URLs).  Parsed once when a policy loads,
 * expanded per call into a caller's buffer.  A missing attribute is an error naming it,
 * never an empty string.  Any thread (a template is immutable once parsed).
 *
 * Layer: base: templates and buffers, used by the steps, the caches and the policies.
 */
#ifndef RSL_TMPL_H
#define RSL_TMPL_H

#include "resilua.h"
#include <stddef.h>

typedef struct rsl__tmpl rsl__tmpl;

/* NULL with a message in err on a malformed template ("${" without "}", empty name). */
rsl__tmpl *rsl__tmpl_parse(const char *s, size_t len, char *err, size_t errlen);
void rsl__tmpl_free(rsl__tmpl *t);
/* 1 when the template has no ${...}. */
int rsl__tmpl_is_literal(const rsl__tmpl *t);

/* A growable byte buffer. */
typedef struct rsl__buf {
    char *p;
    size_t len, cap;
} rsl__buf;
int rsl__buf_append(rsl__buf *b, const char *s, size_t n);
/* Room for n more bytes and a NUL after them: 0, or RSL_ENOMEM. */
int rsl__buf_reserve(rsl__buf *b, size_t n);
/* Empties b for reuse, keeping its memory unless it grew past keep_max bytes. */
void rsl__buf_empty(rsl__buf *b, size_t keep_max);

void rsl__buf_free(rsl__buf *b);

/* A header: two NUL-terminated strings.  A stub's own are two allocations each; the
 * header set of an answer or a result is one allocation, the array followed by its
 * strings, released whole with free() (a call's answer is built and dropped on every
 * request: one malloc, not 1 + 2 per header). */
typedef struct rsl__header {
    char *name;
    char *value;
} rsl__header;
/* A packed copy of n headers (a NULL value as "").  NULL when n <= 0 or out of memory. */
rsl__header *rsl__headers_pack(const rsl__header *h, int n);
/* A packed set from n "name\0value\0" pairs, len bytes in all. */
rsl__header *rsl__headers_unpack(const char *pairs, size_t len, int n);

/* Appends the expansion to `out` (NUL-terminated, len excludes it).  urlencode: encode
 * attribute values (RFC 3986 unreserved kept).  Returns 0, RSL_ENOMEM, or RSL_EINVAL with
 * *missing pointing at the name of the missing attribute (borrowed from t). */
int rsl__tmpl_expand(const rsl__tmpl *t, const rsl_req *req, int urlencode, rsl__buf *out,
                     const char **missing);

#endif
