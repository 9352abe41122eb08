/*
 * serve -- the sidecar: an HTTP/1.1 server on the runtime's own workers (rsl_serve_*):
 * options, listening on every worker, draining and stopping.  A connection is in
 * serve_conn.c, the answers in serve_answer.c.
 *
 * Layer: the sidecar, a client of resilua.h like any embedder (STYLE.md): it reaches the
 * workers only through rsl_on_worker and calls policies with rsl_call_id, which on a
 * worker thread starts the call right there.
 *
 * Listening: one socket per worker, all bound to the same address with SO_REUSEPORT, each
 * on its worker's loop.  The kernel spreads new connections over the sockets, so a
 * connection is accepted, parsed, called and answered on one thread with no hand-off, and
 * a busy worker does not take connections from an idle one's queue by racing it (one
 * shared listening socket polled by every loop wakes them all on each connection and
 * lets whoever wins take it).  Port 0: worker 0 binds first and the others bind to the
 * port it got.
 *
 * Lifetime: a conn is freed once its socket and timer handles have closed and no call or
 * reload answers to it any more (refs).  A worker is "done" when draining and nothing of
 * the server is left on it; rsl_serve_stop waits for every worker to be done, so no
 * handle of ours is left on a loop when the host calls rsl_close.
 */
#include "serve_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* ---- the server's steps on every worker -------------------------------------------- */

static void on_listener_closed(uv_handle_t *h) {
    srv_worker *w = h->data;
    w->handles--;
    rsl__srv_worker_check_done(w);
}

static void step_finished(rsl_serve *s) {
    pthread_mutex_lock(&s->m);
    s->step_done++;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->m);
}

/* On worker w: its listening socket, SO_REUSEPORT, on the server's address. */
static void listen_here(void *ud, uv_loop_t *loop) {
    srv_worker *w = ud;
    rsl_serve *s = w->s;
    w->loop = loop;
    int rc = uv_tcp_init_ex(loop, &w->listener, s->addr.ss_family);
    if (rc == 0) {
        w->listener.data = w;
        w->listener_open = 1;
        w->handles++;
        uv_os_fd_t fd;
        int one = 1;
        if ((rc = uv_fileno((uv_handle_t *)&w->listener, &fd)) == 0 &&
            setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) {
            rc = uv_translate_sys_error(errno);
        }
        if (rc == 0) {
            rc = uv_tcp_bind(&w->listener, (const struct sockaddr *)&s->addr, 0);
        }
        if (rc == 0) {
            rc = uv_listen((uv_stream_t *)&w->listener, BACKLOG, rsl__srv_on_connection);
        }
        if (rc == 0 && s->port == 0) {
            struct sockaddr_storage got;
            int len = sizeof(got);
            if ((rc = uv_tcp_getsockname(&w->listener, (struct sockaddr *)&got, &len)) == 0) {
                s->port = ntohs(got.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&got)->sin6_port
                                                          : ((struct sockaddr_in *)&got)->sin_port);
                if (s->addr.ss_family == AF_INET6) {
                    ((struct sockaddr_in6 *)&s->addr)->sin6_port = htons((uint16_t)s->port);
                } else {
                    ((struct sockaddr_in *)&s->addr)->sin_port = htons((uint16_t)s->port);
                }
            }
        }
    }
    if (rc != 0) {
        snprintf(w->err, sizeof(w->err), "%s", uv_strerror(rc));
        if (w->listener_open) {
            w->listener_open = 0;
            uv_close((uv_handle_t *)&w->listener, on_listener_closed);
        }
    }
    w->rc = rc;
    step_finished(s);
}

/* On worker w: stop accepting; close what is idle; the rest closes after its answer. */
static void drain_here(void *ud, uv_loop_t *loop) {
    srv_worker *w = ud;
    w->draining = 1;
    if (w->listener_open) {
        w->listener_open = 0;
        uv_close((uv_handle_t *)&w->listener, on_listener_closed);
    }
    for (conn *c = w->conns, *next; c; c = next) {
        next = c->next;
        if (!c->busy && !c->in_message) {
            rsl__srv_conn_close(c);
        }
    }
    rsl__srv_worker_check_done(w);
}

/* On worker w, once the drain took too long: close everything (pending calls are canceled
 * and answer into closed connections). */
static void force_close_here(void *ud, uv_loop_t *loop) {
    srv_worker *w = ud;
    while (w->conns) {
        if (w->conns->call_pending && w->conns->call_id) {
            relaxed_inc(&w->client_aborts);
        }
        rsl__srv_conn_close(w->conns);
    }
    rsl__srv_worker_check_done(w);
}

/* ---- the public face ------------------------------------------------------------------------ */

void rsl_serve_options_init(rsl_serve_options *o) {
    memset(o, 0, sizeof(*o));
    o->size = sizeof(*o);
    o->listen = "127.0.0.1:8700";
    /* 8 KiB of request line + headers and 100 fields: nginx's and Node's defaults are
     * 8 KiB and 100/2000; a sidecar's callers send few, short headers. */
    o->max_header_bytes = 8 * 1024;
    o->max_headers = 100;
    o->max_body = (size_t)1 << 20;
    o->idle_timeout_ns = 60000 * NS_PER_MS;
    o->request_timeout_ns = 10000 * NS_PER_MS;
    o->drain_timeout_ns = 30000 * NS_PER_MS;
}

int rsl_serve_port(const rsl_serve *s) {
    return s ? s->port : 0;
}

static int parse_listen(const char *spec, struct sockaddr_storage *ss, char *err, size_t errlen) {
    const char *colon = strrchr(spec, ':');
    char host[256];
    if (!colon || colon == spec || (size_t)(colon - spec) >= sizeof(host)) {
        snprintf(err, errlen, "listen address \"%s\": expected HOST:PORT", spec);
        return RSL_EINVAL;
    }
    char *end;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || errno || port < 0 || port > 65535) {
        snprintf(err, errlen, "listen address \"%s\": port must be 0..65535", spec);
        return RSL_EINVAL;
    }
    size_t hl = (size_t)(colon - spec);
    memcpy(host, spec, hl);
    host[hl] = 0;
    memset(ss, 0, sizeof(*ss));
    if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') {
        host[hl - 1] = 0;
        if (uv_ip6_addr(host + 1, (int)port, (struct sockaddr_in6 *)ss) == 0) {
            return 0;
        }
    } else if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0) {
        return 0;
    }
    snprintf(err, errlen, "listen address \"%s\": HOST must be an IPv4 address or [IPv6]", spec);
    return RSL_EINVAL;
}

/* Runs fn on every worker and waits until `want` more workers counted themselves done. */
static int on_every_worker(rsl_serve *s, void (*fn)(void *, uv_loop_t *), int from, int to) {
    int rc = 0;
    for (int i = from; i < to; i++) {
        if ((rc = rsl_on_worker(s->rt, i, fn, &s->w[i])) != 0) {
            break;
        }
    }
    return rc;
}

static void wait_steps(rsl_serve *s, int want, int64_t timeout_ns) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    int64_t ns = until.tv_nsec + (timeout_ns > 0 ? timeout_ns : 0);
    until.tv_sec += (time_t)(ns / 1000000000LL);
    until.tv_nsec = (long)(ns % 1000000000LL);
    pthread_mutex_lock(&s->m);
    while (s->step_done < want) {
        if (timeout_ns > 0) {
            if (pthread_cond_timedwait(&s->cv, &s->m, &until) != 0) {
                break;
            }
        } else {
            pthread_cond_wait(&s->cv, &s->m);
        }
    }
    pthread_mutex_unlock(&s->m);
}

static void serve_free(rsl_serve *s) {
    rsl__alog_close(s->alog); /* after the workers: their last lines are in */
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->m);
    free(s->w);
    free(s);
}

/* Drains the workers [0, n) that started, waits for them, frees s. */
static void serve_down(rsl_serve *s, int n) {
    atomic_store(&s->draining, 1);
    pthread_mutex_lock(&s->m);
    s->step_done = 0;
    pthread_mutex_unlock(&s->m);
    int posted = 0;
    for (int i = 0; i < n; i++) {
        posted += rsl_on_worker(s->rt, i, drain_here, &s->w[i]) == 0;
    }
    wait_steps(s, posted, s->o.drain_timeout_ns);
    pthread_mutex_lock(&s->m);
    int done = s->step_done;
    pthread_mutex_unlock(&s->m);
    if (done < posted) {
        for (int i = 0; i < n; i++) {
            (void)rsl_on_worker(s->rt, i, force_close_here, &s->w[i]);
        }
        wait_steps(s, posted, 0);
    }
    serve_free(s);
}

int rsl_serve_start(rsl_runtime *rt, const rsl_serve_options *o, rsl_serve **out, char *err,
                    size_t errlen) {
    char dummy[1];
    if (!err || !errlen) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    err[0] = 0;
    if (!rt || !out) {
        return RSL_EINVAL;
    }
    *out = NULL;
    rsl_serve *s = calloc(1, sizeof(*s));
    if (!s) {
        return RSL_ENOMEM;
    }
    rsl_serve_options_init(&s->o);
    if (o) {
        memcpy(&s->o, o, o->size < sizeof(s->o) ? o->size : sizeof(s->o));
        s->o.size = sizeof(s->o);
    }
    s->rt = rt;
    s->dispatch = rsl__srv_dispatch;
    s->nworkers = rsl_workers(rt);
    pthread_mutex_init(&s->m, NULL);
    pthread_cond_init(&s->cv, NULL);
    int rc = s->o.listen ? parse_listen(s->o.listen, &s->addr, err, errlen) : RSL_EINVAL;
    if (rc == 0 && s->nworkers < 1) {
        rc = RSL_ECLOSED;
    }
    if (rc == 0 && !(s->w = calloc((size_t)s->nworkers, sizeof(*s->w)))) {
        rc = RSL_ENOMEM;
    }
    if (rc == 0 && s->o.access_log && s->o.access_log[0]) {
        rc = rsl__alog_open(&s->alog, s->o.access_log, err, errlen);
    }
    if (rc != 0) {
        serve_free(s);
        return rc;
    }
    s->port = ntohs(s->addr.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&s->addr)->sin6_port
                                                  : ((struct sockaddr_in *)&s->addr)->sin_port);
    for (int i = 0; i < s->nworkers; i++) {
        s->w[i].s = s;
        s->w[i].index = i;
    }
    /* Worker 0 first: with port 0 the others bind to the port it got. */
    int started = 0;
    for (int step = 0; step < 2 && rc == 0; step++) {
        int from = step == 0 ? 0 : 1, to = step == 0 ? 1 : s->nworkers;
        if (from >= to) {
            break;
        }
        pthread_mutex_lock(&s->m);
        s->step_done = 0;
        pthread_mutex_unlock(&s->m);
        rc = on_every_worker(s, listen_here, from, to);
        int posted = rc == 0 ? to - from : 0;
        wait_steps(s, posted, 0);
        started = rc == 0 ? to : from;
        for (int i = from; rc == 0 && i < to; i++) {
            if (s->w[i].rc != 0) {
                snprintf(err, errlen, "cannot listen on %s: %s", s->o.listen, s->w[i].err);
                rc = RSL_ESYS;
            }
        }
    }
    if (rc != 0) {
        if (!err[0]) {
            snprintf(err, errlen, "cannot listen on %s: %s", s->o.listen, rsl_strerror(rc));
        }
        serve_down(s, started);
        return rc;
    }
    *out = s;
    return 0;
}

int rsl_serve_reopen_log(rsl_serve *s) {
    if (!s) {
        return RSL_EINVAL;
    }
    if (s->alog) {
        rsl__alog_reopen(s->alog);
    }
    return 0;
}

void rsl_serve_stop(rsl_serve *s) {
    if (s) {
        serve_down(s, s->nworkers);
    }
}
