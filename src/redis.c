/*
 * redis -- a worker's Redis connection: hiredis 0.14 async on the worker's libuv loop.
 * Loop thread only (see redis.h for the contract).
 *
 * Layer: the loop and its I/O, beside worker.c: it knows nothing of calls or steps.
 *
 * Ownership.  A command started with a callback owns a small handle (rsl__redis_cmd),
 * given to hiredis as privdata; hiredis calls reply_cb exactly once per command (with a
 * NULL reply when the connection is lost or freed), and reply_cb is the only place that
 * frees the handle.  Cancel clears the handle's callback and leaves the freeing to
 * reply_cb.  Fire-and-forget commands pass no handle (privdata NULL) but still go through
 * reply_cb, which keeps the in-flight count exact.
 *
 * hiredis 0.14 facts this file relies on (async.c):
 *  - redisAsyncConnect returns a context with ->err set on immediate failure; the caller
 *    frees it.
 *  - A failed connect runs onConnect(REDIS_ERR) outside any "in callback" guard, then
 *    frees the context itself; onDisconnect runs only for a context that had connected,
 *    on every drop and on redisAsyncFree, also outside the guard.  So neither callback
 *    may free the context, and r->ac is cleared before anything else runs there.
 *  - redisAsyncFree inside a reply callback is deferred until the callback returns;
 *    pending callbacks then run with a NULL reply, in order.
 *  - Commands are appended to an output buffer and written when the socket is writable:
 *    nothing here blocks the loop, whatever Redis does.
 *  - But redisAsyncConnect resolves a host name with a blocking getaddrinfo: with a slow
 *    or dead DNS server that would stall the loop on every reconnect.  So a name is
 *    resolved first with uv_getaddrinfo (thread pool) and hiredis only sees addresses.
 *
 * The event hooks are our own instead of adapters/libuv.h, because that adapter in 0.14
 * returns early when libuv reports a poll error: libuv turns POLLERR (a refused connect,
 * a connection reset) into status UV_EBADF and stops the handle, so hiredis never learns
 * of the failure and the connection hangs for good, commands never answered.  Ours
 * hands the event to hiredis, whose read then finds the socket error.  The adapter also
 * leaks its struct when uv_poll_init fails.
 */
#include "redis.h"

#include <arpa/inet.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "clock.h"
#include "dec.h"

/* Backoff between connect attempts: 50 ms (a restarted local Redis is back within a few
 * tens of ms) doubling to 2 s (a worker retries at most every 2 s, so N workers cost a
 * down Redis N connects per 2 s).  "Equal jitter": the delay is uniform in [d/2, d], so
 * workers spread out and the wait never exceeds 2 s. */
#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 2000
/* A connect (TCP handshake) that has not completed after 1 s is abandoned and retried:
 * the kernel would wait ~2 minutes for a host that drops SYNs; a Redis on the same
 * network answers in well under 1 s. */
#define CONNECT_TIMEOUT_MS 1000

enum { LOGGED_NONE, LOGGED_UP, LOGGED_DOWN };

struct rsl__redis_cmd {
    rsl__redis_cb cb; /* NULL once canceled or the connection closed */
    void *ud;
};

struct rsl__redis {
    uv_loop_t *loop;
    char *host;
    int port;
    rsl__redis_log log;
    void *log_ud;
    redisAsyncContext *ac; /* NULL between attempts; connecting while !connected */
    int connected;
    int closing;
    int logged; /* LOGGED_*: the last state logged, so each change logs once */
    uint64_t backoff_ms;
    size_t inflight;  /* commands sent, reply_cb not yet run */
    uv_timer_t timer; /* reconnect delay, or the connect timeout while ac != NULL */
    int timer_closed;
    int numeric;       /* host is an IP address: no resolving */
    int resolving;     /* gai in flight: r is freed only after its callback */
    unsigned failures; /* connect attempts failed so far: picks the next address */
    uv_getaddrinfo_t gai;
    /* Scratch for integer and array replies, reused: replies are handed out one at a
     * time and borrowed only for the callback. */
    char *buf;
    size_t len, cap;
    char *user, *password; /* AUTH on every connect (rsl__redis_auth); NULL: none */
    int auth_logged;       /* a refused AUTH is logged once until one succeeds */
};

/* ------------------------------------------------------------------------------------
 * Event hooks: hiredis <-> one uv_poll_t, plus a uv_prepare_t that batches writes.
 *
 * The stock adapter polls for writable whenever a command is queued and stops when the
 * buffer is written, and libuv 1.44's uv_poll_start and uv_poll_stop each cost an
 * epoll_ctl (uv_poll_start stops the handle first, which removes the fd from epoll): two
 * or three syscalls per command, as many as the command's own write.  Here, once
 * connected, a queued command only arms the prepare handle, which runs right before the
 * loop next polls: every command queued in this loop turn goes out in one write, and
 * the poll handle is touched only when a write would block (or while connecting).  The
 * poll handle is restarted only when the events actually change.
 *
 * The poller is its own allocation, freed once both handles closed, so it never
 * outlives nor holds up the rsl__redis.
 */
typedef struct poller {
    uv_poll_t handle;
    uv_prepare_t flush;
    redisAsyncContext *ac; /* NULL once hiredis cleaned up: the context may be gone */
    int events;            /* what hiredis wants */
    int armed;             /* what the poll handle watches */
    int connected;         /* writes may be batched */
    int flushing;          /* inside on_flush: an add-write now means "would block" */
    int open_handles;
} poller;

static void on_poll(uv_poll_t *h, int status, int events);

static void poll_update(poller *p, int events) {
    p->events = events;
    if (events == p->armed) {
        return;
    }
    p->armed = events;
    if (events) {
        uv_poll_start(&p->handle, events, on_poll);
    } else {
        uv_poll_stop(&p->handle);
    }
}

static void on_poll(uv_poll_t *h, int status, int events) {
    poller *p = h->data;
    if (status < 0) {
        /* POLLERR: libuv stopped the handle.  Whatever hiredis waited for, its next read
         * or write (or its connect check) finds the socket error and tears down. */
        events = p->events;
        p->armed = 0;
    }
    if (p->ac && (events & UV_READABLE)) {
        redisAsyncHandleRead(p->ac);
    }
    if (p->ac && (events & UV_WRITABLE)) {
        redisAsyncHandleWrite(p->ac);
    }
    if (status < 0 && p->ac && p->events) {
        poll_update(p, p->events); /* not torn down: poll again */
    }
}

static void on_flush(uv_prepare_t *h) {
    poller *p = h->data;
    uv_prepare_stop(&p->flush);
    if (p->ac) {
        p->flushing = 1;
        redisAsyncHandleWrite(p->ac); /* may tear the context down (p->ac = NULL) */
        p->flushing = 0;
    }
}

static void ev_add_read(void *d) {
    poller *p = d;
    poll_update(p, p->events | UV_READABLE);
}

static void ev_del_read(void *d) {
    poller *p = d;
    poll_update(p, p->events & ~UV_READABLE);
}

static void ev_add_write(void *d) {
    poller *p = d;
    if (p->connected && !p->flushing) {
        uv_prepare_start(&p->flush, on_flush); /* a no-op when already started */
        return;
    }
    poll_update(p, p->events | UV_WRITABLE);
}

static void ev_del_write(void *d) {
    poller *p = d;
    poll_update(p, p->events & ~UV_WRITABLE);
}

static void on_poller_closed(uv_handle_t *h) {
    poller *p = h->data;
    if (--p->open_handles == 0) {
        free(p);
    }
}

/* hiredis is about to free the context (and then close the fd): uv_close stops watching
 * the fd at once, so the fd number may be reused right away. */
static void ev_cleanup(void *d) {
    poller *p = d;
    p->ac = NULL;
    if (!uv_is_closing((uv_handle_t *)&p->handle)) {
        uv_close((uv_handle_t *)&p->handle, on_poller_closed);
        uv_close((uv_handle_t *)&p->flush, on_poller_closed);
    }
}

static int attach(redisAsyncContext *ac, uv_loop_t *loop) {
    poller *p = calloc(1, sizeof(*p));
    if (!p) {
        return RSL_ENOMEM;
    }
    if (uv_poll_init(loop, &p->handle, ac->c.fd) < 0) {
        free(p);
        return RSL_ESYS;
    }
    uv_prepare_init(loop, &p->flush); /* cannot fail */
    p->open_handles = 2;
    p->handle.data = p;
    p->flush.data = p;
    p->ac = ac;
    ac->ev.data = p;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    return 0;
}

/* ------------------------------------------------------------------------------------
 * Connection state
 */
static void on_timer(uv_timer_t *t);

static void free_redis(rsl__redis *r) {
    free(r->buf);
    free(r->host);
    if (r->password) { /* no copy of a secret left behind in freed memory */
        memset(r->password, 0, strlen(r->password));
    }
    free(r->password);
    free(r->user);
    free(r);
}

__attribute__((format(printf, 3, 4))) static void say(rsl__redis *r, int level, const char *fmt,
                                                      ...) {
    if (r->log) {
        char msg[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        r->log(r->log_ud, level, msg);
    }
}

/* The context's own error: ac->errstr is only copied from it when hiredis tears down,
 * after the connect callback has run. */
static const char *errstr(const redisAsyncContext *ac) {
    return ac->c.err && ac->c.errstr[0] ? ac->c.errstr : "unknown error";
}

static void schedule_connect(rsl__redis *r) {
    if (r->closing) {
        return;
    }
    uint64_t d = r->backoff_ms;
    uint64_t delay = d / 2 + (uint64_t)(rsl__rand01() * (double)(d - d / 2));
    r->backoff_ms = d * 2 < BACKOFF_MAX_MS ? d * 2 : BACKOFF_MAX_MS;
    uv_timer_start(&r->timer, on_timer, delay, 0);
}

/* A connect attempt failed (immediately, by timeout or in the connect callback). */
static void connect_failed(rsl__redis *r, const char *why) {
    r->failures++;
    if (r->logged != LOGGED_DOWN) {
        r->logged = LOGGED_DOWN;
        say(r, 1, "cannot connect: %s; retrying every %d ms at most", why, BACKOFF_MAX_MS);
    }
    schedule_connect(r);
}

/* AUTH's reply.  Refused (a wrong password, no such user): logged once, and the
 * connection dropped, so that it reconnects with backoff rather than answer every command
 * NOAUTH.  NULL: the connection went first. */
static void on_auth(redisAsyncContext *ac, void *reply, void *ud) {
    rsl__redis *r = ud;
    redisReply *rep = reply;
    if (!rep || r->closing) {
        return;
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        if (!r->auth_logged) {
            r->auth_logged = 1;
            say(r, 0, "AUTH refused: %.*s; retrying every %d ms at most",
                (int)(rep->len < 200 ? rep->len : 200), rep->str, BACKOFF_MAX_MS);
        }
        redisAsyncDisconnect(ac); /* reconnects with a growing backoff: see on_connect */
        return;
    }
    r->backoff_ms = BACKOFF_MIN_MS;
    if (r->auth_logged) {
        r->auth_logged = 0;
        say(r, 2, "AUTH accepted");
    }
}

/* hiredis 0.14 calls this outside its callback guard and, on failure, frees the context
 * right after: forget the context before anything else. */
static void on_connect(const redisAsyncContext *ac, int status) {
    rsl__redis *r = ac->data;
    if (status != REDIS_OK) {
        r->ac = NULL;
        uv_timer_stop(&r->timer);
        connect_failed(r, errstr(ac));
        return;
    }
    uv_timer_stop(&r->timer);
    if (r->password) {
        /* First on the connection: every command after it is pipelined behind it. */
        const char *argv[3] = {"AUTH", r->user, r->password};
        size_t len[3] = {4, r->user ? strlen(r->user) : 0, strlen(r->password)};
        int n = r->user ? 3 : 2;
        if (!r->user) {
            argv[1] = r->password;
            len[1] = len[2];
        }
        redisAsyncCommandArgv((redisAsyncContext *)ac, on_auth, r, n, argv, len);
    }
    r->connected = 1;
    ((poller *)ac->ev.data)->connected = 1; /* from now on, writes are batched */
    if (!r->password) {
        r->backoff_ms = BACKOFF_MIN_MS; /* with AUTH, once it is accepted (on_auth) */
    }
    if (r->logged != LOGGED_UP) {
        r->logged = LOGGED_UP;
        if (!r->auth_logged) { /* refused before: "AUTH accepted" says it is back */
            say(r, 2, "connected");
        }
    }
}

/* Every drop of a context that had connected, also the one rsl__redis_close asks for;
 * pending replies have already run (with NULL).  The context is freed right after. */
static void on_disconnect(const redisAsyncContext *ac, int status) {
    rsl__redis *r = ac->data;
    r->ac = NULL;
    r->connected = 0;
    if (r->closing) {
        return;
    }
    r->logged = LOGGED_DOWN;
    if (!r->auth_logged) { /* a refused AUTH dropped it: said already */
        say(r, 1, "connection lost: %s; reconnecting", status == REDIS_OK ? "closed" : errstr(ac));
    }
    schedule_connect(r);
}

static void connect_to(rsl__redis *r, const char *ip) {
    redisAsyncContext *ac = redisAsyncConnect(ip, r->port);
    if (!ac) {
        connect_failed(r, "out of memory");
        return;
    }
    if (ac->err) {
        char why[128];
        snprintf(why, sizeof(why), "%s", errstr(ac));
        redisAsyncFree(ac); /* 0.14: an immediate failure is ours to free */
        connect_failed(r, why);
        return;
    }
    if (attach(ac, r->loop) < 0) {
        redisAsyncFree(ac);
        connect_failed(r, "cannot watch the socket");
        return;
    }
    ac->data = r;
    r->ac = ac;
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    redisAsyncSetConnectCallback(ac, on_connect); /* also starts waiting for writable */
    uv_timer_start(&r->timer, on_timer, CONNECT_TIMEOUT_MS, 0);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
    rsl__redis *r = req->data;
    r->resolving = 0;
    /* A name may have several addresses ("localhost": ::1 and 127.0.0.1, and Redis may
     * listen on one only): each failed attempt moves on to the next one. */
    char ip[INET6_ADDRSTRLEN] = "";
    unsigned n = 0;
    for (struct addrinfo *a = status == 0 ? res : NULL; a; a = a->ai_next) {
        n += a->ai_family == AF_INET || a->ai_family == AF_INET6;
    }
    unsigned pick = n ? r->failures % n : 0;
    for (struct addrinfo *a = n ? res : NULL; a && !ip[0]; a = a->ai_next) {
        if (a->ai_family != AF_INET && a->ai_family != AF_INET6) {
            continue;
        }
        if (pick-- > 0) {
            continue;
        }
        const void *addr = a->ai_family == AF_INET
                               ? (const void *)&((struct sockaddr_in *)a->ai_addr)->sin_addr
                               : (const void *)&((struct sockaddr_in6 *)a->ai_addr)->sin6_addr;
        inet_ntop(a->ai_family, addr, ip, sizeof(ip));
    }
    uv_freeaddrinfo(res);
    if (r->closing) {
        if (r->timer_closed) {
            free_redis(r);
        }
        return;
    }
    if (!ip[0]) {
        connect_failed(r, status < 0 ? uv_strerror(status) : "no address");
        return;
    }
    connect_to(r, ip);
}

static void start_connect(rsl__redis *r) {
    if (r->numeric) {
        connect_to(r, r->host);
        return;
    }
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    r->gai.data = r;
    int rc = uv_getaddrinfo(r->loop, &r->gai, on_resolved, r->host, NULL, &hints);
    if (rc < 0) {
        connect_failed(r, uv_strerror(rc));
        return;
    }
    r->resolving = 1;
}

static void on_timer(uv_timer_t *t) {
    rsl__redis *r = t->data;
    if (r->ac) {
        /* The connect timed out.  Not connected: no command waits on it and no
         * disconnect callback runs; freeing it closes the socket. */
        redisAsyncContext *ac = r->ac;
        r->ac = NULL;
        redisAsyncFree(ac);
        connect_failed(r, "timed out");
        return;
    }
    start_connect(r);
}

rsl__redis *rsl__redis_new(uv_loop_t *loop, const char *host, int port, rsl__redis_log log,
                           void *log_ud) {
    rsl__redis *r = calloc(1, sizeof(*r));
    if (!r) {
        return NULL;
    }
    r->host = strdup(host);
    if (!r->host || uv_timer_init(loop, &r->timer) < 0) {
        free(r->host);
        free(r);
        return NULL;
    }
    r->loop = loop;
    r->port = port;
    r->log = log;
    r->log_ud = log_ud;
    r->backoff_ms = BACKOFF_MIN_MS;
    r->timer.data = r;
    unsigned char addr[sizeof(struct in6_addr)];
    r->numeric = inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1;
    start_connect(r);
    return r;
}

int rsl__redis_auth(rsl__redis *r, const char *user, const char *password) {
    char *u = user && *user ? strdup(user) : NULL, *p = password ? strdup(password) : NULL;
    if ((user && *user && !u) || (password && !p)) {
        free(u);
        free(p);
        return RSL_ENOMEM;
    }
    free(r->user);
    free(r->password);
    r->user = u;
    r->password = p;
    return 0;
}

int rsl__redis_connected(const rsl__redis *r) {
    return r && r->connected;
}

/* ------------------------------------------------------------------------------------
 * Replies
 */
static int put(rsl__redis *r, const char *p, size_t n) {
    if (r->len + n + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 256;
        while (cap < r->len + n + 1) {
            cap *= 2;
        }
        char *b = realloc(r->buf, cap);
        if (!b) {
            return -1;
        }
        r->buf = b;
        r->cap = cap;
    }
    memcpy(r->buf + r->len, p, n);
    r->len += n;
    r->buf[r->len] = '\0';
    return 0;
}

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0 (RFC 3629: no overlongs,
 * no surrogates, nothing above U+10FFFF). */
static size_t utf8_len(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        lo = c == 0xE0 ? 0xA0 : 0x80;
        hi = c == 0xED ? 0x9F : 0xBF;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        lo = c == 0xF0 ? 0x90 : 0x80;
        hi = c == 0xF4 ? 0x8F : 0xBF;
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi) {
        return 0;
    }
    for (size_t i = 2; i < len; i++) {
        if (s[i] < 0x80 || s[i] > 0xBF) {
            return 0;
        }
    }
    return len;
}

static int put_json_string(rsl__redis *r, const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    if (put(r, "\"", 1) < 0) {
        return -1;
    }
    size_t run = 0; /* bytes copied as they are, written in one go */
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        size_t u = 1;
        const char *esc = NULL;
        char hex[8];
        if (c == '"') {
            esc = "\\\"";
        } else if (c == '\\') {
            esc = "\\\\";
        } else if (c == '\n') {
            esc = "\\n";
        } else if (c == '\r') {
            esc = "\\r";
        } else if (c == '\t') {
            esc = "\\t";
        } else if (c < 0x20 || (c >= 0x80 && (u = utf8_len(s + i, n - i)) == 0)) {
            snprintf(hex, sizeof(hex), "\\u%04x", c);
            esc = hex;
            u = 1;
        }
        if (esc) {
            if (put(r, str + i - run, run) < 0 || put(r, esc, strlen(esc)) < 0) {
                return -1;
            }
            run = 0;
        } else {
            run += u;
        }
        i += u;
    }
    if (put(r, str + n - run, run) < 0) {
        return -1;
    }
    return put(r, "\"", 1);
}

static int put_json(rsl__redis *r, const redisReply *e) {
    char num[32], *p;
    switch (e->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
        return put_json_string(r, e->str, e->len);
    case REDIS_REPLY_INTEGER:
        p = rsl__dec(num + sizeof(num), (int64_t)e->integer); /* dec.h: no printf */
        return put(r, p, (size_t)(num + sizeof(num) - p));
    case REDIS_REPLY_ARRAY:
        /* hiredis's parser nests at most 7 levels deep: the recursion is bounded. */
        if (put(r, "[", 1) < 0) {
            return -1;
        }
        for (size_t i = 0; i < e->elements; i++) {
            if ((i > 0 && put(r, ",", 1) < 0) || put_json(r, e->element[i]) < 0) {
                return -1;
            }
        }
        return put(r, "]", 1);
    default: /* nil, and types a newer protocol might add */
        return put(r, "null", 4);
    }
}

/* Every command's one completion: hiredis calls it exactly once, with NULL when the
 * context goes away first.  It frees the handle whatever happened. */
static void reply_cb(redisAsyncContext *ac, void *reply_, void *privdata) {
    rsl__redis *r = ac->data;
    rsl__redis_cmd *c = privdata;
    redisReply *reply = reply_;
    r->inflight--;
    if (!reply) {
        /* The connection is going: commands sent from the callback below must fail now
         * (hiredis refuses them too), not wait for on_disconnect. */
        r->connected = 0;
    }
    if (!c) {
        return; /* fire and forget */
    }
    rsl__redis_cb cb = c->cb;
    void *ud = c->ud;
    free(c);
    if (!cb || r->closing) {
        return;
    }
    rsl__redis_reply out = {.outcome = RSL_OUTCOME_OK, .str = "", .len = 0, .error = NULL};
    char msg[200];
    if (!reply) {
        snprintf(msg, sizeof(msg), "connection lost before the reply: %s", errstr(ac));
        out.outcome = RSL_OUTCOME_CONNECT;
        out.error = msg;
    } else if (reply->type == REDIS_REPLY_NIL) {
        out.outcome = RSL_OUTCOME_MISS;
        out.error = "nil";
    } else if (reply->type == REDIS_REPLY_ERROR) {
        out.outcome = RSL_OUTCOME_ERROR;
        out.error = reply->str;
    } else if (reply->type == REDIS_REPLY_STRING || reply->type == REDIS_REPLY_STATUS) {
        out.str = reply->str;
        out.len = reply->len;
    } else {
        r->len = 0;
        if (put_json(r, reply) < 0) {
            out.outcome = RSL_OUTCOME_ERROR;
            out.error = "out of memory";
        } else {
            out.str = r->buf;
            out.len = r->len;
        }
    }
    cb(ud, &out);
}

/* ------------------------------------------------------------------------------------
 * Commands
 */

/* Commands after which replies no longer pair with requests (pub/sub pushes, MONITOR's
 * stream): hiredis would mismatch or assert. */
static int stateful_command(const char *name, size_t len) {
    static const char *const bad[] = {"subscribe", "psubscribe", "unsubscribe", "punsubscribe",
                                      "monitor"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (len == strlen(bad[i]) && strncasecmp(name, bad[i], len) == 0) {
            return 1;
        }
    }
    return 0;
}

int rsl__redis_command(rsl__redis *r, int argc, const char **argv, const size_t *argvlen,
                       rsl__redis_cb cb, void *ud, rsl__redis_cmd **out) {
    if (out) {
        *out = NULL;
    }
    if (argc < 1 || !argv || stateful_command(argv[0], argvlen ? argvlen[0] : strlen(argv[0]))) {
        return RSL_EINVAL;
    }
    if (!r->connected || !r->ac || r->closing || r->inflight >= RSL_REDIS_MAX_INFLIGHT) {
        return RSL_ECLOSED;
    }
    rsl__redis_cmd *c = NULL;
    if (cb) {
        c = malloc(sizeof(*c));
        if (!c) {
            return RSL_ENOMEM;
        }
        c->cb = cb;
        c->ud = ud;
    }
    /* Appends to the output buffer and asks for writable: never writes, never calls
     * back from here.  It fails when hiredis is tearing the context down (a command sent
     * from a NULL-reply callback) or on no memory. */
    if (redisAsyncCommandArgv(r->ac, reply_cb, c, argc, argv, argvlen) != REDIS_OK) {
        free(c);
        return r->ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING) ? RSL_ECLOSED : RSL_ENOMEM;
    }
    r->inflight++;
    if (out) {
        *out = c;
    }
    return 0;
}

/* SCRIPT LOAD's reply: the SHA1, kept for good; a failure lets the next send ask again. */
static void script_loaded(void *ud, const rsl__redis_reply *rep) {
    rsl__redis_script *s = ud;
    if (rep->outcome == RSL_OUTCOME_OK && rep->len == 40) {
        if (s->sha[0] == 0) {
            memcpy(s->sha, rep->str, 40);
            s->sha[40] = 0;
        }
        atomic_store_explicit(&s->state, 2, memory_order_release);
    } else {
        atomic_store_explicit(&s->state, s->sha[0] ? 3 : 0, memory_order_release);
    }
}

int rsl__redis_eval(rsl__redis *r, rsl__redis_script *s, int argc, const char **argv,
                    rsl__redis_cb cb, void *ud) {
    const char *v[34];
    size_t lens[34];
    if (argc < 1 || argc > 32) {
        return RSL_EINVAL;
    }
    int st = atomic_load_explicit(&s->state, memory_order_acquire);
    if (st == 0 && atomic_compare_exchange_strong_explicit(&s->state, &st, 1,
                                                           memory_order_acq_rel,
                                                           memory_order_acquire)) {
        const char *load[] = {"SCRIPT", "LOAD", s->text};
        if (rsl__redis_command(r, 3, load, NULL, script_loaded, s, NULL) != 0) {
            atomic_store_explicit(&s->state, 0, memory_order_release);
        }
        st = 1;
    } else if (st == 3 && atomic_compare_exchange_strong_explicit(&s->state, &st, 2,
                                                                  memory_order_acq_rel,
                                                                  memory_order_acquire)) {
        st = 3; /* this one EVAL caches it on the server again */
    }
    v[0] = st == 2 ? "EVALSHA" : "EVAL";
    v[1] = st == 2 ? s->sha : s->text;
    for (int i = 0; i < argc; i++) {
        v[i + 2] = argv[i];
    }
    for (int i = 0; i < argc + 2; i++) {
        lens[i] = strlen(v[i]);
    }
    return rsl__redis_command(r, argc + 2, v, lens, cb, ud, NULL);
}

int rsl__redis_noscript(rsl__redis_script *s, const rsl__redis_reply *rep) {
    if (rep->outcome != RSL_OUTCOME_ERROR || strncmp(rep->error, "NOSCRIPT", 8) != 0) {
        return 0;
    }
    int two = 2;
    atomic_compare_exchange_strong_explicit(&s->state, &two, 3, memory_order_acq_rel,
                                            memory_order_relaxed);
    return 1;
}

void rsl__redis_cancel(rsl__redis *r, rsl__redis_cmd *c) {
    (void)r;
    if (c) {
        c->cb = NULL;
    }
}

static void on_timer_closed(uv_handle_t *h) {
    rsl__redis *r = h->data;
    r->timer_closed = 1;
    if (!r->resolving) {
        free_redis(r);
    }
}

void rsl__redis_close(rsl__redis *r) {
    if (!r || r->closing) {
        return;
    }
    int was_connected = r->connected;
    r->closing = 1;
    r->connected = 0;
    if (r->ac && was_connected) {
        /* Best effort, without blocking: hand what is still buffered (cache writes made
         * off the request path just before the close) to the kernel, so that it reaches
         * Redis after we are gone.  A non-blocking write that would block ends it. */
        int done = 0;
        for (int i = 0; i < 8 && !done; i++) {
            if (redisBufferWrite(&r->ac->c, &done) != REDIS_OK) {
                break;
            }
        }
    }
    if (r->ac) {
        /* Runs every pending reply_cb with NULL (they free their handles and call no
         * one: closing) and on_disconnect, now or, from inside a reply callback, as soon
         * as that returns; either way before the timer's close callback frees r. */
        redisAsyncContext *ac = r->ac;
        r->ac = NULL;
        redisAsyncFree(ac);
    }
    if (r->resolving) {
        /* Fails when the lookup already runs on a pool thread: on_resolved then comes
         * when it ends (and frees r if the timer closed first). */
        uv_cancel((uv_req_t *)&r->gai);
    }
    uv_timer_stop(&r->timer);
    uv_close((uv_handle_t *)&r->timer, on_timer_closed);
}
