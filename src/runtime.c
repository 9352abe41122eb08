/*
 * runtime -- the public API of resilua.h: opening a runtime on a policy directory,
 * calls (asynchronous and synchronous) from any thread, host steps, gauges,
 * introspection, and closing with every call completed exactly once.
 *
 * Closing: rsl_call enters a "sender" window (an atomic counter) before it checks the
 * closing flag and posts; rsl_close sets the flag and waits for the window to empty, so
 * every call is either refused with RSL_ECLOSED or queued before the workers are told to
 * stop (the classic store/load handshake: both sides use sequentially consistent
 * atomics).
 */
#include "runtime.h"

#include "clock.h"
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

/* ---- names ---------------------------------------------------------------------------- */

static const char *const outcome_names[] = {
#define RSL_X_(e, s, st) s,
    RSL_OUTCOMES(RSL_X_)
#undef RSL_X_
};

const char *rsl_outcome_name(rsl_outcome o) {
    return (unsigned)o < RSL_OUTCOME__COUNT ? outcome_names[o] : "unknown";
}

int rsl_outcome_parse(const char *name, size_t len) {
    for (int i = 0; i < RSL_OUTCOME__COUNT; i++) {
        if (strlen(outcome_names[i]) == len && memcmp(outcome_names[i], name, len) == 0) {
            return i;
        }
    }
    return -1;
}

const char *rsl_strerror(int err) {
    switch (err) {
    case 0:
        return "success";
#define RSL_X_(e, v, m)                                                                    \
    case v:                                                                                \
        return m;
        RSL_ERRORS(RSL_X_)
#undef RSL_X_
    default:
        return "unknown error";
    }
}

void rsl_free(void *p) {
    free(p);
}

/* ---- options, clock, log -------------------------------------------------------------- */

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
}

int64_t rsl__rt_now(struct rsl_runtime *rt) {
    return rt->o.clock ? rt->o.clock(rt->o.clock_ud) : rsl__clock_now();
}

static void default_log(void *ud, rsl_log_level level, const char *msg) {
    static const char *names[] = {"error", "warn", "info", "debug"};
    if (level <= RSL_LOG_WARN) {
        fprintf(stderr, "resilua: %s: %s\n", names[level], msg);
    }
}

void rsl__log(struct rsl_runtime *rt, rsl_log_level level, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (rt->o.log) {
        rt->o.log(rt->o.log_ud, level, msg);
    } else {
        default_log(NULL, level, msg);
    }
}

/* ---- generations ---------------------------------------------------------------------- */

_Atomic int rsl__genr_live;

void rsl__genr_unref(rsl__genr *G) {
    if (!G || atomic_fetch_sub_explicit(&G->refs, 1, memory_order_acq_rel) != 1) {
        return;
    }
    atomic_fetch_sub_explicit(&rsl__genr_live, 1, memory_order_relaxed);
    if (G->api) {
        for (int i = 0; i < G->g->nstates; i++) {
            rsl__lapi_free(G->api[i]);
        }
        free(G->api);
    }
    if (G->budgets) {
        for (int i = 0; i < G->g->npolicies; i++) {
            free(G->budgets[i]);
        }
        free(G->budgets);
    }
    for (int i = 0; i < G->g->npolicies; i++) {
        rsl__pview_free(G->g->policies[i].stats);
        G->g->policies[i].stats = NULL;
    }
    rsl__gen_free(G->g);
    free(G);
}

/* The runtime's cache for "policy/step", created on first use. Under rt->lock. */
static rsl__cache *cache_for(struct rsl_runtime *rt, const char *policy, const char *step,
                             int64_t max) {
    char name[512];
    snprintf(name, sizeof(name), "%s/%s", policy, step);
    for (int i = 0; i < rt->ncaches; i++) {
        if (strcmp(rt->caches[i].name, name) == 0) {
            rsl__cache_set_max(rt->caches[i].cache, max);
            return rt->caches[i].cache;
        }
    }
    void *p = realloc(rt->caches, (size_t)(rt->ncaches + 1) * sizeof(*rt->caches));
    if (!p) {
        return NULL;
    }
    rt->caches = p;
    rsl__cache *c = rsl__cache_new(max);
    char *n = strdup(name);
    if (!c || !n) {
        rsl__cache_free(c);
        free(n);
        return NULL;
    }
    rt->caches[rt->ncaches].name = n;
    rt->caches[rt->ncaches].cache = c;
    rt->ncaches++;
    return c;
}

static void on_breaker(void *ud, rsl__breaker *b, rsl__breaker_state from, rsl__breaker_state to,
                       const char *reason) {
    struct rsl_runtime *rt = ud;
    rt->o.on_transition(rt->o.on_transition_ud, rsl__breaker_name(b),
                        rsl__breaker_state_name(from), rsl__breaker_state_name(to),
                        reason ? reason : "");
}

/* Wraps a loaded generation with the runtime's per-state bindings. Takes g. */
static rsl__genr *genr_new(struct rsl_runtime *rt, rsl__gen *g) {
    rsl__genr *G = calloc(1, sizeof(*G));
    if (!G) {
        rsl__gen_free(g);
        return NULL;
    }
    G->g = g;
    G->rt = rt;
    /* Breakers this load created get the transition hook before any call can reach them
     * (a generation is published under rt->lock); kept ones have it already. */
    for (int i = 0; rt->o.on_transition && i < g->nguards; i++) {
        if (g->guards[i]->kind == RSL_GUARD_BREAKER &&
            !rsl__breaker_hooked(g->guards[i]->u.breaker)) {
            rsl__breaker_set_hook(g->guards[i]->u.breaker, on_breaker, rt);
        }
    }
    atomic_init(&G->refs, 1);
    atomic_fetch_add_explicit(&rsl__genr_live, 1, memory_order_relaxed);
    G->api = calloc((size_t)g->nstates, sizeof(*G->api));
    G->budgets = calloc((size_t)(g->npolicies ? g->npolicies : 1), sizeof(*G->budgets));
    if (!G->api || !G->budgets) {
        goto fail;
    }
    for (int i = 0; i < g->nstates; i++) {
        if (!(G->api[i] = rsl__lapi_new(rt, G, i))) {
            goto fail;
        }
    }
    pthread_mutex_lock(&rt->lock);
    for (int i = 0; i < g->npolicies; i++) {
        rsl__policy *p = &g->policies[i];
        G->budgets[i] = calloc((size_t)(p->nsteps ? p->nsteps : 1), sizeof(rsl__budget));
        if (!G->budgets[i]) {
            pthread_mutex_unlock(&rt->lock);
            goto fail;
        }
        const char **names = calloc((size_t)(p->nsteps ? p->nsteps : 1), sizeof(*names));
        if (!names) {
            pthread_mutex_unlock(&rt->lock);
            goto fail;
        }
        for (int j = 0; j < p->nsteps; j++) {
            rsl__step *s = &p->steps[j];
            if (s->kind == RSL_STEP_LOCAL_CACHE) {
                s->u.cache.cache = cache_for(rt, p->name, s->name, s->u.cache.max_entries);
            }
            names[j] = s->name;
        }
        p->stats = rsl__metrics_view(&rt->metrics, p->name, names, p->nsteps);
        free(names);
        if (!p->stats) {
            pthread_mutex_unlock(&rt->lock);
            goto fail;
        }
    }
    pthread_mutex_unlock(&rt->lock);
    return G;
fail:
    rsl__genr_unref(G);
    return NULL;
}

/* The current generation, with a reference. */
static rsl__genr *current(struct rsl_runtime *rt) {
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
    pthread_mutex_init(&rt->lock, NULL);
    pthread_mutex_init(&rt->cancel_lock, NULL);
    pthread_mutex_init(&rt->reload_lock, NULL);
    pthread_mutex_init(&rt->reg_lock, NULL);
    rt->guards = rsl__guards_new();
    rt->wd = rsl__watchdog_new(0);
    if (!rt->dir || !rt->guards || !rt->wd) {
        rsl_close(rt);
        return RSL_ENOMEM;
    }
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
    if (rt->o.loop) {
        if ((rc = rsl__worker_attach(&rt->workers[0], rt, rt->o.loop)) < 0) {
            rsl_close(rt);
            return rc;
        }
        rt->nworkers = 1;
    }
    for (int i = 0; !rt->o.loop && i < rt->o.workers; i++) {
        if ((rc = rsl__worker_start(&rt->workers[i], rt, i)) < 0) {
            rsl_close(rt);
            return rc;
        }
        rt->nworkers = i + 1;
    }
    *out = rt;
    return 0;
}

/* Frees what a stopped runtime holds. */
static void rt_free(rsl_runtime *rt) {
    free(rt->workers);
    rsl__genr_unref(rt->cur);
    rsl__watchdog_free(rt->wd);
    rsl__guards_free(rt->guards);
    rsl__metrics_free(&rt->metrics);
    for (int i = 0; i < rt->ncaches; i++) {
        free(rt->caches[i].name);
        rsl__cache_free(rt->caches[i].cache);
    }
    free(rt->caches);
    for (int i = 0; i < rt->nsteps; i++) {
        free(rt->steps[i].name);
    }
    free(rt->steps);
    json_decref(rt->last_reload);
    free(rt->tracked);
    pthread_mutex_destroy(&rt->cancel_lock);
    pthread_mutex_destroy(&rt->reg_lock);
    pthread_mutex_destroy(&rt->reload_lock);
    pthread_mutex_destroy(&rt->lock);
    free(rt->redis_host);
    free(rt->dir);
    free(rt);
}

/* Attached: the async handle closed (teardown 1 -> 2); free once no call is left. */
void rsl__rt_attached_closed(struct rsl_runtime *rt) {
    atomic_store(&rt->teardown, 2);
    if (atomic_load(&rt->live) == 0) {
        rt_free(rt);
    }
}

void rsl__rt_call_freed(struct rsl_runtime *rt) {
    if (atomic_fetch_sub(&rt->live, 1) == 1 && atomic_load(&rt->teardown) == 2) {
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
        rsl__log(rt, RSL_LOG_INFO, "%s: reloaded, generation %llu", rt->dir,
                 (unsigned long long)number);
    } else {
        rsl__log(rt, RSL_LOG_ERROR, "%s: reload failed, generation %llu keeps serving: %s", rt->dir,
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
    rsl__genr *G = current(rt);
    if (!G) {
        return RSL_ECLOSED;
    }
    rsl__policy *p = rsl__gen_policy(G->g, policy);
    if (!p) {
        rsl__genr_unref(G);
        return RSL_ENOENT;
    }
    rsl__worker *self = rsl__worker_self(); /* its kept call objects: see chain.c */
    rsl__call *c = self && self->rt == rt ? rsl__call_spare(self) : NULL;
    if (!c && !(c = calloc(1, sizeof(*c)))) {
        rsl__genr_unref(G);
        return RSL_ENOMEM;
    }
    c->msg.type = RSL_MSG_CALL;
    c->rt = rt;
    atomic_fetch_add(&rt->live, 1); /* rsl__call_free takes it back */
    c->G = G;
    c->p = p;
    c->pidx = (int)(p - G->g->policies);
    c->cb = cb;
    c->ud = ud;
    c->id = atomic_fetch_add_explicit(&rt->next_id, 1, memory_order_relaxed) + 1;
    c->req = rsl__req_copy(req, c->req, &c->req_size);
    rsl_result *r = c->req ? rsl__result_new(c) : NULL;
    if (!r) {
        rsl__call_free(c);
        return RSL_ENOMEM;
    }
    c->res = r;
    *out = c;
    return 0;
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
    int local = w && w->rt == rt;
    if (!local) {
        uint64_t n = atomic_fetch_add_explicit(&rt->rr, 1, memory_order_relaxed);
        w = &rt->workers[n % (uint64_t)rt->nworkers];
    }
    c->w = w;
    c->id = (c->id << 8) | (uint64_t)w->index; /* rsl_cancel finds the worker in the id */
    if (id) {
        /* Reachable by rsl_cancel until it finishes (a short list: only calls made with an
         * id, i.e. rsl_call_id and rsl_call_sync, are on it). */
        pthread_mutex_lock(&rt->cancel_lock);
        if (rt->ntracked == rt->tracked_cap) {
            int cap = rt->tracked_cap ? rt->tracked_cap * 2 : 64;
            rsl__call **t = realloc(rt->tracked, (size_t)cap * sizeof(*t));
            if (!t) {
                pthread_mutex_unlock(&rt->cancel_lock);
                rsl__call_free(c);
                return RSL_ENOMEM;
            }
            rt->tracked = t;
            rt->tracked_cap = cap;
        }
        rt->tracked[rt->ntracked++] = c;
        c->tracked = 1;
        pthread_mutex_unlock(&rt->cancel_lock);
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
            rsl__rt_untrack(rt, c);
        }
        rsl__call_free(c);
        return RSL_ECLOSED;
    }
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

void rsl__rt_untrack(struct rsl_runtime *rt, rsl__call *c) {
    pthread_mutex_lock(&rt->cancel_lock);
    for (int i = rt->ntracked - 1; i >= 0; i--) {
        if (rt->tracked[i] == c) {
            rt->tracked[i] = rt->tracked[--rt->ntracked];
            break;
        }
    }
    c->tracked = 0;
    pthread_mutex_unlock(&rt->cancel_lock);
}

int rsl_cancel(rsl_runtime *rt, uint64_t id) {
    if (!rt || id == 0 || (id & 0xff) >= (uint64_t)rt->nworkers ||
        (id >> 8) > atomic_load_explicit(&rt->next_id, memory_order_relaxed)) {
        return RSL_EINVAL;
    }
    atomic_fetch_add(&rt->senders, 1);
    if (atomic_load(&rt->closing)) {
        atomic_fetch_sub(&rt->senders, 1);
        return RSL_ECLOSED;
    }
    /* A call still queued or running Lua sees the flag at its next stage; one waiting on
     * something is woken by the message. */
    pthread_mutex_lock(&rt->cancel_lock);
    for (int i = 0; i < rt->ntracked; i++) {
        if (rt->tracked[i]->id == id) {
            atomic_store_explicit(&rt->tracked[i]->cancel_req, 1, memory_order_relaxed);
            break;
        }
    }
    pthread_mutex_unlock(&rt->cancel_lock);
    int rc = rsl__worker_post_cancel(&rt->workers[id & 0xff], id);
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
    pthread_mutex_lock(&rt->lock);
    for (int i = 0; i < rt->nsteps; i++) {
        if (strcmp(rt->steps[i].name, name) == 0) {
            rt->steps[i].fn = fn;
            rt->steps[i].ud = ud;
            pthread_mutex_unlock(&rt->lock);
            return 0;
        }
    }
    rsl__hoststep *p = realloc(rt->steps, (size_t)(rt->nsteps + 1) * sizeof(*p));
    char *n = strdup(name);
    if (!p || !n) {
        if (p) {
            rt->steps = p;
        }
        free(n);
        pthread_mutex_unlock(&rt->lock);
        return RSL_ENOMEM;
    }
    rt->steps = p;
    rt->steps[rt->nsteps++] = (rsl__hoststep){n, fn, ud};
    pthread_mutex_unlock(&rt->lock);
    return 0;
}

int rsl__rt_hoststep(struct rsl_runtime *rt, const char *name, rsl__hoststep *out) {
    int rc = RSL_ENOENT;
    pthread_mutex_lock(&rt->lock);
    for (int i = 0; i < rt->nsteps; i++) {
        if (strcmp(rt->steps[i].name, name) == 0) {
            *out = rt->steps[i];
            rc = 0;
            break;
        }
    }
    pthread_mutex_unlock(&rt->lock);
    return rc;
}

int rsl__rt_gauge_find(struct rsl_runtime *rt, const char *name, size_t len) {
    int n = atomic_load_explicit(&rt->ngauges, memory_order_acquire);
    for (int i = 0; i < n; i++) {
        if (strlen(rt->gauges[i].name) == len && memcmp(rt->gauges[i].name, name, len) == 0) {
            return i;
        }
    }
    return -1;
}

double rsl__rt_gauge_get(struct rsl_runtime *rt, int i) {
    uint64_t bits = atomic_load_explicit(&rt->gauges[i].bits, memory_order_relaxed);
    double v;
    memcpy(&v, &bits, sizeof(v));
    return v;
}

int rsl_gauge_set(rsl_runtime *rt, const char *name, double value) {
    if (!rt || !name) {
        return RSL_EINVAL;
    }
    size_t len = strlen(name);
    if (len == 0 || len >= sizeof(rt->gauges[0].name)) {
        return RSL_EINVAL;
    }
    uint64_t bits;
    memcpy(&bits, &value, sizeof(bits));
    int i = rsl__rt_gauge_find(rt, name, len);
    if (i < 0) {
        pthread_mutex_lock(&rt->lock);
        i = rsl__rt_gauge_find(rt, name, len);
        if (i < 0) {
            int n = atomic_load(&rt->ngauges);
            if (n >= RSL_MAX_GAUGES) {
                pthread_mutex_unlock(&rt->lock);
                return RSL_ENOMEM;
            }
            memcpy(rt->gauges[n].name, name, len + 1);
            atomic_store_explicit(&rt->gauges[n].bits, bits, memory_order_relaxed);
            atomic_store_explicit(&rt->ngauges, n + 1, memory_order_release);
            pthread_mutex_unlock(&rt->lock);
            return 0;
        }
        pthread_mutex_unlock(&rt->lock);
    }
    atomic_store_explicit(&rt->gauges[i].bits, bits, memory_order_relaxed);
    return 0;
}

/* ---- r.expose routes ------------------------------------------------------------------ */

static int hexval(int ch) {
    if (ch >= '0' && ch <= '9') {
        return ch - '0';
    }
    if (ch >= 'a' && ch <= 'f') {
        return ch - 'a' + 10;
    }
    if (ch >= 'A' && ch <= 'F') {
        return ch - 'A' + 10;
    }
    return -1;
}

/* Percent-decodes n bytes of a path segment into out (n bytes of room); a '%' without two
 * hex digits stays as it is.  Returns the decoded length. */
static size_t pct_decode(const char *s, size_t n, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int hi, lo;
        if (s[i] == '%' && i + 2 < n && (hi = hexval((unsigned char)s[i + 1])) >= 0 &&
            (lo = hexval((unsigned char)s[i + 2])) >= 0) {
            out[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            out[o++] = s[i];
        }
    }
    return o;
}

/* Segments of a request path: at most this many are matched (a route has as many as its
 * own path, and no sane route has 64). */
#define EXPOSE_MAX_SEGS 64

int rsl_expose_match(rsl_runtime *rt, const char *method, const char *path, size_t len,
                     rsl_req *req, char *policy, size_t policy_cap) {
    if (!rt || !method || (!path && len) || !req || !policy || !policy_cap) {
        return RSL_EINVAL;
    }
    if (atomic_load(&rt->closing)) {
        return RSL_ECLOSED;
    }
    if (len == 0 || path[0] != '/') {
        return RSL_ENOENT;
    }
    /* The request's segments, decoded once into one block. */
    const char *seg[EXPOSE_MAX_SEGS];
    size_t segn[EXPOSE_MAX_SEGS];
    int nseg = 0;
    char stack[512];
    char *dec = len <= sizeof(stack) ? stack : malloc(len);
    if (!dec) {
        return RSL_ENOMEM;
    }
    size_t used = 0;
    for (size_t i = 1; i <= len && nseg < EXPOSE_MAX_SEGS;) {
        size_t j = i;
        while (j < len && path[j] != '/') {
            j++;
        }
        seg[nseg] = dec + used;
        segn[nseg] = pct_decode(path + i, j - i, dec + used);
        used += segn[nseg];
        nseg++;
        i = j + 1;
    }
    rsl__genr *G = current(rt);
    if (!G) {
        if (dec != stack) {
            free(dec);
        }
        return RSL_ECLOSED;
    }
    const rsl__expose *best = NULL;
    uint64_t best_score = 0;
    int get_like = strcmp(method, "HEAD") == 0;
    for (int k = 0; k < G->g->nexpose; k++) {
        const rsl__expose *e = &G->g->expose[k];
        int exact = strcmp(e->method, method) == 0;
        if (!exact && strcmp(e->method, "*") != 0 && !(get_like && strcmp(e->method, "GET") == 0)) {
            continue;
        }
        /* Walk the route's segments beside the request's; literal segments earlier in the
         * path weigh more (bit 62 - position), the exact method breaks ties. */
        uint64_t score = 0;
        int n = 0, ok = 1;
        for (const char *p = e->path + 1;; n++) {
            const char *q = strchr(p, '/');
            size_t pl = q ? (size_t)(q - p) : strlen(p);
            if (n >= nseg) {
                ok = 0;
                break;
            }
            if (pl > 0 && p[0] == ':') {
                ok = segn[n] > 0;
            } else {
                ok = pl == segn[n] && memcmp(p, seg[n], pl) == 0;
                if (n < 62) {
                    score |= (uint64_t)1 << (62 - n);
                }
            }
            if (!ok || !q) {
                break;
            }
            p = q + 1;
        }
        if (!ok || n + 1 != nseg) {
            continue;
        }
        score = score * 2 + (uint64_t)exact;
        if (!best || score > best_score) {
            best = e;
            best_score = score;
        }
    }
    int rc = RSL_ENOENT;
    if (best && best->policy >= 0) {
        const char *name = G->g->policies[best->policy].name;
        size_t nl = strlen(name);
        rc = nl < policy_cap ? 0 : RSL_EINVAL;
        int n = 0;
        for (const char *p = best->path + 1; rc == 0; n++) {
            const char *q = strchr(p, '/');
            size_t pl = q ? (size_t)(q - p) : strlen(p);
            if (pl > 1 && p[0] == ':') {
                char pname[128];
                if (pl - 1 >= sizeof(pname)) {
                    rc = RSL_EINVAL;
                    break;
                }
                memcpy(pname, p + 1, pl - 1);
                pname[pl - 1] = 0;
                rc = rsl_req_set(req, pname, seg[n], segn[n]);
            }
            if (!q) {
                break;
            }
            p = q + 1;
        }
        if (rc == 0) {
            memcpy(policy, name, nl + 1);
        }
    }
    rsl__genr_unref(G);
    if (dec != stack) {
        free(dec);
    }
    return rc;
}

/* ---- introspection -------------------------------------------------------------------- */

char *rsl_describe_json(rsl_runtime *rt) {
    rsl__genr *G = rt ? current(rt) : NULL;
    if (!G) {
        return NULL;
    }
    json_t *j = rsl__gen_describe(G->g);
    char *s = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(j);
    rsl__genr_unref(G);
    return s;
}

static json_t *guard_state(rsl__guard *g, int64_t now) {
    json_t *o = json_object();
    json_object_set_new(o, "kind", json_string(rsl__guard_kind_name(g->kind)));
    switch (g->kind) {
    case RSL_GUARD_BREAKER: {
        rsl__breaker *b = g->u.breaker;
        json_object_set_new(o, "state",
                            json_string(rsl__breaker_state_name(rsl__breaker_state_at(b, now))));
        json_object_set_new(o, "failure_rate", json_real(rsl__breaker_failure_rate(b, now)));
        json_object_set_new(o, "slow_rate", json_real(rsl__breaker_slow_rate(b, now)));
        json_object_set_new(o, "calls", json_integer(rsl__breaker_calls(b, now)));
        json_object_set_new(o, "p50_ms", json_real((double)rsl__breaker_latency(b, now, 0.5) / 1e6));
        json_object_set_new(o, "p90_ms", json_real((double)rsl__breaker_latency(b, now, 0.9) / 1e6));
        json_object_set_new(o, "p99_ms", json_real((double)rsl__breaker_latency(b, now, 0.99) / 1e6));
        json_object_set_new(o, "open_remaining_ms",
                            json_real((double)rsl__breaker_open_remaining(b, now) / 1e6));
        json_object_set_new(o, "backoff_level", json_integer(rsl__breaker_level(b)));
        json_object_set_new(o, "probes_inflight", json_integer(rsl__breaker_probes_inflight(b)));
        json_object_set_new(o, "rejections", json_integer((json_int_t)rsl__breaker_rejections(b)));
        break;
    }
    case RSL_GUARD_LIMITER:
        json_object_set_new(o, "tokens", json_real(rsl__limiter_tokens(g->u.limiter, now)));
        json_object_set_new(o, "rejections",
                            json_integer((json_int_t)rsl__limiter_rejections(g->u.limiter)));
        break;
    case RSL_GUARD_BULKHEAD:
        json_object_set_new(o, "inflight", json_integer(rsl__bulkhead_inflight(g->u.bulkhead)));
        json_object_set_new(o, "max", json_integer(rsl__bulkhead_max(g->u.bulkhead)));
        json_object_set_new(o, "load", json_real(rsl__bulkhead_load(g->u.bulkhead)));
        json_object_set_new(o, "rejections",
                            json_integer((json_int_t)rsl__bulkhead_rejections(g->u.bulkhead)));
        break;
    }
    return o;
}

char *rsl_state_json(rsl_runtime *rt) {
    if (!rt) {
        return NULL;
    }
    json_t *root = json_object();
    json_t *guards = json_object();
    int64_t now = rsl__rt_now(rt);
    pthread_mutex_lock(&rt->lock);
    json_object_set_new(root, "generation", json_integer((json_int_t)rt->gen_number));
    /* A copy: the record is replaced (and freed) by the next reload. */
    json_object_set_new(root, "last_reload",
                        rt->last_reload ? json_deep_copy(rt->last_reload) : json_null());
    json_t *reloads = json_object();
    json_object_set_new(reloads, "ok", json_integer((json_int_t)rt->reloads_ok));
    json_object_set_new(reloads, "failed", json_integer((json_int_t)rt->reloads_failed));
    json_object_set_new(root, "reloads", reloads);
    pthread_mutex_unlock(&rt->lock);
    /* The registry lock, not rt->lock: walking every guard must not stall calls. */
    pthread_mutex_lock(&rt->reg_lock);
    for (size_t i = 0; i < rsl__guards_count(rt->guards); i++) {
        rsl__guard *g = rsl__guards_at(rt->guards, i);
        json_object_set_new(guards, g->name, guard_state(g, now));
    }
    pthread_mutex_unlock(&rt->reg_lock);
    json_object_set_new(root, "guards", guards);
    char *s = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    json_decref(root);
    return s;
}

static int metric_guard(rsl__buf *b, const char *name, const char *label, const char *guard,
                        const char *l2, const char *v2, const char *l3, const char *v3,
                        uint64_t value) {
    int rc = rsl__buf_append(b, name, strlen(name));
    rc |= rsl__buf_append(b, "{", 1);
    rc |= rsl__buf_append(b, label, strlen(label));
    rc |= rsl__buf_append(b, "=", 1);
    rc |= rsl__metrics_label(b, guard);
    if (l2) {
        rc |= rsl__buf_append(b, ",", 1);
        rc |= rsl__buf_append(b, l2, strlen(l2));
        rc |= rsl__buf_append(b, "=", 1);
        rc |= rsl__metrics_label(b, v2);
    }
    if (l3) {
        rc |= rsl__buf_append(b, ",", 1);
        rc |= rsl__buf_append(b, l3, strlen(l3));
        rc |= rsl__buf_append(b, "=", 1);
        rc |= rsl__metrics_label(b, v3);
    }
    char num[32];
    int n = snprintf(num, sizeof(num), "} %llu\n", (unsigned long long)value);
    rc |= rsl__buf_append(b, num, (size_t)n);
    return rc;
}

#define HELP(b, name, type, text)                                                          \
    rsl__buf_append(b, "# HELP " name " " text "\n# TYPE " name " " type "\n",            \
                    strlen("# HELP " name " " text "\n# TYPE " name " " type "\n"))

char *rsl_metrics_text(rsl_runtime *rt) {
    if (!rt) {
        return NULL;
    }
    rsl__buf b = {0};
    int rc = 0;
    int64_t now = rsl__rt_now(rt);
    /* The counters under rt->lock, the guards under reg_lock: never both at once. */
    pthread_mutex_lock(&rt->lock);
    rc |= rsl__metrics_render(&rt->metrics, &b);
    unsigned long long reloads_ok = rt->reloads_ok, reloads_failed = rt->reloads_failed;
    unsigned long long generation = rt->gen_number;
    pthread_mutex_unlock(&rt->lock);
    pthread_mutex_lock(&rt->reg_lock);
    size_t ng = rsl__guards_count(rt->guards);
    rc |= HELP(&b, "resilua_breaker_state", "gauge", "1 for the breaker's current state.");
    for (size_t i = 0; i < ng; i++) {
        rsl__guard *g = rsl__guards_at(rt->guards, i);
        if (g->kind == RSL_GUARD_BREAKER) {
            rsl__breaker_state st = rsl__breaker_state_at(g->u.breaker, now);
            for (int s = 0; s < RSL_BREAKER__COUNT; s++) {
                rc |= metric_guard(&b, "resilua_breaker_state", "breaker", g->name, "state",
                                   rsl__breaker_state_name((rsl__breaker_state)s), NULL, NULL,
                                   (int)st == s);
            }
        }
    }
    rc |= HELP(&b, "resilua_breaker_transitions_total", "counter", "Breaker state changes.");
    for (size_t i = 0; i < ng; i++) {
        rsl__guard *g = rsl__guards_at(rt->guards, i);
        if (g->kind != RSL_GUARD_BREAKER) {
            continue;
        }
        for (int f = 0; f < RSL_BREAKER__COUNT; f++) {
            for (int t = 0; t < RSL_BREAKER__COUNT; t++) {
                uint64_t v = f == t ? 0
                                    : rsl__breaker_transitions(g->u.breaker, (rsl__breaker_state)f,
                                                               (rsl__breaker_state)t);
                if (v) {
                    rc |= metric_guard(&b, "resilua_breaker_transitions_total", "breaker",
                                       g->name, "from",
                                       rsl__breaker_state_name((rsl__breaker_state)f), "to",
                                       rsl__breaker_state_name((rsl__breaker_state)t), v);
                }
            }
        }
    }
    rc |= HELP(&b, "resilua_guard_rejections_total", "counter", "Calls a guard said no to.");
    for (size_t i = 0; i < ng; i++) {
        rsl__guard *g = rsl__guards_at(rt->guards, i);
        uint64_t v = g->kind == RSL_GUARD_BREAKER   ? rsl__breaker_rejections(g->u.breaker)
                     : g->kind == RSL_GUARD_LIMITER ? rsl__limiter_rejections(g->u.limiter)
                                                    : rsl__bulkhead_rejections(g->u.bulkhead);
        rc |= metric_guard(&b, "resilua_guard_rejections_total", "guard", g->name, NULL, NULL,
                           NULL, NULL, v);
    }
    rc |= HELP(&b, "resilua_bulkhead_inflight", "gauge", "Calls inside a bulkhead now.");
    for (size_t i = 0; i < ng; i++) {
        rsl__guard *g = rsl__guards_at(rt->guards, i);
        if (g->kind == RSL_GUARD_BULKHEAD) {
            int64_t v = rsl__bulkhead_inflight(g->u.bulkhead);
            rc |= metric_guard(&b, "resilua_bulkhead_inflight", "bulkhead", g->name, NULL, NULL,
                               NULL, NULL, v > 0 ? (uint64_t)v : 0);
        }
    }
    char tail[512];
    int n = snprintf(tail, sizeof(tail),
                     "# HELP resilua_reloads_total Policy reloads, by result.\n"
                     "# TYPE resilua_reloads_total counter\n"
                     "resilua_reloads_total{result=\"ok\"} %llu\n"
                     "resilua_reloads_total{result=\"error\"} %llu\n"
                     "# HELP resilua_policy_generation The policy generation serving now.\n"
                     "# TYPE resilua_policy_generation gauge\n"
                     "resilua_policy_generation %llu\n",
                     reloads_ok, reloads_failed, generation);
    pthread_mutex_unlock(&rt->reg_lock);
    rc |= rsl__buf_append(&b, tail, (size_t)n);
    if (rc) {
        rsl__buf_free(&b);
        return NULL;
    }
    return b.p;
}

int rsl_check(const char *policy_dir, char **json, char *err, size_t errlen) {
    char dummy[1];
    if (json) {
        *json = NULL;
    }
    if (!policy_dir) {
        return RSL_EINVAL;
    }
    rsl__guards *reg = rsl__guards_new();
    rsl__watchdog *wd = rsl__watchdog_new(0); /* a policy file looping at load is stopped */
    if (!reg || !wd) {
        rsl__guards_free(reg);
        rsl__watchdog_free(wd);
        return RSL_ENOMEM;
    }
    rsl_options d;
    rsl_options_init(&d);
    rsl__gen_opts go = {.nstates = 1, .mem_limit = d.lua_mem_limit, .wd = wd, .stripes = 1};
    rsl__gen *g = NULL;
    rsl__load_report rep = {0};
    int rc = rsl__gen_load(policy_dir, reg, &go, &g, &rep, err ? err : dummy,
                           err ? errlen : sizeof(dummy));
    if (rc == 0) {
        if (json) {
            json_t *j = rsl__gen_describe(g);
            if (j && rep.warnings) {
                json_object_set_new(j, "warnings", json_string(rep.warnings));
            }
            *json = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
            json_decref(j);
        }
        rsl__gen_free(g);
    }
    rsl__load_report_free(&rep);
    rsl__guards_free(reg);
    rsl__watchdog_free(wd);
    return rc;
}
