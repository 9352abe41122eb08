/*
 * serve_int.h -- what the sidecar's files share: the server (serve.c), a connection
 * (serve_conn.c) and the answers (serve_answer.c).  Not installed.
 *
 * Layer: the sidecar, a client of resilua.h only (and of framing.h, its own).  Everything
 * here is used on the loop thread of the worker it belongs to, but for the counters, which
 * /metrics reads from any worker.
 */
#ifndef RSL_SERVE_INT_H
#define RSL_SERVE_INT_H

#include "framing.h"
#include "resilua.h"

#include <http_parser.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#define NS_PER_MS 1000000LL

/* Unparsed bytes a connection may hold while its answer is pending: a few pipelined
 * requests, no more (64 KiB: libuv's own suggested read size). */
#define READ_AHEAD (64 * 1024)
/* The input buffer starts at this size and grows (doubling) to READ_AHEAD + this. */
#define READ_CHUNK 4096
/* listen(2) backlog: Linux clamps it to net.core.somaxconn (4096 on recent kernels). */
#define BACKLOG 511

/* X(enum, label, status): the limits a request can hit. */
#define REJECTS(X)                                                                                 \
    X(HEADER_TOO_LARGE, "header_too_large", 431)                                                   \
    X(TOO_MANY_HEADERS, "too_many_headers", 431)                                                   \
    X(BODY_TOO_LARGE, "body_too_large", 413)                                                       \
    X(REQUEST_TIMEOUT, "request_timeout", 408)                                                     \
    X(MALFORMED, "malformed", 400)                                                                 \
    X(FRAMING, "framing", 400)                                                                     \
    X(BAD_TARGET, "bad_target", 400)

enum {
#define X_(e, s, st) REJ_##e,
    REJECTS(X_)
#undef X_
        REJ__COUNT
};
/* By REJ_*: the label of resilua_http_rejected_total, and the answer's status. */
extern const char *const rsl__srv_reject_names[];
extern const int rsl__srv_reject_status[];

enum { T_NONE, T_IDLE, T_READING, T_WRITING, T_LINGER, T_WRITTEN };

/* After refusing a request the server closes the connection, but a client still sending
 * its body would then get a reset that can destroy the answer before it reads it: the
 * server shuts its side down and reads on, discarding, until the client closes or this
 * long has passed (nginx's lingering_close does the same, 5 s; a refused client has had
 * its answer by then). */
#define LINGER_NS (2000 * NS_PER_MS)

typedef struct srv_worker srv_worker;
typedef struct rsl__alog rsl__alog;

/* Request headers the sidecar reads (trace context, the caller's deadline): their values,
 * kept while parsing.  W3C caps tracestate at 512 bytes. */
enum { HK_NONE, HK_TRACEPARENT, HK_TRACESTATE, HK_DEADLINE_MS, HK_GRPC_TIMEOUT, HK__COUNT };
#define HK_TRACEPARENT_MAX 64
#define HK_TRACESTATE_MAX 512
#define HK_NUMBER_MAX 24

typedef struct conn {
    srv_worker *w;
    struct conn *prev, *next;
    uv_tcp_t tcp;
    uv_timer_t timer;
    int refs;        /* tcp handle, timer handle, an answer (call or reload) pending */
    int timer_state; /* T_* */
    http_parser p;
    rsl__framer fr; /* the strict framing rules, checked beside the parser */
    /* input */
    char *in;
    size_t in_len, in_off, in_cap;
    int reading;
    /* the request being parsed */
    int in_message;
    int in_field; /* the parser is inside a header name */
    size_t header_bytes;
    int nheaders;
    char hname[24]; /* the current header's name, lowercased, truncated */
    size_t hname_len;
    int hdr_expect; /* the current header is Expect */
    int hdr_keep;   /* the current header is one we keep: HK_* */
    char traceparent[HK_TRACEPARENT_MAX + 1];
    char tracestate[HK_TRACESTATE_MAX + 1];
    char deadline_ms[HK_NUMBER_MAX + 1];
    char grpc_timeout[HK_NUMBER_MAX + 1];
    size_t hk_len[HK__COUNT]; /* lengths; past the cap: the header is ignored */
    int hk_seen[HK__COUNT];   /* how many such headers */
    uint64_t t0;              /* uv_hrtime at the request's first byte (access log) */
    const rsl_result *log_result; /* the call answered now, for the access log line */
    int expect_continue;
    char *url;
    size_t url_len, url_cap;
    char *body;
    size_t body_len, body_cap;
    int reject; /* REJ_* + 1 when the request broke a limit */
    /* the answer */
    int busy; /* a request is being answered (until its answer is written) */
    int call_pending;
    uint64_t call_id;
    int keep_alive;
    int head;
    int closing;
    int close_after;
    int linger_wanted; /* the answer refuses the request: linger after it */
    int lingering;
    uv_shutdown_t shut;
    uv_write_t wr;
    char *out;
} conn;

struct srv_worker {
    rsl_serve *s;
    int index;
    uv_loop_t *loop;
    uv_tcp_t listener;
    int listener_open;
    conn *conns;
    int handles; /* our handles open on this loop */
    int live;    /* conns not yet freed */
    int draining;
    int done; /* reported done to rsl_serve_stop */
    int rc;   /* listen result */
    char err[256];
    /* counters: written by this worker only, read by /metrics on any worker */
    _Atomic uint64_t by_status[600];
    _Atomic uint64_t rejected[REJ__COUNT];
    _Atomic uint64_t accepted, idle_closed, client_aborts;
    _Atomic int64_t open;
};

/* An answer being built (out_* in serve_conn.c). */
typedef struct outbuf {
    char *p;
    size_t len, cap;
    int oom;
} outbuf;

struct rsl_serve {
    rsl_runtime *rt;
    rsl_serve_options o;
    struct sockaddr_storage addr;
    int port;
    int nworkers;
    srv_worker *w;
    _Atomic int draining;
    pthread_mutex_t m;
    pthread_cond_t cv;
    int step_done; /* workers that finished the step rsl_serve_start/stop waits on */
    /* What a connection does with a whole request (serve_answer.c's rsl__srv_dispatch,
     * set by rsl_serve_start): the connection below does not name what answers it. */
    void (*dispatch)(conn *c);
    rsl__alog *alog; /* the access log, or NULL */
};

static inline void relaxed_inc(_Atomic uint64_t *v) {
    atomic_fetch_add_explicit(v, 1, memory_order_relaxed);
}

static inline uint64_t relaxed(_Atomic uint64_t *v) {
    return atomic_load_explicit(v, memory_order_relaxed);
}

/* ---- serve_conn.c: a connection, and writing its answers ------------------------------ */
int rsl__srv_grow(char **p, size_t *cap, size_t need); /* 0, or -1 out of memory */
/* Reports w done to rsl_serve_stop once it drains and nothing of ours is left on it. */
void rsl__srv_worker_check_done(srv_worker *w);
void rsl__srv_conn_unref(conn *c);
void rsl__srv_conn_close(conn *c);
void rsl__srv_timer_set(conn *c, int state, int64_t ns); /* T_*; T_NONE stops it */
void rsl__srv_on_timer(uv_timer_t *t);
void rsl__srv_on_connection(uv_stream_t *ls, int status);
/* A header name or value from a policy goes out only without CR, LF or NUL. */
int rsl__srv_header_safe(const char *s);
void rsl__srv_out_add(outbuf *b, const char *s, size_t n);
void rsl__srv_out_str(outbuf *b, const char *s);
void rsl__srv_out_header(outbuf *b, const char *name, const char *value);
void rsl__srv_out_fmt(outbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The status line and the server's own headers, with room for `reserve` more bytes. */
void rsl__srv_answer_begin(outbuf *b, int status, size_t reserve);
/* Ends the headers, adds the body and writes b; the connection goes on (or closes) once
 * it is written. */
void rsl__srv_answer_send(conn *c, outbuf *b, int status, const char *body, size_t len,
                          int close_after);
void rsl__srv_respond(conn *c, int status, const char *headers, const char *body, size_t len,
                      int close_after);
void rsl__srv_respond_error(conn *c, int status, const char *msg, int close_after);
/* Refuses the request (a REJ_* limit): counted, answered, and the connection closes. */
void rsl__srv_respond_reject(conn *c, int rej, const char *msg);

/* ---- serve_log.c: the access log ----------------------------------------------------- */
int rsl__alog_open(rsl__alog **out, const char *path, char *err, size_t errlen);
void rsl__alog_close(rsl__alog *l); /* writes what is left; NULL is a no-op */
void rsl__alog_reopen(rsl__alog *l);
void rsl__alog_counts(rsl__alog *l, uint64_t *lines, uint64_t *dropped);
/* The line for the answer being sent (c->log_result: the call's result, or NULL). */
void rsl__srv_log_answer(conn *c, int status, size_t bytes);

/* ---- serve_answer.c: what to answer ---------------------------------------------------- */
/* A whole request: the server's endpoints, then r.expose's routes (rsl_serve.dispatch). */
void rsl__srv_dispatch(conn *c);

#endif
