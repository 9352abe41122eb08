/*
 * env -- what every layer may ask of the embedder: the clock ("now", injectable for tests)
 * and the log.  The runtime fills one from rsl_options; the layers below it get a pointer.
 *
 * Layer: base.  Any thread (read-only once the runtime is open).
 */
#ifndef RSL_ENV_H
#define RSL_ENV_H

#include "clock.h"
#include "resilua.h"

typedef struct rsl__env {
    rsl_clock_fn clock; /* NULL: rsl__clock_now */
    void *clock_ud;
    rsl_log_fn log;     /* NULL: lines on stderr at WARN and above */
    void *log_ud;
} rsl__env;

static inline int64_t rsl__env_now(const rsl__env *e) {
    return e->clock ? e->clock(e->clock_ud) : rsl__clock_now();
}

void rsl__log(const rsl__env *e, rsl_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
