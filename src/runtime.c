/*
 * runtime -- the public API of resilua.h: opening a runtime on a policy directory,
 * reloading it, calls (asynchronous and synchronous) from any thread, host steps, gauges,
 * and closing with every call completed exactly once.  Introspection is in inspect.c,
 * r.expose's routes in expose.c.
 *
 * Layer: the top of the library (runtime.h).  It owns the workers and is their ops: a
 * worker hands it the messages it does not handle itself, and it passes them down to the
 * calls, the chain and the host steps.
 *
 * Closing: rsl_call enters a "sender" window (an atomic counter) before it checks the
 * closing flag and posts; rsl_close sets the flag and waits for the window to empty, so
 * every call is either refused with RSL_ECLOSED or queued before the workers are told to
 * stop (the classic store/load handshake: both sides use sequentially consistent
 * atomics).
 */
#include "runtime.h"

#include "clock.h"
#include "steps.h"
#include "window.h"

#include <jansson.h>
#include <stddef.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void rsl_free(void *p) {
    free(p);
}

/* ---- options -------------------------------------------------------------- */

void rsl_options_init(rsl_options *o) {
    memset(o, 0, sizeof(*o));
    o->size = sizeof(*o);
    o->workers = 1;
    o->lua_mem_limit = (size_t)64 << 20;
    /* A route is a few hundred ns of work; 50 ms is far past any honest one and short
     * enough that a runaway costs one worker a blip, not an outage. */
    o->route_limit_ns = 50 * RSL_NS_PER_MS;
    o->lua_step_limit_ns = 200 * RSL_NS_PER_MS;
    o->http_max_body = (size_t)4 << 20;
    o->trace_sample = -1; /* OTEL_TRACES_SAMPLER_ARG, else 1 */
}

/* ---- generations ---------------------------------------------------------------------- */

static void on_breaker(void *ud, rsl__breaker *b, rsl__breaker_state from, rsl__breaker_state to,
                       const char *reason) {
    struct rsl_runtime *rt = ud;
    if (rt->o.on_transition) {
        rt->o.on_transition(rt->o.on_transition_ud, rsl__breaker_name(b),
                            rsl__breaker_state_name(from), rsl__breaker_state_name(to),
                            reason ? reason : "");
    }
    if (rt->tracing) { /* an event of the attempt that made it, when that call records */
        rsl__trace_transition(rsl__breaker_name(b), rsl__breaker_state_name(from),
                              rsl__breaker_state_name(to), reason ? reason : "");
    }
}

/* Wraps a loaded generation with the runtime's per-state bindings. Takes g. */
static rsl__genr *genr_new(struct rsl_runtime *rt, rsl__gen *g) {
    rsl__genr_conf conf = {
        .lapi = {.gauges = &rt->gauges,
                 .route_limit_ns = rt->o.route_limit_ns,
                 .lua_step_limit_ns = rt->o.lua_step_limit_ns,
                 .load = rt->load},
        .lock = &rt->lock,
        .caches = &rt->caches,
        .metrics = &rt->metrics,
        .on_breaker = rt->o.on_transition || rt->tracing ? on_breaker : NULL,
        .on_breaker_ud = rt,
    };
    return rsl__genr_new(&conf, g);
}

rsl__genr *rsl__rt_current(struct rsl_runtime *rt) {
    pthread_mutex_lock(&rt->lock);
    rsl__genr *G = rt->cur;
    if (G) {
        rsl__genr_ref(G);
    }
    pthread_mutex_unlock(&rt->lock);
    return G;
}

/* The load options of this runtime: rsl_open and rsl_reload load the same way. */
static rsl__gen_opts gen_opts(struct rsl_runtime *rt) {
    rsl__gen_opts go = {
        .nstates = rt->o.workers,
        .mem_limit = rt->o.lua_mem_limit,
        .wd = rt->wd,
        .clock = rt->o.clock,
        .clock_ud = rt->o.clock_ud,
        .stripes = rt->o.workers < RSL_WINDOW_MAX_STRIPES ? rt->o.workers : RSL_WINDOW_MAX_STRIPES,
        .registry_lock = &rt->reg_lock,
        .leases = rt->leases,
        .fleets = rt->fleets,
        .step_ops = rt->calls.io_model ? rt->model_table : rsl__step_ops_table,
    };
    return go;
}

/* A newline-separated list (may be NULL) as a JSON array of strings. */
static json_t *name_list(const char *lines) {
    json_t *a = json_array();
    for (const char *p = lines; p && *p;) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        if (n) {
            json_array_append_new(a, json_stringn(p, n));
        }
        p = nl ? nl + 1 : p + n;
    }
    return a;
}

/* The record of one load (DESIGN.md's /state "last_reload"): a new object, NULL when out of
 * memory.  `error` is NULL on success; `rep` may be NULL on failure. */
static json_t *load_record(int ok, const char *error, const rsl__load_report *rep) {
    json_t *o = json_object();
    if (!o) {
        return NULL;
    }
    json_object_set_new(o, "ok", json_boolean(ok));
    json_object_set_new(o, "error", error ? json_string(error) : json_null());
    json_object_set_new(o, "at", json_integer((json_int_t)time(NULL)));
    json_object_set_new(o, "kept", name_list(rep ? rep->kept : NULL));
    json_object_set_new(o, "changed", name_list(rep ? rep->changed : NULL));
    json_object_set_new(o, "added", name_list(rep ? rep->added : NULL));
    json_object_set_new(o, "removed", name_list(rep ? rep->removed : NULL));
    json_object_set_new(o, "reset", name_list(rep ? rep->reset : NULL));
    json_object_set_new(o, "warnings", name_list(rep ? rep->warnings : NULL));
    return o;
}

/* ---- open and close ------------------------------------------------------------------- */

static void sighup_join(rsl_runtime *rt);
static void call_freed(void *ud, int64_t left);
static const rsl__worker_ops worker_ops;

static int64_t vt_clock(void *ud);

int rsl_open(rsl_runtime **out, const rsl_options *o, char *err, size_t errlen) {
    if (err && errlen) {
        err[0] = 0;
    }
    if (!out || !o || !o->policy_dir) {
        if (err && errlen) {
            snprintf(err, errlen, "rsl_open: options and a policy directory are required");
        }
        return RSL_EINVAL;
    }
    *out = NULL;
    struct rsl_runtime *rt = calloc(1, sizeof(*rt));
    if (!rt) {
        return RSL_ENOMEM;
    }
    rsl_options_init(&rt->o);
    memcpy(&rt->o, o, o->size < sizeof(rt->o) ? o->size : sizeof(rt->o));
    rt->o.size = sizeof(rt->o);
    if (rt->o.workers < 1) {
        rt->o.workers = 1;
    }
    if (rt->o.workers > 256) {
        rt->o.workers = 256; /* a call id carries its worker's index in 8 bits */
    }
    if (rt->o.loop) {
        rt->o.workers = 1;
    }
    /* Options from before virtual time end at io_model_ud. */
    if (o->size <= offsetof(rsl_options, virtual_time)) {
        rt->o.virtual_time = 0;
    }
    if (rt->o.virtual_time) {
        if (!rt->o.loop) {
            if (err && errlen) {
                snprintf(err, errlen, "rsl_open: virtual_time needs an attached loop");
            }
            free(rt);
            return RSL_EINVAL;
        }
        rsl__vt_init(&rt->vt, 1000 * RSL_NS_PER_S);
        rt->o.clock = vt_clock;
        rt->o.clock_ud = &rt->vt;
    }
    rt->dir = strdup(o->policy_dir);
    rt->o.policy_dir = rt->dir;
    rt->o.redis = NULL;
    if (rt->o.http_max_body == 0) {
        rt->o.http_max_body = (size_t)4 << 20;
    }
    if (o->size > offsetof(rsl_options, redis) && o->redis) {
        /* "HOST:PORT": the last colon splits, so "[::1]:6379" style hosts keep theirs. */
        const char *colon = strrchr(o->redis, ':');
        char *end = NULL;
        long port = colon ? strtol(colon + 1, &end, 10) : 0;
        if (!colon || colon == o->redis || !end || *end || port < 1 || port > 65535) {
            if (err && errlen) {
                snprintf(err, errlen, "redis: expected HOST:PORT, got \"%s\"", o->redis);
            }
            free(rt->dir);
            free(rt);
            return RSL_EINVAL;
        }
        const char *h = o->redis, *he = colon;
        if (*h == '[' && he[-1] == ']') {
            h++;
            he--;
        }
        rt->redis_host = strndup(h, (size_t)(he - h));
        rt->redis_port = (int)port;
        if (!rt->redis_host) {
            free(rt->dir);
            free(rt);
            return RSL_ENOMEM;
        }
        rt->o.redis = rt->redis_host;
    }
    /* AUTH: the options, else the environment; "" is none.  Copied: the caller's strings
     * and the environment may change. */
    const char *pw = o->size > offsetof(rsl_options, redis_password) && rt->o.redis_password
                         ? rt->o.redis_password
                         : getenv("RESILUA_REDIS_PASSWORD");
    const char *user = o->size > offsetof(rsl_options, redis_user) && rt->o.redis_user
                           ? rt->o.redis_user
                           : getenv("RESILUA_REDIS_USER");
    rt->redis_password = pw && *pw ? strdup(pw) : NULL;
    rt->redis_user = user && *user ? strdup(user) : NULL;
    rt->o.redis_password = rt->o.redis_user = NULL; /* the copies above are the runtime's */
    rt->env = (rsl__env){rt->o.clock, rt->o.clock_ud, rt->o.log, rt->o.log_ud};
    pthread_mutex_init(&rt->lock, NULL);
    rsl__calls_init(&rt->calls);
    rt->calls.env = &rt->env;
    rt->calls.hoststeps = &rt->steps;
    rt->calls.vt = rt->o.virtual_time ? &rt->vt : NULL;
    /* Options from before I/O models end at on_span_ud. */
    if (o->size > offsetof(rsl_options, io_model) && o->io_model &&
        rsl__model_table(rt->model_table, rt->model_ops, RSL_MAX_STEP_KINDS) == 0) {
        rt->calls.io_model = o->io_model;
        rt->calls.io_model_ud = o->io_model_ud;
    }
    rt->calls.freed = call_freed;
    rt->calls.freed_ud = rt;
    rsl__hoststeps_init(&rt->steps);
    rsl__gauges_init(&rt->gauges);
    pthread_mutex_init(&rt->reload_lock, NULL);
    pthread_mutex_init(&rt->reg_lock, NULL);
    rt->guards = rsl__guards_new();
    rt->wd = rsl__watchdog_new(0);
    rsl__load_conf lc = {rt->o.shed_above, rt->o.max_shed};
    rt->load = rsl__load_new(rt->o.workers, &lc);
    rt->calls.load = rt->o.virtual_time ? NULL : rt->load;
    /* This instance in the fleet's view (a global limiter's Redis heartbeat): host, pid
     * and a random part, so that a restarted process is a new instance. */
    char host[64] = "host", inst[128];
    gethostname(host, sizeof(host) - 1);
    host[sizeof(host) - 1] = 0;
    snprintf(inst, sizeof(inst), "%s:%d:%08llx", host, (int)getpid(),
             (unsigned long long)(rsl__rand64() & 0xffffffffu));
    rt->leases = rsl__leases_new(rt->o.redis_prefix, inst, &rt->env);
    rt->fleets = rsl__fleets_new(rt->o.redis_prefix, inst, &rt->env);
    if (!rt->dir || !rt->guards || !rt->wd || !rt->load || !rt->leases || !rt->fleets) {
        rsl_close(rt);
        return RSL_ENOMEM;
    }
    /* Options from before tracing existed end at http_max_body: no tracing for them. */
    if (o->size <= offsetof(rsl_options, otlp_endpoint)) {
        rt->o.otlp_endpoint = "";
        rt->o.on_span = NULL;
    }
    int trc = rsl__tracer_init(&rt->tracer, &rt->o, rsl__env_now(&rt->env), rt->o.workers);
    if (trc < 0) {
        rsl_close(rt);
        return trc;
    }
    rt->tracing = trc == 1;
    rt->calls.tracer = rt->tracing ? &rt->tracer : NULL;
    rt->o.otlp_endpoint = rt->tracer.otlp.url;
    rt->o.service_name = rt->tracer.otlp.service_name;
    rt->tracer.otlp.env = &rt->env;
    char dummy[1];
    rsl__gen_opts go = gen_opts(rt);
    rsl__gen *g = NULL;
    rsl__load_report rep = {0};
    int rc = rsl__gen_load(rt->dir, rt->guards, &go, &g, &rep, err ? err : dummy,
                           err ? errlen : sizeof(dummy));
    if (rc < 0) {
        rsl_close(rt);
        return rc;
    }
    /* The open is the first load: /state shows what it created until the first reload. */
    rt->last_reload = load_record(1, NULL, &rep);
    rsl__load_report_free(&rep);
    g->number = ++rt->gen_number;
    rt->cur = genr_new(rt, g);
    if (!rt->cur) {
        rsl_close(rt);
        return RSL_ENOMEM;
    }
    rt->workers = calloc((size_t)rt->o.workers, sizeof(*rt->workers));
    if (!rt->workers) {
        rsl_close(rt);
        return RSL_ENOMEM;
    }
    rsl__worker_conf wc = {
        .ops = &worker_ops,
        .owner = rt,
        .env = &rt->env,
        .senders = &rt->senders,
        .http_max_body = rt->o.http_max_body,
        .seed = rt->o.seed,
        .redis_host = rt->redis_host,
        .redis_port = rt->redis_port,
        .redis_user = rt->redis_user,
        .redis_password = rt->redis_password,
        .otlp = rt->tracing && rt->tracer.exporting ? &rt->tracer.otlp : NULL,
        .otlp_stats = rt->tracer.stats,
        .load = rt->calls.load,
    };
    if (rt->o.loop) {
        if ((rc = rsl__worker_attach(&rt->workers[0], &wc, rt->o.loop)) < 0) {
            rsl_close(rt);
            return rc;
        }
        rt->nworkers = 1;
    }
    for (int i = 0; !rt->o.loop && i < rt->o.workers; i++) {
        if ((rc = rsl__worker_start(&rt->workers[i], &wc, i)) < 0) {
            rsl_close(rt);
            return rc;
        }
        rt->nworkers = i + 1;
    }
    *out = rt;
    return 0;
}

/* Frees what a stopped runtime holds. */
static int64_t vt_clock(void *ud) {
    return rsl__vt_now(ud);
}

int64_t rsl_vt_now(rsl_runtime *rt) {
    return rt && rt->calls.vt ? rsl__vt_now(&rt->vt) : 0;
}

int64_t rsl_vt_next(rsl_runtime *rt) {
    return rt && rt->calls.vt ? rsl__vt_next(&rt->vt) : INT64_MAX;
}

int rsl_vt_advance(rsl_runtime *rt, int64_t to) {
    if (!rt || !rt->calls.vt || to < rsl__vt_now(&rt->vt)) {
        return RSL_EINVAL;
    }
    int n = 0;
    int64_t at;
    rsl__call *c;
    while ((c = rsl__vt_pop(&rt->vt, to, &at))) {
        if (at > rsl__vt_now(&rt->vt)) {
            atomic_store_explicit(&rt->vt.now, at, memory_order_relaxed);
        }
        rsl__chain_vt_fire(c, c->timer_purpose);
        n++;
    }
    atomic_store_explicit(&rt->vt.now, to, memory_order_relaxed);
    return n;
}

static void rt_free(rsl_runtime *rt) {
    free(rt->workers);
    rsl__genr_unref(rt->cur);
    rsl__watchdog_free(rt->wd);
    rsl__guards_free(rt->guards);
    rsl__metrics_free(&rt->metrics);
    rsl__caches_free(&rt->caches);
    rsl__hoststeps_close(&rt->steps);
    if (rt->calls.vt) {
        rsl__vt_close(&rt->vt);
    }
    rsl__gauges_close(&rt->gauges);
    json_decref(rt->last_reload);
    rsl__calls_close(&rt->calls);
    rsl__load_free(rt->load);
    rsl__leases_free(rt->leases);
    rsl__fleets_free(rt->fleets);
    rsl__tracer_close(&rt->tracer);
    pthread_mutex_destroy(&rt->reg_lock);
    pthread_mutex_destroy(&rt->reload_lock);
    pthread_mutex_destroy(&rt->lock);
    free(rt->redis_host);
    if (rt->redis_password) {
        memset(rt->redis_password, 0, strlen(rt->redis_password));
    }
    free(rt->redis_password);
    free(rt->redis_user);
    free(rt->dir);
    free(rt);
}

/* Attached runtimes free themselves once the worker's async handle closed and the last
 * call was freed: worker_closed and call_freed see those two events. */

/* Attached: the async handle closed (teardown 1 -> 2); free once no call is left. */
static void worker_closed(rsl__worker *w) {
    struct rsl_runtime *rt = w->conf.owner;
    atomic_store(&rt->teardown, 2);
    if (atomic_load(&rt->calls.live) == 0) {
        rt_free(rt);
    }
}

static void call_freed(void *ud, int64_t left) {
    struct rsl_runtime *rt = ud;
    if (left == 0 && atomic_load(&rt->teardown) == 2) {
        /* The last call of an attached runtime whose handle already closed.  Only one
         * thread can see live reach 0 after teardown 2: no call is made any more. */
        rt_free(rt);
    }
}

void rsl_close(rsl_runtime *rt) {
    if (!rt) {
        return;
    }
    atomic_store(&rt->closing, 1);
    while (atomic_load(&rt->senders) > 0) {
        sched_yield();
    }
    sighup_join(rt); /* before the workers: a reload it runs must end first */
    if (rt->nworkers == 1 && rt->workers[0].attached) {
        atomic_store(&rt->teardown, 1);
        rsl__worker_stop_attached(&rt->workers[0]); /* rt_free follows from callbacks */
        return;
    }
    for (int i = 0; i < rt->nworkers; i++) {
        rsl__worker_join(&rt->workers[i]);
    }
    rt_free(rt);
}

/* ---- admin overrides -------------------------------------------------------------------- */

int rsl_guard_override(rsl_runtime *rt, const char *guard, rsl_override action) {
    if (!rt || !guard || (unsigned)action > RSL_OVERRIDE_RESET) {
        return RSL_EINVAL;
    }
    int64_t now = rsl__rt_now(rt);
    /* Under the registry's lock: a reload may be removing the guard right now.  Logged
     * outside it (the log is the host's and may be slow). */
    pthread_mutex_lock(&rt->reg_lock);
    rsl__guard *g = rsl__guards_find(rt->guards, guard);
    const char *kind = g ? rsl__guard_kind_name(g->kind) : NULL;
    if (g) {
        rsl__guard_override(g, action, now);
    }
    pthread_mutex_unlock(&rt->reg_lock);
    if (!kind) {
        return RSL_ENOENT;
    }
    rsl__log(&rt->env, RSL_LOG_WARN, "%s \"%s\": admin override %s", kind, guard,
             rsl__override_name(action));
    return 0;
}

/* ---- reload --------------------------------------------------------------------------- */

int rsl_reload(rsl_runtime *rt, char *err, size_t errlen) {
    char dummy[1];
    if (!err || !errlen) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    err[0] = 0;
    if (!rt) {
        return RSL_EINVAL;
    }
    if (rsl__worker_self()) {
        /* A worker would stall every call queued behind it for the whole load. */
        snprintf(err, errlen, "rsl_reload: not on a worker thread");
        return RSL_EINVAL;
    }
    if (atomic_load(&rt->closing)) {
        return RSL_ECLOSED;
    }
    pthread_mutex_lock(&rt->reload_lock);
    /* The load runs without rt->lock: calls keep starting on the current generation.  It
     * changes the registry only once the whole directory validated (under reg_lock). */
    rsl__gen_opts go = gen_opts(rt);
    rsl__gen *g = NULL;
    rsl__load_report rep = {0};
    int rc = rsl__gen_load(rt->dir, rt->guards, &go, &g, &rep, err, errlen);
    rsl__genr *G = NULL;
    if (rc == 0 && !(G = genr_new(rt, g))) {
        /* The registry already holds the new guards (thresholds applied); the old
         * generation keeps serving with the guard objects it references.  The next reload
         * that succeeds makes the two agree again. */
        snprintf(err, errlen, "%s: out of memory making the new generation current", rt->dir);
        rc = RSL_ENOMEM;
    }
    json_t *rec = load_record(rc == 0, rc == 0 ? NULL : err, rc == 0 ? &rep : NULL);
    rsl__load_report_free(&rep);
    rsl__genr *old = NULL;
    pthread_mutex_lock(&rt->lock);
    if (G) {
        G->g->number = ++rt->gen_number;
        old = rt->cur;
        rt->cur = G;
        rt->reloads_ok++;
    } else {
        rt->reloads_failed++;
    }
    json_t *prev = rt->last_reload;
    rt->last_reload = rec ? rec : prev;
    uint64_t number = rt->gen_number;
    pthread_mutex_unlock(&rt->lock);
    if (rec) {
        json_decref(prev);
    }
    /* Calls still running on the old generation hold their own references: the last one
     * to finish frees it (its Lua states, on whichever thread that is). */
    rsl__genr_unref(old);
    if (rc == 0) {
        rsl__log(&rt->env, RSL_LOG_INFO, "%s: reloaded, generation %llu", rt->dir,
                 (unsigned long long)number);
    } else {
        rsl__log(&rt->env, RSL_LOG_ERROR, "%s: reload failed, generation %llu keeps serving: %s", rt->dir,
                 (unsigned long long)number, err[0] ? err : rsl_strerror(rc));
    }
    if (rt->o.on_reload) {
        char *js = rec ? json_dumps(rec, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        rt->o.on_reload(rt->o.on_reload_ud, rc == 0, js ? js : "null");
        free(js);
    }
    pthread_mutex_unlock(&rt->reload_lock);
    return rc;
}

/* ---- SIGHUP ---------------------------------------------------------------------------- */

/*
 * Opt-in: a small private loop on its own thread with a uv_signal_t for SIGHUP, so the
 * reload runs there, never on a worker (which would stall its calls for the load) and never
 * in signal context.  libuv's signal handler is process-wide but cooperative: it writes to
 * a pipe the registered loops read, and other libuv loops may watch SIGHUP too.  A
 * sigwait/signalfd thread would need SIGHUP blocked in every thread of the host, which a
 * library cannot promise.
 */
typedef struct rsl__sighup {
    rsl_runtime *rt;
    uv_loop_t loop;
    uv_signal_t sig;
    uv_async_t stop;
    pthread_t thread;
} rsl__sighup;

static void sighup_cb(uv_signal_t *h, int signum) {
    rsl__sighup *s = h->data;
    char err[2048];
    /* rsl_reload logs the outcome, keeps the record and runs on_reload. */
    (void)rsl_reload(s->rt, err, sizeof(err));
}

static void sighup_stop_cb(uv_async_t *a) {
    rsl__sighup *s = a->data;
    uv_close((uv_handle_t *)&s->sig, NULL); /* restores SIGHUP's disposition when last */
    uv_close((uv_handle_t *)&s->stop, NULL);
}

static void *sighup_main(void *arg) {
    rsl__sighup *s = arg;
    uv_run(&s->loop, UV_RUN_DEFAULT);
    return NULL;
}

int rsl_handle_sighup(rsl_runtime *rt) {
    if (!rt || rsl__worker_self()) {
        return RSL_EINVAL;
    }
    if (atomic_load(&rt->closing)) {
        return RSL_ECLOSED;
    }
    pthread_mutex_lock(&rt->lock);
    if (rt->sighup) {
        pthread_mutex_unlock(&rt->lock);
        return 0;
    }
    rsl__sighup *s = calloc(1, sizeof(*s));
    if (!s) {
        pthread_mutex_unlock(&rt->lock);
        return RSL_ENOMEM;
    }
    s->rt = rt;
    int rc = RSL_ESYS;
    if (uv_loop_init(&s->loop) != 0) {
        free(s);
        pthread_mutex_unlock(&rt->lock);
        return RSL_ESYS;
    }
    s->sig.data = s->stop.data = s;
    if (uv_signal_init(&s->loop, &s->sig) == 0 &&
        uv_async_init(&s->loop, &s->stop, sighup_stop_cb) == 0 &&
        uv_signal_start(&s->sig, sighup_cb, SIGHUP) == 0 &&
        pthread_create(&s->thread, NULL, sighup_main, s) == 0) {
        rt->sighup = s;
        rc = 0;
    }
    pthread_mutex_unlock(&rt->lock);
    if (rc != 0) {
        /* Handles that were initialised close on this thread: the loop never ran. */
        if (s->sig.loop) { /* set only once its init succeeded (calloc'd before) */
            uv_close((uv_handle_t *)&s->sig, NULL);
        }
        if (s->stop.loop) {
            uv_close((uv_handle_t *)&s->stop, NULL);
        }
        uv_run(&s->loop, UV_RUN_DEFAULT);
        uv_loop_close(&s->loop);
        free(s);
    }
    return rc;
}

/* Stops the SIGHUP thread, letting a reload it is running finish. */
static void sighup_join(rsl_runtime *rt) {
    rsl__sighup *s = rt->sighup;
    if (!s) {
        return;
    }
    uv_async_send(&s->stop);
    pthread_join(s->thread, NULL);
    uv_loop_close(&s->loop);
    free(s);
    rt->sighup = NULL;
}

/* ---- calls ---------------------------------------------------------------------------- */

static void sync_cb(const rsl_result *r, void *ud);

int rsl__call_new(struct rsl_runtime *rt, const char *policy, const rsl_req *req, rsl_call_cb cb,
                  void *ud, rsl__call **out) {
    if (!rt || !policy || !cb) {
        return RSL_EINVAL;
    }
    if (atomic_load(&rt->closing)) {
        return RSL_ECLOSED;
    }
    rsl__genr *G = rsl__rt_current(rt);
    if (!G) {
        return RSL_ECLOSED;
    }
    rsl__policy *p = rsl__gen_policy(G->g, policy);
    if (!p) {
        rsl__genr_unref(G);
        return RSL_ENOENT;
    }
    rsl__worker *self = rsl__worker_self(); /* its kept call objects: see call.c */
    return rsl__call_make(&rt->calls, self && self->conf.owner == rt ? self : NULL, G, p, req,
                          cb, ud, out);
}

static int submit(struct rsl_runtime *rt, const char *policy, const rsl_req *req,
                  rsl_call_cb cb, void *ud, uint64_t *id) {
    rsl__call *c = NULL;
    int rc = rsl__call_new(rt, policy, req, cb, ud, &c);
    if (rc < 0) {
        return rc;
    }
    c->cb_keeps_result = cb == sync_cb;
    /* On one of this runtime's workers: start right here (no queue, no wake-up). */
    rsl__worker *w = rsl__worker_self();
    int local = w && w->conf.owner == rt;
    if (!local) {
        uint64_t n = atomic_fetch_add_explicit(&rt->rr, 1, memory_order_relaxed);
        w = &rt->workers[n % (uint64_t)rt->nworkers];
    }
    c->w = w;
    c->id = (c->id << 8) | (uint64_t)w->index; /* rsl_cancel finds the worker in the id */
    if (id) {
        /* Reachable by rsl_cancel until it finishes (a short list: only calls made with an
         * id, i.e. rsl_call_id and rsl_call_sync, are on it). */
        if (rsl__calls_track(&rt->calls, c) < 0) {
            rsl__call_free(c);
            return RSL_ENOMEM;
        }
    }
    if (id) {
        *id = c->id;
    }
    if (local) {
        /* rsl__call_new saw the runtime open; a close beginning since then posts STOP to
         * this very thread, which handles it after this call is tracked (and cancels it). */
        rsl__call_start(c);
        return 0;
    }
    atomic_fetch_add(&rt->senders, 1);
    if (atomic_load(&rt->closing)) {
        atomic_fetch_sub(&rt->senders, 1);
        if (c->tracked) {
            rsl__calls_untrack(&rt->calls, c);
        }
        rsl__call_free(c);
        return RSL_ECLOSED;
    }
    c->posted = rt->calls.load ? rsl__clock_coarse() : 0; /* its wait in the queue */
    rsl__worker_post(w, &c->msg);
    atomic_fetch_sub(&rt->senders, 1);
    return 0;
}

int rsl_call(rsl_runtime *rt, const char *policy, const rsl_req *req, rsl_call_cb cb, void *ud) {
    return submit(rt, policy, req, cb, ud, NULL);
}

int rsl_call_id(rsl_runtime *rt, const char *policy, const rsl_req *req, rsl_call_cb cb,
                void *ud, uint64_t *id) {
    return submit(rt, policy, req, cb, ud, id);
}

int rsl_workers(const rsl_runtime *rt) {
    return rt ? rt->nworkers : 0;
}

int rsl_on_worker(rsl_runtime *rt, int i, void (*fn)(void *ud, struct uv_loop_s *loop),
                  void *ud) {
    if (!rt || !fn || i < 0 || i >= rt->nworkers) {
        return RSL_EINVAL;
    }
    rsl__fn_msg *m = malloc(sizeof(*m));
    if (!m) {
        return RSL_ENOMEM;
    }
    m->msg.type = RSL_MSG_FN;
    m->fn = fn;
    m->ud = ud;
    /* The sender window of submit: either refused here or queued before STOP. */
    atomic_fetch_add(&rt->senders, 1);
    if (atomic_load(&rt->closing)) {
        atomic_fetch_sub(&rt->senders, 1);
        free(m);
        return RSL_ECLOSED;
    }
    rsl__worker_post(&rt->workers[i], &m->msg);
    atomic_fetch_sub(&rt->senders, 1);
    return 0;
}

int rsl_cancel(rsl_runtime *rt, uint64_t id) {
    if (!rt || id == 0 || (id & 0xff) >= (uint64_t)rt->nworkers ||
        (id >> 8) > atomic_load_explicit(&rt->calls.next_id, memory_order_relaxed)) {
        return RSL_EINVAL;
    }
    atomic_fetch_add(&rt->senders, 1);
    if (atomic_load(&rt->closing)) {
        atomic_fetch_sub(&rt->senders, 1);
        return RSL_ECLOSED;
    }
    /* A call still queued or running Lua sees the flag at its next stage; one waiting on
     * something is woken by the message. */
    rsl__calls_flag(&rt->calls, id);
    int rc = 0;
    rsl__cancel_msg *cm = malloc(sizeof(*cm));
    if (cm) {
        cm->msg.type = RSL_MSG_CANCEL;
        cm->id = id;
        rsl__worker_post(&rt->workers[id & 0xff], &cm->msg);
    } else {
        rc = RSL_ENOMEM;
    }
    atomic_fetch_sub(&rt->senders, 1);
    return rc;
}

typedef struct sync_wait {
    pthread_mutex_t m;
    pthread_cond_t cv;
    _Atomic int done; /* written under m; also polled without it while spinning */
    rsl_result *res;
} sync_wait;

/* A synchronous caller polls for its answer this long before it sleeps on the condition
 * variable: a call that answers in microseconds then costs no kernel wake-up on the way
 * back (the worker spins likewise on its side; see worker.c). */
#define SYNC_SPIN_NS (30 * RSL_NS_PER_US)

static void sync_cb(const rsl_result *r, void *ud) {
    sync_wait *s = ud;
    rsl_result *mine = (rsl_result *)r; /* cb_keeps_result: the waiter frees it */
    pthread_mutex_lock(&s->m);
    s->res = mine;
    s->done = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->m);
}

int rsl_call_sync(rsl_runtime *rt, const char *policy, const rsl_req *req, int64_t timeout_ns,
                  rsl_result **out) {
    if (!out || rsl__worker_self()) {
        return RSL_EINVAL; /* on a worker thread this would wait for itself */
    }
    *out = NULL;
    sync_wait s = {.done = 0, .res = NULL};
    pthread_mutex_init(&s.m, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s.cv, &ca);
    pthread_condattr_destroy(&ca);
    uint64_t id = 0;
    int rc = submit(rt, policy, req, sync_cb, &s, &id);
    if (rc == 0) {
        int64_t spin_until = rsl__clock_now() + SYNC_SPIN_NS;
        while (!atomic_load_explicit(&s.done, memory_order_acquire) &&
               rsl__clock_now() < spin_until) {
        }
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        int64_t ns = (int64_t)until.tv_nsec + (timeout_ns > 0 ? timeout_ns : 0);
        until.tv_sec += (time_t)(ns / RSL_NS_PER_S);
        until.tv_nsec = (long)(ns % RSL_NS_PER_S);
        pthread_mutex_lock(&s.m);
        int timed_out = 0;
        while (!s.done && !timed_out) {
            if (timeout_ns > 0) {
                timed_out = pthread_cond_timedwait(&s.cv, &s.m, &until) != 0 && !s.done;
            } else {
                pthread_cond_wait(&s.cv, &s.m);
            }
        }
        if (timed_out) {
            /* Cancel, then wait for the (prompt) completion: the callback runs exactly
             * once and writes into this frame. */
            pthread_mutex_unlock(&s.m);
            /* RSL_ECLOSED: a close began, and it completes the call itself.  Out of memory
             * for the message: the flag is set, so the call ends at its next stage. */
            (void)rsl_cancel(rt, id);
            pthread_mutex_lock(&s.m);
            while (!s.done) {
                pthread_cond_wait(&s.cv, &s.m);
            }
            rsl_result_free(s.res);
            s.res = NULL;
            rc = RSL_ETIMEDOUT;
        }
        pthread_mutex_unlock(&s.m);
        *out = s.res;
    }
    pthread_cond_destroy(&s.cv);
    pthread_mutex_destroy(&s.m);
    return rc;
}

/* ---- host steps, gauges --------------------------------------------------------------- */

int rsl_register_step(rsl_runtime *rt, const char *name, rsl_step_fn fn, void *ud) {
    if (!rt || !name || !fn) {
        return RSL_EINVAL;
    }
    return rsl__hoststeps_set(&rt->steps, name, fn, ud);
}

int rsl_gauge_set(rsl_runtime *rt, const char *name, double value) {
    if (!rt || !name) {
        return RSL_EINVAL;
    }
    return rsl__gauge_set(&rt->gauges, name, value);
}

/* ---- the workers' ops ----------------------------------------------------------------- */

static void worker_handle(rsl__worker *w, rsl__msg *m) {
    switch (m->type) {
    case RSL_MSG_CALL: {
        rsl__call *c = (rsl__call *)m;
        if (w->stopping) {
            rsl__call_abort(c, RSL_OUTCOME_CANCELED, "runtime closed");
        } else {
            rsl__call_start(c);
        }
        break;
    }
    case RSL_MSG_ANSWER:
        rsl__host_answered((rsl_step_call *)m);
        break;
    case RSL_MSG_CANCEL: {
        rsl__cancel_msg *cm = (rsl__cancel_msg *)m;
        for (rsl__call *c = w->calls; c; c = c->next) {
            if (c->id == cm->id) {
                rsl__call_cancel(c);
                break;
            }
        }
        free(cm);
        break;
    }
    }
}

/* Canceling a call completes and unlinks it, or (a host answer already in flight) marks
 * it to complete when that message arrives. */
static void worker_stop(rsl__worker *w) {
    for (rsl__call *c = w->calls, *next; c; c = next) {
        next = c->next;
        if (!c->canceled) {
            rsl__call_cancel(c);
        }
    }
}

/* Worker 0 flushes the shared breakers that are due, on its Redis connection. */
static void worker_beat(rsl__worker *w) {
    rsl_runtime *rt = w->conf.owner;
    if (w->index == 0) {
        rsl__fleets_tick(rt->fleets, w->redis);
    }
}

static const rsl__worker_ops worker_ops = {
    .handle = worker_handle,
    .stop = worker_stop,
    .idle = rsl__call_drop_spares,
    .closed = worker_closed,
    .beat = worker_beat,
};
