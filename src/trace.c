/*
 * trace -- W3C trace context (trace.h).
 *
 * Layer: base.  Any thread.
 */
#include "trace.h"

#include <string.h>
#include <sys/random.h>
#include <time.h>

static int hexval(int ch) {
    if (ch >= '0' && ch <= '9') {
        return ch - '0';
    }
    if (ch >= 'a' && ch <= 'f') {
        return ch - 'a' + 10;
    }
    return -1; /* W3C: lowercase only */
}

static int unhex(const char *s, size_t n, uint8_t *out) {
    int any = 0;
    for (size_t i = 0; i < n; i++) {
        int hi = hexval((unsigned char)s[2 * i]), lo = hexval((unsigned char)s[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            return -1;
        }
        out[i] = (uint8_t)(hi << 4 | lo);
        any |= out[i];
    }
    return any ? 0 : -1; /* an all-zero id is invalid */
}

int rsl__tctx_parse(const char *s, size_t n, rsl__tctx *out) {
    if (!s || n < RSL_TRACEPARENT_LEN || s[2] != '-' || s[35] != '-' || s[52] != '-') {
        return -1;
    }
    uint8_t ver;
    if (hexval((unsigned char)s[0]) < 0 || hexval((unsigned char)s[1]) < 0) {
        return -1;
    }
    ver = (uint8_t)(hexval((unsigned char)s[0]) << 4 | hexval((unsigned char)s[1]));
    if (ver == 0xff || (ver == 0 && n != RSL_TRACEPARENT_LEN) ||
        (ver > 0 && n > RSL_TRACEPARENT_LEN && s[RSL_TRACEPARENT_LEN] != '-')) {
        return -1;
    }
    rsl__tctx t;
    if (unhex(s + 3, 16, t.trace_id) < 0 || unhex(s + 36, 8, t.span_id) < 0) {
        return -1;
    }
    int hi = hexval((unsigned char)s[53]), lo = hexval((unsigned char)s[54]);
    if (hi < 0 || lo < 0) {
        return -1;
    }
    t.flags = (uint8_t)(hi << 4 | lo);
    *out = t;
    return 0;
}

void rsl__hex(const uint8_t *b, size_t n, char *out) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[b[i] >> 4];
        out[2 * i + 1] = digits[b[i] & 15];
    }
    out[2 * n] = 0;
}

void rsl__tctx_format(const rsl__tctx *t, char *out) {
    memcpy(out, "00-", 3);
    rsl__hex(t->trace_id, 16, out + 3);
    out[35] = '-';
    rsl__hex(t->span_id, 8, out + 36);
    out[52] = '-';
    uint8_t f = t->flags & 1; /* version 00 defines the sampled bit only */
    rsl__hex(&f, 1, out + 53);
}

/* xoshiro256** (Blackman and Vigna), seeded from getrandom once per thread. */
static _Thread_local uint64_t ids[4];
static _Thread_local int ids_seeded;

static uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

static uint64_t splitmix(uint64_t *x) {
    uint64_t z = (*x += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static uint64_t next_id(void) {
    if (!ids_seeded) {
        uint64_t seed[4] = {0};
        if (getrandom(seed, sizeof(seed), GRND_NONBLOCK) != (ssize_t)sizeof(seed)) {
            /* No entropy yet (early boot): the clock and this thread's address. */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            uint64_t x = ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) ^
                         (uint64_t)(uintptr_t)&ids;
            for (int i = 0; i < 4; i++) {
                seed[i] ^= splitmix(&x);
            }
        }
        memcpy(ids, seed, sizeof(ids));
        if (!(ids[0] | ids[1] | ids[2] | ids[3])) {
            ids[0] = 1;
        }
        ids_seeded = 1;
    }
    uint64_t r = rotl(ids[1] * 5, 7) * 9, t = ids[1] << 17;
    ids[2] ^= ids[0];
    ids[3] ^= ids[1];
    ids[1] ^= ids[2];
    ids[0] ^= ids[3];
    ids[2] ^= t;
    ids[3] = rotl(ids[3], 45);
    return r;
}

void rsl__trace_id_new(uint8_t id[16]) {
    uint64_t a, b;
    do {
        a = next_id();
        b = next_id();
    } while (!(a | b));
    memcpy(id, &a, 8);
    memcpy(id + 8, &b, 8);
}

void rsl__span_id_new(uint8_t id[8]) {
    uint64_t a;
    do {
        a = next_id();
    } while (!a);
    memcpy(id, &a, 8);
}

int rsl__trace_sampled(const uint8_t trace_id[16], double ratio) {
    if (ratio >= 1.0) {
        return 1;
    }
    if (!(ratio > 0.0)) {
        return 0;
    }
    uint64_t v = 0;
    for (int i = 8; i < 16; i++) {
        v = v << 8 | trace_id[i];
    }
    /* v < ratio * 2^64, in 63 bits to stay inside a double's exact range. */
    return (v >> 1) < (uint64_t)(ratio * 9223372036854775808.0);
}
