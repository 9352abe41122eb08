/*
 * metrics -- see metrics.h.
 *
 * Layer: base: counters the generations create and the calls and the chain bump; the
 * runtime renders them.
 */
#include "metrics.h"

#include "tmpl.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const double bounds[RSL_DURATION_NBOUNDS] = RSL_DURATION_BOUNDS;

void rsl__stepstats_observe(rsl__stepstats *s, rsl_outcome o, int64_t ns) {
    if ((unsigned)o < RSL_OUTCOME__COUNT) {
        atomic_fetch_add_explicit(&s->calls[o], 1, memory_order_relaxed);
    }
    double sec = (double)ns / 1e9;
    int i = 0;
    while (i < RSL_DURATION_NBOUNDS && sec > bounds[i]) {
        i++;
    }
    atomic_fetch_add_explicit(&s->buckets[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->sum_ns, ns > 0 ? (uint64_t)ns : 0, memory_order_relaxed);
}

static void *grow(void *p, int *cap, int need, size_t size) {
    if (need <= *cap) {
        return p;
    }
    int c = *cap ? *cap * 2 : 8;
    while (c < need) {
        c *= 2;
    }
    void *q = realloc(p, (size_t)c * size);
    if (q) {
        *cap = c;
    }
    return q;
}

static rsl__stepstats *step_of(rsl__pstats *ps, const char *name) {
    for (int i = 0; i < ps->nsteps; i++) {
        if (strcmp(ps->steps[i]->name, name) == 0) {
            return ps->steps[i];
        }
    }
    rsl__stepstats **v = grow(ps->steps, &ps->cap, ps->nsteps + 1, sizeof(*v));
    if (!v) {
        return NULL;
    }
    ps->steps = v;
    rsl__stepstats *s = calloc(1, sizeof(*s));
    if (!s || !(s->name = strdup(name))) {
        free(s);
        return NULL;
    }
    ps->steps[ps->nsteps++] = s;
    return s;
}

rsl__pview *rsl__metrics_view(rsl__metrics *m, const char *policy, const char *const *steps,
                              int nsteps) {
    rsl__pstats *ps = NULL;
    for (int i = 0; i < m->n && !ps; i++) {
        if (strcmp(m->p[i]->name, policy) == 0) {
            ps = m->p[i];
        }
    }
    if (!ps) {
        rsl__pstats **v = grow(m->p, &m->cap, m->n + 1, sizeof(*v));
        if (!v) {
            return NULL;
        }
        m->p = v;
        ps = calloc(1, sizeof(*ps));
        if (!ps || !(ps->name = strdup(policy))) {
            free(ps);
            return NULL;
        }
        m->p[m->n++] = ps;
    }
    rsl__pview *view = calloc(1, sizeof(*view));
    if (!view) {
        return NULL;
    }
    view->ps = ps;
    view->steps = calloc((size_t)(nsteps ? nsteps : 1), sizeof(*view->steps));
    if (!view->steps) {
        free(view);
        return NULL;
    }
    for (int i = 0; i < nsteps; i++) {
        if (!(view->steps[i] = step_of(ps, steps[i]))) {
            rsl__pview_free(view);
            return NULL;
        }
    }
    return view;
}

void rsl__pview_free(rsl__pview *v) {
    if (v) {
        free(v->steps);
        free(v);
    }
}

void rsl__metrics_free(rsl__metrics *m) {
    for (int i = 0; i < m->n; i++) {
        for (int j = 0; j < m->p[i]->nsteps; j++) {
            free(m->p[i]->steps[j]->name);
            free(m->p[i]->steps[j]);
        }
        free(m->p[i]->steps);
        free(m->p[i]->name);
        free(m->p[i]);
    }
    free(m->p);
    m->p = NULL;
    m->n = m->cap = 0;
}

int rsl__metrics_label(rsl__buf *out, const char *v) {
    int rc = rsl__buf_append(out, "\"", 1);
    for (const char *p = v; *p && rc == 0; p++) {
        if (*p == '\\') {
            rc = rsl__buf_append(out, "\\\\", 2);
        } else if (*p == '"') {
            rc = rsl__buf_append(out, "\\\"", 2);
        } else if (*p == '\n') {
            rc = rsl__buf_append(out, "\\n", 2);
        } else {
            rc = rsl__buf_append(out, p, 1);
        }
    }
    return rc ? rc : rsl__buf_append(out, "\"", 1);
}

static int printf_buf(rsl__buf *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int printf_buf(rsl__buf *out, const char *fmt, ...) {
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    return rsl__buf_append(out, tmp, n < (int)sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* name{policy="p"[,step="s"][,EXTRA]} value */
static int series(rsl__buf *out, const char *name, const char *policy, const char *step,
                  const char *extra_name, const char *extra, uint64_t value) {
    int rc = printf_buf(out, "%s{policy=", name);
    rc = rc ? rc : rsl__metrics_label(out, policy);
    if (step && !rc) {
        rc = rsl__buf_append(out, ",step=", 6);
        rc = rc ? rc : rsl__metrics_label(out, step);
    }
    if (extra_name && !rc) {
        rc = printf_buf(out, ",%s=", extra_name);
        rc = rc ? rc : rsl__metrics_label(out, extra);
    }
    return rc ? rc : printf_buf(out, "} %llu\n", (unsigned long long)value);
}

#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)

int rsl__metrics_render(const rsl__metrics *m, rsl__buf *out) {
    int rc = 0;
    rc |= printf_buf(out, "# HELP resilua_calls_total Calls answered, by policy and outcome.\n"
                          "# TYPE resilua_calls_total counter\n");
    for (int i = 0; i < m->n; i++) {
        for (int o = 0; o < RSL_OUTCOME__COUNT; o++) {
            uint64_t v = LOAD(m->p[i]->calls[o]);
            if (v) {
                rc |= series(out, "resilua_calls_total", m->p[i]->name, NULL, "outcome",
                             rsl_outcome_name((rsl_outcome)o), v);
            }
        }
    }
    rc |= printf_buf(out, "# HELP resilua_route_failures_total Calls whose route failed and "
                          "took the chain.\n# TYPE resilua_route_failures_total counter\n");
    for (int i = 0; i < m->n; i++) {
        rc |= series(out, "resilua_route_failures_total", m->p[i]->name, NULL, NULL, NULL,
                     LOAD(m->p[i]->route_failures));
    }
    rc |= printf_buf(out, "# HELP resilua_step_calls_total Steps run, by outcome.\n"
                          "# TYPE resilua_step_calls_total counter\n");
    for (int i = 0; i < m->n; i++) {
        for (int j = 0; j < m->p[i]->nsteps; j++) {
            rsl__stepstats *s = m->p[i]->steps[j];
            for (int o = 0; o < RSL_OUTCOME__COUNT; o++) {
                uint64_t v = LOAD(s->calls[o]);
                if (v) {
                    rc |= series(out, "resilua_step_calls_total", m->p[i]->name, s->name,
                                 "outcome", rsl_outcome_name((rsl_outcome)o), v);
                }
            }
        }
    }
    rc |= printf_buf(out, "# HELP resilua_step_duration_seconds Time in a step, retries "
                          "included.\n# TYPE resilua_step_duration_seconds histogram\n");
    for (int i = 0; i < m->n; i++) {
        for (int j = 0; j < m->p[i]->nsteps; j++) {
            rsl__stepstats *s = m->p[i]->steps[j];
            uint64_t cum = 0;
            for (int b = 0; b <= RSL_DURATION_NBOUNDS; b++) {
                char le[32];
                if (b < RSL_DURATION_NBOUNDS) {
                    snprintf(le, sizeof(le), "%g", bounds[b]);
                } else {
                    snprintf(le, sizeof(le), "+Inf");
                }
                cum += LOAD(s->buckets[b]);
                rc |= series(out, "resilua_step_duration_seconds_bucket", m->p[i]->name, s->name,
                             "le", le, cum);
            }
            rc |= printf_buf(out, "resilua_step_duration_seconds_sum{policy=");
            rc |= rsl__metrics_label(out, m->p[i]->name);
            rc |= printf_buf(out, ",step=");
            rc |= rsl__metrics_label(out, s->name);
            rc |= printf_buf(out, "} %.9f\n", (double)LOAD(s->sum_ns) / 1e9);
            rc |= series(out, "resilua_step_duration_seconds_count", m->p[i]->name, s->name, NULL,
                         NULL, cum);
        }
    }
    static const struct {
        const char *name, *help;
        size_t off;
    } plain[] = {
        {"resilua_fallbacks_total", "Moves from a step to the next one.",
         offsetof(rsl__stepstats, fallbacks)},
        {"resilua_retries_total", "Retries made (first attempts not counted).",
         offsetof(rsl__stepstats, retries)},
    };
    for (size_t k = 0; k < sizeof(plain) / sizeof(plain[0]); k++) {
        rc |= printf_buf(out, "# HELP %s %s\n# TYPE %s counter\n", plain[k].name, plain[k].help,
                         plain[k].name);
        for (int i = 0; i < m->n; i++) {
            for (int j = 0; j < m->p[i]->nsteps; j++) {
                rsl__stepstats *s = m->p[i]->steps[j];
                _Atomic uint64_t *c = (_Atomic uint64_t *)((char *)s + plain[k].off);
                rc |= series(out, plain[k].name, m->p[i]->name, s->name, NULL, NULL, LOAD(*c));
            }
        }
    }
    return rc ? RSL_ENOMEM : 0;
}
