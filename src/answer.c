/*
 * answer -- a step's answer, and the outcomes' names and statuses (answer.h).
 *
 * Layer: base.  Any thread (an answer is used by one thread at a time).
 */
#include "answer.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- names ---------------------------------------------------------------------------- */

static const char *const outcome_names[] = {
#define RSL_X_(e, s, st) s,
    RSL_OUTCOMES(RSL_X_)
#undef RSL_X_
};

const char *rsl_outcome_name(rsl_outcome o) {
    return (unsigned)o < RSL_OUTCOME__COUNT ? outcome_names[o] : "unknown";
}

int rsl_outcome_parse(const char *name, size_t len) {
    for (int i = 0; i < RSL_OUTCOME__COUNT; i++) {
        if (strlen(outcome_names[i]) == len && memcmp(outcome_names[i], name, len) == 0) {
            return i;
        }
    }
    return -1;
}

const char *rsl_strerror(int err) {
    switch (err) {
    case 0:
        return "success";
#define RSL_X_(e, v, m)                                                                    \
    case v:                                                                                \
        return m;
        RSL_ERRORS(RSL_X_)
#undef RSL_X_
    default:
        return "unknown error";
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

/* ---- answers -------------------------------------------------------------------------- */

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

void rsl__answer_copy_headers(rsl__answer *a, const rsl__header *h, int n) {
    if (n <= 0) {
        return;
    }
    a->headers = rsl__headers_pack(h, n);
    a->nheaders = a->headers ? n : 0;
}

void rsl__answer_unexpanded(rsl__answer *a, int rc, const char *missing) {
    if (rc == RSL_EINVAL) {
        rsl__answer_fail(a, RSL_OUTCOME_ERROR, "missing attribute \"%s\"", missing);
    } else {
        rsl__answer_fail(a, RSL_OUTCOME_ERROR, "out of memory");
    }
}
