/*
 * main.c -- the `resilua` command: `check` validates a policy directory, `call` runs a
 * policy COUNT times in one runtime and prints each result as one JSON line.
 *
 * Layer: the CLI, the top: a client of resilua.h only, like any embedder.
 *
 * Rules: this file is a client of the library like any embedder -- it uses only
 * resilua.h (and jansson to read rsl_check's description).  Results go to stdout, one
 * line per call, flushed per line so a pipe sees each call as it ends; diagnostics go to
 * stderr.  Exit codes (DESIGN.md "Command line"): check 0 valid / 1 load errors; call
 * 0 every outcome ok / 1 some outcome not ok / 2 usage error, unknown policy, or a
 * directory that does not load.  A SIGINT or SIGTERM during `call -n` stops after the
 * call in flight, closes the runtime (letting started cache writes finish) and exits 130.
 * `serve` runs the sidecar (serve.c, through resilua.h) until SIGTERM or SIGINT, which this
 * thread takes with sigwait, then drains it and exits 0; events (breaker transitions,
 * reloads, log lines) go to stderr as one JSON object per line.
 */
#include "cli/cli.h"
#include "resilua.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EXIT_USAGE 2
#define EXIT_INTERRUPTED 130

/* A call that has not answered after this long is abandoned (canceled, counted not ok).
 * Policies bound their own time with `deadline` and step timeouts, and Lua runs under
 * the sandbox's limits, so this only catches a host step that never answers: one
 * minute is far above any sane policy deadline. */
#define CALL_WAIT_NS (60LL * 1000000000LL)


static const char *prog = "resilua";
static volatile sig_atomic_t stop_requested;

static const char usage_text[] =
    "usage: resilua <command> [options]\n"
    "\n"
    "commands:\n"
    "  check [-p DIR]             load and validate the policy directory; list its\n"
    "                             policies and guards (exit 1 on load errors)\n"
    "  call [-p DIR] [-n COUNT] [--interval DURATION] [--redis HOST:PORT]\n"
    "       POLICY [attr=value ...]\n"
    "                             run POLICY COUNT times (default 1) in one runtime,\n"
    "                             DURATION apart (default 0), and print each result as\n"
    "                             one JSON object per line; body=TEXT sets the request\n"
    "                             body, any other attr=value a request attribute\n"
    "  serve [-p DIR] [--listen HOST:PORT] [--workers N] [--redis HOST:PORT]\n"
    "        [--max-body SIZE] [--request-timeout D] [--idle-timeout D] [--drain-timeout D]\n"
    "        [--access-log FILE|-] [--otlp-endpoint URL] [--trace-sample RATIO]\n"
    "        [--trace-errors] [--trace-skip-unsampled] [--service-name NAME]\n"
    "        [--redis-prefix PREFIX] [--shed-above P] [--max-shed F]\n"
    "                             the HTTP sidecar (default 127.0.0.1:8700; port 0: any\n"
    "                             free one; prints \"listening HOST:PORT\"): /call/POLICY,\n"
    "                             r.expose routes, /metrics, /state, /reload, /healthz;\n"
    "                             SIGHUP reloads, SIGUSR1 reopens the access log,\n"
    "                             SIGTERM/SIGINT drain and exit 0\n"
    "  test [-p DIR] TESTS_DIR    run the policy tests TESTS_DIR/test_*.lua on a virtual\n"
    "                             clock, the I/O steps answered as each test says; TAP\n"
    "                             output (exit 1 when an expectation fails)\n"
    "  simulate [-p DIR] SCENARIO.lua [--json FILE] [--seed N]\n"
    "                             run a scenario's traffic through the policies on\n"
    "                             virtual time, its upstreams modelled: one line per\n"
    "                             simulated second (served-by per tier, breakers)\n"
    "  version                    print the version\n"
    "\n"
    "options:\n"
    "  -p, --policies DIR         policy directory (default: policies)\n"
    "  -n, --count COUNT          number of calls (call)\n"
    "  --interval DURATION        pause between the end of a call and the start of the\n"
    "                             next: a number with a unit us, ms, s, m or h\n"
    "  --redis HOST:PORT          Redis for r.redis and r.redis_cache steps (without it\n"
    "                             they answer \"connect\" and the chain falls back)\n"
    "  --redis-prefix PREFIX      the prefix of the keys shared guards keep in Redis\n"
    "                             (serve; default resilua:)\n"
    "  --access-log FILE|-        one JSON line per answered request (serve)\n"
    "  --otlp-endpoint URL        send spans as OTLP/HTTP JSON, e.g.\n"
    "                             http://127.0.0.1:4318/v1/traces (serve; default:\n"
    "                             OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, else no traces)\n"
    "  --trace-sample RATIO       share of new traces sampled, 0..1 (default:\n"
    "                             OTEL_TRACES_SAMPLER_ARG, else 1); a client's\n"
    "                             traceparent decides for its own trace\n"
    "  --trace-errors             also send every degraded or failed call's spans\n"
    "  --trace-skip-unsampled     send no traceparent upstream from a call that began\n"
    "                             its own trace and is not sampled (default: send it,\n"
    "                             as W3C asks)\n"
    "  --service-name NAME        service.name of the spans (default: OTEL_SERVICE_NAME,\n"
    "                             else resilua)\n"
    "  --shed-above P             shed calls, lowest priority first (429), while the\n"
    "                             load signal (sig.pressure(), 0..1) is above P (serve;\n"
    "                             default: no shedding)\n"
    "  --max-shed F               the most of priority 0 that shedding may refuse, 0..1\n"
    "                             (default 0: none)\n"
    "  -h, --help                 this text\n"
    "\n"
    "exit status: 0 ok; 1 load errors (check) or a call whose outcome is not ok (call);\n"
    "2 usage error, unknown policy, or a policy directory that does not load (call).\n";

static void usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void usage_error(const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "%s: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'resilua --help' for more information.\n");
}

/* ---- option parsing --------------------------------------------------------------------
 * Options and operands may be mixed (an operand never starts with '-': attributes are
 * name=value); "--" ends the options.  An option's value is attached ("-pDIR",
 * "--policies=DIR") or the next argument. */

typedef struct args {
    int argc;
    char **argv;
    int i;            /* next argument */
    int only_operands;/* after "--" */
} args;

/*
 * Matches argv[a->i] against `shortopt` ("-p", or NULL) and `longopt` ("--policies", or
 * NULL).  On a match with a value, stores it in *val, advances, returns 1.  Returns 0 when
 * it does not match, -1 (after a usage message) when the value is missing.
 */
static int opt_value(args *a, const char *shortopt, const char *longopt, const char **val) {
    const char *s = a->argv[a->i];
    const char *name = NULL, *attached = NULL;
    size_t sl = shortopt ? strlen(shortopt) : 0, ll = longopt ? strlen(longopt) : 0;
    if (shortopt && strncmp(s, shortopt, sl) == 0) {
        name = shortopt;
        attached = s[sl] ? s + sl : NULL;
    } else if (longopt && strncmp(s, longopt, ll) == 0 && (s[ll] == 0 || s[ll] == '=')) {
        name = longopt;
        attached = s[ll] == '=' ? s + ll + 1 : NULL;
    } else {
        return 0;
    }
    if (attached) {
        *val = attached;
        a->i++;
        return 1;
    }
    if (a->i + 1 >= a->argc) {
        usage_error("option %s needs a value", name);
        return -1;
    }
    *val = a->argv[a->i + 1];
    a->i += 2;
    return 1;
}

static int is_help(const char *s) {
    return strcmp(s, "-h") == 0 || strcmp(s, "--help") == 0;
}

/*
 * Parses a duration: a non-negative decimal number and a unit (us, ms, s, m, h); "0"
 * alone is accepted.  Returns 0 with *ns, or -1.
 */
static int parse_duration(const char *s, int64_t *ns) {
    static const struct {
        const char *unit;
        double ns;
    } units[] = {{"us", 1e3}, {"ms", 1e6}, {"s", 1e9}, {"m", 60e9}, {"h", 3600e9}};
    char *end = NULL;
    if (!s[0] || s[0] == '-' || s[0] == '+') {
        return -1;
    }
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno != 0 || !isfinite(v) || v < 0) {
        return -1;
    }
    if (*end == 0) {
        if (v != 0) {
            return -1; /* a bare non-zero number: ambiguous, ask for a unit */
        }
        *ns = 0;
        return 0;
    }
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(end, units[i].unit) == 0) {
            double t = v * units[i].ns;
            if (t > (double)INT64_MAX / 2) {
                return -1;
            }
            *ns = (int64_t)(t + 0.5);
            return 0;
        }
    }
    return -1;
}

static int parse_count(const char *s, long *out) {
    char *end = NULL;
    if (!s[0] || s[0] == '-' || s[0] == '+') {
        return -1;
    }
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*end != 0 || errno != 0 || v < 1 || v > INT_MAX) {
        return -1;
    }
    *out = v;
    return 0;
}

/* ---- check ----------------------------------------------------------------------------- */

static const char *jstr(json_t *o, const char *key, const char *def) {
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : def;
}

/* Prints a JSON array of strings joined by `sep`; "-" when empty or absent. */
static void print_str_list(json_t *arr, const char *sep) {
    size_t i, n = json_array_size(arr);
    json_t *v;
    if (n == 0) {
        fputs("-", stdout);
        return;
    }
    json_array_foreach(arr, i, v) {
        const char *s = json_string_value(v);
        printf("%s%s", i ? sep : "", s ? s : "?");
    }
}

/* A duration in ms as the DSL writes it: "10s", "800ms", "250us", "2m". */
static void print_ms(double ms) {
    if (ms >= 3600000 && fmod(ms, 3600000) == 0) {
        printf("%gh", ms / 3600000);
    } else if (ms >= 60000 && fmod(ms, 60000) == 0) {
        printf("%gm", ms / 60000);
    } else if (ms >= 1000 && fmod(ms, 1000) == 0) {
        printf("%gs", ms / 1000);
    } else if (ms == floor(ms)) {
        printf("%gms", ms);
    } else {
        printf("%gus", ms * 1000);
    }
}

/*
 * A configuration value from the description, compactly: numbers without a useless ".0",
 * `NAME_ms` fields as durations under NAME, lists as a,b,c and objects as {k=v ...}.
 */
static void print_conf_value(const char *key, json_t *v);

static void print_conf_fields(json_t *obj, const char *skip) {
    const char *key;
    json_t *v;
    int first = 1;
    json_object_foreach(obj, key, v) {
        if (skip && strcmp(key, skip) == 0) {
            continue;
        }
        size_t kl = strlen(key);
        int is_ms = kl > 3 && strcmp(key + kl - 3, "_ms") == 0 && json_is_number(v);
        printf("%s%.*s=", first ? "" : " ", (int)(is_ms ? kl - 3 : kl), key);
        print_conf_value(key, v);
        first = 0;
    }
}

static void print_conf_value(const char *key, json_t *v) {
    size_t kl = key ? strlen(key) : 0;
    size_t i;
    json_t *e;
    switch (json_typeof(v)) {
    case JSON_STRING:
        fputs(json_string_value(v), stdout);
        break;
    case JSON_INTEGER:
    case JSON_REAL:
        if (kl > 3 && strcmp(key + kl - 3, "_ms") == 0) {
            print_ms(json_number_value(v));
        } else {
            printf("%g", json_number_value(v));
        }
        break;
    case JSON_TRUE:
    case JSON_FALSE:
        fputs(json_is_true(v) ? "true" : "false", stdout);
        break;
    case JSON_ARRAY:
        json_array_foreach(v, i, e) {
            if (i) {
                fputc(',', stdout);
            }
            print_conf_value(NULL, e);
        }
        break;
    case JSON_OBJECT:
        fputc('{', stdout);
        print_conf_fields(v, NULL);
        fputc('}', stdout);
        break;
    default:
        fputs("null", stdout);
        break;
    }
}

/* Prints rsl_check's description readably; returns 0, or -1 when it cannot be parsed. */
static int print_description(const char *dir, const char *doc) {
    json_error_t jerr;
    json_t *root = json_loads(doc, 0, &jerr);
    if (!root) {
        fprintf(stderr, "%s: cannot read the policy description: %s\n", prog, jerr.text);
        return -1;
    }
    json_t *pols = json_object_get(root, "policies");
    json_t *guards = json_object_get(root, "guards");
    size_t np = json_array_size(pols), ng = json_object_size(guards);

    printf("%s: %zu %s, %zu %s\n", dir, np, np == 1 ? "policy" : "policies", ng,
           ng == 1 ? "guard" : "guards");
    if (np) {
        printf("\npolicies:\n");
    }
    size_t i;
    json_t *p;
    json_array_foreach(pols, i, p) {
        json_int_t line = json_integer_value(json_object_get(p, "line"));
        printf("  %s  (%s:%lld)\n", jstr(p, "name", "?"), jstr(p, "file", "?"), (long long)line);
        json_t *dl = json_object_get(p, "deadline_ms");
        if (json_is_number(dl) && json_number_value(dl) > 0) {
            printf("    deadline  %gms\n", json_number_value(dl));
        }
        printf("    chain     ");
        print_str_list(json_object_get(p, "chain"), " -> ");
        printf("\n    route     %s\n",
               json_is_true(json_object_get(p, "route")) ? "yes (route(req, sig) picks the path)"
                                                         : "no (always the chain)");
        if (json_is_true(json_object_get(p, "priority"))) {
            printf("    priority  yes (each call's priority from `priority`)\n");
        }
        size_t k;
        json_t *s;
        json_array_foreach(json_object_get(p, "steps"), k, s) {
            printf("    %-9s %-12s %s", k ? "" : "steps", jstr(s, "name", "?"), jstr(s, "kind", "?"));
            json_t *sg = json_object_get(s, "guards");
            if (json_array_size(sg)) {
                printf("  guards: ");
                print_str_list(sg, ", ");
            }
            printf("\n");
        }
    }
    if (ng) {
        printf("\nguards:\n");
    }
    const char *gname;
    json_t *g;
    json_object_foreach(guards, gname, g) {
        printf("  %-20s %-9s ", gname, jstr(g, "kind", "?"));
        print_conf_fields(g, "kind");
        printf("\n");
    }
    json_t *ex = json_object_get(root, "expose");
    if (json_array_size(ex)) {
        printf("\nexposed:\n");
        json_array_foreach(ex, i, p) {
            printf("  %s %s -> %s\n", jstr(p, "method", "?"), jstr(p, "path", "?"),
                   jstr(p, "policy", "?"));
        }
    }
    /* Warnings (`file:line: message`, e.g. a route naming a step that does not exist)
     * do not fail the check; they go to stderr with the errors' format. */
    const char *warn = json_string_value(json_object_get(root, "warnings"));
    if (warn && *warn) {
        fflush(stdout);
        fputs(warn, stderr);
        if (warn[strlen(warn) - 1] != '\n') {
            fputc('\n', stderr);
        }
    }
    json_decref(root);
    return 0;
}

/* Prints `file:line: message` lines from an error buffer, one per line. */
static void print_errors(const char *err) {
    if (!err[0]) {
        return;
    }
    fputs(err, stderr);
    if (err[strlen(err) - 1] != '\n') {
        fputc('\n', stderr);
    }
}

static int cmd_check(int argc, char **argv) {
    args a = {argc, argv, 0, 0};
    const char *dir = "policies", *v = NULL;
    while (a.i < a.argc) {
        const char *s = a.argv[a.i];
        int r;
        if (is_help(s)) {
            fputs(usage_text, stdout);
            return 0;
        }
        if ((r = opt_value(&a, "-p", "--policies", &v)) != 0) {
            if (r < 0) {
                return EXIT_USAGE;
            }
            dir = v;
            continue;
        }
        if (s[0] == '-') {
            usage_error("check: unknown option %s", s);
        } else {
            usage_error("check: unexpected argument %s", s);
        }
        return EXIT_USAGE;
    }

    char err[16384] = "";
    char *doc = NULL;
    int rc = rsl_check(dir, &doc, err, sizeof(err));
    if (rc != 0) {
        if (err[0]) {
            print_errors(err);
        } else {
            fprintf(stderr, "%s: %s: %s\n", prog, dir, rsl_strerror(rc));
        }
        rsl_free(doc);
        return 1;
    }
    int out = 0;
    if (!doc) {
        printf("%s: ok\n", dir);
    } else if (print_description(dir, doc) < 0) {
        out = 1;
    }
    rsl_free(doc);
    fflush(stdout);
    return out;
}

/* ---- call ------------------------------------------------------------------------------ */

static void on_stop_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

static void install_stop_handlers(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: a pause between calls ends at once */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

/* Sleeps `ns`, ending early when a stop was requested. */
static void pause_ns(int64_t ns) {
    struct timespec ts = {(time_t)(ns / 1000000000LL), (long)(ns % 1000000000LL)};
    while (!stop_requested && nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Log lines from the runtime (route failures, ...): stderr, one fprintf per line so that
 * lines from several threads do not interleave (stdio locks the stream per call). */
static void log_line(void *ud, rsl_log_level level, const char *msg) {
    static const char *names[] = {"error", "warning", "info", "debug"};
    (void)ud;
    if (level > RSL_LOG_WARN) {
        return;
    }
    fprintf(stderr, "%s: %s: %s\n", prog, names[level], msg);
}

/* "policy a, b, c" from the runtime's description, for an unknown-policy message. */
static void print_known_policies(rsl_runtime *rt) {
    char *doc = rsl_describe_json(rt);
    json_t *root = doc ? json_loads(doc, 0, NULL) : NULL;
    json_t *pols = json_object_get(root, "policies");
    if (json_array_size(pols)) {
        size_t i;
        json_t *p;
        fprintf(stderr, "%s: known policies:", prog);
        json_array_foreach(pols, i, p) {
            fprintf(stderr, "%s %s", i ? "," : "", jstr(p, "name", "?"));
        }
        fputc('\n', stderr);
    }
    json_decref(root);
    rsl_free(doc);
}

static int cmd_call(int argc, char **argv) {
    args a = {argc, argv, 0, 0};
    const char *dir = "policies", *policy = NULL, *redis = NULL, *v = NULL;
    long count = 1;
    int64_t interval_ns = 0;
    int rc, exit_code = EXIT_USAGE;
    rsl_req *req = rsl_req_new();
    rsl_runtime *rt = NULL;

    if (!req) {
        fprintf(stderr, "%s: out of memory\n", prog);
        return EXIT_USAGE;
    }
    while (a.i < a.argc) {
        const char *s = a.argv[a.i];
        int r = 0;
        if (!a.only_operands && s[0] == '-' && s[1] != 0) {
            if (strcmp(s, "--") == 0) {
                a.only_operands = 1;
                a.i++;
                continue;
            }
            if (is_help(s)) {
                fputs(usage_text, stdout);
                exit_code = 0;
                goto out;
            }
            if ((r = opt_value(&a, "-p", "--policies", &v)) > 0) {
                dir = v;
            } else if (r == 0 && (r = opt_value(&a, "-n", "--count", &v)) > 0) {
                if (parse_count(v, &count) < 0) {
                    usage_error("call: -n wants a positive whole number, got \"%s\"", v);
                    goto out;
                }
            } else if (r == 0 && (r = opt_value(&a, NULL, "--interval", &v)) > 0) {
                if (parse_duration(v, &interval_ns) < 0) {
                    usage_error("call: --interval wants a duration such as 100ms, 1s, 250us "
                                "or 2m, got \"%s\"",
                                v);
                    goto out;
                }
            } else if (r == 0 && (r = opt_value(&a, NULL, "--redis", &v)) > 0) {
                redis = v;
            } else if (r == 0) {
                usage_error("call: unknown option %s", s);
                goto out;
            }
            if (r < 0) {
                goto out;
            }
            continue;
        }
        a.i++;
        if (!policy) {
            policy = s;
            continue;
        }
        const char *eq = strchr(s, '=');
        if (!eq || eq == s) {
            usage_error("call: expected attr=value after the policy name, got \"%s\"", s);
            goto out;
        }
        size_t nlen = (size_t)(eq - s);
        if (nlen == 4 && strncmp(s, "body", 4) == 0) {
            rc = rsl_req_set_body(req, eq + 1, strlen(eq + 1));
        } else {
            char *name = strndup(s, nlen);
            rc = name ? rsl_req_set(req, name, eq + 1, strlen(eq + 1)) : RSL_ENOMEM;
            free(name);
        }
        if (rc != 0) {
            usage_error("call: cannot set \"%s\": %s", s, rsl_strerror(rc));
            goto out;
        }
    }
    if (!policy) {
        usage_error("call: which policy? (resilua call [options] POLICY [attr=value ...])");
        goto out;
    }
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    o.workers = 1; /* DESIGN.md: one worker, so module-level locals persist across calls */
    o.log = log_line;
    o.redis = redis;
    char err[16384] = "";
    rc = rsl_open(&rt, &o, err, sizeof(err));
    if (rc != 0) {
        if (err[0]) {
            print_errors(err);
        }
        fprintf(stderr, "%s: %s: %s\n", prog, dir, rsl_strerror(rc));
        rt = NULL;
        goto out;
    }

    install_stop_handlers();
    exit_code = 0;
    for (long n = 0; n < count && !stop_requested; n++) {
        if (n > 0 && interval_ns > 0) {
            pause_ns(interval_ns);
            if (stop_requested) {
                break;
            }
        }
        rsl_result *res = NULL;
        rc = rsl_call_sync(rt, policy, req, CALL_WAIT_NS, &res);
        if (rc == RSL_ENOENT) {
            fprintf(stderr, "%s: unknown policy \"%s\" in %s\n", prog, policy, dir);
            print_known_policies(rt);
            exit_code = EXIT_USAGE;
            break;
        }
        if (rc != 0) {
            fprintf(stderr, "%s: call %ld of %s: %s\n", prog, n + 1, policy, rsl_strerror(rc));
            exit_code = 1;
            if (rc == RSL_ETIMEDOUT) {
                continue; /* canceled; the next call may well answer */
            }
            break;
        }
        char *line = rsl_result_json(res);
        if (line) {
            fputs(line, stdout);
            fputc('\n', stdout);
            fflush(stdout);
        } else {
            fprintf(stderr, "%s: call %ld: cannot render the result\n", prog, n + 1);
            exit_code = 1;
        }
        if (rsl_result_outcome(res) != RSL_OUTCOME_OK) {
            exit_code = 1;
        }
        rsl_free(line);
        rsl_result_free(res);
    }
    if (stop_requested) {
        exit_code = EXIT_INTERRUPTED;
    }

out:
    /* rsl_close lets writes that calls started (cache write-through) finish. */
    rsl_close(rt);
    rsl_req_free(req);
    return exit_code;
}

/* ---- serve ----------------------------------------------------------------------------- */

/* "2024-05-01T12:00:00.123Z": the events' time. */
static void now_rfc3339(char *buf, size_t n) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char sec[32];
    strftime(sec, sizeof(sec), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, n, "%s.%03ldZ", sec, ts.tv_nsec / 1000000L);
}

/* Prints one event as a JSON line on stderr: {"time", "event", ...fields}.  Takes `o`.
 * One write per line: lines from several threads never interleave. */
static void emit_event(const char *event, json_t *o) {
    char t[64];
    now_rfc3339(t, sizeof(t));
    json_t *line = json_object();
    json_object_set_new(line, "time", json_string(t));
    json_object_set_new(line, "event", json_string(event));
    json_object_update(line, o);
    json_decref(o);
    char *js = json_dumps(line, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(line);
    if (js) {
        fprintf(stderr, "%s\n", js);
        free(js);
    }
}

static void serve_log(void *ud, rsl_log_level level, const char *msg) {
    static const char *names[] = {"error", "warning", "info", "debug"};
    (void)ud;
    if (level > RSL_LOG_WARN) {
        return;
    }
    emit_event("log", json_pack("{s:s,s:s}", "level", names[level], "msg", msg));
}

static void serve_on_transition(void *ud, const char *breaker, const char *from, const char *to,
                                const char *reason) {
    (void)ud;
    emit_event("transition", json_pack("{s:s,s:s,s:s,s:s}", "guard", breaker, "from", from,
                                       "to", to, "reason", reason));
}

static void serve_on_reload(void *ud, int ok, const char *report_json) {
    (void)ud;
    json_t *rep = json_loads(report_json, 0, NULL);
    json_t *o = json_object();
    json_object_set_new(o, "ok", json_boolean(ok));
    if (!ok) {
        json_t *e = json_object_get(rep, "error");
        json_object_set(o, "error", e ? e : json_null());
    }
    json_object_set_new(o, "report", rep ? rep : json_null());
    emit_event("reload", o);
}

/* A byte count: digits, optionally k/K/KiB or m/M/MiB (powers of 1024). */
static int parse_size(const char *s, size_t *out) {
    char *end = NULL;
    if (!s[0] || s[0] == '-' || s[0] == '+') {
        return -1;
    }
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || errno != 0) {
        return -1;
    }
    unsigned long long mul = 1;
    if (strcmp(end, "k") == 0 || strcmp(end, "K") == 0 || strcmp(end, "KiB") == 0) {
        mul = 1024;
    } else if (strcmp(end, "m") == 0 || strcmp(end, "M") == 0 || strcmp(end, "MiB") == 0) {
        mul = 1024 * 1024;
    } else if (*end) {
        return -1;
    }
    if (v == 0 || v > (unsigned long long)SIZE_MAX / mul) {
        return -1;
    }
    *out = (size_t)(v * mul);
    return 0;
}

static int cmd_serve(int argc, char **argv) {
    args a = {argc, argv, 0, 0};
    const char *dir = "policies", *redis = NULL, *v = NULL;
    const char *otlp = NULL, *service = NULL;
    double sample = -1, shed_above = 0, max_shed = 0;
    const char *redis_prefix = NULL;
    int trace_errors = 0, trace_skip = 0;
    long workers = 1;
    rsl_serve_options so;
    rsl_serve_options_init(&so);
    while (a.i < a.argc) {
        const char *s = a.argv[a.i];
        int r = 0;
        if (is_help(s)) {
            fputs(usage_text, stdout);
            return 0;
        }
        if (s[0] != '-' || s[1] == 0) {
            usage_error("serve: unexpected argument \"%s\"", s);
            return EXIT_USAGE;
        }
        int64_t ns = 0;
        int64_t *dur = NULL;
        if ((r = opt_value(&a, "-p", "--policies", &v)) > 0) {
            dir = v;
        } else if (r == 0 && (r = opt_value(&a, NULL, "--listen", &v)) > 0) {
            so.listen = v;
        } else if (r == 0 && (r = opt_value(&a, NULL, "--redis", &v)) > 0) {
            redis = v;
        } else if (r == 0 && (r = opt_value(&a, NULL, "--redis-prefix", &v)) > 0) {
            redis_prefix = v;
        } else if (r == 0 && (r = opt_value(&a, NULL, "--workers", &v)) > 0) {
            if (parse_count(v, &workers) < 0 || workers > 256) {
                usage_error("serve: --workers wants a whole number 1..256, got \"%s\"", v);
                return EXIT_USAGE;
            }
        } else if (r == 0 && (r = opt_value(&a, NULL, "--max-body", &v)) > 0) {
            if (parse_size(v, &so.max_body) < 0) {
                usage_error("serve: --max-body wants a size such as 65536, 64k or 1M, got \"%s\"",
                            v);
                return EXIT_USAGE;
            }
        } else if (r == 0 && (r = opt_value(&a, NULL, "--request-timeout", &v)) > 0) {
            dur = &so.request_timeout_ns;
        } else if (r == 0 && (r = opt_value(&a, NULL, "--idle-timeout", &v)) > 0) {
            dur = &so.idle_timeout_ns;
        } else if (r == 0 && (r = opt_value(&a, NULL, "--drain-timeout", &v)) > 0) {
            dur = &so.drain_timeout_ns;
        } else if (r == 0 && (r = opt_value(&a, NULL, "--access-log", &v)) > 0) {
            so.access_log = v;
        } else if (r == 0 && (r = opt_value(&a, NULL, "--otlp-endpoint", &v)) > 0) {
            otlp = v;
        } else if (r == 0 && (r = opt_value(&a, NULL, "--service-name", &v)) > 0) {
            service = v;
        } else if (r == 0 && (r = opt_value(&a, NULL, "--trace-sample", &v)) > 0) {
            char *end = NULL;
            errno = 0;
            sample = strtod(v, &end);
            if (end == v || *end || errno || !(sample >= 0 && sample <= 1)) {
                usage_error("serve: --trace-sample wants a ratio 0..1 such as 0.1, got \"%s\"", v);
                return EXIT_USAGE;
            }
        } else if (r == 0 && ((r = opt_value(&a, NULL, "--shed-above", &v)) > 0 ||
                              (r == 0 && (r = opt_value(&a, NULL, "--max-shed", &v)) > 0))) {
            char *end = NULL;
            errno = 0;
            double x = strtod(v, &end);
            if (end == v || *end || errno || !(x >= 0 && x <= 1)) {
                usage_error("serve: %s wants a number 0..1 such as 0.7, got \"%s\"", s, v);
                return EXIT_USAGE;
            }
            *(strncmp(s, "--max-shed", 10) == 0 ? &max_shed : &shed_above) = x;
        } else if (r == 0 && strcmp(s, "--trace-errors") == 0) {
            trace_errors = 1;
            a.i++;
            r = 1;
        } else if (r == 0 && strcmp(s, "--trace-skip-unsampled") == 0) {
            trace_skip = 1;
            a.i++;
            r = 1;
        } else if (r == 0) {
            usage_error("serve: unknown option %s", s);
            return EXIT_USAGE;
        }
        if (r < 0) {
            return EXIT_USAGE;
        }
        if (dur) {
            if (parse_duration(v, &ns) < 0 || ns <= 0) {
                usage_error("serve: %s wants a duration such as 500ms, 10s or 2m, got \"%s\"", s,
                            v);
                return EXIT_USAGE;
            }
            *dur = ns;
        }
    }

    /* SIGTERM and SIGINT are taken by this thread alone (sigwait below): blocked here
     * before rsl_open, so every thread the runtime starts inherits the block.  SIGHUP is
     * the runtime's (rsl_handle_sighup). */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGUSR1); /* reopens the access log (below) */
    pthread_sigmask(SIG_BLOCK, &stop, NULL);

    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    o.workers = (int)workers;
    o.redis = redis;
    o.log = serve_log;
    o.on_transition = serve_on_transition;
    o.on_reload = serve_on_reload;
    o.otlp_endpoint = otlp;
    o.service_name = service;
    o.trace_sample = sample;
    o.trace_errors = trace_errors;
    o.trace_skip_unsampled = trace_skip;
    o.shed_above = shed_above;
    o.max_shed = max_shed;
    o.redis_prefix = redis_prefix;
    rsl_runtime *rt = NULL;
    char err[16384] = "";
    int rc = rsl_open(&rt, &o, err, sizeof(err));
    if (rc != 0) {
        if (err[0]) {
            print_errors(err);
        }
        fprintf(stderr, "%s: %s: %s\n", prog, dir, rsl_strerror(rc));
        return EXIT_USAGE;
    }
    if ((rc = rsl_handle_sighup(rt)) != 0) {
        fprintf(stderr, "%s: serve: cannot watch SIGHUP: %s\n", prog, rsl_strerror(rc));
        rsl_close(rt);
        return 1;
    }
    rsl_serve *srv = NULL;
    if ((rc = rsl_serve_start(rt, &so, &srv, err, sizeof(err))) != 0) {
        fprintf(stderr, "%s: serve: %s\n", prog, err[0] ? err : rsl_strerror(rc));
        rsl_close(rt);
        return rc == RSL_EINVAL ? EXIT_USAGE : 1;
    }
    /* The address as given, with the real port (tests listen on port 0 and read this). */
    const char *colon = strrchr(so.listen, ':');
    char addr[300];
    snprintf(addr, sizeof(addr), "%.*s:%d", (int)(colon - so.listen), so.listen,
             rsl_serve_port(srv));
    printf("listening %s\n", addr);
    fflush(stdout);
    emit_event("listening", json_pack("{s:s,s:i,s:s}", "address", addr, "workers",
                                      rsl_workers(rt), "policies", dir));

    int sig = 0;
    for (;;) {
        if (sigwait(&stop, &sig) != 0) {
            continue;
        }
        if (sig != SIGUSR1) {
            break;
        }
        rsl_serve_reopen_log(srv);
        emit_event("log_reopened", json_pack("{s:s}", "access_log",
                                             so.access_log ? so.access_log : ""));
    }
    emit_event("draining", json_pack("{s:s}", "signal", sig == SIGINT ? "SIGINT" : "SIGTERM"));
    rsl_serve_stop(srv);
    rsl_close(rt);
    emit_event("stopped", json_object());
    return 0;
}

/* ---- main ------------------------------------------------------------------------------ */

int main(int argc, char **argv) {
    if (argc < 2) {
        fputs(usage_text, stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (is_help(cmd) || strcmp(cmd, "help") == 0) {
        fputs(usage_text, stdout);
        return 0;
    }
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("resilua %d.%d.%d\n", RSL_VERSION_MAJOR, RSL_VERSION_MINOR, RSL_VERSION_PATCH);
        return 0;
    }
    if (strcmp(cmd, "check") == 0) {
        return cmd_check(argc - 2, argv + 2);
    }
    if (strcmp(cmd, "call") == 0) {
        return cmd_call(argc - 2, argv + 2);
    }
    if (strcmp(cmd, "test") == 0) {
        return rsl_cli_test(argc, argv);
    }
    if (strcmp(cmd, "simulate") == 0) {
        return rsl_cli_simulate(argc, argv);
    }
    if (strcmp(cmd, "serve") == 0) {
        return cmd_serve(argc - 2, argv + 2);
    }
    usage_error("unknown command \"%s\"", cmd);
    return EXIT_USAGE;
}
