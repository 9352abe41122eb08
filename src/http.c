/*
 * http -- libcurl's multi_socket API on a libuv loop (see http.h for the contract).
 *
 * Layer: the loop and its I/O, beside worker.c: it knows nothing of calls or steps.
 *
 * The wiring follows curl's docs/examples/multi-uv.c:
 *  - CURLMOPT_SOCKETFUNCTION: one uv_poll per socket, found again through
 *    curl_multi_assign, or by fd when curl comes back to a socket it had let go.  A
 *    kept-alive connection goes REMOVE (transfer done) / IN (next transfer) once per
 *    request, and libuv 1.44 pays an epoll_ctl for every uv_poll_start and uv_poll_stop
 *    (uv_poll_start stops the handle first): so the poll of a connection's socket is not
 *    stopped on REMOVE but left watching (unreferenced: it keeps no loop alive), and only
 *    restarted when the events change.  An event on a socket curl no longer watches (the
 *    server closed an idle connection) stops the poll then.  Only sockets curl opened
 *    through CURLOPT_OPENSOCKETFUNCTION, and only once curl has asked to read from
 *    them, linger: curl (7.88) closes a connected socket through
 *    CURLOPT_CLOSESOCKETFUNCTION, which closes the poll before the fd can be reused,
 *    but a connect attempt that never connected (lost, failed, or its transfer
 *    canceled) with a bare close(2), telling no one until a later REMOVE: a poll still
 *    queued for that fd then makes libuv abort (epoll_ctl EBADF).  Before it connects,
 *    curl only ever asks to write.  Any other socket (the resolver's socketpair, a
 *    connect attempt) gets its poll closed on REMOVE; a socket opened on an fd whose
 *    poll is still there (closed behind our back, and curl may take the new socket for
 *    the old one and not call the hook again) gets that poll re-registered.
 *  - CURLMOPT_TIMERFUNCTION: one uv_timer.  -1 stops it; 0 means "as soon as possible,
 *    but not from inside this callback", which a 0 ms uv_timer gives (it runs on the
 *    next loop turn), or, for transfers the check phase's callbacks started, that
 *    check callback itself right after them.
 *  - Finished transfers are taken off curl_multi_info_read one at a time: after a timer
 *    action at once, after socket actions in a uv_check callback, once every socket event
 *    of the loop turn is dispatched (answers are all read before the callbacks' new
 *    requests go out together, as a curl_multi_perform loop does; interleaving them cost
 *    a quarter more CPU per call between client and server: bench_io).  The easy handle
 *    is removed from the multi handle before the caller's callback runs, so that
 *    callback may start, cancel or close freely (curl_multi_remove_handle also drops any
 *    DONE message still queued for a handle canceled meanwhile).
 *
 * Connections live in the multi handle's connection cache, not in the easy handles, so
 * easy handles are recycled through a free list and a steady stream of calls reuses its
 * keep-alive connections.  A handle comes back from the list in the state a fresh one
 * has after the options every request sets (the "base" options): curl_easy_reset and
 * those options again, or, after a plain GET that left curl nothing to remember (no
 * new connection, hence no retry counted; no credentials; no 401/407), only the per-request
 * options put back to their defaults.  Re-setting all of them per call (the URL and
 * protocol lists parsed, strings copied) was a visible share of a call's CPU.
 */
#include "http.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

/* Kept connections per client: enough for the concurrency a worker sees against a few
 * upstreams (curl's default grows with the number of easy handles, but then a burst
 * leaves that many idle sockets behind).  Above it, connections close after use. */
#define MAX_CONNECTS 256L
/* Idle easy handles kept for reuse (each holds curl's per-handle buffers, ~100 KiB
 * upload + download); beyond this, finished handles are freed. */
#define MAX_IDLE 256

typedef struct sock_ctx {
    uv_poll_t poll; /* first: the close callback gets the handle */
    rsl__http *h;
    curl_socket_t fd;
    int events;  /* UV_READABLE | UV_WRITABLE that curl asked for; 0 after REMOVE */
    int armed;   /* what the poll watches now */
    int closing; /* the socket is closing: uv_close called, freed in its callback */
    int readable; /* curl asked to read from it: connected, see on_curl_socket */
    struct sock_ctx *prev, *next;
} sock_ctx;

enum { XF_IDLE, XF_RUNNING, XF_DONE };

struct rsl__http_xfer {
    rsl__http *h;
    CURL *easy;
    int state;
    rsl__http_cb cb;
    void *ud;
    struct curl_slist *hdrs;
    rsl__buf body;
    rsl__buf rh; /* response headers so far, "name\0value\0" (reset at each status line);
                  * kept across transfers, packed into one block at the end (tmpl.h) */
    int nrh;
    int over_cap, oom;
    int based; /* the base options are set (a fresh or reset handle has none) */
    int plain; /* this request: GET, no body, no credentials in the URL */
    int reuse; /* finished so that recycling needs no curl_easy_reset (see the top) */
    rsl__http_xfer *prev, *next; /* running list (doubly linked) or idle list */
    char errbuf[CURL_ERROR_SIZE];
};

struct rsl__http {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    uv_check_t check; /* runs the callbacks of transfers finished in the poll phase */
    size_t max_body;
    rsl__http_xfer *running; /* in flight: aborted by close */
    rsl__http_xfer *idle;
    int nidle;
    int inflight;
    sock_ctx *socks; /* open polls: closed by close */
    /* By fd: the open poll, and whether curl opened the socket through on_open_socket
     * (then its close comes through on_close_socket and the poll may linger). */
    struct fd_slot {
        sock_ctx *s;
        int mine;
    } *byfd;
    int nbyfd;
    int handles;     /* uv handles not yet through their close callback */
    int closing;
    int in_timer; /* inside curl_multi_socket_action(CURL_SOCKET_TIMEOUT) */
    int in_check; /* in on_check's drain: a 0 ms timeout is run at its end instead */
    int kick;     /* curl asked for 0 ms during that drain */
    char capmsg[80];
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc = CURLE_FAILED_INIT;

static void global_init(void) {
    global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ---- handles and their close callbacks --------------------------------------------------- */

static void handle_gone(rsl__http *h) {
    h->handles--;
    if (h->closing && h->handles == 0) {
        free(h->byfd);
        free(h);
    }
}

static void on_sock_closed(uv_handle_t *hd) {
    sock_ctx *s = (sock_ctx *)hd;
    rsl__http *h = s->h;
    free(s);
    handle_gone(h);
}

static void on_timer_closed(uv_handle_t *hd) {
    handle_gone(hd->data);
}

static void on_check_closed(uv_handle_t *hd) {
    handle_gone(hd->data);
}

static void sock_close(rsl__http *h, sock_ctx *s) {
    if (s->prev) {
        s->prev->next = s->next;
    } else {
        h->socks = s->next;
    }
    if (s->next) {
        s->next->prev = s->prev;
    }
    if (s->fd >= 0 && s->fd < h->nbyfd && h->byfd[s->fd].s == s) {
        h->byfd[s->fd].s = NULL;
    }
    s->closing = 1;
    uv_close((uv_handle_t *)&s->poll, on_sock_closed);
}

/* ---- transfers ----------------------------------------------------------------------------- */

static void xfer_clear(rsl__http_xfer *x) {
    curl_slist_free_all(x->hdrs);
    x->hdrs = NULL;
    rsl__buf_empty(&x->body, 16384); /* an unusual answer's buffers are not kept around */
    rsl__buf_empty(&x->rh, 16384);
    x->nrh = 0;
    x->over_cap = x->oom = 0;
    x->cb = NULL;
    x->ud = NULL;
}

static void xfer_destroy(rsl__http_xfer *x) {
    xfer_clear(x);
    rsl__buf_free(&x->body);
    rsl__buf_free(&x->rh);
    curl_easy_cleanup(x->easy);
    free(x);
}

static void running_unlink(rsl__http *h, rsl__http_xfer *x) {
    if (x->prev) {
        x->prev->next = x->next;
    } else {
        h->running = x->next;
    }
    if (x->next) {
        x->next->prev = x->prev;
    }
    x->prev = x->next = NULL;
    h->inflight--;
}

/* Back to the idle list (or freed).  The reset drops every pointer into caller memory
 * (URL copy, POSTFIELDS) now rather than at the next start. */
static void xfer_recycle(rsl__http *h, rsl__http_xfer *x) {
    if (h->closing || h->nidle >= MAX_IDLE) {
        xfer_destroy(x);
        return;
    }
    xfer_clear(x);
    if (x->reuse) {
        /* Only the per-request options differ from the base state: the header list was
         * just freed, the timeouts and the URL are set again by every request. */
        curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, (struct curl_slist *)NULL);
    } else {
        curl_easy_reset(x->easy);
        x->based = 0;
    }
    x->reuse = 0;
    x->state = XF_IDLE;
    x->next = h->idle;
    h->idle = x;
    h->nidle++;
}

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
    rsl__http_xfer *x = ud;
    size_t len = size * n;
    /* Abort (a short count makes curl fail with CURLE_WRITE_ERROR) rather than buffer an
     * answer without bound: the cap holds even without a Content-Length. */
    if (len > x->h->max_body - x->body.len) {
        x->over_cap = 1;
        return 0;
    }
    if (rsl__buf_append(&x->body, p, len) < 0) {
        x->oom = 1;
        return 0;
    }
    return len;
}

static int is_space(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* One header line at a time (curl guarantees whole lines).  A status line starts a new
 * response (a 100 Continue, or a retry on a fresh connection): only the final one's
 * headers are kept. */
static size_t on_header(char *p, size_t size, size_t n, void *ud) {
    rsl__http_xfer *x = ud;
    size_t len = size * n;
    if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
        x->rh.len = 0;
        x->nrh = 0;
        return len;
    }
    const char *colon = memchr(p, ':', len);
    if (!colon || colon == p || memchr(p, 0, len)) {
        return len; /* the blank line that ends the headers, or a malformed line (a NUL
                       would also split the packed name/value pairs wrongly) */
    }
    const char *v = colon + 1, *end = p + len;
    while (v < end && is_space(*v)) {
        v++;
    }
    while (end > v && is_space(end[-1])) {
        end--;
    }
    size_t nlen = (size_t)(colon - p), vlen = (size_t)(end - v);
    if (rsl__buf_reserve(&x->rh, nlen + vlen + 2) < 0) {
        x->oom = 1;
        return 0;
    }
    char *o = x->rh.p + x->rh.len; /* "name\0value\0" */
    memcpy(o, p, nlen);
    o[nlen] = 0;
    memcpy(o + nlen + 1, v, vlen);
    o[nlen + 1 + vlen] = 0;
    x->rh.len += nlen + vlen + 2;
    x->rh.p[x->rh.len] = 0;
    x->nrh++;
    return len;
}

static rsl_outcome outcome_of(CURLcode code) {
    switch (code) {
    case CURLE_OPERATION_TIMEDOUT:
        return RSL_OUTCOME_TIMEOUT;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    /* TLS: the handshake, the peer's certificate, or our CA/CRL files. */
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CLIENTCERT:
        return RSL_OUTCOME_CONNECT;
    default:
        return RSL_OUTCOME_ERROR;
    }
}

/* The transfer is over: take it out of curl, build the result, run the callback, then
 * recycle whatever the callback did not steal. */
static void finish(rsl__http *h, rsl__http_xfer *x, CURLcode code) {
    long status = 0, nconn = 1;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
    if (x->plain && code == CURLE_OK && status != 401 && status != 407 &&
        curl_easy_getinfo(x->easy, CURLINFO_NUM_CONNECTS, &nconn) == CURLE_OK && nconn == 0) {
        x->reuse = 1;
    }
    curl_multi_remove_handle(h->multi, x->easy);
    running_unlink(h, x);
    x->state = XF_DONE;

    rsl__http_res res;
    memset(&res, 0, sizeof(res));
    res.status = (int)status;
    if (code == CURLE_OK) {
        res.outcome = status >= 500   ? RSL_OUTCOME_5XX
                      : status >= 400 ? RSL_OUTCOME_4XX
                                      : RSL_OUTCOME_OK;
        if (res.outcome != RSL_OUTCOME_OK) {
            snprintf(x->errbuf, sizeof(x->errbuf), "status %ld", status);
            res.error = x->errbuf;
        }
    } else if (x->over_cap || code == CURLE_FILESIZE_EXCEEDED) {
        res.outcome = RSL_OUTCOME_ERROR;
        res.error = h->capmsg;
    } else if (x->oom) {
        res.outcome = RSL_OUTCOME_ERROR;
        res.error = "out of memory (HTTP answer)";
    } else {
        res.outcome = outcome_of(code);
        res.error = x->errbuf[0] ? x->errbuf : curl_easy_strerror(code);
    }
    res.body = x->body;
    memset(&x->body, 0, sizeof(x->body));
    if (!res.body.p && rsl__buf_append(&res.body, "", 0) < 0 && res.outcome == RSL_OUTCOME_OK) {
        res.outcome = RSL_OUTCOME_ERROR; /* callers may rely on a non-NULL body */
        res.error = "out of memory (HTTP answer)";
    }
    res.headers = rsl__headers_unpack(x->rh.p, x->rh.len, x->nrh);
    res.nheaders = res.headers ? x->nrh : 0;
    if (x->nrh && !res.headers && res.outcome == RSL_OUTCOME_OK) {
        res.outcome = RSL_OUTCOME_ERROR;
        res.error = "out of memory (HTTP answer)";
    }

    x->cb(x->ud, &res);

    /* What the callback left in res.body (the chain swaps in the call's empty buffer)
     * takes the next answer of this transfer object (x->body was handed over, so it is
     * empty): no allocation per answer.  xfer_recycle empties or frees it. */
    x->body = res.body;
    free(res.headers); /* packed, unless the callback took it */
    xfer_recycle(h, x);
}

/* Runs the callbacks of every finished transfer.  Stops when a callback closed the
 * client: the multi handle is gone then (h itself lives until the close callbacks). */
static void drain(rsl__http *h) {
    CURLMsg *m;
    int left;
    while (!h->closing && (m = curl_multi_info_read(h->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE) {
            continue;
        }
        CURL *e = m->easy_handle;
        CURLcode code = m->data.result; /* m is invalid once the handle is removed */
        rsl__http_xfer *x = NULL;
        curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&x);
        finish(h, x, code);
    }
}

/* ---- curl's hooks into the loop ---------------------------------------------------------- */

/* After the poll phase: the callbacks of every transfer that socket events finished. */
static void on_check(uv_check_t *c) {
    rsl__http *h = c->data;
    uv_check_stop(c);
    h->in_check = 1;
    drain(h);
    h->in_check = 0;
    if (h->kick && !h->closing) {
        /* The callbacks started transfers: run them now, together, rather than through a
         * 0 ms timer at the start of the next turn (nothing runs in between but close
         * callbacks).  Transfers started by the callbacks of this second drain go the
         * usual way (the timer), so a server that always answers at once cannot keep
         * the loop here. */
        h->kick = 0;
        int running;
        h->in_timer = 1;
        curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        h->in_timer = 0;
        drain(h);
    }
    h->kick = 0;
}

static void on_timer(uv_timer_t *t) {
    rsl__http *h = t->data;
    int running;
    h->in_timer = 1;
    curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    h->in_timer = 0;
    drain(h);
}

static int on_curl_timer(CURLM *m, long ms, void *ud) {
    rsl__http *h = ud;
    if (h->closing) {
        return 0;
    }
    if (ms < 0) {
        uv_timer_stop(&h->timer);
        return 0;
    }
    /* Transfers added by the callbacks on_check runs: it runs them itself, next. */
    if (ms == 0 && h->in_check) {
        h->kick = 1;
        return 0;
    }
    /* libuv before 1.45 runs a timer re-armed at 0 from its own callback again in the
     * same pass, before any I/O is polled: were curl to keep asking for 0 from inside
     * its timeout action, the loop would spin.  1 ms there; 0 everywhere else (the
     * common case: a transfer just added), which runs on the next loop turn. */
    if (ms == 0 && h->in_timer) {
        ms = 1;
    }
    uv_timer_start(&h->timer, on_timer, (uint64_t)ms, 0);
    return 0;
}

static void poll_arm(sock_ctx *s, int events);

static int byfd_grow(rsl__http *h, int fd) {
    if (fd < h->nbyfd) {
        return 0;
    }
    int n = h->nbyfd ? h->nbyfd : 64;
    while (n <= fd) {
        n *= 2;
    }
    struct fd_slot *b = realloc(h->byfd, (size_t)n * sizeof(*b));
    if (!b) {
        return -1;
    }
    memset(b + h->nbyfd, 0, (size_t)(n - h->nbyfd) * sizeof(*b));
    h->byfd = b;
    h->nbyfd = n;
    return 0;
}

static void on_poll(uv_poll_t *p, int status, int events) {
    sock_ctx *s = (sock_ctx *)p;
    rsl__http *h = s->h;
    if (status < 0) {
        s->armed = 0; /* libuv stopped the poll */
    }
    if (s->events == 0) {
        /* Not curl's right now (an idle connection in its cache): stop watching, else a
         * closed connection would keep the loop busy.  curl finds it dead on reuse. */
        poll_arm(s, 0);
        return;
    }
    int flags = 0;
    if (status < 0) {
        flags = CURL_CSELECT_ERR;
    } else {
        flags |= (events & UV_READABLE) ? CURL_CSELECT_IN : 0;
        flags |= (events & UV_WRITABLE) ? CURL_CSELECT_OUT : 0;
    }
    int running;
    curl_multi_socket_action(h->multi, s->fd, flags, &running);
    /* On POLLERR libuv stops the poll; curl only calls the socket hook when what it
     * wants changes, so a socket it keeps would never be watched again. */
    if (status < 0 && !h->closing && !s->closing) {
        poll_arm(s, s->events);
    }
    /* Finished transfers are handed over once the loop has dispatched every socket event
     * of this turn (uv_check), not here: a callback starting the next request would
     * otherwise have it sent from the next socket's action, interleaving one send per
     * answer read, each waking the server alone.  Reading all the answers first, then
     * sending the new requests together (the 0 ms timer, first thing next turn, before the
     * loop polls) is what a curl_multi_perform loop does, and costs both sides less. */
    if (!h->closing && !uv_is_active((uv_handle_t *)&h->check)) {
        uv_check_start(&h->check, on_check);
    }
}

static void poll_arm(sock_ctx *s, int events) {
    if (events == s->armed || s->closing) {
        return;
    }
    s->armed = events;
    if (events) {
        uv_poll_start(&s->poll, events, on_poll);
    } else {
        uv_poll_stop(&s->poll);
    }
}

static int on_curl_socket(CURL *e, curl_socket_t fd, int what, void *ud, void *sockp) {
    rsl__http *h = ud;
    sock_ctx *s = sockp;
    if (what == CURL_POLL_REMOVE) {
        if (!s) {
            return 0;
        }
        curl_multi_assign(h->multi, fd, NULL);
        if (s->closing) {
            return 0;
        }
        if (s->readable && fd < h->nbyfd && h->byfd[fd].mine && h->byfd[fd].s == s) {
            s->events = 0; /* still watched, see the top of the file */
            uv_unref((uv_handle_t *)&s->poll); /* ...but it keeps no loop alive */
        } else {
            /* A socket curl may have closed already, or may close without telling: a
             * lingering poll could outlive the fd and be found again for another. */
            sock_close(h, s);
        }
        return 0;
    }
    if (s && s->closing) {
        s = NULL;
    }
    if (!s && fd >= 0 && fd < h->nbyfd && h->byfd[fd].s && !h->byfd[fd].s->closing) {
        s = h->byfd[fd].s;
        curl_multi_assign(h->multi, fd, s);
    }
    if (!s) {
        if (fd < 0 || byfd_grow(h, fd) < 0) {
            return -1;
        }
        s = calloc(1, sizeof(*s));
        if (!s) {
            return -1;
        }
        if (uv_poll_init_socket(h->loop, &s->poll, fd) != 0) {
            free(s);
            return -1;
        }
        s->h = h;
        s->fd = fd;
        s->next = h->socks;
        if (h->socks) {
            h->socks->prev = s;
        }
        h->socks = s;
        h->handles++;
        h->byfd[fd].s = s;
        curl_multi_assign(h->multi, fd, s);
    }
    s->events =
        ((what & CURL_POLL_IN) ? UV_READABLE : 0) | ((what & CURL_POLL_OUT) ? UV_WRITABLE : 0);
    s->readable |= (what & CURL_POLL_IN) != 0;
    uv_ref((uv_handle_t *)&s->poll);
    poll_arm(s, s->events);
    return 0;
}

/* curl closes a socket: its poll goes first (uv_close stops watching at once), so the
 * fd number can be reused by anyone (hiredis on the same loop) without a stale watcher. */
static int on_close_socket(void *ud, curl_socket_t fd) {
    rsl__http *h = ud;
    if (fd >= 0 && fd < h->nbyfd) {
        if (h->byfd[fd].s) {
            sock_close(h, h->byfd[fd].s);
        }
        h->byfd[fd].mine = 0;
    }
    return close(fd);
}

/* curl opens a connection's socket: as it would (socket(2) with the address's family,
 * type and protocol; curl sets non-blocking itself), noting that its close will come
 * through on_close_socket. */
static curl_socket_t on_open_socket(void *ud, curlsocktype purpose, struct curl_sockaddr *a) {
    rsl__http *h = ud;
    (void)purpose;
    int fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
    if (fd < 0) {
        return CURL_SOCKET_BAD;
    }
    if (byfd_grow(h, fd) == 0) {
        sock_ctx *old = h->byfd[fd].s;
        if (old && !old->closing) {
            /* Its socket was closed behind our back (see the top of the file) and
             * epoll forgot it; curl may still hold the fd as that socket, asking for the
             * same events and not calling the hook.  Watch the new socket instead. */
            uv_poll_stop(&old->poll);
            old->armed = 0;
            old->readable = 0;
            poll_arm(old, old->events);
        }
        h->byfd[fd].mine = 1;
    }
    return fd;
}

/* ---- API ----------------------------------------------------------------------------------- */

rsl__http *rsl__http_new(uv_loop_t *loop, size_t max_body) {
    pthread_once(&global_once, global_init);
    if (!loop || global_rc != CURLE_OK) {
        return NULL;
    }
    rsl__http *h = calloc(1, sizeof(*h));
    if (!h) {
        return NULL;
    }
    h->loop = loop;
    h->max_body = max_body ? max_body : (size_t)4 << 20;
    snprintf(h->capmsg, sizeof(h->capmsg), "answer body larger than the %zu-byte cap", h->max_body);
    h->multi = curl_multi_init();
    if (!h->multi || uv_timer_init(loop, &h->timer) != 0) {
        curl_multi_cleanup(h->multi);
        free(h);
        return NULL;
    }
    h->timer.data = h;
    h->handles = 1;
    /* uv_check_init cannot fail (it only links the handle into the loop). */
    uv_check_init(loop, &h->check);
    h->check.data = h;
    h->handles++;
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, MAX_CONNECTS);
    return h;
}

static int has_crlf(const char *s) {
    return strpbrk(s, "\r\n") != NULL;
}

static int header_named(const rsl__http_req *r, const char *name) {
    for (int i = 0; i < r->nheaders; i++) {
        if (strcasecmp(r->headers[i].name, name) == 0) {
            return 1;
        }
    }
    return 0;
}

/* Builds the header list: "name: value", or "name;" for an empty value (curl reads
 * "name:" as "remove this header").  Returns 0, RSL_EINVAL (CR/LF: header injection),
 * RSL_ENOMEM. */
static int build_headers(rsl__http_xfer *x, const rsl__http_req *r) {
    char stack[512];
    for (int i = 0; i < r->nheaders; i++) {
        const char *n = r->headers[i].name, *v = r->headers[i].value ? r->headers[i].value : "";
        if (!n || !*n || has_crlf(n) || has_crlf(v) || strchr(n, ':')) {
            return RSL_EINVAL;
        }
        size_t nl = strlen(n), vl = strlen(v), need = nl + vl + 3;
        char *line = need <= sizeof(stack) ? stack : malloc(need);
        if (!line) {
            return RSL_ENOMEM;
        }
        memcpy(line, n, nl);
        if (vl) {
            memcpy(line + nl, ": ", 2);
            memcpy(line + nl + 2, v, vl + 1);
        } else {
            memcpy(line + nl, ";", 2);
        }
        struct curl_slist *l = curl_slist_append(x->hdrs, line);
        if (line != stack) {
            free(line);
        }
        if (!l) {
            return RSL_ENOMEM;
        }
        x->hdrs = l;
    }
    if (r->body) {
        /* No "Expect: 100-continue" round trip for large bodies, and no invented
         * form-urlencoded Content-Type: the body is opaque bytes unless the caller says. */
        static const char *const off[] = {"Expect:", "Content-Type:"};
        static const char *const names[] = {"Expect", "Content-Type"};
        for (int i = 0; i < 2; i++) {
            if (!header_named(r, names[i])) {
                struct curl_slist *l = curl_slist_append(x->hdrs, off[i]);
                if (!l) {
                    return RSL_ENOMEM;
                }
                x->hdrs = l;
            }
        }
    }
    return 0;
}

static int setup(rsl__http *h, rsl__http_xfer *x, const rsl__http_req *r) {
    CURL *e = x->easy;
    int rc = build_headers(x, r);
    if (rc < 0) {
        return rc;
    }
    CURLcode c = CURLE_OK;
#define SET(opt, val)                                                                              \
    do {                                                                                           \
        if (c == CURLE_OK) {                                                                       \
            c = curl_easy_setopt(e, opt, val);                                                     \
        }                                                                                          \
    } while (0)
    if (!x->based) {
        /* The base options: the same for every request of this client. */
        SET(CURLOPT_PRIVATE, (char *)x);
        SET(CURLOPT_NOSIGNAL, 1L);
        SET(CURLOPT_PROXY, ""); /* never a proxy from the environment */
        SET(CURLOPT_PROTOCOLS_STR, "http,https");
        SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
        SET(CURLOPT_ERRORBUFFER, x->errbuf);
        SET(CURLOPT_WRITEFUNCTION, on_body);
        SET(CURLOPT_WRITEDATA, x);
        SET(CURLOPT_HEADERFUNCTION, on_header);
        SET(CURLOPT_HEADERDATA, x);
        SET(CURLOPT_CLOSESOCKETFUNCTION, on_close_socket);
        SET(CURLOPT_CLOSESOCKETDATA, h);
        SET(CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
        SET(CURLOPT_OPENSOCKETDATA, h);
        /* A Content-Length above the cap fails before any byte is read. */
        SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)h->max_body);
        x->based = c == CURLE_OK;
    }
    /* Per request: what a reused handle may still hold from its previous (plain GET)
     * request is set again here, the timeouts to 0 (their default) when unbounded. */
    SET(CURLOPT_URL, r->url);
    long ms = r->timeout_ns > 0 ? (long)((r->timeout_ns + 999999) / 1000000) : 0L;
    SET(CURLOPT_TIMEOUT_MS, ms);
    SET(CURLOPT_CONNECTTIMEOUT_MS, ms);
    x->plain = 0;
    if (x->hdrs) {
        SET(CURLOPT_HTTPHEADER, x->hdrs);
    }
    if (strcmp(r->method, "HEAD") == 0) {
        SET(CURLOPT_NOBODY, 1L);
    } else if (r->body) {
        /* Not copied: the caller keeps the body alive until the callback or cancel. */
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
        SET(CURLOPT_POSTFIELDS, r->body);
        if (strcmp(r->method, "POST") != 0) {
            SET(CURLOPT_CUSTOMREQUEST, r->method);
        }
    } else if (strcmp(r->method, "GET") != 0) {
        SET(CURLOPT_CUSTOMREQUEST, r->method);
    } else {
        x->plain = strchr(r->url, '@') == NULL;
    }
#undef SET
    x->errbuf[0] = 0;
    if (c == CURLE_OUT_OF_MEMORY) {
        return RSL_ENOMEM;
    }
    return c == CURLE_OK ? 0 : RSL_EINVAL;
}

int rsl__http_start(rsl__http *h, const rsl__http_req *r, rsl__http_cb cb, void *ud,
                    rsl__http_xfer **out) {
    if (out) {
        *out = NULL;
    }
    if (!h || !r || !cb || !r->url || !*r->url || !r->method || !*r->method ||
        has_crlf(r->method) || h->closing || (r->nheaders > 0 && !r->headers)) {
        return RSL_EINVAL;
    }
    rsl__http_xfer *x = h->idle;
    if (x) {
        h->idle = x->next;
        h->nidle--;
        x->next = NULL;
    } else {
        x = calloc(1, sizeof(*x));
        if (!x) {
            return RSL_ENOMEM;
        }
        x->easy = curl_easy_init();
        if (!x->easy) {
            free(x);
            return RSL_ENOMEM;
        }
        x->h = h;
    }
    int rc = setup(h, x, r);
    if (rc == 0 && curl_multi_add_handle(h->multi, x->easy) != CURLM_OK) {
        rc = RSL_ESYS;
    }
    if (rc < 0) {
        x->state = XF_DONE;
        xfer_recycle(h, x);
        return rc;
    }
    x->cb = cb;
    x->ud = ud;
    x->state = XF_RUNNING;
    x->prev = NULL;
    x->next = h->running;
    if (h->running) {
        h->running->prev = x;
    }
    h->running = x;
    h->inflight++;
    if (out) {
        *out = x;
    }
    return 0;
}

void rsl__http_cancel(rsl__http *h, rsl__http_xfer *x) {
    if (!h || !x || x->state != XF_RUNNING || h->closing) {
        return;
    }
    /* Also drops a DONE message curl may hold for it: its callback can never run. */
    curl_multi_remove_handle(h->multi, x->easy);
    running_unlink(h, x);
    x->state = XF_DONE;
    xfer_recycle(h, x);
}

void rsl__http_close(rsl__http *h) {
    if (!h || h->closing) {
        return;
    }
    h->closing = 1;
    while (h->running) {
        rsl__http_xfer *x = h->running;
        curl_multi_remove_handle(h->multi, x->easy);
        running_unlink(h, x);
        xfer_destroy(x);
    }
    while (h->idle) {
        rsl__http_xfer *x = h->idle;
        h->idle = x->next;
        xfer_destroy(x);
    }
    h->nidle = 0;
    /* Polls are closed while their fds are still open (curl closes the cached
     * connections in curl_multi_cleanup), and curl must not call back into a client
     * that is going away. */
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, NULL);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, NULL);
    while (h->socks) {
        sock_close(h, h->socks);
    }
    curl_multi_cleanup(h->multi);
    h->multi = NULL;
    uv_close((uv_handle_t *)&h->check, on_check_closed);
    uv_close((uv_handle_t *)&h->timer, on_timer_closed);
}

int rsl__http_inflight(const rsl__http *h) {
    return h ? h->inflight : 0;
}
