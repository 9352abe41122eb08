/*
 * upstream.h -- examples/flaky as a real HTTP upstream for tests and benchmarks
 * (header-only: every function is static).
 *
 *   rsl_upstream u;
 *   rsl_up_start("--fail 10", &u);              // ephemeral port on 127.0.0.1
 *   ... use u.port / u.base ...
 *   rsl_up_get(&u, "GET", "/_stats", out, sizeof(out));   // 200, body in out
 *   rsl_up_stop(&u);
 *
 * The child gets SIGKILL when the process that started it dies (PR_SET_PDEATHSIG: a
 * crashed or timed-out test leaves no server behind).  Start and stop from one thread:
 * the death signal follows the thread that forked.
 */
#ifndef RSL_TEST_UPSTREAM_H
#define RSL_TEST_UPSTREAM_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef RSL_BINARY_DIR
#error "RSL_BINARY_DIR (the build directory) must be defined"
#endif

typedef struct rsl_upstream {
    pid_t pid; /* 0 once stopped */
    int port;
    char base[64]; /* "http://127.0.0.1:PORT" */
} rsl_upstream;

#define RSL_UP_UNUSED __attribute__((unused))

static RSL_UP_UNUSED double rsl_up_now_ms_(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Sends SIGTERM, waits up to 2 s, then SIGKILL.  Idempotent. */
static RSL_UP_UNUSED void rsl_up_stop(rsl_upstream *u) {
    if (!u || u->pid <= 0) {
        return;
    }
    kill(u->pid, SIGTERM);
    double t0 = rsl_up_now_ms_();
    int st;
    for (;;) {
        pid_t r = waitpid(u->pid, &st, WNOHANG);
        if (r == u->pid || (r < 0 && errno != EINTR)) {
            break;
        }
        if (rsl_up_now_ms_() - t0 > 2000) {
            kill(u->pid, SIGKILL);
            waitpid(u->pid, &st, 0);
            break;
        }
        usleep(2000);
    }
    u->pid = 0;
}

/*
 * Starts RSL_BINARY_DIR/example_flaky --listen 127.0.0.1:0 plus `args` (split on spaces;
 * may be NULL or ""), waits (5 s at most) for its "listening 127.0.0.1:PORT" line and
 * fills u.  Returns 0, or -1 (nothing left running).
 */
static RSL_UP_UNUSED int rsl_up_start(const char *args, rsl_upstream *u) {
    memset(u, 0, sizeof(*u));
    char copy[1024];
    snprintf(copy, sizeof(copy), "%s", args ? args : "");
    char *argv[64];
    int argc = 0;
    static char bin[] = RSL_BINARY_DIR "/example_flaky";
    argv[argc++] = bin;
    argv[argc++] = (char *)"--listen";
    argv[argc++] = (char *)"127.0.0.1:0";
    char *save = NULL;
    for (char *t = strtok_r(copy, " ", &save); t && argc < 63; t = strtok_r(NULL, " ", &save)) {
        argv[argc++] = t;
    }
    argv[argc] = NULL;

    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
        return -1;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) { /* the parent died before prctl */
            _exit(127);
        }
        dup2(fds[1], STDOUT_FILENO); /* dup2 clears FD_CLOEXEC on the copy */
        execv(bin, argv);
        _exit(127);
    }
    close(fds[1]);
    char line[256];
    size_t n = 0;
    double t0 = rsl_up_now_ms_();
    int ok = 0;
    while (n < sizeof(line) - 1) {
        int left = 5000 - (int)(rsl_up_now_ms_() - t0);
        if (left <= 0) {
            break;
        }
        struct pollfd p = {.fd = fds[0], .events = POLLIN};
        int r = poll(&p, 1, left);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            break;
        }
        ssize_t k = read(fds[0], line + n, sizeof(line) - 1 - n);
        if (k < 0 && errno == EINTR) {
            continue;
        }
        if (k <= 0) {
            break;
        }
        n += (size_t)k;
        line[n] = 0;
        if (strchr(line, '\n')) {
            ok = 1;
            break;
        }
    }
    close(fds[0]);
    line[n] = 0;
    int port = 0;
    if (!ok || sscanf(line, "listening 127.0.0.1:%d", &port) != 1 || port <= 0) {
        u->pid = pid;
        rsl_up_stop(u);
        fprintf(stderr, "upstream: example_flaky did not start (got \"%s\")\n", line);
        return -1;
    }
    u->pid = pid;
    u->port = port;
    snprintf(u->base, sizeof(u->base), "http://127.0.0.1:%d", port);
    return 0;
}

/*
 * A blocking request (Connection: close, no body) to the upstream: "GET /_stats",
 * "POST /_control?fail=50", ...  Copies the answer body to out (NUL-terminated,
 * truncated to cap - 1).  Returns the HTTP status, or -1 (no connection, no answer
 * within 5 s).
 */
static RSL_UP_UNUSED int rsl_up_get(const rsl_upstream *u, const char *method, const char *path,
                                    char *out, size_t cap) {
    if (out && cap) {
        out[0] = 0;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)u->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    char req[2048];
    int rl = snprintf(req, sizeof(req),
                      "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n"
                      "Content-Length: 0\r\n\r\n",
                      method, path, u->port);
    if (rl < 0 || (size_t)rl >= sizeof(req) || send(fd, req, (size_t)rl, MSG_NOSIGNAL) != rl) {
        close(fd);
        return -1;
    }
    /* Read to EOF (the server closes after answering); keep the head and as much of the
     * body as fits. */
    size_t bufcap = cap + 4096, len = 0;
    char *buf = malloc(bufcap + 1);
    if (!buf) {
        close(fd);
        return -1;
    }
    for (;;) {
        char tmp[4096];
        ssize_t k = recv(fd, tmp, sizeof(tmp), 0);
        if (k < 0 && errno == EINTR) {
            continue;
        }
        if (k <= 0) {
            break;
        }
        size_t take = (size_t)k < bufcap - len ? (size_t)k : bufcap - len;
        memcpy(buf + len, tmp, take);
        len += take;
    }
    close(fd);
    buf[len] = 0;
    int status = -1;
    char *body = strstr(buf, "\r\n\r\n");
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1 || !body) {
        free(buf);
        return -1;
    }
    if (out && cap) {
        snprintf(out, cap, "%s", body + 4);
    }
    free(buf);
    return status;
}

#endif
