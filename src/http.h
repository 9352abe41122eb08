/*
 * http -- the HTTP client of a worker: one libcurl multi handle driven by the worker's
 * libuv loop (the multi_socket API: a uv_poll per socket curl asks about, one uv_timer
 * for curl's timeout).  Connections stay in the multi handle's cache and easy handles are
 * recycled, so a steady stream of calls to one upstream reuses its keep-alive
 * connections.
 *
 * Layer: the loop and its I/O, beside worker.c: it knows nothing of calls or steps.
 *
 * Rules:
 *  - One rsl__http per loop; every function runs on that loop's thread ("loop thread").
 *  - rsl__http_start either fails (the callback never runs) or the callback runs exactly
 *    once, later, from the loop -- never from inside rsl__http_start -- unless the
 *    transfer is canceled first (then it never runs).
 *  - Callbacks may start and cancel transfers, and may close the client.
 *  - The process must have called curl_global_init or let rsl__http_new do it (once,
 *    thread-safe through pthread_once); curl_global_cleanup is never called here.
 */
#ifndef RSL_HTTP_H
#define RSL_HTTP_H

#include "resilua.h"
#include "tmpl.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct rsl__http rsl__http;
typedef struct rsl__http_xfer rsl__http_xfer;

typedef struct rsl__http_req {
    const char *method;         /* "GET", "POST", "PUT", "HEAD", ... */
    const char *url;            /* NUL-terminated, expanded and encoded */
    const rsl__header *headers; /* sent as "name: value" */
    int nheaders;
    /* Sent when != NULL (also for GET); not copied: must stay valid until the callback
     * runs or the transfer is canceled. */
    const char *body;
    size_t body_len;
    int64_t timeout_ns; /* whole transfer, connect included; 0: none */
} rsl__http_req;

typedef struct rsl__http_res {
    /* ok / 4xx / 5xx by status; timeout; connect (refused, reset, DNS, TLS, nothing
     * received); error (body over the cap, a malformed URL, anything else). */
    rsl_outcome outcome;
    int status;           /* HTTP status; 0 when none was received */
    rsl__buf body;        /* NUL-terminated (p never NULL); the callback may steal it,
                             and may leave a buffer of its own here (rsl__buf memory), which
                             the client keeps for a later answer */
    rsl__header *headers; /* of the final response: names as received, values trimmed;
                             one packed allocation (tmpl.h: free() releases it); the
                             callback may steal it (set headers = NULL, nheaders = 0) */
    int nheaders;
    /* When outcome != ok: curl's message, "status 503", or "answer body larger than the
     * N-byte cap"; borrowed for the duration of the callback. */
    const char *error;
} rsl__http_res;

/* Called exactly once per started transfer (unless canceled), from the loop.  res and
 * the transfer are gone after it returns. */
typedef void (*rsl__http_cb)(void *ud, rsl__http_res *res);

/* A client on `loop`; answers larger than max_body bytes fail (0: 4 MiB).  NULL on
 * failure.  Loop thread. */
rsl__http *rsl__http_new(uv_loop_t *loop, size_t max_body);

/*
 * Starts a transfer; *out (may be NULL) receives a handle for rsl__http_cancel, valid
 * until the callback runs.  Returns 0, or RSL_EINVAL (NULL argument, empty method or URL,
 * client closing), RSL_ENOMEM, RSL_ESYS (curl refused the handle); then cb never runs.
 * A URL curl cannot parse or whose scheme it does not support is not checked here: the
 * callback runs (asynchronously) with the outcome `error` and curl's message.  Loop
 * thread.
 */
int rsl__http_start(rsl__http *h, const rsl__http_req *r, rsl__http_cb cb, void *ud,
                    rsl__http_xfer **out);

/* Aborts an in-flight transfer; its callback never runs.  A no-op for NULL and for the
 * transfer whose callback is running.  Safe inside any callback.  Loop thread. */
void rsl__http_cancel(rsl__http *h, rsl__http_xfer *x);

/* Aborts everything in flight (no callbacks run) and closes the client's handles.  Its
 * memory is freed from the last close callback, so the loop must run afterwards.  NULL
 * is a no-op.  Safe inside a transfer's callback.  Loop thread. */
void rsl__http_close(rsl__http *h);

/* Transfers in flight (started, callback not yet run, not canceled).  Loop thread. */
int rsl__http_inflight(const rsl__http *h);

#endif
