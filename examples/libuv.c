/*
 * libuv.c -- embedding resilua in a program that has its own libuv loop.
 *
 * The runtime is attached to the program's loop (rsl_options.loop): no worker threads;
 * policies run on this loop's thread, between the program's own callbacks.  A repeating
 * timer makes one call of "inventory.stock" (examples/policies/inventory.lua) every 5 ms;
 * the policy's C step, r.c "stock_lookup", answers 2 ms later from another timer on the
 * same loop, and every third answer is a 503 so the fallbacks show.  After 40 calls the
 * program closes the runtime and lets the loop finish.
 *
 * Usage: example_libuv [POLICY_DIR]   (default: examples/policies)
 */
#include "resilua.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define CALLS 40

static uv_loop_t loop;
static uv_timer_t ticker;
static rsl_runtime *rt;
static int made, answered, ok, by_stub, by_cache;

/* The C step: answer later, from a timer on this same loop. */
typedef struct pending {
    uv_timer_t timer;
    rsl_step_call *sc;
    int n;
} pending;

static void pending_closed(uv_handle_t *h) {
    free(h->data);
}

static void answer_later(uv_timer_t *t) {
    pending *p = t->data;
    if (p->n % 3 == 2) {
        rsl_step_answer(p->sc, 503, "busy", 4);
    } else {
        char body[64];
        int len = snprintf(body, sizeof(body), "{\"stock\":%d}", 100 - p->n);
        rsl_step_answer(p->sc, 200, body, (size_t)len);
    }
    uv_close((uv_handle_t *)&p->timer, pending_closed);
}

static void stock_lookup(rsl_step_call *sc, const rsl_req *req, void *ud) {
    static int n;
    pending *p = calloc(1, sizeof(*p));
    if (!p) {
        rsl_step_fail(sc, RSL_OUTCOME_ERROR, "out of memory");
        return;
    }
    p->sc = sc;
    p->n = n++;
    uv_timer_init(&loop, &p->timer);
    p->timer.data = p;
    uv_timer_start(&p->timer, answer_later, 2, 0);
}

static void on_result(const rsl_result *r, void *ud) {
    answered++;
    ok += rsl_result_outcome(r) == RSL_OUTCOME_OK;
    const char *by = rsl_result_served_by(r);
    by_stub += by && !strcmp(by, "stub");
    by_cache += by && !strcmp(by, "cache");
    char *json = rsl_result_json(r);
    printf("%s\n", json ? json : "?");
    rsl_free(json);
}

static void tick(uv_timer_t *t) {
    if (made == CALLS) {
        if (answered == CALLS) {
            uv_timer_stop(&ticker);
            uv_close((uv_handle_t *)&ticker, NULL);
            rsl_close(rt); /* outside resilua's callbacks, on the loop's thread */
        }
        return;
    }
    rsl_req *req = rsl_req_new();
    rsl_req_set(req, "sku", "sku-1", 5);
    rsl_req_set(req, "tier", made % 2 ? "vip" : "free", made % 2 ? 3 : 4);
    if (rsl_call(rt, "inventory.stock", req, on_result, NULL) == 0) {
        made++;
    }
    rsl_req_free(req);
}

int main(int argc, char **argv) {
    uv_loop_init(&loop);
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = argc > 1 ? argv[1] : "examples/policies";
    o.loop = &loop;
    char err[4096];
    int rc = rsl_open(&rt, &o, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "rsl_open: %s\n%s\n", rsl_strerror(rc), err);
        return 1;
    }
    rsl_register_step(rt, "stock_lookup", stock_lookup, NULL);
    uv_timer_init(&loop, &ticker);
    uv_timer_start(&ticker, tick, 0, 5);
    uv_run(&loop, UV_RUN_DEFAULT); /* returns once the runtime and the ticker are closed */
    int closed = uv_loop_close(&loop) == 0;
    printf("summary: %d calls, %d answered once, %d ok, %d from the stub, %d from the cache, "
           "loop closed cleanly: %s\n",
           made, answered, ok, by_stub, by_cache, closed ? "yes" : "no");
    return made == CALLS && answered == CALLS && closed ? 0 : 1;
}
