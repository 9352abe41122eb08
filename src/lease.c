/*
 * lease -- a global rate limit through Redis, spent locally (lease.h).
 *
 * Layer: the guards' level, above redis and limiter.
 *
 * Threads: see lease.h.  Ownership: the registry owns its leases (and their names, keys
 * and fallback limiters) and frees them all in rsl__leases_free.
 */
#include "lease.h"

#include "clock.h"
#include "resilua.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The bucket, refilled by Redis' own clock (instances need not agree on time), and the
 * instances seen asking in the last ALIVE ms.  KEYS: bucket, instances.  ARGV: tokens per
 * ms, burst, tokens wanted, this instance, ALIVE ms, the bucket's TTL ms.  Returns
 * { granted, instances alive, ms until `wanted` more would be there }. */
static const char SCRIPT_TEXT[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local rate, burst, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])\n"
    "local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')\n"
    "local tokens, ts = tonumber(b[1]), tonumber(b[2])\n"
    "if not tokens then tokens, ts = burst, now end\n"
    "tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)\n"
    "local grant = math.min(want, math.floor(tokens))\n"
    "tokens = tokens - grant\n"
    "redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[6])\n"
    "redis.call('ZADD', KEYS[2], now, ARGV[4])\n"
    "redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[5]))\n"
    "redis.call('PEXPIRE', KEYS[2], ARGV[5])\n"
    "local wait = 0\n"
    "if grant < want then wait = math.ceil((want - grant - tokens) / rate) end\n"
    "return { grant, redis.call('ZCARD', KEYS[2]), wait }\n";
static rsl__redis_script SCRIPT = {.text = SCRIPT_TEXT};

struct rsl__lease {
    char *name, *bucket_key, *inst_key;
    rsl__leases *owner;
    _Atomic double rate, burst;
    _Atomic int64_t per_ns, lease;
    _Atomic int on_down;
    _Atomic int64_t pool;     /* tokens leased, not yet spent */
    _Atomic int asks;         /* refills out, each for one chunk (a quarter lease) */
    _Atomic int64_t progress; /* the last reply, or the first ask since none was out */
    _Atomic int64_t next_ask; /* not before (Redis said the bucket is empty; a probe) */
    _Atomic int mode;
    _Atomic int64_t instances; /* alive, learned from Redis; 1 until known */
    _Atomic uint64_t refills, granted, errors, rejections;
    rsl__limiter *local;       /* DOWN with on_redis_down "local": rate / instances */
    _Atomic int64_t local_for; /* the instance count `local` is set for */
    _Atomic int64_t first;     /* the first tend (real time): how long it has been starting */
    /* A key's lease (rsl__lease_new_key): its keyed guard's lease, which its counts and
     * mode go to as well (what /state and /metrics show, and the log); NULL otherwise. */
    rsl__lease *agg;
    _Atomic int refs; /* a key's lease: its child guard's and each refill's in flight */
    struct rsl__lease *next;         /* the registry's named leases */
    struct rsl__lease *kprev, *knext; /* the registry's keys' leases (under its mu) */
};

struct rsl__leases {
    char *prefix;
    char *instance;
    const rsl__env *env;
    rsl__lease *head;
    /* Keys' leases alive, so that the registry frees those a refill still held when the
     * workers stopped (rsl__redis_close drops a reply's callback, and its reference). */
    pthread_mutex_t mu;
    rsl__lease *keys;
};

/* n more of counter `field` of l, and of its keyed guard's lease. */
#define COUNT(l, field, n)                                                                   \
    do {                                                                                     \
        atomic_fetch_add_explicit(&(l)->field, (n), memory_order_relaxed);                   \
        if ((l)->agg) {                                                                      \
            atomic_fetch_add_explicit(&(l)->agg->field, (n), memory_order_relaxed);          \
        }                                                                                    \
    } while (0)

static void lease_free(rsl__lease *l) {
    rsl__limiter_free(l->local);
    free(l->name);
    free(l->bucket_key);
    free(l->inst_key);
    free(l);
}

rsl__leases *rsl__leases_new(const char *prefix, const char *instance, const rsl__env *env) {
    rsl__leases *ls = calloc(1, sizeof(*ls));
    if (!ls) {
        return NULL;
    }
    ls->env = env;
    pthread_mutex_init(&ls->mu, NULL);
    ls->prefix = strdup(prefix ? prefix : "resilua:");
    ls->instance = strdup(instance ? instance : "instance");
    if (!ls->prefix || !ls->instance) {
        rsl__leases_free(ls);
        return NULL;
    }
    return ls;
}

void rsl__leases_free(rsl__leases *ls) {
    if (!ls) {
        return;
    }
    for (rsl__lease *l = ls->head, *n; l; l = n) {
        n = l->next;
        lease_free(l);
    }
    for (rsl__lease *l = ls->keys, *n; l; l = n) {
        n = l->knext;
        lease_free(l);
    }
    pthread_mutex_destroy(&ls->mu);
    free(ls->prefix);
    free(ls->instance);
    free(ls);
}

/* The local limiter's share for n instances: rate / n, burst / n (at least 1). */
static int local_conf(const rsl__lease_conf *c, int64_t n, rsl__limiter_conf *lc) {
    lc->rate = c->rate / (double)(n > 0 ? n : 1);
    lc->per_ns = c->per_ns;
    lc->burst = c->burst / (double)(n > 0 ? n : 1);
    lc->burst = lc->burst < 1 ? 1 : lc->burst;
    return lc->rate > 0 ? 0 : RSL_EINVAL;
}

static void store_conf(rsl__lease *l, const rsl__lease_conf *c) {
    atomic_store_explicit(&l->rate, c->rate, memory_order_relaxed);
    atomic_store_explicit(&l->burst, c->burst, memory_order_relaxed);
    atomic_store_explicit(&l->per_ns, c->per_ns, memory_order_relaxed);
    atomic_store_explicit(&l->lease, c->lease, memory_order_relaxed);
    atomic_store_explicit(&l->on_down, c->on_down, memory_order_relaxed);
}

static void load_conf(const rsl__lease *l, rsl__lease_conf *c) {
    c->rate = atomic_load_explicit(&l->rate, memory_order_relaxed);
    c->burst = atomic_load_explicit(&l->burst, memory_order_relaxed);
    c->per_ns = atomic_load_explicit(&l->per_ns, memory_order_relaxed);
    c->lease = atomic_load_explicit(&l->lease, memory_order_relaxed);
    c->on_down = atomic_load_explicit(&l->on_down, memory_order_relaxed);
}

static char *key(const rsl__leases *ls, const char *name, const char *what) {
    /* {name}: a Redis Cluster hash tag, so one script's keys share a slot. */
    size_t n = strlen(ls->prefix) + strlen(name) + strlen(what) + 4;
    char *k = malloc(n);
    if (k) {
        snprintf(k, n, "%s{%s}:%s", ls->prefix, name, what);
    }
    return k;
}

/* Defaults filled in; 0 when valid. */
static int resolve(const rsl__lease_conf *in, rsl__lease_conf *c) {
    *c = *in;
    c->per_ns = c->per_ns > 0 ? c->per_ns : RSL_NS_PER_S;
    c->burst = c->burst >= 1 ? c->burst : (c->rate < 1 ? 1 : c->rate);
    c->lease = c->lease >= 1 ? c->lease : 1;
    return c->rate > 0 && isfinite(c->rate) && isfinite(c->burst) ? 0 : RSL_EINVAL;
}

int rsl__lease_configure(rsl__lease *l, const rsl__lease_conf *in) {
    rsl__lease_conf c, cur;
    if (resolve(in, &c) < 0) {
        return 0;
    }
    load_conf(l, &cur);
    if (c.rate == cur.rate && c.per_ns == cur.per_ns && c.burst == cur.burst &&
        c.lease == cur.lease && c.on_down == cur.on_down) {
        return 0;
    }
    store_conf(l, &c);
    atomic_store_explicit(&l->local_for, 0, memory_order_relaxed); /* re-derive its share */
    return 1;
}

/* A lease of `name` with conf c (resolved), in no registry yet: one reference. */
static rsl__lease *make(rsl__leases *ls, const char *name, const rsl__lease_conf *c) {
    rsl__limiter_conf lc;
    rsl__lease *l = calloc(1, sizeof(*l));
    if (!l || local_conf(c, 1, &lc) < 0) {
        free(l);
        return NULL;
    }
    l->owner = ls;
    l->name = strdup(name);
    l->bucket_key = key(ls, name, "tb");
    l->inst_key = key(ls, name, "inst");
    l->local = rsl__limiter_new(name, &lc);
    if (!l->name || !l->bucket_key || !l->inst_key || !l->local) {
        lease_free(l);
        return NULL;
    }
    store_conf(l, c);
    atomic_init(&l->refs, 1);
    atomic_init(&l->instances, 1);
    atomic_init(&l->local_for, 1);
    atomic_init(&l->pool, c->lease); /* the credit before the first lease (lease.h) */
    atomic_init(&l->mode, RSL_LEASE_STARTING);
    return l;
}

rsl__lease *rsl__leases_get(rsl__leases *ls, const char *name, const rsl__lease_conf *in) {
    rsl__lease_conf c;
    rsl__limiter_conf lc;
    if (!ls || resolve(in, &c) < 0 || local_conf(&c, 1, &lc) < 0) {
        return NULL;
    }
    for (rsl__lease *l = ls->head; l; l = l->next) {
        if (strcmp(l->name, name) == 0) {
            return l;
        }
    }
    rsl__lease *l = make(ls, name, &c);
    if (l) {
        l->next = ls->head;
        ls->head = l;
    }
    return l;
}

rsl__lease *rsl__lease_new_key(rsl__lease *parent, const char *k, size_t len) {
    /* "NAME[KEY]", the key's bytes other than printable ASCII (and '%', the braces that
     * would end the hash tag, and the brackets) as %XX: one Redis key per key value. */
    char name[3 * 256 + 256];
    int n = snprintf(name, sizeof(name), "%.200s[", parent->name);
    for (size_t i = 0; i < len && n < (int)sizeof(name) - 5; i++) {
        unsigned char ch = (unsigned char)k[i];
        if (ch < 0x21 || ch > 0x7e || strchr("%{}[]", ch)) {
            n += snprintf(name + n, sizeof(name) - (size_t)n, "%%%02X", ch);
        } else {
            name[n++] = (char)ch;
        }
    }
    snprintf(name + n, sizeof(name) - (size_t)n, "]");
    rsl__lease_conf c;
    load_conf(parent, &c);
    rsl__lease *l = make(parent->owner, name, &c);
    if (l) {
        rsl__leases *ls = l->owner;
        l->agg = parent->agg ? parent->agg : parent;
        pthread_mutex_lock(&ls->mu);
        l->knext = ls->keys;
        if (ls->keys) {
            ls->keys->kprev = l;
        }
        ls->keys = l;
        pthread_mutex_unlock(&ls->mu);
    }
    return l;
}

void rsl__lease_unref(rsl__lease *l) {
    if (!l || atomic_fetch_sub_explicit(&l->refs, 1, memory_order_acq_rel) != 1) {
        return;
    }
    if (l->agg) { /* a key's: out of the registry's list */
        rsl__leases *ls = l->owner;
        pthread_mutex_lock(&ls->mu);
        if (l->kprev) {
            l->kprev->knext = l->knext;
        } else {
            ls->keys = l->knext;
        }
        if (l->knext) {
            l->knext->kprev = l->kprev;
        }
        pthread_mutex_unlock(&ls->mu);
    }
    lease_free(l);
}

int64_t rsl__lease_pool(const rsl__lease *l) {
    return atomic_load_explicit(&l->pool, memory_order_relaxed);
}

void rsl__lease_conf_get(const rsl__lease *l, rsl__lease_conf *c) {
    load_conf(l, c);
}

const char *rsl__lease_script(void) {
    return SCRIPT_TEXT;
}

const char *rsl__lease_on_down_name(int on_down) {
    return on_down == RSL_LEASE_OPEN ? "open" : on_down == RSL_LEASE_CLOSED ? "closed" : "local";
}

const char *rsl__lease_mode_name(int mode) {
    return mode == RSL_LEASE_JOINED ? "joined" : mode == RSL_LEASE_DOWN ? "down" : "starting";
}

/* The local limiter (down, "local"), set for the instance count in force (a reconfigure
 * keeps its fill). */
static int local_allow(rsl__lease *l, int64_t now) {
    int64_t n = atomic_load_explicit(&l->instances, memory_order_relaxed);
    int64_t had = atomic_load_explicit(&l->local_for, memory_order_relaxed);
    if (had != n && atomic_compare_exchange_strong_explicit(&l->local_for, &had, n,
                                                            memory_order_relaxed,
                                                            memory_order_relaxed)) {
        rsl__lease_conf c;
        rsl__limiter_conf lc;
        load_conf(l, &c);
        if (local_conf(&c, n, &lc) == 0) {
            rsl__limiter_configure(l->local, &lc, now);
        }
    }
    return rsl__limiter_allow(l->local, now);
}

int rsl__lease_acquire(rsl__lease *l, int64_t now, const char **why) {
    int mode = atomic_load_explicit(&l->mode, memory_order_relaxed);
    if (mode != RSL_LEASE_DOWN) { /* the pool: leased tokens, or the first lease's credit */
        int64_t p = atomic_load_explicit(&l->pool, memory_order_relaxed);
        while (p > 0) {
            if (atomic_compare_exchange_weak_explicit(&l->pool, &p, p - 1, memory_order_relaxed,
                                                      memory_order_relaxed)) {
                return 1;
            }
        }
        *why = mode == RSL_LEASE_JOINED ? "is empty (global)"
                                        : "is empty (global; its first lease is on its way)";
    } else {
        int od = atomic_load_explicit(&l->on_down, memory_order_relaxed);
        if (od == RSL_LEASE_OPEN) {
            return 1;
        }
        if (od == RSL_LEASE_CLOSED) {
            *why = "refuses all: Redis is down and on_redis_down is \"closed\"";
            COUNT(l, rejections, 1);
            return 0;
        }
        if (local_allow(l, now)) {
            return 1;
        }
        *why = "is empty (its local share: Redis is down)";
    }
    COUNT(l, rejections, 1);
    return 0;
}

/* A change of mode, logged once (a key's: on its guard's lease, once for all its keys). */
static void set_mode(rsl__lease *l, int to, const char *why) {
    int from = atomic_exchange_explicit(&l->mode, to, memory_order_relaxed);
    if (l->agg) {
        set_mode(l->agg, to, why);
    } else if (from != to && l->owner->env) {
        rsl__log(l->owner->env, to == RSL_LEASE_DOWN ? RSL_LOG_WARN : RSL_LOG_INFO,
                 "limiter \"%s\": %s -> %s%s%s", l->name, rsl__lease_mode_name(from),
                 rsl__lease_mode_name(to), why ? ": " : "", why ? why : "");
    }
}

/* Tokens per refill: a quarter lease, so that up to four refills in flight keep the pool
 * topped up while it drains (one refill of a whole lease would leave it empty for a round
 * trip whenever the instance spends a lease per round trip). */
static int64_t chunk_of(int64_t lease) {
    return lease >= RSL_LEASE_MAX_ASKS ? lease / RSL_LEASE_MAX_ASKS : 1;
}

/* One refill fewer out (never below 0: a reply after its timeout). */
static void ask_done(rsl__lease *l, int64_t now) {
    int a = atomic_load_explicit(&l->asks, memory_order_relaxed);
    while (a > 0 && !atomic_compare_exchange_weak_explicit(
                        &l->asks, &a, a - 1, memory_order_acq_rel, memory_order_relaxed)) {
    }
    atomic_store_explicit(&l->progress, now, memory_order_relaxed);
}

/* The refill's reply, on the loop of the worker that asked. */
static void refilled(void *ud, const rsl__redis_reply *r) {
    rsl__lease *l = ud;
    long long grant = 0, alive = 0, wait = 0;
    int64_t now = rsl__clock_coarse();
    if (rsl__redis_noscript(&SCRIPT, r)) { /* Redis lost the script: EVAL it next, now */
        atomic_store_explicit(&l->next_ask, 0, memory_order_relaxed);
        ask_done(l, now);
        rsl__lease_unref(l);
        return;
    }
    if (r->outcome != RSL_OUTCOME_OK ||
        sscanf(r->str, "[%lld,%lld,%lld]", &grant, &alive, &wait) != 3 || grant < 0) {
        COUNT(l, errors, 1);
        atomic_store_explicit(&l->next_ask, now + RSL_LEASE_PROBE_NS, memory_order_relaxed);
        ask_done(l, now);
        set_mode(l, RSL_LEASE_DOWN,
                 r->outcome == RSL_OUTCOME_OK ? "a reply it cannot read" : r->error);
        rsl__lease_unref(l); /* the refill's reference */
        return;
    }
    atomic_fetch_add_explicit(&l->pool, grant, memory_order_relaxed);
    COUNT(l, granted, (uint64_t)grant);
    atomic_store_explicit(&l->instances, alive > 0 ? alive : 1, memory_order_relaxed);
    /* Empty in Redis: not again before the tokens are there (at most a second). */
    int64_t w = wait > 1000 ? 1000 : wait;
    atomic_store_explicit(&l->next_ask, grant == 0 ? now + w * RSL_NS_PER_MS : 0,
                          memory_order_relaxed);
    ask_done(l, now);
    set_mode(l, RSL_LEASE_JOINED, NULL);
    rsl__lease_unref(l);
}

void rsl__lease_tend(rsl__lease *l, rsl__redis *r) {
    int mode = atomic_load_explicit(&l->mode, memory_order_relaxed);
    int asks = atomic_load_explicit(&l->asks, memory_order_acquire);
    int64_t lease = atomic_load_explicit(&l->lease, memory_order_relaxed);
    int64_t chunk = chunk_of(lease);
    int64_t pool = atomic_load_explicit(&l->pool, memory_order_relaxed);
    /* Room for one more refill; down, a probe whenever none is out. */
    int room = mode == RSL_LEASE_DOWN
                   ? asks == 0
                   : asks < RSL_LEASE_MAX_ASKS && pool + (asks + 1) * chunk <= lease;
    if (mode == RSL_LEASE_JOINED && !room && pool > 0) {
        return; /* the common case: topped up, or refills on their way and tokens left */
    }
    int64_t t = rsl__clock_coarse(); /* the lease's timing is real time, not the call's */
    if (asks > 0 &&
        t - atomic_load_explicit(&l->progress, memory_order_relaxed) > RSL_LEASE_TIMEOUT_NS) {
        if (atomic_compare_exchange_strong_explicit(&l->asks, &asks, 0, memory_order_acq_rel,
                                                    memory_order_relaxed)) {
            COUNT(l, errors, 1);
            atomic_store_explicit(&l->next_ask, t + RSL_LEASE_PROBE_NS, memory_order_relaxed);
            set_mode(l, RSL_LEASE_DOWN, "Redis did not answer within 250 ms");
        }
        return;
    }
    if (!room || t < atomic_load_explicit(&l->next_ask, memory_order_relaxed)) {
        return;
    }
    int64_t first = 0;
    atomic_compare_exchange_strong_explicit(&l->first, &first, t, memory_order_relaxed,
                                            memory_order_relaxed);
    first = first ? first : t;
    if (!r || !rsl__redis_connected(r)) {
        /* Starting, Redis may still be connecting: wait for it up to one timeout. */
        if (mode == RSL_LEASE_STARTING && r && t - first < RSL_LEASE_TIMEOUT_NS) {
            atomic_store_explicit(&l->next_ask, t + 10 * RSL_NS_PER_MS, memory_order_relaxed);
            return;
        }
        atomic_store_explicit(&l->next_ask, t + RSL_LEASE_PROBE_NS, memory_order_relaxed);
        if (r) {
            COUNT(l, errors, 1);
        }
        set_mode(l, RSL_LEASE_DOWN,
                 r ? "Redis is not connected" : "no Redis (--redis) to share it through");
        return;
    }
    /* Down, one probe at a time; joined, up to four refills. */
    int most = mode == RSL_LEASE_JOINED ? RSL_LEASE_MAX_ASKS : 1;
    if (asks >= most ||
        !atomic_compare_exchange_strong_explicit(&l->asks, &asks, asks + 1, memory_order_acq_rel,
                                                 memory_order_relaxed)) {
        return; /* another worker asked meanwhile */
    }
    if (asks == 0) {
        atomic_store_explicit(&l->progress, t, memory_order_relaxed);
    }
    rsl__lease_conf c;
    load_conf(l, &c);
    double per_ms = (double)c.per_ns / 1e6;
    char rate[40], burst[40], wants[24], alive[24], ttl[24];
    snprintf(rate, sizeof(rate), "%.17g", c.rate / per_ms);
    snprintf(burst, sizeof(burst), "%.17g", c.burst);
    snprintf(wants, sizeof(wants), "%lld", (long long)chunk_of(c.lease));
    snprintf(alive, sizeof(alive), "%d", RSL_LEASE_ALIVE_MS);
    snprintf(ttl, sizeof(ttl), "%lld", (long long)(c.burst / (c.rate / per_ms)) + 1000);
    const char *argv[] = {"2",   l->bucket_key,      l->inst_key, rate, burst,
                          wants, l->owner->instance, alive,       ttl};
    COUNT(l, refills, 1);
    atomic_fetch_add_explicit(&l->refs, 1, memory_order_relaxed); /* the reply's: refilled */
    if (rsl__redis_eval(r, &SCRIPT, 9, argv, refilled, l) != 0) {
        atomic_fetch_sub_explicit(&l->refs, 1, memory_order_relaxed); /* the caller has one */
        COUNT(l, errors, 1);
        atomic_store_explicit(&l->next_ask, t + RSL_LEASE_PROBE_NS, memory_order_relaxed);
        ask_done(l, t);
        set_mode(l, RSL_LEASE_DOWN, "Redis refused the command");
    }
}

void rsl__lease_stats_get(const rsl__lease *l, rsl__lease_stats *s) {
    s->mode = atomic_load_explicit(&l->mode, memory_order_relaxed);
    s->pool = atomic_load_explicit(&l->pool, memory_order_relaxed);
    s->instances = atomic_load_explicit(&l->instances, memory_order_relaxed);
    s->refills = atomic_load_explicit(&l->refills, memory_order_relaxed);
    s->granted = atomic_load_explicit(&l->granted, memory_order_relaxed);
    s->errors = atomic_load_explicit(&l->errors, memory_order_relaxed);
    s->rejections = atomic_load_explicit(&l->rejections, memory_order_relaxed);
}
