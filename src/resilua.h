/*
 * resilua.h -- the one public header of libresilua.
 *
 * Layer: the public header: every layer may include it for the public types.
 *
 * A runtime owns a policy directory (LuaJIT files written with the `resilua` DSL), the
 * guards they declare (breakers, limiters, bulkheads: shared, lock-free, surviving reload)
 * and one or more worker threads, each with its own libuv loop and Lua state.  A call runs
 * one policy for one request: the policy's `route(req, sig)` picks a path of steps, the
 * steps run one at a time until one answers with an outcome outside `fallback_on`.
 *
 * Conventions, as in libuv:
 *  - Functions return 0 or a negative RSL_E* code; rsl_strerror() names it.  Functions that
 *    fill an error buffer write a NUL-terminated message there (file:line for policies).
 *  - A function that takes a completion callback and returns an error never runs the
 *    callback; when it returns 0 the callback runs exactly once, also when the runtime
 *    closes first (with outcome "canceled").
 *  - Arguments are borrowed for the duration of the call and copied when kept; a result
 *    handed to a callback is borrowed for the duration of the callback.
 *  - Each function says which thread may call it.
 *  - Nothing here calls exit() or abort() on bad input.
 */
#ifndef RESILUA_H
#define RESILUA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RSL_VERSION_MAJOR 0
#define RSL_VERSION_MINOR 1
#define RSL_VERSION_PATCH 0

/*
 * Outcomes: one vocabulary for results, `count`, `on`, `fallback_on` and metrics.
 * X(ENUM, "name", status used when the outcome has no HTTP status of its own)
 */
#define RSL_OUTCOMES(X)                                                                    \
    X(OK, "ok", 200)                                                                       \
    X(TIMEOUT, "timeout", 504)                                                             \
    X(CONNECT, "connect", 502)                                                             \
    X(5XX, "5xx", 500)                                                                     \
    X(4XX, "4xx", 400)                                                                     \
    X(REJECTED, "rejected", 503)                                                           \
    X(MISS, "miss", 404)                                                                   \
    X(ERROR, "error", 500)                                                                 \
    X(CANCELED, "canceled", 499)

typedef enum rsl_outcome {
#define RSL_X_(e, s, st) RSL_OUTCOME_##e,
    RSL_OUTCOMES(RSL_X_)
#undef RSL_X_
    RSL_OUTCOME__COUNT
} rsl_outcome;

/* "ok", "timeout", ...; "unknown" outside the range. Any thread. */
const char *rsl_outcome_name(rsl_outcome o);
/* The outcome named `name` (length `len`), or -1. Any thread. */
int rsl_outcome_parse(const char *name, size_t len);

/* Error codes: X(ENUM, value, message). */
#define RSL_ERRORS(X)                                                                      \
    X(EINVAL, -1, "invalid argument")                                                      \
    X(ENOMEM, -2, "out of memory")                                                         \
    X(ENOENT, -3, "no such policy")                                                        \
    X(ELOAD, -4, "policy directory failed to load")                                        \
    X(ETIMEDOUT, -5, "timed out")                                                          \
    X(ECLOSED, -6, "runtime is closed or closing")                                         \
    X(EEXIST, -7, "already exists")                                                        \
    X(EALREADY, -8, "already completed")                                                   \
    X(ESYS, -9, "system error")

enum {
#define RSL_X_(e, v, m) RSL_##e = (v),
    RSL_ERRORS(RSL_X_)
#undef RSL_X_
};

/* A static message for an RSL_E* code. Any thread. */
const char *rsl_strerror(int err);

/* Frees memory the library handed out as `char *` (JSON, metrics). NULL is a no-op. */
void rsl_free(void *p);

/* ---------------------------------------------------------------------------------------
 * Runtime
 */
typedef struct rsl_runtime rsl_runtime;

typedef enum rsl_log_level { RSL_LOG_ERROR, RSL_LOG_WARN, RSL_LOG_INFO, RSL_LOG_DEBUG } rsl_log_level;

/* Receives log lines (no trailing newline). Called from any runtime thread, possibly at
 * once from several: it must be thread-safe. */
typedef void (*rsl_log_fn)(void *ud, rsl_log_level level, const char *msg);

/* A clock in nanoseconds, monotonic. Tests inject one to drive breakers and limiters. */
typedef int64_t (*rsl_clock_fn)(void *ud);

struct rsl_span; /* see "Traces" below */
struct rsl_io_attempt; /* see "I/O models" below */
struct rsl_io_answer;

typedef struct rsl_options {
    size_t size;              /* set by rsl_options_init: lets this struct grow */
    const char *policy_dir;   /* directory of *.lua policy files; required */
    int workers;              /* worker threads, 1..256; default 1 */
    size_t lua_mem_limit;     /* bytes per Lua state; default 64 MiB */
    int64_t route_limit_ns;   /* run-time limit of route(); default 50 ms */
    int64_t lua_step_limit_ns;/* run-time limit of a Lua step; default 200 ms */
    rsl_log_fn log;           /* default: lines on stderr at WARN and above */
    void *log_ud;
    rsl_clock_fn clock;       /* default: CLOCK_MONOTONIC */
    void *clock_ud;
    uint64_t seed;            /* seeds jitter and fault injection; 0: from the clock */
    /* Attach to the host's libuv loop (a uv_loop_t *) instead of starting worker threads:
     * calls then run on that loop's thread, which must be the thread calling rsl_open and
     * rsl_close; `workers` is ignored (one).  The runtime keeps the loop alive (an active
     * async handle) until rsl_close; after rsl_close returns, let the loop run: the last
     * close callback frees the runtime.  rsl_call and rsl_call_sync work from other
     * threads as usual (rsl_call_sync not on the loop's thread: it would wait for itself). */
    struct uv_loop_s *loop;
    /* Runs at the end of every rsl_reload, on the thread that called it, with no runtime
     * lock held (it may call rsl_state_json, not rsl_reload): ok is 1 when the new
     * generation serves, and report_json is the reload's record as rsl_state_json shows it
     * under "last_reload" (borrowed for the callback).  NULL: none. */
    void (*on_reload)(void *ud, int ok, const char *report_json);
    void *on_reload_ud;
    /* Runs on every breaker state change, on the thread whose call or admin action made
     * it (a worker, usually), so keep it short and thread-safe: breaker name, states
     * "closed" "open" "half_open" "forced_open" "disabled", and a reason such as
     * "failure_rate 60.0% >= 50% over 20 calls" (strings borrowed).  NULL: none. */
    void (*on_transition)(void *ud, const char *breaker, const char *from, const char *to,
                          const char *reason);
    void *on_transition_ud;
    /* Redis for r.redis and r.redis_cache: "HOST:PORT" (copied).  Each worker keeps one
     * pipelined connection, opened in the background and re-opened with backoff when it
     * drops.  NULL: no Redis; those steps answer "connect" ("no Redis configured") so the
     * chain falls back. */
    const char *redis;
    /* Largest HTTP answer body r.http accepts; a longer one is the outcome "error" naming
     * the cap.  Default 4 MiB. */
    size_t http_max_body;
    /*
     * Traces (see "Traces" below).  Tracing is on when otlp_endpoint names a collector or
     * on_span is set; off, it costs a call nothing.
     *  - otlp_endpoint: OTLP/HTTP traces URL, e.g. "http://127.0.0.1:4318/v1/traces"
     *    (copied).  NULL: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT from the environment, else
     *    OTEL_EXPORTER_OTLP_ENDPOINT + "/v1/traces", else none.  "": none, whatever the
     *    environment says.
     *  - service_name: the resource's service.name (copied).  NULL: OTEL_SERVICE_NAME,
     *    else "resilua".
     *  - trace_sample: the share of calls without a sampled parent that are sampled,
     *    0..1, decided on the trace id (TraceIdRatioBased); a call whose traceparent says
     *    sampled or not sampled follows it (parent-based).  Negative (the default):
     *    OTEL_TRACES_SAMPLER_ARG, else 1.
     *  - trace_errors: 1 also exports every degraded or failed call, sampled or not (the
     *    call is recorded either way and the choice made when it ends; the traceparent it
     *    sent on said "not sampled").
     *  - trace_skip_unsampled: 1 sends no traceparent from a call that began its own
     *    trace and is not sampled (the services downstream then decide for themselves;
     *    saves the header's cost, ~1 us a call with libcurl 7.88).  0 (the default): every
     *    call sends its context on, sampled or not, as W3C Trace Context asks.  A call
     *    that came with a traceparent always sends it on.
     *  - on_span: runs for every exported span on the worker thread that ran the call, at
     *    its end (the step attempts' spans, then the call's): the same data OTLP gets, for
     *    a host with a tracer of its own.  The span is borrowed for the callback.
     */
    const char *otlp_endpoint;
    const char *service_name;
    double trace_sample;
    int trace_errors;
    int trace_skip_unsampled;
    void (*on_span)(void *ud, const struct rsl_span *span);
    void *on_span_ud;
    /* An I/O model instead of the network (see "I/O models" below): every attempt of an
     * r.http, r.redis or r.redis_cache step is answered by io_model, on the worker, and
     * nothing is sent.  For tests of policies (`resilua test`): the real guards, routes and
     * chains run, the upstreams are what the test says.  NULL: the network. */
    void (*io_model)(void *ud, const struct rsl_io_attempt *a, struct rsl_io_answer *ans);
    void *io_model_ud;
    /* Virtual time, with `loop` only (one thread): the runtime's clock is its own (`clock`
     * is ignored), starts at 1000 s and moves only with rsl_vt_advance.  The call timers
     * run on it: retries' backoff, fault delays, and an io_model answer's latency (the
     * model then leaves the clock alone: the answer arrives when rsl_vt_advance reaches
     * it).  For simulations: hours of traffic through the real guards and policies as
     * fast as the CPU goes, the same every run.  0: real time. */
    int virtual_time;
    /* Load shedding ("Priorities and reserves" in the README): while the runtime's
     * pressure (its loops' lag and queue wait, 0..1) is above shed_above, calls are shed
     * from the lowest priority up, a 429; priority 0 at most max_shed of the time (0..1).
     * shed_above 0: no shedding (the default); sig.pressure() reads the pressure anyway. */
    double shed_above;
    double max_shed;
    /* The prefix of every key resilua keeps in Redis for shared guards (a global limiter's
     * bucket: PREFIX{NAME}:tb); NULL: "resilua:". */
    const char *redis_prefix;
    /* AUTH on every Redis connection (copied).  NULL: the environment's
     * RESILUA_REDIS_PASSWORD and RESILUA_REDIS_USER, else none; "": none.  `resilua serve`
     * takes them from the environment only, never from its command line. */
    const char *redis_password;
    const char *redis_user;
} rsl_options;

/* Fills `o` with defaults. Any thread. */
void rsl_options_init(rsl_options *o);

/*
 * I/O models (rsl_options.io_model).  The model gets one attempt and fills the answer;
 * the runtime takes it at once, as if it had come back after latency_ns:
 *   - an outcome of RSL_OUTCOME_OK with a status (ans->status, default 200) is that
 *     status's outcome (4xx, 5xx); any other outcome (timeout, connect, error) is taken
 *     as is, with ans->error as its message;
 *   - latency_ns at or over a->limit_ns (the attempt's time limit: the step's timeout or
 *     what is left of the call's deadline) is a timeout instead.
 * The runtime reads the clock again once the model returns: a model on an injected clock
 * moves it on by min(latency_ns, limit_ns) itself, so that breakers record that latency
 * and deadlines see the time go by.  Strings are borrowed for the call; the body is
 * copied.  The model runs on worker threads: with more than one worker, it must be
 * thread-safe.
 */
/* Virtual time (rsl_options.virtual_time): the clock now; the time of the next timer
 * (INT64_MAX when none); rsl_vt_advance moves the clock to `to`, running every timer due
 * on the way in time order, each with the clock at its own time, and returns how many ran
 * (RSL_EINVAL: no virtual time, or `to` before now).  The loop's thread. */
int64_t rsl_vt_now(rsl_runtime *rt);
int64_t rsl_vt_next(rsl_runtime *rt);
int rsl_vt_advance(rsl_runtime *rt, int64_t to);

typedef struct rsl_io_attempt {
    const char *policy;
    const char *step;
    const char *kind;      /* "http", "redis", "redis_cache" */
    int attempt;           /* 1, 2, ... */
    const struct rsl_req *req; /* the call's attributes: rsl_req_get */
    int64_t now;           /* the clock at the attempt's start */
    int64_t limit_ns;      /* its time limit */
} rsl_io_attempt;

typedef struct rsl_io_answer {
    rsl_outcome outcome;   /* preset to RSL_OUTCOME_OK */
    int status;            /* preset to 200 */
    const char *body;      /* NULL: none */
    size_t body_len;
    const char *error;     /* the message of a failed outcome; NULL: its name */
    int64_t latency_ns;    /* preset to 0 */
} rsl_io_answer;

/*
 * Opens a runtime: loads and validates the policy directory, creates the guards, starts the
 * workers.  On error returns RSL_ELOAD (or another code) and writes `file:line: message`
 * lines (newline-separated) into `err`.  Any thread.
 */
int rsl_open(rsl_runtime **out, const rsl_options *o, char *err, size_t errlen);

/*
 * Closes the runtime: stops taking calls (rsl_call returns RSL_ECLOSED), completes every
 * call still queued or running with outcome "canceled" unless it answers first, stops the
 * workers and frees everything.  Returns when every worker has stopped.  Any thread but a
 * worker thread (never from inside a callback).  NULL is a no-op.  Attached to a host's
 * loop: on that loop's thread, outside resilua's callbacks; queued calls complete
 * "canceled" before it returns, and the memory is freed from a close callback when the
 * host's loop next runs (as with uv_close), once the last call has been freed.
 */
void rsl_close(rsl_runtime *rt);

/*
 * Reloads the policy directory: loads and validates every file into a new generation
 * (one Lua state per worker, as rsl_open does), then makes it current on every worker at
 * once.  Calls that started before keep running on the generation they started on; an old
 * generation is freed when its last call ends.  Calls are not stalled by the load: they
 * keep starting on the old generation until the swap.
 *
 * Guards keep their state by name: same name and kind -> the same object with the new
 * thresholds in place (a new window size or bucket count restarts that breaker's window);
 * a kind change replaces the guard; a guard no file declares any more is dropped.
 *
 * A directory that fails to load changes nothing: the old generation keeps serving, and
 * RSL_ELOAD returns with `file:line: message` lines in err (err may be NULL).  Either way
 * the outcome is kept for inspection: rsl_state_json's "generation" (bumped by each
 * successful reload) and "last_reload" ({"ok", "error" (null on success), "at" (unix
 * seconds), "kept", "changed", "added", "removed", "reset", "warnings": lists of guard
 * names or messages}), and rsl_options.on_reload runs.
 *
 * Reloads run one at a time (a second caller waits for the first).  Any thread but a
 * worker thread (RSL_EINVAL there); not concurrently with or after rsl_close.  Errors:
 * RSL_ELOAD, RSL_ENOMEM (the old generation keeps serving), RSL_ECLOSED, RSL_EINVAL.
 */
int rsl_reload(rsl_runtime *rt, char *err, size_t errlen);

/*
 * Opts into reloading on SIGHUP: starts one small thread with its own libuv loop watching
 * SIGHUP (uv_signal_t; libuv installs its process-wide handler, shared with any other
 * libuv loop that watches SIGHUP, and restores the default when rsl_close stops the
 * watch).  Each SIGHUP then runs rsl_reload on that thread: failures are logged, kept in
 * rsl_state_json's "last_reload" and passed to on_reload.  Signals that arrive during a
 * reload may coalesce into one more reload.  The host must not block SIGHUP in every
 * thread nor install its own SIGHUP handler afterwards.  Nothing is installed unless this
 * is called.  Calling it again is a no-op returning 0.  Any thread but a worker thread;
 * not concurrently with rsl_close.  Errors: RSL_ECLOSED, RSL_ENOMEM, RSL_ESYS, RSL_EINVAL.
 */
int rsl_handle_sighup(rsl_runtime *rt);

/* Number of worker threads the runtime runs (1 when attached to a host's loop). Any
 * thread. */
int rsl_workers(const rsl_runtime *rt);

/*
 * Runs fn(ud, loop) once on worker i's thread (0 <= i < rsl_workers), `loop` being that
 * worker's libuv loop, after whatever is already queued to that worker.  Lets a host put
 * its own handles on a worker's loop (a listening socket, timers) and work next to the
 * calls that worker runs: rsl_call made there starts on that worker at once.  Attached to
 * a host's loop, worker 0 is that loop and fn runs from it.  Returns 0 and fn runs exactly
 * once, never before this returns when called from another thread; or an error and fn
 * never runs: RSL_EINVAL (bad index, NULL fn), RSL_ECLOSED (rsl_close began), RSL_ENOMEM.
 *
 * Handles the host puts on a worker's loop belong to the host, which must close them (and
 * let their close callbacks run, from the worker's thread: another rsl_on_worker) before
 * rsl_close: a worker's thread ends only once its loop has no handle left, so rsl_close
 * would wait for them.  fn must not block: every call on that worker waits behind it.
 * Any thread.
 */
int rsl_on_worker(rsl_runtime *rt, int i, void (*fn)(void *ud, struct uv_loop_s *loop),
                  void *ud);

/* ---------------------------------------------------------------------------------------
 * Requests
 */
typedef struct rsl_req rsl_req;

/* A request: attributes (name -> string) and a body. Owned by the caller. Any thread. */
rsl_req *rsl_req_new(void);
void rsl_req_free(rsl_req *req);
/* Sets attribute `name` to the bytes (val, len), replacing an earlier value. */
int rsl_req_set(rsl_req *req, const char *name, const char *val, size_t len);
int rsl_req_set_body(rsl_req *req, const char *body, size_t len);
/* Empties the request for reuse. */
void rsl_req_clear(rsl_req *req);
/* The value of attribute `name` or NULL; `len` may be NULL. */
const char *rsl_req_get(const rsl_req *req, const char *name, size_t *len);
/*
 * W3C trace context (https://www.w3.org/TR/trace-context/) of the caller: `traceparent`
 * ("00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>") and `tracestate` (NULL or ""
 * for none; at most 512 bytes).  The call joins that trace: its span's parent is the
 * caller's, it is sampled when the caller's flags say so, and r.http sends both on with
 * the attempt's span as the parent.  With tracing off the two are sent on unchanged.
 * RSL_EINVAL for a traceparent that does not parse (the request keeps none: start a new
 * trace, as the W3C text says) or a tracestate that is too long.  NULL traceparent clears
 * both.
 */
int rsl_req_set_trace(rsl_req *req, const char *traceparent, const char *tracestate);
/* The trace context set on req: 0 with the traceparent in tp (56 bytes: 55 and a NUL) and
 * *tracestate (may be NULL; "" for none, borrowed from req), or RSL_ENOENT. */
int rsl_req_trace(const rsl_req *req, char tp[56], const char **tracestate);
/* The caller's deadline: the call must answer within `ns` from its start (a client's
 * X-Resilua-Deadline-Ms or grpc-timeout).  The call's deadline is the sooner of this and
 * the policy's own.  0 clears it; RSL_EINVAL when negative. */
int rsl_req_set_deadline(rsl_req *req, int64_t ns);

/* ---------------------------------------------------------------------------------------
 * Results
 */
typedef struct rsl_result rsl_result;

typedef struct rsl_path_entry {
    const char *step;     /* step name */
    rsl_outcome outcome;
    double ms;            /* time spent in the step, retries and backoff included */
    int attempts;         /* tries made (0 when the step was skipped) */
    const char *error;    /* message when outcome is not ok, else NULL */
} rsl_path_entry;

const char *rsl_result_policy(const rsl_result *r);
int rsl_result_status(const rsl_result *r);
const char *rsl_result_body(const rsl_result *r, size_t *len);
/* Answer headers (from stubs and Lua steps), i < count. */
size_t rsl_result_header_count(const rsl_result *r);
int rsl_result_header(const rsl_result *r, size_t i, const char **name, const char **value);
rsl_outcome rsl_result_outcome(const rsl_result *r);
/* The step that answered; NULL when no step ran (unknown policy cannot happen here). */
const char *rsl_result_served_by(const rsl_result *r);
/* 1 when a step after the first of the path answered. */
int rsl_result_degraded(const rsl_result *r);
double rsl_result_elapsed_ms(const rsl_result *r);
size_t rsl_result_path_len(const rsl_result *r);
/* Entry i of the path; its strings live as long as the result. */
int rsl_result_path(const rsl_result *r, size_t i, rsl_path_entry *e);
/* 1 when route() failed (raised, ran too long, returned garbage) and `chain` was taken. */
int rsl_result_route_failed(const rsl_result *r);
/* The call's own trace context, as a traceparent naming the call's span (56 bytes: 55
 * and a NUL): 0, or RSL_ENOENT when the call had none (tracing off and no caller's
 * context). */
int rsl_result_trace(const rsl_result *r, char tp[56]);
/* One JSON object, as `resilua call` prints it (no newline). Free with rsl_free. */
char *rsl_result_json(const rsl_result *r);
/* Frees a result returned by rsl_call_sync. NULL is a no-op. */
void rsl_result_free(rsl_result *r);

/* ---------------------------------------------------------------------------------------
 * Calls
 */

/* Runs on the worker thread that ran the call; `r` is borrowed until it returns. */
typedef void (*rsl_call_cb)(const rsl_result *r, void *ud);

/*
 * Calls `policy` for `req` (copied; may be freed on return).  `cb` runs exactly once when
 * this returns 0.  Errors: RSL_ENOENT (no such policy), RSL_ECLOSED, RSL_EINVAL, RSL_ENOMEM.
 * Any thread.
 *
 * From another thread the call is queued to a worker (round robin).  On one of this
 * runtime's worker threads (inside an rsl_on_worker function, a callback of a handle on
 * that worker's loop, or a completion callback) it starts at once on that same worker,
 * with no hand-off: `cb` may then run before rsl_call returns (a policy that answers
 * without waiting, such as a stub), so have everything `cb` needs ready before calling.
 */
int rsl_call(rsl_runtime *rt, const char *policy, const rsl_req *req, rsl_call_cb cb, void *ud);

/* rsl_call that also hands back the call's id (never 0) for rsl_cancel; *id is set before
 * the callback can run.  Any thread. */
int rsl_call_id(rsl_runtime *rt, const char *policy, const rsl_req *req, rsl_call_cb cb,
                void *ud, uint64_t *id);

/*
 * Cancels call `id`: a call still queued completes "canceled" without running; one inside
 * route() or a Lua step completes "canceled" when that returns (Lua is never interrupted
 * mid-way); one waiting on something -- a host step's answer, a retry backoff, an injected
 * delay -- completes "canceled" at once (a host answer arriving later is dropped).  A call
 * that already answered is not affected: its callback ran once as usual.  Returns 0 when
 * the request was made, RSL_EINVAL for an id no call had, RSL_ECLOSED after rsl_close
 * began.  Any thread.
 */
int rsl_cancel(rsl_runtime *rt, uint64_t id);

/*
 * Calls `policy` and waits up to `timeout_ns` (<= 0: no limit) for the answer.  On 0,
 * `*out` holds a result to free with rsl_result_free.  When the wait times out the call is
 * canceled and RSL_ETIMEDOUT returned.  Any thread but a worker thread.
 */
int rsl_call_sync(rsl_runtime *rt, const char *policy, const rsl_req *req, int64_t timeout_ns,
                  rsl_result **out);

/*
 * Matches an HTTP request against the `r.expose { ["GET /users/:id"] = "policy" }`
 * routes of the current generation.  `method` is "GET", "POST", ... (a route declared
 * with "*" takes any method; HEAD also matches GET routes); `path` (len bytes) is the
 * request path without its query string, still percent-encoded.  Segments match one to
 * one: a literal segment equals the decoded request segment, a ":name" segment takes any
 * non-empty one.  When several routes match, the one whose first literal segment comes
 * earliest wins ("/users/me" before "/users/:id"), then an exact method before "*".
 *
 * Returns 0 when a route matched: each path parameter is set on `req` as an attribute
 * (percent-decoded; replacing an attribute of that name) and the policy's name is copied
 * into `policy` (NUL-terminated).  RSL_ENOENT when no route matches (req untouched),
 * RSL_EINVAL (bad arguments, or the name does not fit policy_cap), RSL_ENOMEM,
 * RSL_ECLOSED.  The name refers to the generation current at the match: a reload in
 * between may remove it, and rsl_call then says RSL_ENOENT.  Any thread.
 */
int rsl_expose_match(rsl_runtime *rt, const char *method, const char *path, size_t len,
                     rsl_req *req, char *policy, size_t policy_cap);

/* ---------------------------------------------------------------------------------------
 * Host C steps: `r.c "name"` in a policy calls the function registered under `name`.
 */
typedef struct rsl_step_call rsl_step_call;

/*
 * Runs on the worker thread.  It must eventually answer `sc` once with rsl_step_answer or
 * rsl_step_fail, from any thread, now or later.  An answer after the step's timeout (or
 * after the call was canceled) is accepted and dropped.
 */
typedef void (*rsl_step_fn)(rsl_step_call *sc, const rsl_req *req, void *ud);

/* Registers (or replaces) C step `name`. Any thread. */
int rsl_register_step(rsl_runtime *rt, const char *name, rsl_step_fn fn, void *ud);
/* Answers with a status and body (copied). Any thread, once: the first answer frees the
 * handle, so a second call is only allowed from inside the step function (it returns
 * RSL_EALREADY).  An answer after the step timed out or the call was canceled returns
 * RSL_EALREADY too: it is accepted and dropped. */
int rsl_step_answer(rsl_step_call *sc, int status, const char *body, size_t len);
/* Answers with an outcome that is not a status (timeout, connect, miss, error...). */
int rsl_step_fail(rsl_step_call *sc, rsl_outcome o, const char *msg);

/* ---------------------------------------------------------------------------------------
 * Signals the host feeds, and introspection
 */

/* Sets gauge `name` for `sig.gauge(name)`. Any thread. */
int rsl_gauge_set(rsl_runtime *rt, const char *name, double value);

/* JSON: {"policies":[{"name","file","line","steps":[...],"chain":[...]}...],
 *        "guards":{"NAME":{"kind":...}}}. Free with rsl_free. Any thread. */
char *rsl_describe_json(rsl_runtime *rt);

/* Prometheus text format (version 0.0.4) of DESIGN.md's series: resilua_calls_total,
 * resilua_step_calls_total, resilua_step_duration_seconds, resilua_fallbacks_total,
 * resilua_retries_total, resilua_route_failures_total, resilua_breaker_state,
 * resilua_breaker_transitions_total, resilua_guard_rejections_total,
 * resilua_bulkhead_inflight, resilua_reloads_total, resilua_policy_generation.  No request
 * attribute is ever a label; counters are never reset by a reload.  Free with rsl_free.
 * Any thread. */
char *rsl_metrics_text(rsl_runtime *rt);

/* JSON: {"generation": N, "last_reload": {...} (see rsl_reload; after rsl_open it records
 *        the open's load), "reloads": {"ok": N, "failed": N},
 *        "guards": {"NAME": {"kind", "state", rates, calls, quantiles, tokens, inflight...}}}:
 * every guard's live state.  Free with rsl_free. Any thread. */
char *rsl_state_json(rsl_runtime *rt);

/*
 * Admin overrides of a guard, for an operator who knows better than its rules (the
 * sidecar's POST /guards/NAME/ACTION):
 *   RSL_OVERRIDE_FORCE_OPEN  every attempt through it is refused ("is forced open");
 *   RSL_OVERRIDE_DISABLE     every attempt passes and nothing is enforced (a breaker
 *                            records nothing; a bulkhead still counts what is inside);
 *   RSL_OVERRIDE_AUTO        the override is lifted and the guard's rules decide again: a
 *                            forced-open breaker opens for its open period and then probes
 *                            (it is not trusted blindly), a disabled one closes with a
 *                            fresh window (it recorded nothing while disabled);
 *   RSL_OVERRIDE_RESET       the override is lifted and the state starts afresh: a breaker
 *                            closed with its window and backoff cleared, a limiter full.
 * An override is the guard's: it survives a reload that keeps the guard (same name and
 * kind) and goes with it; rsl_state_json shows it as "override" ("force_open",
 * "disable"; absent when none).  Returns 0, RSL_ENOENT (no guard of that name),
 * RSL_EINVAL.  Any thread.
 */
typedef enum rsl_override {
    RSL_OVERRIDE_AUTO,
    RSL_OVERRIDE_FORCE_OPEN,
    RSL_OVERRIDE_DISABLE,
    RSL_OVERRIDE_RESET,
} rsl_override;

int rsl_guard_override(rsl_runtime *rt, const char *guard, rsl_override action);

/*
 * Loads and validates a policy directory without starting anything (`resilua check`).
 * Returns 0, or RSL_ELOAD with `file:line: message` lines in err.  On success `*json` (may
 * be NULL) receives rsl_describe_json's document; free with rsl_free.  Any thread.
 */
int rsl_check(const char *policy_dir, char **json, char *err, size_t errlen);

/* ---------------------------------------------------------------------------------------
 * Traces: one span per call and one per step attempt (rsl_options.otlp_endpoint, on_span).
 *
 * The call's span (kind internal) carries resilua.policy, resilua.outcome,
 * resilua.served_by, resilua.degraded, resilua.route_failed, resilua.path and
 * http.response.status_code; each attempt's span, its child (kind client for r.http and
 * r.redis, else internal), carries resilua.step, resilua.step.kind, resilua.attempt,
 * resilua.outcome, http.response.status_code, error.type (the outcome, when not ok),
 * resilua.error (the message), resilua.guard (the guard that refused it), and for r.http
 * http.request.method, server.address and server.port.  A breaker's change of state
 * during an attempt is an event "resilua.breaker.transition" on that attempt's span with
 * resilua.guard, resilua.from, resilua.to and resilua.reason.  The status is ERROR when
 * the outcome is not ok.
 *
 * Spans go to the collector as OTLP/HTTP JSON from each worker's loop (libcurl multi),
 * batched (512 spans or 1 s) with at most two batches in flight per worker; a span that
 * finds no room, or whose batch the collector refuses or does not answer within 5 s, is
 * dropped and counted (resilua_trace_spans_dropped_total): a call never waits for it.
 */
typedef enum rsl_attr_type { RSL_ATTR_STRING, RSL_ATTR_INT, RSL_ATTR_BOOL } rsl_attr_type;

typedef struct rsl_span_attr {
    const char *key;
    rsl_attr_type type;
    const char *str; /* RSL_ATTR_STRING */
    int64_t num;     /* RSL_ATTR_INT; RSL_ATTR_BOOL: 0 or 1 */
} rsl_span_attr;

typedef struct rsl_span_event {
    const char *name;
    int64_t time_unix_ns;
    const rsl_span_attr *attrs;
    size_t nattrs;
} rsl_span_event;

typedef enum rsl_span_kind {
    RSL_SPAN_INTERNAL = 1, /* OTLP's SpanKind values */
    RSL_SPAN_SERVER = 2,
    RSL_SPAN_CLIENT = 3,
} rsl_span_kind;

typedef struct rsl_span {
    const char *name;            /* the policy (a call), the step (an attempt) */
    char trace_id[33];           /* lowercase hex */
    char span_id[17];
    char parent_span_id[17];     /* "" for a root */
    rsl_span_kind kind;
    int64_t start_unix_ns, end_unix_ns;
    int error;                   /* 1: status ERROR */
    const char *status_message;  /* with error; may be NULL */
    const rsl_span_attr *attrs;
    size_t nattrs;
    const rsl_span_event *events;
    size_t nevents;
} rsl_span;

/* ---------------------------------------------------------------------------------------
 * The sidecar: an HTTP/1.1 server on the runtime's workers (`resilua serve`, serve.c).
 *
 * Each worker's loop gets its own listening socket on the same address (SO_REUSEPORT: the
 * kernel spreads connections over the workers), so a connection lives on one worker from
 * accept to close and its calls start there with no hand-off.  Endpoints:
 *   GET|POST /call/POLICY?attr=value&...   query attributes (percent-decoded) and the
 *                                          body make the request; answers with the
 *                                          result's status, headers and body, plus
 *                                          X-Resilua-Served-By, X-Resilua-Outcome,
 *                                          X-Resilua-Degraded (0|1), X-Resilua-Path
 *                                          ("primary=timeout,cache=ok")
 *   r.expose routes                        the same, path parameters as attributes
 *   A call's request also carries the client's traceparent/tracestate (the call joins
 *   that trace: rsl_req_set_trace) and its deadline, X-Resilua-Deadline-Ms (whole ms) or
 *   grpc-timeout ("250m", "2S"...), the sooner if both: rsl_req_set_deadline.
 *   GET /metrics    rsl_metrics_text and the server's resilua_http_* series
 *   GET /state      rsl_state_json
 *   POST /reload    rsl_reload: 200 and the reload record, 422 with `file:line: message`
 *                   when the directory does not load (the old policies keep serving)
 *   POST /guards/NAME/force_open|disable|reset|auto
 *                   rsl_guard_override: 200 and {"guard", "action", "state": the guard's
 *                   entry in /state}; 404 for an unknown guard or action; 403 unless the
 *                   peer is a loopback address (whatever address the server listens on)
 *   GET /healthz    200 "ok", 503 once rsl_serve_stop began
 * Unknown policy or path: 404 with {"error": ...}.  Keep-alive and pipelining (answers
 * in request order; a connection's next request is parsed only once the answer before it
 * is written, and at most 64 KiB is read ahead meanwhile).  Limits, each answered and
 * counted in resilua_http_rejected_total{reason}: see rsl_serve_options.  A client that
 * closes its connection while its call runs cancels the call.
 */
typedef struct rsl_serve rsl_serve;

typedef struct rsl_serve_options {
    size_t size;               /* set by rsl_serve_options_init: lets this struct grow */
    const char *listen;        /* "HOST:PORT" or "[IPV6]:PORT"; default "127.0.0.1:8700";
                                  port 0 picks a free one (rsl_serve_port says which) */
    size_t max_header_bytes;   /* request line + headers; default 8 KiB; past it: 431 */
    int max_headers;           /* default 100; past it: 431 */
    size_t max_body;           /* default 1 MiB; past it: 413 (and the connection closes) */
    int64_t idle_timeout_ns;   /* an idle keep-alive connection closes; default 60 s */
    int64_t request_timeout_ns;/* first byte to last of a request; default 10 s: 408 */
    int64_t drain_timeout_ns;  /* rsl_serve_stop waits this long at most for answers in
                                  flight, then cancels them; default 30 s */
    /* A file the sidecar appends one JSON line per answered request to ("-": stdout;
     * NULL or "": none): {"time", "method", "path", "status", "duration_ms", "bytes",
     * "bytes_in", and for a call "policy", "outcome", "served_by", "degraded", "steps"
     * (["primary=timeout", "cache=ok"]), "trace_id"}.  Written by a thread of its own
     * through a bounded buffer: a line that finds it full is dropped and counted
     * (resilua_access_log_dropped_total), never waited for.  rsl_serve_reopen_log reopens
     * it (logrotate). */
    const char *access_log;
} rsl_serve_options;

/* Fills `o` with defaults. Any thread. */
void rsl_serve_options_init(rsl_serve_options *o);

/*
 * Starts serving `rt` (which must outlive the server) on every worker.  Returns 0 once
 * every worker listens, or an error with a message in err: RSL_EINVAL (a bad listen
 * address), RSL_ESYS (bind/listen failed, e.g. the address is in use), RSL_ECLOSED,
 * RSL_ENOMEM.  Any thread but a worker thread.
 */
int rsl_serve_start(rsl_runtime *rt, const rsl_serve_options *o, rsl_serve **out, char *err,
                    size_t errlen);

/* Reopens the access log by its name (after logrotate moved it): lines before this go to
 * the old file, lines after it to the new one, none torn or lost.  A no-op without an
 * access log or with "-".  0 or RSL_EINVAL.  Any thread (a signal handler must not call
 * it: wake a thread that does, as `resilua serve` does on SIGUSR1). */
int rsl_serve_reopen_log(rsl_serve *s);

/* The port the server listens on (the real one when the address said 0). Any thread. */
int rsl_serve_port(const rsl_serve *s);

/*
 * Drains and frees the server: stops accepting, answers 503 on /healthz, closes idle
 * connections and those that have not sent a whole request, lets calls in flight answer
 * (up to their policies' deadlines, at most drain_timeout_ns, after which they are
 * canceled) and closes each connection after its answer.  Returns once every handle it put
 * on the workers' loops is closed: rsl_close may follow.  Any thread but a worker thread;
 * NULL is a no-op.
 */
void rsl_serve_stop(rsl_serve *s);

#ifdef __cplusplus
}
#endif
#endif /* RESILUA_H */
