/*
 * cache -- r.local_cache: an in-process cache of answers (status + body) with a TTL per
 * entry and LRU eviction at max_entries.  One cache per (policy, step) name, owned by the
 * runtime so it outlives policy generations.  A mutex guards it: lookups and writes are
 * per call, not per guard decision, and workers share it (a per-worker cache would halve
 * the hit rate with two workers).  Any thread.
 *
 * Layer: the guards' layer (beside breakers and limiters): it knows nothing of calls or
 * steps.
 */
#ifndef RSL_CACHE_H
#define RSL_CACHE_H

#include <stddef.h>
#include <stdint.h>

typedef struct rsl__cache rsl__cache;

rsl__cache *rsl__cache_new(int64_t max_entries);
void rsl__cache_free(rsl__cache *c);
void rsl__cache_set_max(rsl__cache *c, int64_t max_entries);

/* Copies the value into the caller's buffer via the callback (under the lock). 1: hit. */
typedef void (*rsl__cache_copy_fn)(void *ud, int status, const char *body, size_t len);
int rsl__cache_get(rsl__cache *c, const char *key, size_t klen, int64_t now, rsl__cache_copy_fn fn,
                   void *ud);
/* Inserts or replaces; evicts the least recently used entry past max. 0 or RSL_ENOMEM. */
int rsl__cache_put(rsl__cache *c, const char *key, size_t klen, int status, const char *body,
                   size_t len, int64_t expires_at);
size_t rsl__cache_count(rsl__cache *c);

#endif
