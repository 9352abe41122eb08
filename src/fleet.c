/*
 * fleet -- a circuit breaker shared through Redis (fleet.h).
 *
 * Layer: the guards' level, above redis and breaker.
 *
 * Threads: see fleet.h.  What a flush needs and its reply writes (carry, last_cycle,
 * last_state) belong to whoever holds `flushing`; the published verdict's text is behind
 * a mutex, its number (pub) released after it.  Ownership: the registry owns its fleets.
 */
#include "fleet.h"

#include "clock.h"
#include "dec.h"
#include "resilua.h"

#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* KEYS: the verdict's hash.  ARGV: instance, bucket ms, buckets, calls, failures, slow,
 * min_calls, failure_rate, slow_rate, quorum, open_for ms, backoff factor, backoff max ms,
 * jitter (already drawn: j x U(-1, 1), in millionths), probes, probes ok, probes failed, wants a probe
 * lease, the lease's ms.  Returns { state, cycle, ms open left, level, probe lease granted,
 * calls, failures, failing instances, reason, epoch }: the epoch is the Redis time the
 * verdict's hash was made, so that a Redis restarted empty (cycles from 0 again) is not
 * taken for the one an instance last heard from. */
static const char SCRIPT_TEXT[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local k = KEYS[1]\n"
    "local bms, nb = tonumber(ARGV[2]), tonumber(ARGV[3])\n"
    "local calls, fail, slow = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])\n"
    "local b = math.floor(now / bms)\n"
    "local ttl = (nb + 1) * bms\n"
    "if calls > 0 then\n"
    "  local bk = k .. ':' .. b\n"
    "  redis.call('HINCRBY', bk, 'c', calls)\n"
    "  if fail > 0 then redis.call('HINCRBY', bk, 'f', fail) end\n"
    "  if slow > 0 then redis.call('HINCRBY', bk, 's', slow) end\n"
    "  redis.call('PEXPIRE', bk, ttl)\n"
    "  if fail > 0 then\n"
    "    redis.call('SADD', bk .. ':i', ARGV[1])\n"
    "    redis.call('PEXPIRE', bk .. ':i', ttl)\n"
    "  end\n"
    "end\n"
    "local s = redis.call('HMGET', k, 'state', 'until', 'level', 'cycle', 'since', 'reason', 'ok',\n"
    "                     'epoch')\n"
    "local state, untl, level = s[1] or 'closed', tonumber(s[2]) or 0, tonumber(s[3]) or 0\n"
    "local cycle, since, reason = tonumber(s[4]) or 0, tonumber(s[5]) or -1, s[6] or ''\n"
    "local ok = tonumber(s[7]) or 0\n"
    "local epoch = tonumber(s[8]) or now\n"
    "local probes = tonumber(ARGV[15])\n"
    "local function period(lv)\n"
    "  local p = tonumber(ARGV[11]) * tonumber(ARGV[12]) ^ lv\n"
    "  if p > tonumber(ARGV[13]) then p = tonumber(ARGV[13]) end\n"
    "  return math.ceil(p * (1 + tonumber(ARGV[14]) / 1e6))\n"
    "end\n"
    "local function unlease()\n"
    "  for i = 1, probes do redis.call('DEL', k .. ':p' .. i) end\n"
    "end\n"
    "local changed = false\n"
    "if state == 'open' and now >= untl then\n"
    "  state, ok, changed, reason = 'half_open', 0, true, 'open period elapsed'\n"
    "end\n"
    "if state == 'half_open' then\n"
    "  if tonumber(ARGV[17]) > 0 then\n"
    "    if level < 30 then level = level + 1 end\n"
    "    state, untl, changed, reason = 'open', now + period(level), true, 'a probe failed'\n"
    "    unlease()\n"
    "  elseif tonumber(ARGV[16]) > 0 then\n"
    "    ok = ok + tonumber(ARGV[16])\n"
    "    if ok >= probes then\n"
    "      state, level, since, changed, reason = 'closed', 0, b, true, 'probes succeeded'\n"
    "      unlease()\n"
    "    end\n"
    "  end\n"
    "end\n"
    "local n, f, sl, inst = 0, 0, 0, 0\n"
    "local from = b - nb + 1\n"
    "if since >= from then from = since + 1 end\n"
    "if from <= b then\n"
    "  local sets = {}\n"
    "  for i = from, b do\n"
    "    local v = redis.call('HMGET', k .. ':' .. i, 'c', 'f', 's')\n"
    "    n = n + (tonumber(v[1]) or 0)\n"
    "    f = f + (tonumber(v[2]) or 0)\n"
    "    sl = sl + (tonumber(v[3]) or 0)\n"
    "    sets[#sets + 1] = k .. ':' .. i .. ':i'\n"
    "  end\n"
    "  inst = #redis.call('SUNION', unpack(sets))\n"
    "end\n"
    "if state == 'closed' and n > 0 and n >= tonumber(ARGV[7]) and inst >= tonumber(ARGV[10]) then\n"
    "  local fr, sr = tonumber(ARGV[8]), tonumber(ARGV[9])\n"
    "  local fp, sp = 100 * f / n, 100 * sl / n\n"
    "  local what, pct, lim\n"
    "  if fr > 0 and fp >= fr then what, pct, lim = 'failure_rate', fp, fr\n"
    "  elseif sr > 0 and sp >= sr then what, pct, lim = 'slow_rate', sp, sr end\n"
    "  if what then\n"
    "    state, untl, changed = 'open', now + period(level), true\n"
    "    reason = string.format('fleet: %s %.1f%% >= %g%% over %d calls, %d instances failing',\n"
    "                           what, pct, lim, n, inst)\n"
    "  end\n"
    "end\n"
    "local granted = 0\n"
    "if state == 'half_open' and tonumber(ARGV[18]) > 0 then\n"
    "  for i = 1, probes do\n"
    "    if redis.call('SET', k .. ':p' .. i, ARGV[1], 'NX', 'PX', ARGV[19]) then\n"
    "      granted = 1\n"
    "      break\n"
    "    end\n"
    "  end\n"
    "end\n"
    "if changed then cycle = cycle + 1 end\n"
    "redis.call('HSET', k, 'state', state, 'until', untl, 'level', level, 'cycle', cycle,\n"
    "           'since', since, 'reason', reason, 'ok', ok, 'epoch', epoch)\n"
    "redis.call('PEXPIRE', k, 86400000)\n"
    "local rem = 0\n"
    "if state == 'open' then rem = untl - now end\n"
    "return { state, cycle, rem, level, granted, n, f, inst, reason, epoch }\n";
static rsl__redis_script SCRIPT = {.text = SCRIPT_TEXT};

struct rsl__fleet {
    struct rsl__fleet_hot hot; /* first: fleet.h's inline functions read it */
    char *name, *key;
    const rsl__fleets *owner;
    pthread_mutex_t mu; /* conf and the verdict's text */
    rsl__fleet_conf conf;
    rsl__fleet_verdict v; /* pub unused: hot.pub */
    _Atomic int flushing;     /* a flush is out (or being sent) */
    _Atomic int64_t sent_at;  /* when it went (real ns) */
    _Atomic int64_t last;     /* the last flush sent (real ns) */
    _Atomic int timed_out;    /* the flight out has outlived the timeout */
    _Atomic int mode;
    _Atomic int state;        /* published */
    _Atomic int rights;       /* probe leases held */
    _Atomic int64_t rights_until;
    _Atomic int64_t calls, failures, instances;
    _Atomic uint64_t flushes, errors;
    /* The flusher's (whoever holds `flushing`): counts not yet answered for. */
    int64_t carry_calls, carry_fail, carry_slow, carry_since;
    int carry_ok, carry_bad;
    uint64_t seen[RSL_THREAD_SLOTS][3]; /* each slot's counts at the last take */
    rsl__fleet_conf sent;               /* the settings `args` were written for */
    int have_args;
    char args[18][24];                  /* the flush's arguments, the settings' written once */
    int64_t last_cycle; /* -1: none yet */
    int64_t last_epoch;
    int last_state;
    struct rsl__fleet *next;
};

struct rsl__fleets {
    char *prefix;
    char *instance;
    const rsl__env *env;
    rsl__fleet *head;
};

rsl__fleets *rsl__fleets_new(const char *prefix, const char *instance, const rsl__env *env) {
    rsl__fleets *fs = calloc(1, sizeof(*fs));
    if (!fs) {
        return NULL;
    }
    fs->env = env;
    fs->prefix = strdup(prefix ? prefix : "resilua:");
    fs->instance = strdup(instance ? instance : "instance");
    if (!fs->prefix || !fs->instance) {
        rsl__fleets_free(fs);
        return NULL;
    }
    return fs;
}

static void fleet_free(rsl__fleet *f) {
    pthread_mutex_destroy(&f->mu);
    free(f->name);
    free(f->key);
    free(f);
}

void rsl__fleets_free(rsl__fleets *fs) {
    if (!fs) {
        return;
    }
    for (rsl__fleet *f = fs->head, *n; f; f = n) {
        n = f->next;
        fleet_free(f);
    }
    free(fs->prefix);
    free(fs->instance);
    free(fs);
}

static int conf_ok(const rsl__fleet_conf *c) {
    return c->quorum >= 1 && c->flush_ns > 0 && c->window_ns > 0 && c->buckets >= 1 &&
           c->window_ns / c->buckets >= RSL_NS_PER_MS && c->probes >= 1 && c->open_for_ns > 0;
}

/* Field by field: the struct has padding, which memcmp would read. */
static int conf_eq(const rsl__fleet_conf *a, const rsl__fleet_conf *b) {
    return a->quorum == b->quorum && a->flush_ns == b->flush_ns && a->window_ns == b->window_ns &&
           a->buckets == b->buckets && a->min_calls == b->min_calls &&
           a->failure_rate == b->failure_rate && a->slow_rate == b->slow_rate &&
           a->open_for_ns == b->open_for_ns && a->backoff_factor == b->backoff_factor &&
           a->backoff_max_ns == b->backoff_max_ns && a->jitter == b->jitter &&
           a->probes == b->probes;
}

int rsl__fleet_configure(rsl__fleet *f, const rsl__fleet_conf *c) {
    if (!conf_ok(c)) {
        return 0;
    }
    pthread_mutex_lock(&f->mu);
    int changed = !conf_eq(&f->conf, c);
    f->conf = *c;
    pthread_mutex_unlock(&f->mu);
    return changed;
}

void rsl__fleet_conf_get(rsl__fleet *f, rsl__fleet_conf *c) {
    pthread_mutex_lock(&f->mu);
    *c = f->conf;
    pthread_mutex_unlock(&f->mu);
}

rsl__fleet *rsl__fleets_get(rsl__fleets *fs, const char *name, const rsl__fleet_conf *c) {
    if (!fs || !conf_ok(c)) {
        return NULL;
    }
    for (rsl__fleet *f = fs->head; f; f = f->next) {
        if (strcmp(f->name, name) == 0) {
            return f; /* the loader configures it once the load is applied */
        }
    }
    /* Aligned: each worker's slot of counts on a cache line of its own. */
    size_t size = (sizeof(rsl__fleet) + 63) / 64 * 64;
    rsl__fleet *f = aligned_alloc(64, size);
    if (!f) {
        return NULL;
    }
    memset(f, 0, size);
    pthread_mutex_init(&f->mu, NULL);
    f->owner = fs;
    f->name = strdup(name);
    /* {name}: a Redis Cluster hash tag, so the script's keys share a slot. */
    size_t n = strlen(fs->prefix) + strlen(name) + 8;
    f->key = malloc(n);
    if (!f->name || !f->key) {
        fleet_free(f);
        return NULL;
    }
    snprintf(f->key, n, "%s{%s}:fb", fs->prefix, name);
    f->conf = *c;
    f->last_cycle = -1;
    atomic_init(&f->mode, RSL_FLEET_STARTING);
    f->next = fs->head;
    fs->head = f;
    return f;
}

const char *rsl__fleet_script(void) {
    return SCRIPT_TEXT;
}

const char *rsl__fleet_mode_name(int mode) {
    return mode == RSL_FLEET_JOINED ? "joined" : mode == RSL_FLEET_DOWN ? "down" : "starting";
}

const char *rsl__fleet_state_name(int state) {
    return state == RSL_FLEET_OPEN ? "open" : state == RSL_FLEET_HALF_OPEN ? "half_open" : "closed";
}

void rsl__fleet_probe_done(rsl__fleet *f, int failed) {
    atomic_fetch_add_explicit(failed ? &f->hot.probe_fail : &f->hot.probe_ok, 1, memory_order_relaxed);
}

int rsl__fleet_gated(const rsl__fleet *f) {
    return atomic_load_explicit(&f->mode, memory_order_relaxed) == RSL_FLEET_JOINED &&
           atomic_load_explicit(&f->state, memory_order_relaxed) != RSL_FLEET_CLOSED;
}

int rsl__fleet_take_right(rsl__fleet *f) {
    if (rsl__clock_coarse() > atomic_load_explicit(&f->rights_until, memory_order_relaxed)) {
        return 0; /* its lease ran out in Redis too */
    }
    int r = atomic_load_explicit(&f->rights, memory_order_relaxed);
    while (r > 0) {
        if (atomic_compare_exchange_weak_explicit(&f->rights, &r, r - 1, memory_order_relaxed,
                                                  memory_order_relaxed)) {
            return 1;
        }
    }
    return 0;
}

void rsl__fleet_give_right(rsl__fleet *f) {
    atomic_fetch_add_explicit(&f->rights, 1, memory_order_relaxed);
}

void rsl__fleet_verdict_get(rsl__fleet *f, rsl__fleet_verdict *v) {
    pthread_mutex_lock(&f->mu);
    *v = f->v;
    pthread_mutex_unlock(&f->mu);
    v->pub = rsl__fleet_pub(f);
    if (v->state == RSL_FLEET_OPEN) {
        v->remaining -= rsl__clock_coarse(); /* stored as the end, in real time */
    }
}

void rsl__fleet_stats_get(rsl__fleet *f, rsl__fleet_stats *s) {
    s->mode = atomic_load_explicit(&f->mode, memory_order_relaxed);
    s->state = atomic_load_explicit(&f->state, memory_order_relaxed);
    pthread_mutex_lock(&f->mu);
    s->quorum = f->conf.quorum;
    pthread_mutex_unlock(&f->mu);
    s->calls = atomic_load_explicit(&f->calls, memory_order_relaxed);
    s->failures = atomic_load_explicit(&f->failures, memory_order_relaxed);
    s->instances = atomic_load_explicit(&f->instances, memory_order_relaxed);
    s->rights = atomic_load_explicit(&f->rights, memory_order_relaxed);
    s->flushes = atomic_load_explicit(&f->flushes, memory_order_relaxed);
    s->errors = atomic_load_explicit(&f->errors, memory_order_relaxed);
}

/* A change of mode, logged once. */
static void set_mode(rsl__fleet *f, int to, const char *why) {
    int from = atomic_exchange_explicit(&f->mode, to, memory_order_relaxed);
    if (from != to && f->owner->env) {
        rsl__log(f->owner->env, to == RSL_FLEET_DOWN ? RSL_LOG_WARN : RSL_LOG_INFO,
                 "breaker \"%s\" (shared): %s -> %s%s%s", f->name, rsl__fleet_mode_name(from),
                 rsl__fleet_mode_name(to), why ? ": " : "", why ? why : "");
    }
}

/* The flusher's: what waits is taken into the carry (older than a window: dropped, it
 * would judge an upstream as it was then). */
static void take_pending(rsl__fleet *f, int64_t t, int64_t window_ns) {
    atomic_store_explicit(&f->hot.taken, atomic_load_explicit(&f->hot.waiting, memory_order_relaxed),
                          memory_order_relaxed);
    uint64_t p = 0, fl = 0, sl = 0;
    for (int i = 0; i < RSL_THREAD_SLOTS; i++) {
        struct rsl__fleet_slot *s = &f->hot.slot[i];
        uint64_t now[3] = {atomic_load_explicit(&s->calls, memory_order_relaxed),
                           atomic_load_explicit(&s->failures, memory_order_relaxed),
                           atomic_load_explicit(&s->slow, memory_order_relaxed)};
        p += now[0] - f->seen[i][0];
        fl += now[1] - f->seen[i][1];
        sl += now[2] - f->seen[i][2];
        memcpy(f->seen[i], now, sizeof(now));
    }
    if (f->carry_calls > 0 && t - f->carry_since > window_ns) {
        f->carry_calls = f->carry_fail = f->carry_slow = 0;
    }
    if (p && f->carry_calls == 0) {
        f->carry_since = t;
    }
    f->carry_calls += (int64_t)p;
    f->carry_fail += (int64_t)fl;
    f->carry_slow += (int64_t)sl;
    f->carry_ok += atomic_exchange_explicit(&f->hot.probe_ok, 0, memory_order_relaxed);
    f->carry_bad += atomic_exchange_explicit(&f->hot.probe_fail, 0, memory_order_relaxed);
}

static void done_flushing(rsl__fleet *f) {
    atomic_store_explicit(&f->timed_out, 0, memory_order_relaxed);
    atomic_store_explicit(&f->flushing, 0, memory_order_release);
}

static int parse_state(const char *s) {
    return strcmp(s, "open") == 0 ? RSL_FLEET_OPEN
           : strcmp(s, "half_open") == 0 ? RSL_FLEET_HALF_OPEN
                                          : RSL_FLEET_CLOSED;
}

/* The flush's reply, on the loop of the worker that sent it. */
static void flushed(void *ud, const rsl__redis_reply *r) {
    rsl__fleet *f = ud;
    int64_t t = rsl__clock_coarse();
    json_t *a = NULL;
    const char *st = NULL, *reason = NULL;
    json_int_t cycle = 0, rem = 0, level = 0, granted = 0, n = 0, fl = 0, inst = 0, epoch = 0;
    if (rsl__redis_noscript(&SCRIPT, r)) { /* Redis lost the script: EVAL at the next flush */
        done_flushing(f);
        return; /* the carry waits for it */
    }
    if (r->outcome == RSL_OUTCOME_OK) {
        a = json_loadb(r->str, r->len, 0, NULL);
    }
    if (!a || json_unpack(a, "[sIIIIIIIsI]", &st, &cycle, &rem, &level, &granted, &n, &fl, &inst,
                          &reason, &epoch) != 0) {
        atomic_fetch_add_explicit(&f->errors, 1, memory_order_relaxed);
        json_decref(a);
        done_flushing(f);
        set_mode(f, RSL_FLEET_DOWN, r->outcome == RSL_OUTCOME_OK ? "a reply it cannot read" : r->error);
        return;
    }
    /* Answered for: the carry is in Redis. */
    f->carry_calls = f->carry_fail = f->carry_slow = 0;
    f->carry_ok = f->carry_bad = 0;
    int state = parse_state(st);
    atomic_store_explicit(&f->calls, (int64_t)n, memory_order_relaxed);
    atomic_store_explicit(&f->failures, (int64_t)fl, memory_order_relaxed);
    atomic_store_explicit(&f->instances, (int64_t)inst, memory_order_relaxed);
    if (granted > 0) {
        rsl__fleet_conf c;
        rsl__fleet_conf_get(f, &c);
        atomic_store_explicit(&f->rights_until, t + 2 * c.flush_ns + RSL_NS_PER_S / 2,
                              memory_order_relaxed);
        atomic_store_explicit(&f->rights, 1, memory_order_relaxed); /* one lease held */
    } else if (state != RSL_FLEET_HALF_OPEN) {
        atomic_store_explicit(&f->rights, 0, memory_order_relaxed);
    }
    if ((int64_t)cycle != f->last_cycle || (int64_t)epoch != f->last_epoch) {
        pthread_mutex_lock(&f->mu);
        f->v.state = state;
        f->v.remaining = state == RSL_FLEET_OPEN ? t + (int64_t)rem * RSL_NS_PER_MS : 0;
        f->v.level = (int)level;
        f->v.closing = state == RSL_FLEET_CLOSED && f->last_cycle >= 0 &&
                       f->last_state != RSL_FLEET_CLOSED;
        snprintf(f->v.reason, sizeof(f->v.reason), "%s", reason);
        pthread_mutex_unlock(&f->mu);
        f->last_cycle = (int64_t)cycle;
        f->last_epoch = (int64_t)epoch;
        f->last_state = state;
        atomic_store_explicit(&f->state, state, memory_order_relaxed);
        atomic_fetch_add_explicit(&f->hot.pub, 1, memory_order_release);
    }
    json_decref(a);
    done_flushing(f);
    set_mode(f, RSL_FLEET_JOINED, NULL);
}

/* v in decimal into b, NUL-terminated (b has room for RSL_DEC_MAX + 1). */
static void put_int(char *b, int64_t v) {
    char t[RSL_DEC_MAX], *p = rsl__dec(t + sizeof(t), v);
    size_t n = (size_t)(t + sizeof(t) - p);
    memcpy(b, p, n);
    b[n] = 0;
}

/* Sends one flush (the caller won `flushing`). */
static void flush(rsl__fleet *f, rsl__redis *r, int64_t t) {
    rsl__fleet_conf c;
    rsl__fleet_conf_get(f, &c);
    take_pending(f, t, c.window_ns);
    atomic_store_explicit(&f->last, t, memory_order_relaxed);
    if (!r || !rsl__redis_connected(r)) {
        int64_t first = atomic_load_explicit(&f->sent_at, memory_order_relaxed);
        if (!first) {
            atomic_store_explicit(&f->sent_at, t, memory_order_relaxed);
        }
        done_flushing(f);
        /* Starting, Redis may still be connecting: up to one timeout. */
        if (atomic_load_explicit(&f->mode, memory_order_relaxed) == RSL_FLEET_STARTING && r &&
            t - (first ? first : t) < RSL_FLEET_TIMEOUT_NS) {
            return;
        }
        if (r) {
            atomic_fetch_add_explicit(&f->errors, 1, memory_order_relaxed);
        }
        set_mode(f, RSL_FLEET_DOWN,
                 r ? "Redis is not connected" : "no Redis (--redis) to share it through");
        return;
    }
    int64_t bucket_ms = c.window_ns / c.buckets / RSL_NS_PER_MS;
    /* A probe lease when it holds none (or the one it held ran out unused). */
    double want = atomic_load_explicit(&f->state, memory_order_relaxed) == RSL_FLEET_HALF_OPEN &&
                          (atomic_load_explicit(&f->rights, memory_order_relaxed) == 0 ||
                           t > atomic_load_explicit(&f->rights_until, memory_order_relaxed))
                      ? 1
                      : 0;
    char(*a)[24] = f->args;
    if (!f->have_args || !conf_eq(&f->sent, &c)) { /* the settings' arguments, once */
        snprintf(a[0], 24, "%lld", (long long)bucket_ms);
        snprintf(a[1], 24, "%d", c.buckets);
        snprintf(a[5], 24, "%lld", (long long)c.min_calls);
        snprintf(a[6], 24, "%.17g", c.failure_rate);
        snprintf(a[7], 24, "%.17g", c.slow_rate);
        snprintf(a[8], 24, "%d", c.quorum);
        snprintf(a[9], 24, "%lld", (long long)(c.open_for_ns / RSL_NS_PER_MS));
        snprintf(a[10], 24, "%.17g", c.backoff_factor);
        snprintf(a[11], 24, "%lld", (long long)(c.backoff_max_ns / RSL_NS_PER_MS));
        snprintf(a[13], 24, "%d", c.probes);
        /* A probe's lease: two flushes and half a second, then another may probe. */
        snprintf(a[17], 24, "%lld", (long long)((2 * c.flush_ns) / RSL_NS_PER_MS + 500));
        f->sent = c;
        f->have_args = 1;
    }
    /* The counts and the draws, every flush: integers, without printf. */
    put_int(a[2], f->carry_calls);
    put_int(a[3], f->carry_fail);
    put_int(a[4], f->carry_slow);
    double j = 1e6 * c.jitter * (2 * rsl__rand01() - 1);
    put_int(a[12], (int64_t)(j < 0 ? j - 0.5 : j + 0.5));
    put_int(a[14], f->carry_ok);
    put_int(a[15], f->carry_bad);
    put_int(a[16], (int64_t)want);
    const char *argv[21] = {"1", f->key, f->owner->instance};
    for (int i = 0; i < 18; i++) {
        argv[3 + i] = a[i];
    }
    atomic_store_explicit(&f->sent_at, t, memory_order_relaxed);
    atomic_fetch_add_explicit(&f->flushes, 1, memory_order_relaxed);
    if (rsl__redis_eval(r, &SCRIPT, 21, argv, flushed, f) != 0) {
        atomic_fetch_add_explicit(&f->errors, 1, memory_order_relaxed);
        done_flushing(f);
        set_mode(f, RSL_FLEET_DOWN, "Redis refused the command");
    }
}

static int win_flushing(rsl__fleet *f) {
    int z = 0;
    return atomic_compare_exchange_strong_explicit(&f->flushing, &z, 1, memory_order_acquire,
                                                   memory_order_relaxed);
}

void rsl__fleet_tend_due(rsl__fleet *f, rsl__redis *r) {
    if (atomic_load_explicit(&f->flushing, memory_order_relaxed) || !win_flushing(f)) {
        return;
    }
    flush(f, r, rsl__clock_coarse());
}

void rsl__fleets_tick(rsl__fleets *fs, rsl__redis *r) {
    int64_t t = rsl__clock_coarse();
    for (rsl__fleet *f = fs ? fs->head : NULL; f; f = f->next) {
        if (atomic_load_explicit(&f->flushing, memory_order_acquire)) {
            /* Out: no answer within the timeout puts it down (its reply, when it comes,
             * rejoins). */
            if (t - atomic_load_explicit(&f->sent_at, memory_order_relaxed) > RSL_FLEET_TIMEOUT_NS &&
                !atomic_exchange_explicit(&f->timed_out, 1, memory_order_relaxed)) {
                atomic_fetch_add_explicit(&f->errors, 1, memory_order_relaxed);
                set_mode(f, RSL_FLEET_DOWN, "Redis did not answer within 250 ms");
            }
            continue;
        }
        rsl__fleet_conf c;
        rsl__fleet_conf_get(f, &c);
        int64_t every = atomic_load_explicit(&f->mode, memory_order_relaxed) == RSL_FLEET_DOWN
                            ? (c.flush_ns > 500 * 1000000LL ? c.flush_ns : 500 * 1000000LL)
                            : c.flush_ns;
        if (t - atomic_load_explicit(&f->last, memory_order_relaxed) < every) {
            continue;
        }
        if (win_flushing(f)) {
            flush(f, r, t);
        }
    }
}
