/*
 * redis_server.h -- a real redis-server for tests, header-only (static functions).
 *
 * rsl_redis_start runs `redis-server` on a free loopback port, no persistence, as a child
 * that dies with the test process (PR_SET_PDEATHSIG), and returns once it answers PING.
 * rsl_redis_cmd is a tiny blocking client (inline commands: no quoting, no binary) to set
 * up and inspect data beside the code under test.
 *
 * Starting a server also ignores SIGPIPE in the test process: hiredis writes with
 * write(2), and a write to a connection the killed server reset must fail with EPIPE, not
 * kill the test (hosts of the library do the same; see src/redis.h).
 */
#ifndef RSL_TEST_REDIS_SERVER_H
#define RSL_TEST_REDIS_SERVER_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
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

typedef struct rsl_redis_server {
    pid_t pid; /* 0 when not running */
    int port;
} rsl_redis_server;

static inline int64_t rsl_redis_now_ms_(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void rsl_redis_sleep_ms_(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

/* A port the kernel considers free right now (another process may take it before the
 * server binds: rsl_redis_start then retries with another one). */
static inline int rsl_redis_free_port_(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        return -1;
    }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0) {
        port = ntohs(a.sin_port);
    }
    close(fd);
    return port;
}

/* A blocking connection to the server with 2 s send/receive timeouts (a paused server
 * must not hang the test), or -1. */
static inline int rsl_redis_connect_(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        return -1;
    }
    struct timeval tv = {2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Runs one inline command ("SET k v") and copies the reply's payload into out (NUL-
 * terminated, truncated to cap): a status or error line without its +/- sign, an
 * integer's digits, a bulk string's bytes, "" for nil; an array is left as raw RESP after
 * its header line.  Returns 0, 1 for a nil reply, -1 for an error reply or no answer. */
static inline int rsl_redis_cmd(rsl_redis_server *s, const char *cmd, char *out, size_t cap) {
    if (cap > 0) {
        out[0] = '\0';
    }
    int fd = rsl_redis_connect_(s->port);
    if (fd < 0) {
        return -1;
    }
    char line[4096];
    int n = snprintf(line, sizeof(line), "%s\r\n", cmd);
    if (n <= 0 || (size_t)n >= sizeof(line) || send(fd, line, (size_t)n, MSG_NOSIGNAL) != n) {
        close(fd);
        return -1;
    }
    /* Read until the reply is complete: for a bulk string, its header says how long. */
    static char buf[1 << 16];
    size_t have = 0;
    int rc = -1;
    for (;;) {
        ssize_t got = recv(fd, buf + have, sizeof(buf) - 1 - have, 0);
        if (got <= 0) {
            break;
        }
        have += (size_t)got;
        buf[have] = '\0';
        char *eol = strstr(buf, "\r\n");
        if (!eol) {
            if (have == sizeof(buf) - 1) {
                break;
            }
            continue;
        }
        const char *body = buf + 1;
        size_t blen = (size_t)(eol - body);
        if (buf[0] == '$') {
            long len = strtol(buf + 1, NULL, 10);
            if (len < 0) {
                rc = 1;
                blen = 0;
            } else {
                if (have < (size_t)(eol + 2 - buf) + (size_t)len + 2 && have < sizeof(buf) - 1) {
                    continue; /* not all of it yet */
                }
                body = eol + 2;
                blen = (size_t)len;
                if (body + blen > buf + have) {
                    blen = (size_t)(buf + have - body);
                }
                rc = 0;
            }
        } else if (buf[0] == '*') {
            body = eol + 2;
            blen = (size_t)(buf + have - body);
            rc = 0;
        } else {
            rc = buf[0] == '-' ? -1 : 0;
        }
        if (cap > 0) {
            size_t k = blen < cap - 1 ? blen : cap - 1;
            memcpy(out, body, k);
            out[k] = '\0';
        }
        break;
    }
    close(fd);
    return rc;
}

/* 1 when the server on `port` answers PING. */
static inline int rsl_redis_ping_(int port) {
    rsl_redis_server t = {0, port};
    char out[16];
    return rsl_redis_cmd(&t, "PING", out, sizeof(out)) == 0 && strcmp(out, "PONG") == 0;
}

/* Starts redis-server on s->port; 0 once it answers PING (within 5 s), -1 otherwise (the
 * child is reaped). */
static inline int rsl_redis_spawn_(rsl_redis_server *s) {
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        return -1;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) {
            _exit(127); /* the parent died before prctl */
        }
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) {
            dup2(null, 0);
            dup2(null, 1); /* its log goes to stdout: keep the test output clean */
        }
        char port[16];
        snprintf(port, sizeof(port), "%d", s->port);
        const char *argv[] = {"redis-server", "--port",     port,           "--bind", "127.0.0.1",
                              "--save",       "",           "--appendonly", "no",     "--daemonize",
                              "no",           "--loglevel", "warning",      NULL};
        execvp("redis-server", (char *const *)argv);
        execv("/usr/bin/redis-server", (char *const *)argv);
        _exit(127);
    }
    s->pid = pid;
    int64_t deadline = rsl_redis_now_ms_() + 5000;
    while (rsl_redis_now_ms_() < deadline) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            s->pid = 0; /* exited: most likely the port was taken */
            return -1;
        }
        if (rsl_redis_ping_(s->port)) {
            return 0;
        }
        rsl_redis_sleep_ms_(10);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    s->pid = 0;
    return -1;
}

/* Starts a server on a free loopback port (s->port); 0 or -1. */
static inline int rsl_redis_start(rsl_redis_server *s) {
    signal(SIGPIPE, SIG_IGN);
    s->pid = 0;
    for (int attempt = 0; attempt < 5; attempt++) {
        s->port = rsl_redis_free_port_();
        if (s->port > 0 && rsl_redis_spawn_(s) == 0) {
            return 0;
        }
    }
    return -1;
}

/* Stops the server (SIGTERM; SIGKILL after 2 s) and reaps it.  Works on a paused one. */
static inline void rsl_redis_stop(rsl_redis_server *s) {
    if (s->pid <= 0) {
        return;
    }
    kill(s->pid, SIGTERM);
    kill(s->pid, SIGCONT); /* a stopped process handles SIGTERM only once continued */
    int64_t deadline = rsl_redis_now_ms_() + 2000;
    for (;;) {
        pid_t w = waitpid(s->pid, NULL, WNOHANG);
        if (w == s->pid || (w < 0 && errno != EINTR)) {
            break;
        }
        if (rsl_redis_now_ms_() >= deadline) {
            kill(s->pid, SIGKILL);
            waitpid(s->pid, NULL, 0);
            break;
        }
        rsl_redis_sleep_ms_(5);
    }
    s->pid = 0;
}

/* Kills the server at once (SIGKILL), as a crash would, and reaps it. */
static inline void rsl_redis_kill(rsl_redis_server *s) {
    if (s->pid > 0) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
        s->pid = 0;
    }
}

/* Starts a server again on the same port (empty: no persistence); 0 or -1.  Retries for
 * 5 s in case the old one's socket still holds the port. */
static inline int rsl_redis_restart(rsl_redis_server *s) {
    rsl_redis_stop(s);
    int64_t deadline = rsl_redis_now_ms_() + 5000;
    do {
        if (rsl_redis_spawn_(s) == 0) {
            return 0;
        }
        rsl_redis_sleep_ms_(50);
    } while (rsl_redis_now_ms_() < deadline);
    return -1;
}

/* SIGSTOP / SIGCONT: the TCP connection stays up, nothing is answered meanwhile. */
static inline void rsl_redis_pause(rsl_redis_server *s) {
    if (s->pid > 0) {
        kill(s->pid, SIGSTOP);
    }
}

static inline void rsl_redis_resume(rsl_redis_server *s) {
    if (s->pid > 0) {
        kill(s->pid, SIGCONT);
    }
}

#endif
