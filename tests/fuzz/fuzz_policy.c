/*
 * fuzz_policy -- bad policy text never wins: whatever bytes a policy file holds, loading
 * it (rsl_check) returns 0 or RSL_ELOAD with a message, and never crashes, hangs or leaks.
 *
 * Two ways to run it:
 *  - as a libFuzzer target (clang -fsanitize=fuzzer,address -DRSL_LIBFUZZER), through
 *    LLVMFuzzerTestOneInput;
 *  - as a ctest (the default build): a bounded, deterministic run that mutates the shipped
 *    policies (byte flips, insertions, deletions, line splices) and checks every load,
 *    also under ASan+UBSan in CI.  `fuzz_policy N SEED` runs N mutations.
 */
#include "resilua.h"

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[64];

/* Loads data as a policy file; aborts on anything but a clean answer. Returns rsl_check's. */
static int check_one(const uint8_t *data, size_t size) {
    if (!dir[0]) {
        snprintf(dir, sizeof(dir), "/tmp/rsl-fuzz-XXXXXX");
        if (!mkdtemp(dir)) {
            abort();
        }
    }
    char path[128];
    snprintf(path, sizeof(path), "%s/p.lua", dir);
    FILE *f = fopen(path, "wb");
    if (!f) {
        abort();
    }
    fwrite(data, 1, size, f);
    fclose(f);
    char err[4096];
    char *json = NULL;
    int rc = rsl_check(dir, &json, err, sizeof(err));
    if (rc != 0 && rc != RSL_ELOAD) {
        fprintf(stderr, "rsl_check returned %d (%s)\n", rc, rsl_strerror(rc));
        abort();
    }
    if (rc == RSL_ELOAD && strstr(err, "p.lua") == NULL && strstr(err, dir) == NULL) {
        fprintf(stderr, "a load error that names no file: %s\n", err);
        abort();
    }
    rsl_free(json);
    remove(path);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    check_one(data, size);
    return 0;
}

#ifndef RSL_LIBFUZZER
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
    char *p = malloc((size_t)n + 1);
    if (p && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return p;
}

/* Tokens that make mutations reach deeper than random bytes do. */
static const char *const tokens[] = {
    "\"", "'", "{", "}", "(", ")", ",", "=", "\n", "--[[", "]]", "nil", "true", "0", "-1",
    "1e309", "\"10s\"", "\"0ms\"", "\"5xx\"", "r.http {}", "r.stub {}", "function() end",
    "while true do end", "${", "${id}", "string.rep('x', 1e9)", "setmetatable", "_G",
    "require 'ffi'", "r.policy 'q' { steps = { s = r.stub {} } }", "\xff\xfe", "\0",
};

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 300;
    if (argc > 2) {
        rng = ((uint64_t)atoll(argv[2]) * 0x9E3779B97F4A7C15ull) | 1;
    }
    const char *srcdir = RSL_SOURCE_DIR "/policies";
    DIR *d = opendir(srcdir);
    char *seeds[16];
    size_t lens[16];
    int nseeds = 0;
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL && nseeds < 16) {
        if (strstr(e->d_name, ".lua")) {
            char path[1024];
            snprintf(path, sizeof(path), "%s/%s", srcdir, e->d_name);
            if ((seeds[nseeds] = slurp(path, &lens[nseeds])) != NULL) {
                nseeds++;
            }
        }
    }
    if (d) {
        closedir(d);
    }
    if (nseeds == 0) {
        fprintf(stderr, "no seed policies in %s\n", srcdir);
        return 1;
    }
    int loaded = 0, refused = 0;
    for (long i = 0; i < n; i++) {
        int s = (int)(next() % (uint64_t)nseeds);
        size_t len = lens[s];
        size_t cap = len + 4096;
        char *buf = malloc(cap);
        memcpy(buf, seeds[s], len);
        int edits = 1 + (int)(next() % 4);
        for (int k = 0; k < edits; k++) {
            size_t at = len ? next() % len : 0;
            switch (next() % 4) {
            case 0: /* flip a byte */
                if (len) {
                    buf[at] = (char)(next() & 0xff);
                }
                break;
            case 1: { /* insert a token */
                const char *t = tokens[next() % (sizeof(tokens) / sizeof(tokens[0]))];
                size_t tl = strlen(t) ? strlen(t) : 1;
                if (len + tl < cap) {
                    memmove(buf + at + tl, buf + at, len - at);
                    memcpy(buf + at, t, tl);
                    len += tl;
                }
                break;
            }
            case 2: { /* delete a run */
                size_t del = next() % 16;
                if (at + del > len) {
                    del = len - at;
                }
                memmove(buf + at, buf + at + del, len - at - del);
                len -= del;
                break;
            }
            default: { /* splice in a piece of another seed */
                int o = (int)(next() % (uint64_t)nseeds);
                size_t from = lens[o] ? next() % lens[o] : 0;
                size_t take = next() % 200;
                if (from + take > lens[o]) {
                    take = lens[o] - from;
                }
                if (len + take < cap) {
                    memmove(buf + at + take, buf + at, len - at);
                    memcpy(buf + at, seeds[o] + from, take);
                    len += take;
                }
                break;
            }
            }
        }
        if (check_one((const uint8_t *)buf, len) == 0) {
            loaded++;
        } else {
            refused++;
        }
        free(buf);
    }
    for (int k = 0; k < nseeds; k++) {
        free(seeds[k]);
    }
    rmdir(dir);
    printf("%ld mutated policy files: %d loaded, %d refused with file:line, none crashed\n", n,
           loaded, refused);
    printf("%ld passed, 0 failed\n", n);
    return 0;
}
#endif
