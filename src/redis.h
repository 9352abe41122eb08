/*
 * redis -- a worker's Redis connection on its libuv loop: one hiredis async connection,
 * pipelined (many commands in flight, answered in order), reconnecting on its own with
 * backoff.  Loop thread only: every function here and every callback runs on the thread
 * that runs the loop given to rsl__redis_new.
 *
 * Layer: the loop and its I/O, beside worker.c: it knows nothing of calls or steps.
 *
 * Contract, as libuv's: a command that returns an error never runs its callback; one that
 * returns 0 runs it exactly once, later (never inside rsl__redis_command), unless the
 * caller cancels it or closes the connection first.  Per-command timeouts are the
 * caller's: a Redis that stops answering (SIGSTOP, a long script) keeps the TCP connection
 * up and commands simply wait; writes never block the loop.
 *
 * SIGPIPE: hiredis 0.14 writes with write(2) (no MSG_NOSIGNAL; Linux has no SO_NOSIGPIPE),
 * so a write to a connection Redis reset raises SIGPIPE.  The library changes no process
 * state: the host ignores SIGPIPE (as libuv asks of its hosts too); the CLI and the tests
 * do.
 */
#ifndef RSL_REDIS_H
#define RSL_REDIS_H

#include <stdatomic.h>
#include <stddef.h>
#include <uv.h>

#include "resilua.h"

typedef struct rsl__redis rsl__redis;
typedef struct rsl__redis_cmd rsl__redis_cmd;

typedef struct rsl__redis_reply {
    /* ok; miss (a nil reply only: an empty array is ok "[]"); connect (the connection was
     * lost before the reply); error (an error reply: its message in `error`) */
    rsl_outcome outcome;
    /* ok: the value.  A bulk or status string as is (binary-safe, NUL-terminated for
     * convenience); an integer in decimal; an array as a JSON array of its elements
     * (strings, integers as numbers, nil as null, nested arrays; bytes that are not UTF-8
     * are escaped as \u00XX, i.e. read as Latin-1). */
    const char *str;
    size_t len;
    const char *error; /* when outcome != ok: a message, never NULL */
} rsl__redis_reply;

/* Runs exactly once per command started with a callback, unless canceled.  The reply is
 * borrowed for the duration of the callback.  It may send commands, cancel others and
 * close the connection. */
typedef void (*rsl__redis_cb)(void *ud, const rsl__redis_reply *r);
/* Receives state changes (level 0 error, 1 warn, 2 info), one line, no host:port prefix.
 * It must not call rsl__redis_close. */
typedef void (*rsl__redis_log)(void *ud, int level, const char *msg);

/* Most commands in flight on one connection; beyond it rsl__redis_command answers
 * RSL_ECLOSED, so a stopped Redis cannot grow memory without bound (a command costs about
 * 100 bytes plus its arguments until answered). */
#define RSL_REDIS_MAX_INFLIGHT 65536

/* Starts connecting in the background; reconnects with backoff (50 ms doubling to 2 s,
 * jittered) whenever the connection drops or a connect fails (or takes over 1 s); logs
 * each state change once, not every retry.  host: an IP address, or a name resolved off
 * the loop (uv_getaddrinfo) before each connect, trying its addresses in turn.  NULL on
 * no memory. */
rsl__redis *rsl__redis_new(uv_loop_t *loop, const char *host, int port, rsl__redis_log log,
                           void *log_ud);
/* AUTH [user] password on every connect from the next one on, before any command (copied;
 * user NULL or "": the default user; password NULL: no AUTH).  A refused AUTH is logged
 * once (never the password) and drops the connection, which then reconnects with backoff.
 * 0 or RSL_ENOMEM. */
int rsl__redis_auth(rsl__redis *r, const char *user, const char *password);
/* 1 when connected (commands can be sent). */
int rsl__redis_connected(const rsl__redis *r);
/* Sends a command (binary-safe argv, argc >= 1).  cb NULL: fire and forget (writes such
 * as SET k v PX ttl), the reply is dropped and *out set to NULL.  Returns 0 (cb runs
 * later, never inside this call); RSL_ECLOSED when not connected right now or
 * RSL_REDIS_MAX_INFLIGHT commands wait already (cb never runs; the caller answers
 * "connect"); RSL_EINVAL for argc < 1 and for commands that would switch the connection
 * out of request/reply mode (SUBSCRIBE, PSUBSCRIBE, UNSUBSCRIBE, PUNSUBSCRIBE, MONITOR);
 * RSL_ENOMEM.  *out (out may be NULL) lets the caller cancel; it is valid until cb runs
 * or the connection closes. */
int rsl__redis_command(rsl__redis *r, int argc, const char **argv, const size_t *argvlen,
                       rsl__redis_cb cb, void *ud, rsl__redis_cmd **out);
/*
 * A Lua script sent by its SHA1 (EVALSHA) once Redis has given it (SCRIPT LOAD, sent once
 * per process while unknown), by its text (EVAL) until then: a script of a few kB then
 * travels once, not with every call.  The SHA1 of a text is the same on every server, so
 * one is kept per process; a server that lacks the script (restarted, SCRIPT FLUSH)
 * answers NOSCRIPT, and rsl__redis_noscript turns the next send into an EVAL, which
 * caches it there again.  A static object with `text` set, the rest zero; any loop.
 */
typedef struct rsl__redis_script {
    const char *text;
    _Atomic int state; /* 0 unknown, 1 loading, 2 EVALSHA, 3 EVAL once (after NOSCRIPT) */
    char sha[41];      /* written once, before state first becomes 2 */
} rsl__redis_script;

/* EVAL(SHA) of s on r: argv (argc of them) is numkeys, the keys and the arguments, as
 * after the script in EVAL.  As rsl__redis_command (at most 32 arguments). */
int rsl__redis_eval(rsl__redis *r, rsl__redis_script *s, int argc, const char **argv,
                    rsl__redis_cb cb, void *ud);
/* 1 when rep is Redis' NOSCRIPT (s is sent as EVAL next time; the caller retries soon,
 * and counts no failure), else 0. */
int rsl__redis_noscript(rsl__redis_script *s, const rsl__redis_reply *rep);

/* The caller stops waiting (its timeout, its call canceled): cb never runs; the reply is
 * dropped when it arrives.  c NULL is a no-op. */
void rsl__redis_cancel(rsl__redis *r, rsl__redis_cmd *c);
/* Disconnects, drops every pending command without running callbacks, closes its handles;
 * the memory is freed once the last handle closed (and a name lookup in flight ended), so
 * the loop must keep running (uv_run until it ends).  NULL is a no-op.  May be called from a
 * command callback. */
void rsl__redis_close(rsl__redis *r);

#endif
