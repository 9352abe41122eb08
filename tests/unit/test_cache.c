/* The local cache: hit, miss, TTL, LRU eviction, replacement, growth. */
#include "cache.h"
#include "test.h"

typedef struct got {
    int status;
    char body[64];
} got;

static void copy(void *ud, int status, const char *body, size_t len) {
    got *g = ud;
    g->status = status;
    memcpy(g->body, body, len);
    g->body[len] = 0;
}

TEST(hit_miss_ttl) {
    rsl__cache *c = rsl__cache_new(10);
    got g = {0};
    ASSERT_EQ(rsl__cache_get(c, "k", 1, 0, copy, &g), 0);
    ASSERT_EQ(rsl__cache_put(c, "k", 1, 200, "v1", 2, 1000), 0);
    ASSERT_EQ(rsl__cache_get(c, "k", 1, 999, copy, &g), 1);
    ASSERT_EQ(g.status, 200);
    ASSERT_STR_EQ(g.body, "v1");
    ASSERT_EQ(rsl__cache_get(c, "k", 1, 1000, copy, &g), 0); /* expired, and dropped */
    ASSERT_EQ(rsl__cache_count(c), 0);
    rsl__cache_free(c);
}

TEST(lru_eviction) {
    rsl__cache *c = rsl__cache_new(3);
    got g;
    rsl__cache_put(c, "a", 1, 200, "A", 1, 100);
    rsl__cache_put(c, "b", 1, 200, "B", 1, 100);
    rsl__cache_put(c, "c", 1, 200, "C", 1, 100);
    ASSERT_EQ(rsl__cache_get(c, "a", 1, 0, copy, &g), 1); /* a is now most recent */
    rsl__cache_put(c, "d", 1, 200, "D", 1, 100);          /* evicts b */
    ASSERT_EQ(rsl__cache_get(c, "b", 1, 0, copy, &g), 0);
    ASSERT_EQ(rsl__cache_get(c, "a", 1, 0, copy, &g), 1);
    ASSERT_EQ(rsl__cache_get(c, "c", 1, 0, copy, &g), 1);
    ASSERT_EQ(rsl__cache_get(c, "d", 1, 0, copy, &g), 1);
    ASSERT_EQ(rsl__cache_count(c), 3);
    rsl__cache_set_max(c, 1);
    ASSERT_EQ(rsl__cache_count(c), 1);
    rsl__cache_free(c);
}

TEST(replace_and_grow) {
    rsl__cache *c = rsl__cache_new(100000);
    char k[32];
    for (int i = 0; i < 5000; i++) {
        int n = snprintf(k, sizeof(k), "key%d", i);
        ASSERT_EQ(rsl__cache_put(c, k, (size_t)n, 200, k, (size_t)n, 10), 0);
    }
    rsl__cache_put(c, "key7", 4, 503, "new", 3, 10);
    ASSERT_EQ(rsl__cache_count(c), 5000);
    got g;
    for (int i = 0; i < 5000; i++) {
        int n = snprintf(k, sizeof(k), "key%d", i);
        ASSERT_EQ(rsl__cache_get(c, k, (size_t)n, 0, copy, &g), 1);
    }
    rsl__cache_get(c, "key7", 4, 0, copy, &g);
    ASSERT_EQ(g.status, 503);
    ASSERT_STR_EQ(g.body, "new");
    rsl__cache_free(c);
}
