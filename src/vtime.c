/*
 * vtime -- virtual time's clock and timers (vtime.h): a binary heap of entries, each
 * item's slot holding its index + 1.
 *
 * Layer: the clock's.  One thread.
 */
#include "vtime.h"

#include "resilua.h"

#include <stdlib.h>

void rsl__vt_init(rsl__vtime *v, int64_t start) {
    atomic_init(&v->now, start);
    v->h = NULL;
    v->n = v->cap = 0;
    v->seq = 0;
}

void rsl__vt_close(rsl__vtime *v) {
    for (size_t i = 0; i < v->n; i++) {
        *v->h[i].slot = 0;
    }
    free(v->h);
    v->h = NULL;
    v->n = v->cap = 0;
}

static int before(const rsl__vt_entry *a, const rsl__vt_entry *b) {
    return a->at < b->at || (a->at == b->at && a->seq < b->seq);
}

static void place(rsl__vtime *v, size_t i, rsl__vt_entry e) {
    v->h[i] = e;
    *e.slot = i + 1;
}

static void sift_up(rsl__vtime *v, size_t i) {
    rsl__vt_entry e = v->h[i];
    while (i > 0 && before(&e, &v->h[(i - 1) / 2])) {
        place(v, i, v->h[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
    place(v, i, e);
}

static void sift_down(rsl__vtime *v, size_t i) {
    rsl__vt_entry e = v->h[i];
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        const rsl__vt_entry *best = &e;
        if (l < v->n && before(&v->h[l], best)) {
            m = l;
            best = &v->h[l];
        }
        if (l + 1 < v->n && before(&v->h[l + 1], best)) {
            m = l + 1;
        }
        if (m == i) {
            break;
        }
        place(v, i, v->h[m]);
        i = m;
    }
    place(v, i, e);
}

/* Removes entry i, keeping the heap. */
static void remove_at(rsl__vtime *v, size_t i) {
    *v->h[i].slot = 0;
    v->n--;
    if (i == v->n) {
        return;
    }
    v->h[i] = v->h[v->n];
    *v->h[i].slot = i + 1;
    if (i > 0 && before(&v->h[i], &v->h[(i - 1) / 2])) {
        sift_up(v, i);
    } else {
        sift_down(v, i);
    }
}

int rsl__vt_arm(rsl__vtime *v, void *item, size_t *slot, int64_t at) {
    rsl__vt_disarm(v, slot);
    if (v->n == v->cap) {
        size_t cap = v->cap ? 2 * v->cap : 64;
        rsl__vt_entry *h = realloc(v->h, cap * sizeof(*h));
        if (!h) {
            return RSL_ENOMEM;
        }
        v->h = h;
        v->cap = cap;
    }
    v->h[v->n] = (rsl__vt_entry){at, v->seq++, item, slot};
    *slot = ++v->n;
    sift_up(v, v->n - 1);
    return 0;
}

void rsl__vt_disarm(rsl__vtime *v, size_t *slot) {
    if (*slot) {
        remove_at(v, *slot - 1);
    }
}

void *rsl__vt_pop(rsl__vtime *v, int64_t until, int64_t *at) {
    if (v->n == 0 || v->h[0].at > until) {
        return NULL;
    }
    void *item = v->h[0].item;
    *at = v->h[0].at;
    remove_at(v, 0);
    return item;
}

int64_t rsl__vt_next(const rsl__vtime *v) {
    return v->n ? v->h[0].at : INT64_MAX;
}
