/*
 * lease -- a global rate limit shared by every instance through Redis: the token bucket
 * lives in Redis (one atomic script: refill at rate, take up to `lease` tokens), and each
 * instance spends the tokens it leased from a local atomic pool, so a decision never waits
 * for Redis and decisions per second are not capped by its round-trips.
 *
 * Layer: the guards' level, above redis (the I/O) and limiter (the local fallback).
 *
 * Modes: STARTING (no reply yet: the pool holds a credit of one lease, spent as leased
 * tokens are), JOINED (the pool decides: a call takes a token or is refused), DOWN (Redis
 * refused, failed or did not answer within RSL_LEASE_TIMEOUT_NS: on_redis_down decides,
 * "local" at rate / instances with the instance count learned from Redis, "open" lets all
 * through, "closed" refuses all).  A reply, whenever it comes, deposits its tokens and
 * joins; while down, a probe goes out every RSL_LEASE_PROBE_NS.  Refills ask for a quarter
 * lease each, up to RSL_LEASE_MAX_ASKS at once, whenever the pool and the refills out add up
 * to less than a lease: an instance spends up to about one lease per Redis round trip.
 *
 * Accuracy: Redis grants at most rate x T + burst tokens over T; an instance admits only
 * what it was granted plus its first credit, so while Redis is up the fleet admits at most
 * rate x T + burst + instances x lease.  Tokens leased and not spent (at most a lease each)
 * expire with the instance.
 *
 * Threads: acquire and tend on any worker (the pool and the flags are atomics); a refill
 * is sent on the calling worker's Redis connection and answered on its loop.  Named
 * leases are owned by the runtime's registry (rsl__leases) and live until it is freed,
 * after the workers stopped: a reply in flight never outlives its lease, and a reload that
 * drops a global limiter and declares it again finds the same lease (and its pool).  A
 * key's lease (rsl__lease_new_key) is reference counted instead: its child guard holds
 * one, a refill in flight another.
 *
 * Per key (`key` on a global limiter): one bucket in Redis per key value, so the bound
 * above holds per key, plus one lease for each time an instance makes the key's guard
 * anew (its first credit: a key evicted and seen again starts with a credit again).
 */
#ifndef RSL_LEASE_H
#define RSL_LEASE_H

#include "env.h"
#include "limiter.h"
#include "redis.h"

#include <stddef.h>
#include <stdint.h>

#define RSL_LEASE_TIMEOUT_NS (250 * 1000000LL)
#define RSL_LEASE_PROBE_NS   (500 * 1000000LL)
/* Refills out at once, each for a quarter lease. */
#define RSL_LEASE_MAX_ASKS 4
/* An instance counts as alive while it asked within this long. */
#define RSL_LEASE_ALIVE_MS 10000

enum { RSL_LEASE_LOCAL, RSL_LEASE_OPEN, RSL_LEASE_CLOSED };    /* on_redis_down */
enum { RSL_LEASE_STARTING, RSL_LEASE_JOINED, RSL_LEASE_DOWN }; /* modes */

typedef struct rsl__lease_conf {
    double rate;
    int64_t per_ns;
    double burst;
    int64_t lease; /* tokens per refill, >= 1 */
    int on_down;   /* RSL_LEASE_LOCAL, _OPEN, _CLOSED */
} rsl__lease_conf;

typedef struct rsl__lease rsl__lease;
typedef struct rsl__leases rsl__leases;

/* prefix: the keys' prefix ("resilua:" when NULL); instance: this process's id; env: the
 * log for changes of mode (borrowed, outlives the registry). */
rsl__leases *rsl__leases_new(const char *prefix, const char *instance, const rsl__env *env);
void rsl__leases_free(rsl__leases *ls);
/* The lease of `name`, found (unchanged) or made with c.  NULL when out of memory or on a
 * bad conf.  The loader's thread. */
rsl__lease *rsl__leases_get(rsl__leases *ls, const char *name, const rsl__lease_conf *c);
/*
 * A key's lease (a keyed global limiter's child, keyed.h): parent's settings, its own
 * bucket in Redis (the keys of "PARENT[KEY]", the key's unusual bytes as %XX), pool, mode
 * and fallback limiter; its counts and changes of mode also go to parent's lease (or to
 * the lease parent's go to), which /state and /metrics show and which logs them once for
 * all its keys.  The caller holds its one reference (rsl__lease_unref); a refill in flight
 * holds another, so an evicted key's lease lives until its reply.  Not found by name; the
 * registry lists it only to free it if a refill still held it when the workers stopped
 * (their Redis connections drop pending callbacks).  NULL when out of memory.
 */
rsl__lease *rsl__lease_new_key(rsl__lease *parent, const char *key, size_t len);
void rsl__lease_unref(rsl__lease *l); /* a key's lease; NULL is a no-op */
int64_t rsl__lease_pool(const rsl__lease *l); /* tokens leased, not yet spent */

/* New settings in place (the pool and the mode stay): 1 when they changed anything. */
int rsl__lease_configure(rsl__lease *l, const rsl__lease_conf *c);
void rsl__lease_conf_get(const rsl__lease *l, rsl__lease_conf *c);

/* One decision at `now`: 1 admitted, 0 refused with why. */
int rsl__lease_acquire(rsl__lease *l, int64_t now, const char **why);
/* After a decision, on the caller's worker: asks Redis for a lease when the pool runs low
 * (one refill in flight at a time), notices a refill that timed out, probes while down.
 * r NULL: no Redis (the guard goes down).  With the pool and the refills out at a whole
 * lease and tokens left, it reads four atomics and returns. */
void rsl__lease_tend(rsl__lease *l, rsl__redis *r);

const char *rsl__lease_mode_name(int mode); /* "starting", "joined", "down" */
const char *rsl__lease_on_down_name(int on_down); /* "local", "open", "closed" */
/* The Redis script of a refill (its text), for benchmarks that compare against it. */
const char *rsl__lease_script(void);
typedef struct rsl__lease_stats {
    int mode;
    int64_t pool, instances;
    uint64_t refills, granted, errors, rejections;
} rsl__lease_stats;
void rsl__lease_stats_get(const rsl__lease *l, rsl__lease_stats *s);

#endif
