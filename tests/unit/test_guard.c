/* test_guard.c -- the guard registry: kinds, sorted lookup, references. Runs under ASan,
 * whose leak check proves each object is freed exactly at its last reference. */
#include "test.h"

#include "guard.h"

#include <stdatomic.h>

TEST(guard_kind_names) {
    ASSERT_STR_EQ(rsl__guard_kind_name(RSL_GUARD_BREAKER), "breaker");
    ASSERT_STR_EQ(rsl__guard_kind_name(RSL_GUARD_LIMITER), "limiter");
    ASSERT_STR_EQ(rsl__guard_kind_name(RSL_GUARD_BULKHEAD), "bulkhead");
    ASSERT_STR_EQ(rsl__guard_kind_name((rsl__guard_kind)42), "unknown");
}

TEST(guard_new_each_kind) {
    rsl__breaker_conf bc;
    rsl__breaker_conf_default(&bc);
    rsl__limiter_conf lc = {100, 0, 0};
    rsl__guard *b = rsl__guard_new_breaker("users-api", &bc);
    rsl__guard *l = rsl__guard_new_limiter("users-rps", &lc);
    rsl__guard *h = rsl__guard_new_bulkhead("users-conc", 64);
    ASSERT(b && l && h);
    ASSERT_EQ(b->kind, RSL_GUARD_BREAKER);
    ASSERT_EQ(l->kind, RSL_GUARD_LIMITER);
    ASSERT_EQ(h->kind, RSL_GUARD_BULKHEAD);
    ASSERT_STR_EQ(b->name, "users-api");
    ASSERT_STR_EQ(l->name, "users-rps");
    ASSERT_STR_EQ(h->name, "users-conc");
    ASSERT(b->name == rsl__breaker_name(b->u.breaker));
    ASSERT_EQ(rsl__bulkhead_max(h->u.bulkhead), 64);
    ASSERT_EQ(atomic_load(&b->refs), 1);
    rsl__guard_unref(b);
    rsl__guard_unref(l);
    rsl__guard_unref(h);
    rsl__guard_unref(NULL);
    /* bad confs: NULL, nothing leaked */
    bc.failure_rate = 150;
    lc.rate = 0;
    ASSERT(rsl__guard_new_breaker("x", &bc) == NULL);
    ASSERT(rsl__guard_new_limiter("x", &lc) == NULL);
    ASSERT(rsl__guard_new_bulkhead("x", 0) == NULL);
}

TEST(guard_registry_sorted) {
    rsl__guards *r = rsl__guards_new();
    ASSERT(r);
    ASSERT_EQ(rsl__guards_count(r), 0);
    ASSERT(rsl__guards_find(r, "a") == NULL);
    ASSERT(rsl__guards_at(r, 0) == NULL);
    /* 100 names inserted out of order */
    for (int i = 0; i < 100; i++) {
        char name[16];
        snprintf(name, sizeof(name), "g%03d", (i * 37) % 100);
        rsl__guard *g = rsl__guard_new_bulkhead(name, 1 + i);
        ASSERT_EQ(rsl__guards_add(r, g), 0);
        rsl__guard_unref(g); /* the registry's reference keeps it */
    }
    ASSERT_EQ(rsl__guards_count(r), 100);
    for (int i = 0; i < 100; i++) {
        char name[16];
        snprintf(name, sizeof(name), "g%03d", i);
        rsl__guard *g = rsl__guards_find(r, name);
        ASSERT(g);
        ASSERT_STR_EQ(g->name, name);
        ASSERT(rsl__guards_at(r, (size_t)i) == g);
    }
    ASSERT(rsl__guards_find(r, "g100") == NULL);
    ASSERT(rsl__guards_find(r, "") == NULL);
    ASSERT(rsl__guards_at(r, 100) == NULL);
    /* the name is taken, whatever the kind */
    rsl__guard *dup = rsl__guard_new_bulkhead("g050", 5);
    ASSERT_EQ(rsl__guards_add(r, dup), RSL_EEXIST);
    ASSERT_EQ(atomic_load(&dup->refs), 1);
    rsl__guard_unref(dup);
    ASSERT_EQ(rsl__guards_add(r, NULL), RSL_EINVAL);
    /* remove: first, last, middle, absent */
    rsl__guards_remove(r, "g000");
    rsl__guards_remove(r, "g099");
    rsl__guards_remove(r, "g050");
    rsl__guards_remove(r, "nope");
    ASSERT_EQ(rsl__guards_count(r), 97);
    ASSERT(rsl__guards_find(r, "g050") == NULL);
    ASSERT_STR_EQ(rsl__guards_at(r, 0)->name, "g001");
    ASSERT_STR_EQ(rsl__guards_at(r, 96)->name, "g098");
    for (size_t i = 1; i < rsl__guards_count(r); i++) {
        ASSERT(strcmp(rsl__guards_at(r, i - 1)->name, rsl__guards_at(r, i)->name) < 0);
    }
    rsl__guards_free(r); /* frees all 97 */
    rsl__guards_free(NULL);
}

TEST(guard_refs_outlive_registry) {
    /* A generation holds a guard that a reload dropped from the registry: it stays usable
     * until the generation lets go, and its state is the same object's. */
    rsl__guards *r = rsl__guards_new();
    rsl__breaker_conf bc;
    rsl__breaker_conf_default(&bc);
    rsl__guard *g = rsl__guard_new_breaker("users-api", &bc);
    ASSERT_EQ(rsl__guards_add(r, g), 0);
    ASSERT_EQ(atomic_load(&g->refs), 2);
    rsl__guard_ref(g); /* a second generation */
    ASSERT_EQ(atomic_load(&g->refs), 3);
    rsl__breaker_force_open(g->u.breaker, 0);
    rsl__guards_remove(r, "users-api");
    ASSERT_EQ(atomic_load(&g->refs), 2);
    ASSERT(rsl__guards_find(r, "users-api") == NULL);
    ASSERT_EQ(rsl__breaker_state_get(g->u.breaker), RSL_BREAKER_FORCED_OPEN);
    rsl__guard_unref(g);
    ASSERT_EQ(atomic_load(&g->refs), 1);
    ASSERT_STR_EQ(g->name, "users-api");
    rsl__guard_unref(g); /* the last: freed (ASan would flag a leak or a reuse) */
    /* the name is free again */
    rsl__guard *h = rsl__guard_new_bulkhead("users-api", 2);
    ASSERT_EQ(rsl__guards_add(r, h), 0);
    rsl__guard_unref(h);
    rsl__guards_free(r);
}
