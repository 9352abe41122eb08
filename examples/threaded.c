/*
 * threaded.c -- embedding resilua in a threaded C program.
 *
 * Four host threads call the policy "inventory.stock" (examples/policies/inventory.lua)
 * synchronously, as request handlers would.  The policy's primary step is a C function of
 * this program, registered as r.c "stock_lookup": it does not answer on the worker thread
 * but hands the request to a backend thread, which answers later with rsl_step_answer --
 * and fails one request in five, so the breaker and the fallbacks have work to do.
 *
 * Usage: example_threaded [POLICY_DIR]   (default: examples/policies)
 * Prints one line per host thread and a summary; exits 0 when every call completed once.
 */
#include "resilua.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define THREADS 4
#define CALLS 250

/* ---- the backend: a queue of pending step calls and one thread answering them -------- */
typedef struct job {
    struct job *next;
    rsl_step_call *sc;
    char sku[32];
} job;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t more = PTHREAD_COND_INITIALIZER;
static job *head, *tail;
static int stopping;

/* Runs on a resilua worker thread: queue the work and return at once. */
static void stock_lookup(rsl_step_call *sc, const rsl_req *req, void *ud) {
    job *j = calloc(1, sizeof(*j));
    if (!j) {
        rsl_step_fail(sc, RSL_OUTCOME_ERROR, "out of memory");
        return;
    }
    size_t n = 0;
    const char *sku = rsl_req_get(req, "sku", &n);
    snprintf(j->sku, sizeof(j->sku), "%.*s", (int)n, sku ? sku : "");
    j->sc = sc;
    pthread_mutex_lock(&lock);
    if (tail) {
        tail->next = j;
    } else {
        head = j;
    }
    tail = j;
    pthread_cond_signal(&more);
    pthread_mutex_unlock(&lock);
}

static void *backend(void *arg) {
    unsigned long served = 0;
    for (;;) {
        pthread_mutex_lock(&lock);
        while (!head && !stopping) {
            pthread_cond_wait(&more, &lock);
        }
        job *j = head;
        if (j) {
            head = j->next;
            if (!head) {
                tail = NULL;
            }
        }
        pthread_mutex_unlock(&lock);
        if (!j) {
            return NULL;
        }
        char body[96];
        int n = snprintf(body, sizeof(body), "{\"sku\":\"%s\",\"stock\":%lu}", j->sku, served);
        if (++served % 5 == 0) {
            rsl_step_answer(j->sc, 503, "busy", 4); /* the database is having a moment */
        } else {
            rsl_step_answer(j->sc, 200, body, (size_t)n);
        }
        free(j);
    }
}

/* ---- the host threads ------------------------------------------------------------------- */
typedef struct tally {
    int index, calls, ok, by_backend, by_cache, by_stub, errors;
} tally;

static rsl_runtime *rt;

static void *handler(void *arg) {
    tally *t = arg;
    rsl_req *req = rsl_req_new();
    for (int i = 0; i < CALLS; i++) {
        char sku[16];
        int n = snprintf(sku, sizeof(sku), "sku-%d", i % 10);
        rsl_req_set(req, "sku", sku, (size_t)n);
        rsl_req_set(req, "tier", t->index % 2 ? "vip" : "free", t->index % 2 ? 3 : 4);
        rsl_result *r = NULL;
        int rc = rsl_call_sync(rt, "inventory.stock", req, 2000000000LL, &r);
        if (rc != 0) {
            fprintf(stderr, "call failed: %s\n", rsl_strerror(rc));
            t->errors++;
            continue;
        }
        t->calls++;
        t->ok += rsl_result_outcome(r) == RSL_OUTCOME_OK;
        const char *by = rsl_result_served_by(r);
        t->by_backend += by && !strcmp(by, "backend");
        t->by_cache += by && !strcmp(by, "cache");
        t->by_stub += by && !strcmp(by, "stub");
        rsl_result_free(r);
    }
    rsl_req_free(req);
    return NULL;
}

int main(int argc, char **argv) {
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = argc > 1 ? argv[1] : "examples/policies";
    o.workers = 2;
    char err[4096];
    int rc = rsl_open(&rt, &o, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "rsl_open: %s\n%s\n", rsl_strerror(rc), err);
        return 1;
    }
    rsl_register_step(rt, "stock_lookup", stock_lookup, NULL);

    pthread_t be, th[THREADS];
    tally t[THREADS];
    pthread_create(&be, NULL, backend, NULL);
    for (int i = 0; i < THREADS; i++) {
        memset(&t[i], 0, sizeof(t[i]));
        t[i].index = i;
        pthread_create(&th[i], NULL, handler, &t[i]);
    }
    int calls = 0, ok = 0, errors = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        printf("thread %d (%s): %d calls, %d ok: backend %d, cache %d, stub %d\n", i,
               i % 2 ? "vip " : "free", t[i].calls, t[i].ok, t[i].by_backend, t[i].by_cache,
               t[i].by_stub);
        calls += t[i].calls;
        ok += t[i].ok;
        errors += t[i].errors;
    }
    char *state = rsl_state_json(rt);
    printf("guards: %s\n", state ? state : "?");
    rsl_free(state);
    rsl_close(rt); /* every call has completed; the workers stop */

    pthread_mutex_lock(&lock);
    stopping = 1;
    pthread_cond_signal(&more);
    pthread_mutex_unlock(&lock);
    pthread_join(be, NULL);
    printf("summary: %d calls, %d completed exactly once, %d ok, %d errors\n",
           THREADS * CALLS, calls, ok, errors);
    return calls == THREADS * CALLS && errors == 0 ? 0 : 1;
}
