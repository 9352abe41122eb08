/*
 * env -- the embedder's clock and log (env.h).
 *
 * Layer: base.  Any thread.
 */
#include "env.h"

#include <stdarg.h>
#include <stdio.h>

static void default_log(rsl_log_level level, const char *msg) {
    static const char *names[] = {"error", "warn", "info", "debug"};
    if (level <= RSL_LOG_WARN) {
        fprintf(stderr, "resilua: %s: %s\n", names[level], msg);
    }
}

void rsl__log(const rsl__env *e, rsl_log_level level, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (e->log) {
        e->log(e->log_ud, level, msg);
    } else {
        default_log(level, msg);
    }
}
