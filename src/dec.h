/*
 * dec -- an integer in decimal without printf (snprintf's "%lld" costs ~0.7k instructions;
 * this, a few per digit), for what is written on every call or flush: status lines and
 * lengths, span fields, header values, a Redis reply's integers, a script's arguments.
 *
 * Layer: base; it depends on nothing.
 */
#ifndef RSL_DEC_H
#define RSL_DEC_H

#include <stdint.h>

/* Room a number needs: 20 digits and a sign. */
#define RSL_DEC_MAX 21

/* v written so that it ends just before `end` (no NUL); returns where it starts. */
static inline char *rsl__dec(char *end, int64_t v) {
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do {
        *--end = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) {
        *--end = '-';
    }
    return end;
}

/* u, unsigned, as rsl__dec. */
static inline char *rsl__udec(char *end, uint64_t u) {
    do {
        *--end = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    return end;
}

#endif
