/*
 * answer -- what a step answers (outcome, status, body, headers, error) and the outcomes'
 * names and statuses, from the one X-macro list of resilua.h.
 *
 * Layer: base (below the guards).  Plain data: an answer belongs to whoever holds it.
 */
#ifndef RSL_ANSWER_H
#define RSL_ANSWER_H

#include "resilua.h"
#include "tmpl.h"

typedef struct rsl__answer {
    rsl_outcome outcome;
    int status;
    rsl__buf body;
    rsl__header *headers; /* packed copies (tmpl.h) */
    int nheaders;
    char *error;          /* malloc'd; NULL when none */
} rsl__answer;

/* Back to an empty 200 ok, keeping the body's memory. */
void rsl__answer_reset(rsl__answer *a);
void rsl__answer_free(rsl__answer *a);
/* Sets outcome/status/error (printf-style message, may be NULL). */
void rsl__answer_fail(rsl__answer *a, rsl_outcome o, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Moves src into dst (dst's old content goes to src, which is reset). */
static inline void rsl__answer_move(rsl__answer *dst, rsl__answer *src) {
    rsl__answer tmp = *dst;
    *dst = *src;
    *src = tmp;
    rsl__answer_reset(src);
}
/* dst's headers become a packed copy of h[0..n). */
void rsl__answer_copy_headers(rsl__answer *a, const rsl__header *h, int n);
/* A template of the step could not be expanded for this request (rsl__tmpl_expand's rc):
 * the attribute `missing` is absent (RSL_EINVAL), or out of memory.  Outcome `error`. */
void rsl__answer_unexpanded(rsl__answer *a, int rc, const char *missing);
/* The outcome an HTTP-like status stands for: 5xx, 4xx, else ok. */
rsl_outcome rsl__status_outcome(int status);
int rsl__outcome_status(rsl_outcome o);

#endif
