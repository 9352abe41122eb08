/*
 * framing -- a strict byte-by-byte check of HTTP/1.x request framing (see framing.h).
 *
 * Layer: the sidecar's (serve.c alone uses it); it depends on nothing.
 */
#include "framing.h"

#include <string.h>
#include <strings.h>

enum {
    S_START,     /* before a request line (empty lines allowed) */
    S_START_LF,  /* an empty line's CR seen */
    S_METHOD,    /* in the method */
    S_TARGET0,   /* the first byte of the target */
    S_TARGET,    /* in the target */
    S_VERSION,   /* matching "HTTP/1." */
    S_MINOR,     /* the version's minor digit */
    S_RL_CR,     /* the request line's CR */
    S_LF,        /* a header line's LF, then S_HSTART */
    S_HSTART,    /* the start of a header line (or the empty one) */
    S_HNAME,     /* in a header name */
    S_HOWS,      /* whitespace after the colon */
    S_HVAL,      /* in a header value */
    S_HVAL_LF,   /* a header line's CR seen */
    S_HEND_LF,   /* the empty line's CR seen */
    S_BODY,      /* Content-Length bytes */
    S_CSIZE0,    /* the first digit of a chunk size */
    S_CSIZE,     /* in a chunk size */
    S_CEXT,      /* in a chunk extension */
    S_CSIZE_LF,  /* a chunk-size line's CR seen */
    S_CDATA,     /* chunk data */
    S_CDATA_CR,  /* the CR after chunk data */
    S_CDATA_LF,  /* the LF after chunk data */
    S_TSTART,    /* the start of a trailer line (or the empty one) */
    S_TNAME,     /* in a trailer name */
    S_TVAL,      /* in a trailer value */
    S_TVAL_LF,   /* a trailer line's CR seen */
    S_TEND_LF,   /* the last empty line's CR seen */
    S_REFUSED,
};

enum { H_OTHER, H_LENGTH, H_TE, H_HOST };
enum { SEEN_LENGTH = 1, SEEN_TE = 2, SEEN_HOST = 4, SEEN_HTTP10 = 8, SEEN_CONTINUE = 16 };

/* tchar (RFC 9110 5.6.2): ALPHA DIGIT and !#$%&'*+-.^_`|~ */
static int tchar(unsigned char ch) {
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9')) {
        return 1;
    }
    return ch && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

/* A byte a field value may hold: VCHAR, obs-text, SP, HTAB. */
static int vbyte(unsigned char ch) {
    return ch == ' ' || ch == '\t' || (ch > 0x20 && ch != 0x7f);
}

static int hexdig(unsigned char ch) {
    if (ch >= '0' && ch <= '9') {
        return ch - '0';
    }
    ch |= 0x20;
    return ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

void rsl__frame_init(rsl__framer *f) {
    memset(f, 0, sizeof(*f));
    f->state = S_START;
}

static void name_add(rsl__framer *f, unsigned char ch) {
    if (f->name_len < sizeof(f->name)) {
        f->name[f->name_len] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
    }
    if (f->name_len < UINT16_MAX) {
        f->name_len++; /* counts on past the array: a long name is no name we look for */
    }
}

static int name_is(const rsl__framer *f, const char *lit) {
    size_t n = strlen(lit);
    return f->name_len == n && memcmp(f->name, lit, n) == 0;
}

/* Content-Length fits in 18 decimal digits (no overflow of the uint64_t). */
#define MAX_LENGTH_DIGITS 18
/* A chunk size fits in 15 hex digits. */
#define MAX_CHUNK_DIGITS 15

/* The value of header f->hdr ended (at its CR): the checks that need all of it. */
static const char *header_done(rsl__framer *f) {
    switch (f->hdr) {
    case H_LENGTH:
        if (f->digits == 0) {
            return "Content-Length is not a number";
        }
        if (f->seen & SEEN_LENGTH) {
            return "more than one Content-Length";
        }
        f->seen |= SEEN_LENGTH;
        break;
    case H_TE:
        if (f->pos != 7) {
            return "Transfer-Encoding other than chunked";
        }
        if (f->seen & SEEN_TE) {
            return "more than one Transfer-Encoding";
        }
        f->seen |= SEEN_TE;
        break;
    case H_HOST:
        if (f->seen & SEEN_HOST) {
            return "more than one Host";
        }
        f->seen |= SEEN_HOST;
        break;
    }
    return NULL;
}

/* One byte of header f->hdr's value (after the leading whitespace). */
static const char *header_byte(rsl__framer *f, unsigned char ch) {
    switch (f->hdr) {
    case H_LENGTH:
        if (ch < '0' || ch > '9') {
            return "Content-Length is not digits only";
        }
        if (f->digits == 1 && f->length == 0) {
            return "Content-Length with a leading zero";
        }
        if (++f->digits > MAX_LENGTH_DIGITS) {
            return "Content-Length too large";
        }
        f->length = f->length * 10 + (uint64_t)(ch - '0');
        break;
    case H_TE:
        if (f->pos >= 7 || (ch | 0x20) != (unsigned char)"chunked"[f->pos]) {
            return "Transfer-Encoding other than chunked";
        }
        f->pos++;
        break;
    }
    return NULL;
}

/* The headers ended: where the body is. */
static int headers_done(rsl__framer *f, const char **why) {
    if ((f->seen & SEEN_TE) && (f->seen & SEEN_LENGTH)) {
        *why = "both Transfer-Encoding and Content-Length";
        return RSL_FRAME_BAD;
    }
    if ((f->seen & SEEN_TE) && (f->seen & SEEN_HTTP10)) {
        *why = "Transfer-Encoding in an HTTP/1.0 request";
        return RSL_FRAME_BAD;
    }
    if (f->seen & SEEN_TE) {
        f->state = S_CSIZE0;
        return RSL_FRAME_MORE;
    }
    if ((f->seen & SEEN_LENGTH) && f->length > 0) {
        f->left = f->length;
        f->state = S_BODY;
        return RSL_FRAME_MORE;
    }
    return RSL_FRAME_DONE;
}

int rsl__frame_feed(rsl__framer *f, const char *p, size_t n, size_t *used, const char **why) {
    const char *bad = NULL;
    size_t i = 0;
    if (f->state == S_REFUSED) {
        *used = 0;
        *why = "the request was already refused";
        return RSL_FRAME_BAD;
    }
    for (; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        switch (f->state) {
        case S_START:
            if (ch == '\r') {
                if (++f->pos > RSL_FRAME_MAX_EMPTY) {
                    bad = "too many empty lines before the request";
                } else {
                    f->state = S_START_LF;
                }
            } else if (tchar(ch)) {
                f->pos = 0;
                f->name_len = 0;
                name_add(f, ch);
                f->state = S_METHOD;
            } else {
                bad = "the request line does not start with a method";
            }
            break;
        case S_START_LF:
            if (ch == '\n') {
                f->state = S_START;
            } else {
                bad = "CR without LF";
            }
            break;
        case S_METHOD:
            if (tchar(ch)) {
                name_add(f, ch);
            } else if (ch == ' ') {
                if (name_is(f, "connect")) {
                    bad = "CONNECT is not served";
                }
                f->state = S_TARGET0;
            } else {
                bad = "the method is not a token followed by one space";
            }
            break;
        case S_TARGET0:
            if (ch > 0x20 && ch < 0x7f) {
                f->state = S_TARGET;
            } else {
                bad = "the target does not follow the method after one space";
            }
            break;
        case S_TARGET:
            if (ch == ' ') {
                f->pos = 0;
                f->state = S_VERSION;
            } else if (!(ch > 0x20 && ch < 0x7f)) {
                bad = "a byte in the target that is not visible ASCII";
            }
            break;
        case S_VERSION:
            if (ch != (unsigned char)"HTTP/1."[f->pos]) {
                bad = "the version is not HTTP/1.0 or HTTP/1.1 after one space";
            } else if (++f->pos == 7) {
                f->state = S_MINOR;
            }
            break;
        case S_MINOR:
            if (ch == '0') {
                f->seen |= SEEN_HTTP10;
            } else if (ch != '1') {
                bad = "the version is not HTTP/1.0 or HTTP/1.1";
            }
            f->state = S_RL_CR;
            break;
        case S_RL_CR:
            if (ch == '\r') {
                f->state = S_LF;
            } else {
                bad = "the request line does not end in CRLF";
            }
            break;
        case S_LF:
            if (ch == '\n') {
                f->state = S_HSTART;
            } else {
                bad = "CR without LF";
            }
            break;
        case S_HSTART:
            if (ch == '\r') {
                f->state = S_HEND_LF;
            } else if (tchar(ch)) {
                f->name_len = 0;
                name_add(f, ch);
                f->state = S_HNAME;
            } else if (ch == ' ' || ch == '\t') {
                bad = "a header line starts with whitespace (obs-fold)";
            } else {
                bad = "a header name that is not a token";
            }
            break;
        case S_HNAME:
            if (tchar(ch)) {
                name_add(f, ch);
            } else if (ch == ':') {
                f->hdr = name_is(f, "content-length")      ? H_LENGTH
                         : name_is(f, "transfer-encoding") ? H_TE
                         : name_is(f, "host")              ? H_HOST
                                                           : H_OTHER;
                f->pos = 0;
                f->digits = 0;
                if (f->hdr == H_LENGTH) {
                    f->length = 0;
                }
                f->state = S_HOWS;
            } else if (ch == ' ' || ch == '\t') {
                bad = "whitespace in a header name or before its colon";
            } else {
                bad = "a header name that is not a token";
            }
            break;
        case S_HOWS:
            if (ch == ' ' || ch == '\t') {
                break;
            }
            f->state = S_HVAL; /* and this is the value's first byte */
            __attribute__((fallthrough));
        case S_HVAL:
            if (ch == '\r') {
                bad = header_done(f);
                f->state = S_HVAL_LF;
            } else if (!vbyte(ch)) {
                bad = ch == '\n' ? "a header line ends in a bare LF" : "a control byte in a header value";
            } else {
                bad = header_byte(f, ch);
            }
            break;
        case S_HVAL_LF:
            if (ch == '\n') {
                f->state = S_HSTART;
            } else {
                bad = "CR without LF";
            }
            break;
        case S_HEND_LF:
            if (ch != '\n') {
                bad = "CR without LF";
                break;
            }
            {
                int r = headers_done(f, &bad);
                if (r == RSL_FRAME_DONE) {
                    *used = i + 1;
                    rsl__frame_init(f);
                    return RSL_FRAME_DONE;
                }
            }
            break;
        case S_BODY: {
            size_t k = n - i;
            if (k > f->left) {
                k = (size_t)f->left;
            }
            f->left -= k;
            i += k - 1;
            if (f->left == 0) {
                *used = i + 1;
                rsl__frame_init(f);
                return RSL_FRAME_DONE;
            }
            break;
        }
        case S_CSIZE0:
            if (hexdig(ch) < 0) {
                bad = "a chunk size that is not hex digits";
                break;
            }
            f->length = (uint64_t)hexdig(ch);
            f->digits = 1;
            f->state = S_CSIZE;
            break;
        case S_CSIZE:
            if (hexdig(ch) >= 0) {
                if (++f->digits > MAX_CHUNK_DIGITS) {
                    bad = "a chunk size too large";
                } else {
                    f->length = f->length * 16 + (uint64_t)hexdig(ch);
                }
            } else if (ch == ';') {
                f->pos = 0;
                f->state = S_CEXT;
            } else if (ch == '\r') {
                f->state = S_CSIZE_LF;
            } else {
                bad = "a chunk size that is not hex digits, then ;ext or CRLF";
            }
            break;
        case S_CEXT:
            if (ch == '\r') {
                f->state = S_CSIZE_LF;
            } else if (!vbyte(ch)) {
                bad = ch == '\n' ? "a chunk extension ends in a bare LF" : "a control byte in a chunk extension";
            } else if (++f->pos > RSL_FRAME_MAX_EXT) {
                bad = "a chunk extension too long";
            }
            break;
        case S_CSIZE_LF:
            if (ch != '\n') {
                bad = "CR without LF";
            } else if (f->length == 0) {
                f->state = S_TSTART;
            } else {
                f->left = f->length;
                f->state = S_CDATA;
            }
            break;
        case S_CDATA: {
            size_t k = n - i;
            if (k > f->left) {
                k = (size_t)f->left;
            }
            f->left -= k;
            i += k - 1;
            if (f->left == 0) {
                f->state = S_CDATA_CR;
            }
            break;
        }
        case S_CDATA_CR:
            if (ch == '\r') {
                f->state = S_CDATA_LF;
            } else {
                bad = "chunk data longer than its size, or not followed by CRLF";
            }
            break;
        case S_CDATA_LF:
            if (ch == '\n') {
                f->state = S_CSIZE0;
            } else {
                bad = "chunk data not followed by CRLF";
            }
            break;
        case S_TSTART:
            if (ch == '\r') {
                f->state = S_TEND_LF;
            } else if (tchar(ch)) {
                f->state = S_TNAME;
            } else {
                bad = "a trailer name that is not a token";
            }
            break;
        case S_TNAME:
            if (ch == ':') {
                f->state = S_TVAL;
            } else if (!tchar(ch)) {
                bad = "a trailer name that is not a token, or whitespace before its colon";
            }
            break;
        case S_TVAL:
            if (ch == '\r') {
                f->state = S_TVAL_LF;
            } else if (!vbyte(ch)) {
                bad = ch == '\n' ? "a trailer line ends in a bare LF" : "a control byte in a trailer";
            }
            break;
        case S_TVAL_LF:
            if (ch == '\n') {
                f->state = S_TSTART;
            } else {
                bad = "CR without LF";
            }
            break;
        case S_TEND_LF:
            if (ch != '\n') {
                bad = "CR without LF";
                break;
            }
            *used = i + 1;
            rsl__frame_init(f);
            return RSL_FRAME_DONE;
        }
        if (bad) {
            f->state = S_REFUSED;
            *used = i;
            *why = bad;
            return RSL_FRAME_BAD;
        }
    }
    *used = n;
    return RSL_FRAME_MORE;
}

const char *rsl__target_check(const char *t, size_t n, int is_options, size_t *path_off) {
    size_t i = 0;
    *path_off = 0;
    if (n == 1 && t[0] == '*') {
        return is_options ? NULL : "\"*\" is a target for OPTIONS only";
    }
    if (n == 0) {
        return "an empty target";
    }
    if (t[0] != '/') {
        size_t s = n >= 7 && strncasecmp(t, "http://", 7) == 0    ? 7
                   : n >= 8 && strncasecmp(t, "https://", 8) == 0 ? 8
                                                                  : 0;
        if (!s) {
            return "a target that is neither a path (/...) nor an http(s) URL";
        }
        i = s;
        while (i < n && t[i] != '/' && t[i] != '?') {
            if (t[i] == '@') {
                return "a target with userinfo";
            }
            if (t[i] == '#') {
                return "a target with a fragment";
            }
            i++;
        }
        if (i == s) {
            return "an absolute target without a host";
        }
        if (i < n && t[i] != '/') {
            return "an absolute target without a path before its query";
        }
        *path_off = i;
    }
    for (; i < n; i++) {
        if (t[i] == '#') {
            return "a target with a fragment";
        }
        if (t[i] == '%') {
            if (i + 2 >= n || hexdig((unsigned char)t[i + 1]) < 0 || hexdig((unsigned char)t[i + 2]) < 0) {
                return "an invalid percent-escape in the target";
            }
            if (t[i + 1] == '0' && t[i + 2] == '0') {
                return "%00 in the target";
            }
            i += 2;
        }
    }
    return NULL;
}
