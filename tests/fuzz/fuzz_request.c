/*
 * fuzz_request -- bad request bytes never win: whatever a client sends `resilua serve`,
 * the server answers or closes, never crashes, hangs or leaks, and serves the next
 * connection.  Each input is also checked against the framing rules on their own
 * (src/framing.c): read whole or split anywhere, the framer finds the same request ends
 * and refuses at the same byte.
 *
 * Two ways to run it:
 *  - as a libFuzzer target (clang -fsanitize=fuzzer,address -DRSL_LIBFUZZER), through
 *    LLVMFuzzerTestOneInput, with tests/fuzz/corpus_request/ as its seed corpus;
 *  - as a ctest (the default build): a bounded, deterministic run that mutates that
 *    corpus (byte flips, inserted framing tokens, deletions, duplications, splices) and
 *    sends each mutation over its own loopback connection, also under ASan+UBSan in CI.
 *    `fuzz_request N SEED` runs N mutations.
 */
// ctest-args: 100000 1
#include "resilua.h"
#include "framing.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

static rsl_runtime *rt;
static rsl_serve *srv;
static int port;
static char dir[64];
static char pfile[128];

static void die(const char *what) {
    fprintf(stderr, "fuzz_request: %s\n", what);
    abort();
}

static void teardown(void) {
    if (srv) {
        rsl_serve_stop(srv);
        srv = NULL;
    }
    if (rt) {
        rsl_close(rt);
        rt = NULL;
    }
    if (pfile[0]) {
        remove(pfile);
    }
    if (dir[0]) {
        rmdir(dir);
    }
}

static void setup(void) {
    snprintf(dir, sizeof(dir), "/tmp/rsl-fuzzreq-XXXXXX");
    if (!mkdtemp(dir)) {
        die("mkdtemp");
    }
    snprintf(pfile, sizeof(pfile), "%s/p.lua", dir);
    FILE *f = fopen(pfile, "w");
    if (!f) {
        die("cannot write the policy");
    }
    fputs("local r = require \"resilua\"\n"
          "r.policy \"echo\" { steps = { a = r.lua(function(req)\n"
          "  return { status = 200, body = tostring(req.name) .. tostring(req.body) } end) } }\n"
          "r.expose { [\"GET /users/:id\"] = \"echo\" }\n",
          f);
    fclose(f);
    rsl_options o;
    rsl_options_init(&o);
    o.policy_dir = dir;
    o.workers = 1;
    char err[512];
    if (rsl_open(&rt, &o, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s\n", err);
        die("rsl_open");
    }
    rsl_serve_options so;
    rsl_serve_options_init(&so);
    so.listen = "127.0.0.1:0";
    so.max_body = 64 * 1024;
    if (rsl_serve_start(rt, &so, &srv, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s\n", err);
        die("rsl_serve_start");
    }
    port = rsl_serve_port(srv);
    atexit(teardown);
}

/* Sends data on a new connection, half-closes, reads until the server closes (bounded:
 * 30 s without a byte is a hang).  Returns what the server answered (malloc'd). */
static char *exchange(const char *data, size_t size, size_t *got) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        die("socket");
    }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {.tv_sec = 30};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        die("the server refuses connections");
    }
    size_t off = 0;
    while (off < size) { /* the server may close early (a refusal): stop sending then */
        ssize_t k = send(fd, data + off, size - off, MSG_NOSIGNAL);
        if (k <= 0) {
            break;
        }
        off += (size_t)k;
    }
    shutdown(fd, SHUT_WR);
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (len == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
        if (!buf) {
            die("out of memory");
        }
        ssize_t k = recv(fd, buf + len, cap - len, 0);
        if (k == 0) {
            break;
        }
        if (k < 0) {
            if (errno == ECONNRESET) {
                break;
            }
            die("no answer and no close within 30 s: the server hangs");
        }
        len += (size_t)k;
    }
    close(fd);
    *got = len;
    return buf;
}

/* The framer's verdicts over data fed in pieces that end at the cuts (ascending, < size):
 * each request's end offset, then the refusal's offset (or -1: more to come). */
static size_t verdicts(const char *data, size_t size, const size_t *cuts, int ncuts, long *out,
                       size_t max) {
    rsl__framer f;
    rsl__frame_init(&f);
    size_t nout = 0, at = 0;
    for (int c = 0; c <= ncuts; c++) {
        size_t end = c < ncuts ? cuts[c] : size;
        while (at < end) {
            size_t used;
            const char *why = NULL;
            int r = rsl__frame_feed(&f, data + at, end - at, &used, &why);
            if (used > end - at) {
                die("the framer read past its input");
            }
            at += used;
            if (r == RSL_FRAME_DONE && nout < max) {
                out[nout++] = (long)at;
            } else if (r == RSL_FRAME_BAD) {
                if (!why || at >= size) {
                    die("a refusal without a reason, or past the input");
                }
                if (nout < max) {
                    out[nout++] = -(long)at - 2;
                }
                return nout;
            }
        }
    }
    if (nout < max) {
        out[nout++] = -1;
    }
    return nout;
}

static uint64_t fnv(const char *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
    }
    return h;
}

static void check_framer(const char *data, size_t size) {
    long whole[64], split[64];
    size_t nw = verdicts(data, size, NULL, 0, whole, 64);
    /* byte by byte, and at cuts drawn from the input's own hash (deterministic) */
    size_t cuts[16];
    int ncuts = 0;
    uint64_t h = fnv(data, size);
    for (int k = 0; k < 16 && size > 1; k++) {
        h = h * 6364136223846793005ull + 1442695040888963407ull;
        size_t at = 1 + (size_t)(h >> 33) % (size - 1);
        if (ncuts == 0 || at > cuts[ncuts - 1]) {
            cuts[ncuts++] = at;
        }
    }
    size_t ns = verdicts(data, size, cuts, ncuts, split, 64);
    if (ns != nw || memcmp(whole, split, nw * sizeof(long)) != 0) {
        die("the framer's verdict depends on how the input was split");
    }
    if (size > 1 && size <= 4096) {
        size_t *every = malloc(size * sizeof(size_t));
        if (!every) {
            die("out of memory");
        }
        for (size_t i = 1; i < size; i++) {
            every[i - 1] = i;
        }
        ns = verdicts(data, size, every, (int)size - 1, split, 64);
        free(every);
        if (ns != nw || memcmp(whole, split, nw * sizeof(long)) != 0) {
            die("the framer's verdict differs fed byte by byte");
        }
    }
    size_t off;
    if (rsl__target_check(data, size, size & 1, &off) == NULL && off > size) {
        die("a target's path starts past its end");
    }
}

/* Every answer the server gave starts as an HTTP/1.1 status line. */
static void check_answer(const char *buf, size_t len) {
    if (len > 0 && (len < 12 || memcmp(buf, "HTTP/1.1 ", 9) != 0)) {
        die("an answer that is not HTTP/1.1");
    }
}

static void check_one(const uint8_t *data, size_t size) {
    if (!srv) {
        setup();
    }
    check_framer((const char *)data, size);
    size_t len;
    char *buf = exchange((const char *)data, size, &len);
    check_answer(buf, len);
    free(buf);
}

/* The server still answers a well-formed request. */
static void check_alive(void) {
    static const char req[] = "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n";
    size_t len;
    char *buf = exchange(req, sizeof(req) - 1, &len);
    if (len < 12 || memcmp(buf, "HTTP/1.1 200", 12) != 0) {
        die("the server no longer answers /healthz");
    }
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    check_one(data, size);
    return 0;
}

#ifndef RSL_LIBFUZZER
#include <dirent.h>

static uint64_t rng = 88172645463325252ull;

static uint64_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (p && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return p;
}

/* Tokens that make mutations reach the framing rules. */
static const char *const tokens[] = {
    "\r\n", "\n", "\r", " ", "  ", "\t", ":", " :", ";", ",", "0", "00", "-1", "+", "%", "%00",
    "%zz", "%4", "#", "@", "*", "?", "/", "http://h", "HTTP/1.0", "HTTP/1.1", "HTTP/2.0",
    "CONNECT ", "OPTIONS ", "HEAD ", "\r\n\r\n", "0\r\n\r\n", "ffffffffffffffff",
    "Transfer-Encoding: chunked\r\n", "Transfer-Encoding: identity\r\n",
    "Transfer-Encoding : chunked\r\n", "Content-Length: 5\r\n", "Content-Length: 0\r\n",
    "Content-Length: 99999999999999999999\r\n", "Host: x\r\n", "Expect: 100-continue\r\n",
    "Connection: close\r\n", "Connection: keep-alive\r\n",
    "Upgrade: h2c\r\nConnection: Upgrade\r\n", " folded\r\n", "\xff", "\x7f",
};
#define NTOKENS (sizeof(tokens) / sizeof(tokens[0]))

static int by_name(const void *a, const void *b) {
    return strcmp(a, b);
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 300;
    if (argc > 2) {
        rng = ((uint64_t)atoll(argv[2]) * 0x9E3779B97F4A7C15ull) | 1;
    }
    const char *srcdir = RSL_SOURCE_DIR "/tests/fuzz/corpus_request";
    DIR *d = opendir(srcdir);
    char *seeds[64];
    size_t lens[64];
    char names[64][256];
    int nseeds = 0;
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL && nseeds < 64) {
        if (e->d_name[0] != '.') {
            snprintf(names[nseeds], sizeof(names[nseeds]), "%s", e->d_name);
            nseeds++;
        }
    }
    if (d) {
        closedir(d);
    }
    /* readdir's order is the file system's: sort, so that a seed gives one run */
    qsort(names, (size_t)nseeds, sizeof(names[0]), by_name);
    int loaded = 0;
    for (int i = 0; i < nseeds; i++) {
        char *path;
        if (asprintf(&path, "%s/%s", srcdir, names[i]) < 0) {
            die("out of memory");
        }
        if ((seeds[loaded] = slurp(path, &lens[loaded])) != NULL) {
            loaded++;
        }
        free(path);
    }
    if (loaded == 0) {
        fprintf(stderr, "no seed requests in %s\n", srcdir);
        return 1;
    }
    for (int i = 0; i < loaded; i++) { /* the corpus as it is */
        check_one((const uint8_t *)seeds[i], lens[i]);
    }
    size_t cap = 1 << 16;
    char *buf = malloc(cap);
    if (!buf) {
        die("out of memory");
    }
    for (long i = 0; i < n; i++) {
        int s = (int)(next() % (uint64_t)loaded);
        size_t len = lens[s];
        memcpy(buf, seeds[s], len);
        int edits = 1 + (int)(next() % 4);
        for (int k = 0; k < edits; k++) {
            size_t at = len ? next() % (len + 1) : 0;
            switch (next() % 5) {
            case 0: /* flip a byte */
                if (at < len) {
                    buf[at] = (char)(next() & 0xff);
                }
                break;
            case 1: { /* insert a token */
                const char *t = tokens[next() % NTOKENS];
                size_t tl = strlen(t);
                if (len + tl < cap) {
                    memmove(buf + at + tl, buf + at, len - at);
                    memcpy(buf + at, t, tl);
                    len += tl;
                }
                break;
            }
            case 2: { /* delete a range */
                size_t dl = 1 + next() % 8;
                if (at + dl <= len) {
                    memmove(buf + at, buf + at + dl, len - at - dl);
                    len -= dl;
                }
                break;
            }
            case 3: { /* duplicate a range (pipelining, repeated headers) */
                size_t from = len ? next() % len : 0;
                size_t dl = len - from < 64 ? len - from : 64;
                if (len + dl < cap) {
                    memmove(buf + at + dl, buf + at, len - at);
                    memmove(buf + at, buf + (from < at ? from : from + dl), dl);
                    len += dl;
                }
                break;
            }
            case 4: { /* splice another seed's tail in */
                int o = (int)(next() % (uint64_t)loaded);
                size_t from = lens[o] ? next() % lens[o] : 0;
                size_t dl = lens[o] - from;
                if (at + dl < cap) {
                    memcpy(buf + at, seeds[o] + from, dl);
                    len = at + dl;
                }
                break;
            }
            }
        }
        check_one((const uint8_t *)buf, len);
        if (i % 1000 == 999) {
            check_alive();
        }
    }
    check_alive();
    printf("%ld mutations of %d seed requests: no crash, every connection answered or closed\n", n,
           loaded);
    free(buf);
    for (int i = 0; i < loaded; i++) {
        free(seeds[i]);
    }
    return 0;
}
#endif
