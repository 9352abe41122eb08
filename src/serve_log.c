/*
 * serve_log -- the sidecar's access log (rsl_serve_options.access_log): one JSON line per
 * answered request, written off the request path by a thread of its own.
 *
 * The workers append whole lines to one buffer under a mutex (a copy of a few hundred
 * bytes); the writer thread swaps it for its own and writes that with write(2), so the
 * file only ever receives whole lines, and a reopen (rsl_serve_reopen_log, SIGUSR1 for
 * logrotate) happens between two writes: every line before it is in the old file, every
 * line after it in the new one, none torn.  The buffer is bounded (LOG_CAP): a line that
 * finds it full is dropped and counted (resilua_access_log_dropped_total), the request is
 * never held up.  A thread and write(2) rather than uv_fs_write on each worker: the lines
 * of every worker stay in one ordered stream with one descriptor, and a slow disk stalls
 * only this thread.
 *
 * Layer: the sidecar, a client of resilua.h only.  Any thread.
 */
#include "serve_int.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Lines waiting for the writer: 4 MiB is ~15k lines, over a second of a busy sidecar's
 * answers while the disk stalls. */
#define LOG_CAP (4u << 20)

struct rsl__alog {
    pthread_mutex_t m;
    pthread_cond_t cv;
    char *buf; /* filled by the workers */
    size_t len;
    char *out; /* the writer's */
    int fd;
    int own_fd; /* a file we opened (not stdout) */
    char *path;
    int reopen, stop;
    pthread_t thread;
    _Atomic uint64_t lines, dropped, errors;
};

static int open_file(const char *path) {
    return open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
}

static void write_all(rsl__alog *l, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(l->fd, p, n);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            atomic_fetch_add(&l->errors, 1);
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

static void *writer(void *arg) {
    rsl__alog *l = arg;
    pthread_mutex_lock(&l->m);
    for (;;) {
        while (!l->len && !l->stop && !l->reopen) {
            pthread_cond_wait(&l->cv, &l->m);
        }
        char *p = l->buf;
        size_t n = l->len;
        l->buf = l->out;
        l->out = p;
        l->len = 0;
        int reopen = l->reopen, stop = l->stop;
        l->reopen = 0;
        pthread_mutex_unlock(&l->m);
        write_all(l, p, n);
        if (reopen && l->own_fd) {
            int fd = open_file(l->path);
            if (fd >= 0) {
                close(l->fd);
                l->fd = fd;
            } else {
                atomic_fetch_add(&l->errors, 1); /* the old file keeps the lines */
                fprintf(stderr, "resilua: serve: cannot reopen the access log %s: %s\n", l->path,
                        strerror(errno));
            }
        }
        pthread_mutex_lock(&l->m);
        if (stop && !l->len) {
            break;
        }
    }
    pthread_mutex_unlock(&l->m);
    return NULL;
}

/* Frees l once its thread is gone (or never started); `inited`: its mutex and cv are. */
static void alog_free(rsl__alog *l, int inited) {
    if (l->own_fd) {
        close(l->fd);
    }
    if (inited) {
        pthread_cond_destroy(&l->cv);
        pthread_mutex_destroy(&l->m);
    }
    free(l->buf);
    free(l->out);
    free(l->path);
    free(l);
}

int rsl__alog_open(rsl__alog **out, const char *path, char *err, size_t errlen) {
    rsl__alog *l = calloc(1, sizeof(*l));
    if (!l) {
        return RSL_ENOMEM;
    }
    if (!(l->buf = malloc(LOG_CAP)) || !(l->out = malloc(LOG_CAP)) || !(l->path = strdup(path))) {
        alog_free(l, 0);
        return RSL_ENOMEM;
    }
    if (strcmp(path, "-") == 0) {
        l->fd = STDOUT_FILENO;
    } else if ((l->fd = open_file(path)) < 0) {
        snprintf(err, errlen, "cannot open the access log %s: %s", path, strerror(errno));
        alog_free(l, 0);
        return RSL_ESYS;
    } else {
        l->own_fd = 1;
    }
    pthread_mutex_init(&l->m, NULL);
    pthread_cond_init(&l->cv, NULL);
    if (pthread_create(&l->thread, NULL, writer, l) != 0) {
        snprintf(err, errlen, "cannot start the access log's thread");
        alog_free(l, 1);
        return RSL_ESYS;
    }
    *out = l;
    return 0;
}

void rsl__alog_close(rsl__alog *l) {
    if (!l) {
        return;
    }
    pthread_mutex_lock(&l->m);
    l->stop = 1;
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->m);
    pthread_join(l->thread, NULL);
    alog_free(l, 1);
}

void rsl__alog_reopen(rsl__alog *l) {
    pthread_mutex_lock(&l->m);
    l->reopen = 1;
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->m);
}

void rsl__alog_counts(rsl__alog *l, uint64_t *lines, uint64_t *dropped) {
    *lines = atomic_load_explicit(&l->lines, memory_order_relaxed);
    *dropped = atomic_load_explicit(&l->dropped, memory_order_relaxed);
}

static void alog_append(rsl__alog *l, const char *line, size_t n) {
    pthread_mutex_lock(&l->m);
    if (l->len + n > LOG_CAP) {
        pthread_mutex_unlock(&l->m);
        atomic_fetch_add_explicit(&l->dropped, 1, memory_order_relaxed);
        return;
    }
    int was_empty = l->len == 0;
    memcpy(l->buf + l->len, line, n);
    l->len += n;
    if (was_empty) { /* the writer sleeps only on an empty buffer */
        pthread_cond_signal(&l->cv);
    }
    pthread_mutex_unlock(&l->m);
    atomic_fetch_add_explicit(&l->lines, 1, memory_order_relaxed);
}

/* "2026-12-06T10:24:07.123Z" */
static void rfc3339(char *buf, size_t n) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    size_t k = strftime(buf, n, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + k, n - k, ".%03ldZ", ts.tv_nsec / 1000000L);
}

static json_t *jbytes(const char *s, size_t n) {
    json_t *j = json_stringn(s, n);
    if (!j) { /* not UTF-8: the bytes as \u00XX escapes would lie; say what it was */
        j = json_string("(not UTF-8)");
    }
    return j;
}

void rsl__srv_log_answer(conn *c, int status, size_t bytes) {
    rsl__alog *l = c->w->s->alog;
    const rsl_result *r = c->log_result;
    char t[40];
    rfc3339(t, sizeof(t));
    size_t ulen = c->url_len;
    const char *q = c->url ? memchr(c->url, '?', ulen) : NULL;
    size_t plen = q ? (size_t)(q - c->url) : ulen;
    if (plen > 2048) {
        plen = 2048;
    }
    json_t *o = json_object();
    json_object_set_new(o, "time", json_string(t));
    json_object_set_new(o, "method", json_string(http_method_str((enum http_method)c->p.method)));
    json_object_set_new(o, "path", jbytes(c->url ? c->url : "", plen));
    json_object_set_new(o, "status", json_integer(status));
    double ms = (double)(uv_hrtime() - c->t0) / 1e6;
    json_object_set_new(o, "duration_ms", json_real((double)(int64_t)(ms * 1000.0 + 0.5) / 1000.0));
    json_object_set_new(o, "bytes", json_integer((json_int_t)bytes));
    json_object_set_new(o, "bytes_in", json_integer((json_int_t)c->body_len));
    if (r) {
        const char *served = rsl_result_served_by(r);
        json_object_set_new(o, "policy", json_string(rsl_result_policy(r)));
        json_object_set_new(o, "outcome", json_string(rsl_outcome_name(rsl_result_outcome(r))));
        json_object_set_new(o, "served_by", served ? json_string(served) : json_null());
        json_object_set_new(o, "degraded", json_boolean(rsl_result_degraded(r)));
        json_t *steps = json_array();
        size_t np = rsl_result_path_len(r);
        for (size_t i = 0; i < np; i++) {
            rsl_path_entry e;
            if (rsl_result_path(r, i, &e) == 0) {
                char s[320];
                snprintf(s, sizeof(s), "%s=%s", e.step, rsl_outcome_name(e.outcome));
                json_array_append_new(steps, json_string(s));
            }
        }
        json_object_set_new(o, "steps", steps);
        char tp[56];
        if (rsl_result_trace(r, tp) == 0) {
            json_object_set_new(o, "trace_id", json_stringn(tp + 3, 32));
        }
    }
    char line[4096];
    size_t n = json_dumpb(o, line, sizeof(line) - 1, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (n == 0 || n >= sizeof(line) - 1) {
        atomic_fetch_add_explicit(&l->dropped, 1, memory_order_relaxed);
        return;
    }
    line[n++] = '\n';
    alog_append(l, line, n);
}
