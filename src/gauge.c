/*
 * gauge -- the host's named numbers (gauge.h).
 *
 * Layer: base.  Any thread.
 */
#include "gauge.h"

#include "resilua.h"

#include <string.h>

void rsl__gauges_init(rsl__gauges *t) {
    pthread_mutex_init(&t->lock, NULL);
    atomic_init(&t->n, 0);
}

void rsl__gauges_close(rsl__gauges *t) {
    pthread_mutex_destroy(&t->lock);
}

int rsl__gauge_find(rsl__gauges *t, const char *name, size_t len) {
    int n = atomic_load_explicit(&t->n, memory_order_acquire);
    for (int i = 0; i < n; i++) {
        if (strlen(t->g[i].name) == len && memcmp(t->g[i].name, name, len) == 0) {
            return i;
        }
    }
    return -1;
}

double rsl__gauge_get(rsl__gauges *t, int i) {
    uint64_t bits = atomic_load_explicit(&t->g[i].bits, memory_order_relaxed);
    double v;
    memcpy(&v, &bits, sizeof(v));
    return v;
}

int rsl__gauge_set(rsl__gauges *t, const char *name, double value) {
    size_t len = strlen(name);
    if (len == 0 || len >= sizeof(t->g[0].name)) {
        return RSL_EINVAL;
    }
    uint64_t bits;
    memcpy(&bits, &value, sizeof(bits));
    int i = rsl__gauge_find(t, name, len);
    if (i < 0) {
        pthread_mutex_lock(&t->lock);
        i = rsl__gauge_find(t, name, len);
        if (i < 0) {
            int n = atomic_load(&t->n);
            if (n >= RSL_MAX_GAUGES) {
                pthread_mutex_unlock(&t->lock);
                return RSL_ENOMEM;
            }
            memcpy(t->g[n].name, name, len + 1);
            atomic_store_explicit(&t->g[n].bits, bits, memory_order_relaxed);
            atomic_store_explicit(&t->n, n + 1, memory_order_release);
            pthread_mutex_unlock(&t->lock);
            return 0;
        }
        pthread_mutex_unlock(&t->lock);
    }
    atomic_store_explicit(&t->g[i].bits, bits, memory_order_relaxed);
    return 0;
}
