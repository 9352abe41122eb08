/*
 * framing -- the sidecar's strict reading of where an HTTP/1.x request begins and ends.
 *
 * Layer: the sidecar's (serve.c alone uses it); it depends on nothing.
 *
 * http_parser (Debian builds it lenient) parses the requests; this checks, byte by byte
 * beside it, the rules under which two HTTP implementations cannot disagree about a
 * request's boundary (RFC 9112 sections 2-7 and 11.2, as nginx and Envoy enforce them):
 *
 *   - the request line is METHOD SP target SP HTTP/1.0|1.1 CRLF, single spaces, a token
 *     for the method, visible ASCII for the target; CONNECT is refused;
 *   - header names are tokens and end at the colon, with no whitespace before it; a line
 *     never starts with whitespace (no obs-fold); values hold no control byte but HTAB;
 *   - every line ends in CRLF: a bare LF or CR is refused;
 *   - Content-Length is digits only (no sign, spaces, list, or leading zeros beyond a
 *     single 0), once; Transfer-Encoding is exactly "chunked" (any case), once, never with
 *     Content-Length and never in HTTP/1.0; Host appears at most once;
 *   - a chunk size is hex digits only, optionally followed by ";ext" (visible ASCII, SP,
 *     HTAB, at most RSL_FRAME_MAX_EXT bytes) before its CRLF; chunk data ends in CRLF.
 *
 * The framer holds no pointer into the input and buffers nothing, so a request can arrive
 * split anywhere.  rsl__target_check() is the second half: what the target must look like
 * before any of it is decoded for a policy.
 */
#ifndef RSL_FRAMING_H
#define RSL_FRAMING_H

#include <stddef.h>
#include <stdint.h>

#define RSL_FRAME_MAX_EXT 1024 /* bytes of chunk extension per chunk-size line */
#define RSL_FRAME_MAX_EMPTY 8  /* empty lines tolerated before a request line */

enum { RSL_FRAME_BAD = -1, RSL_FRAME_MORE = 0, RSL_FRAME_DONE = 1 };

typedef struct rsl__framer {
    uint8_t state;
    uint8_t hdr;    /* the header being read: one of the framer's H_* kinds */
    uint8_t seen;   /* SEEN_* bits of this message */
    uint8_t digits; /* of the current number (Content-Length or chunk size) */
    uint16_t pos;   /* in the literal being matched, or the chunk extension's length */
    uint16_t name_len;
    char name[20];   /* the method or header name so far, lowercased and truncated */
    uint64_t length; /* Content-Length, or the chunk size */
    uint64_t left;   /* body or chunk bytes still to come */
} rsl__framer;

/* Ready for the first byte of a request. */
void rsl__frame_init(rsl__framer *f);

/* Reads up to n bytes of p.  Returns RSL_FRAME_DONE when a request ends after *used bytes
 * (the framer is then ready for the next one), RSL_FRAME_MORE when all n were read and the
 * request goes on, or RSL_FRAME_BAD when the byte at p[*used] breaks a rule (*why says
 * which; the framer stays refused until rsl__frame_init). */
int rsl__frame_feed(rsl__framer *f, const char *p, size_t n, size_t *used, const char **why);

/* Checks a request target before it is decoded: origin-form ("/path?query"), absolute-form
 * ("http://host/path?query", scheme http or https), or "*" for OPTIONS only; no fragment,
 * no userinfo; every '%' followed by two hex digits, and never %00.  Returns NULL when it is
 * fine, else what is wrong.  *path_off gets where the path starts (absolute-form: after the
 * authority; 0 otherwise). */
const char *rsl__target_check(const char *t, size_t n, int is_options, size_t *path_off);

#endif
