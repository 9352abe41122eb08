/*
 * cache -- see cache.h.  Chained hash table (power-of-two buckets, grown at load 1) plus an
 * intrusive doubly linked LRU list; entries are one allocation each (key and body inline).
 *
 * Layer: the guards' layer (beside breakers and limiters): it knows nothing of calls or
 * steps.
 */
#include "cache.h"
#include "resilua.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct entry {
    struct entry *hnext;
    struct entry *prev, *next; /* LRU: head = most recent */
    uint64_t hash;
    int64_t expires_at;
    int status;
    size_t klen, blen;
    char data[]; /* key, then body */
} entry;

struct rsl__cache {
    pthread_mutex_t lock;
    entry **table;
    size_t nbuckets, count;
    int64_t max;
    entry *head, *tail;
};

static uint64_t hash(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    }
    return h;
}

rsl__cache *rsl__cache_new(int64_t max_entries) {
    rsl__cache *c = calloc(1, sizeof(*c));
    if (!c) {
        return NULL;
    }
    c->nbuckets = 64;
    c->table = calloc(c->nbuckets, sizeof(entry *));
    if (!c->table) {
        free(c);
        return NULL;
    }
    c->max = max_entries > 0 ? max_entries : 1;
    pthread_mutex_init(&c->lock, NULL);
    return c;
}

void rsl__cache_free(rsl__cache *c) {
    if (!c) {
        return;
    }
    for (entry *e = c->head; e;) {
        entry *n = e->next;
        free(e);
        e = n;
    }
    free(c->table);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

static void lru_unlink(rsl__cache *c, entry *e) {
    if (e->prev) {
        e->prev->next = e->next;
    } else {
        c->head = e->next;
    }
    if (e->next) {
        e->next->prev = e->prev;
    } else {
        c->tail = e->prev;
    }
    e->prev = e->next = NULL;
}

static void lru_push(rsl__cache *c, entry *e) {
    e->prev = NULL;
    e->next = c->head;
    if (c->head) {
        c->head->prev = e;
    }
    c->head = e;
    if (!c->tail) {
        c->tail = e;
    }
}

static entry **find(rsl__cache *c, const char *key, size_t klen, uint64_t h) {
    entry **pp = &c->table[h & (c->nbuckets - 1)];
    while (*pp && !((*pp)->hash == h && (*pp)->klen == klen && !memcmp((*pp)->data, key, klen))) {
        pp = &(*pp)->hnext;
    }
    return pp;
}

static void remove_entry(rsl__cache *c, entry *e) {
    entry **pp = find(c, e->data, e->klen, e->hash);
    if (*pp == e) {
        *pp = e->hnext;
    }
    lru_unlink(c, e);
    c->count--;
    free(e);
}

static void grow(rsl__cache *c) {
    size_t n = c->nbuckets * 2;
    entry **t = calloc(n, sizeof(entry *));
    if (!t) {
        return; /* stay at the current size: slower chains, still correct */
    }
    for (size_t i = 0; i < c->nbuckets; i++) {
        for (entry *e = c->table[i]; e;) {
            entry *nx = e->hnext;
            e->hnext = t[e->hash & (n - 1)];
            t[e->hash & (n - 1)] = e;
            e = nx;
        }
    }
    free(c->table);
    c->table = t;
    c->nbuckets = n;
}

void rsl__cache_set_max(rsl__cache *c, int64_t max_entries) {
    pthread_mutex_lock(&c->lock);
    c->max = max_entries > 0 ? max_entries : 1;
    while ((int64_t)c->count > c->max && c->tail) {
        remove_entry(c, c->tail);
    }
    pthread_mutex_unlock(&c->lock);
}

int rsl__cache_get(rsl__cache *c, const char *key, size_t klen, int64_t now, rsl__cache_copy_fn fn,
                   void *ud) {
    uint64_t h = hash(key, klen);
    int hit = 0;
    pthread_mutex_lock(&c->lock);
    entry *e = *find(c, key, klen, h);
    if (e && e->expires_at <= now) {
        remove_entry(c, e);
        e = NULL;
    }
    if (e) {
        lru_unlink(c, e);
        lru_push(c, e);
        fn(ud, e->status, e->data + e->klen, e->blen);
        hit = 1;
    }
    pthread_mutex_unlock(&c->lock);
    return hit;
}

int rsl__cache_put(rsl__cache *c, const char *key, size_t klen, int status, const char *body,
                   size_t len, int64_t expires_at) {
    entry *n = malloc(sizeof(*n) + klen + len);
    if (!n) {
        return RSL_ENOMEM;
    }
    n->hash = hash(key, klen);
    n->expires_at = expires_at;
    n->status = status;
    n->klen = klen;
    n->blen = len;
    memcpy(n->data, key, klen);
    if (len) {
        memcpy(n->data + klen, body, len);
    }
    pthread_mutex_lock(&c->lock);
    entry **pp = find(c, key, klen, n->hash);
    if (*pp) {
        remove_entry(c, *pp);
        pp = find(c, key, klen, n->hash);
    }
    n->hnext = NULL;
    *pp = n;
    lru_push(c, n);
    c->count++;
    while ((int64_t)c->count > c->max && c->tail) {
        remove_entry(c, c->tail);
    }
    if (c->count > c->nbuckets) {
        grow(c);
    }
    pthread_mutex_unlock(&c->lock);
    return 0;
}

size_t rsl__cache_count(rsl__cache *c) {
    pthread_mutex_lock(&c->lock);
    size_t n = c->count;
    pthread_mutex_unlock(&c->lock);
    return n;
}
