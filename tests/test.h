/*
 * test.h -- a tiny test runner in the libuv manner: a program holds named tests; each
 * runs in its own forked process with a timeout (RSL_TEST_TIMEOUT seconds, default 60),
 * so a crash or a hang fails that test only.  `prog` runs all, `prog NAME...` runs those
 * in-process (for a debugger).  Output ends with "N passed, N failed".
 */
#ifndef RSL_TEST_H
#define RSL_TEST_H

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*rsl_test_fn)(void);
void rsl_test_register(const char *name, rsl_test_fn fn);
void rsl_test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 3, 4)));

#define TEST(name)                                                                         \
    static void test_##name(void);                                                         \
    __attribute__((constructor)) static void test_reg_##name(void) {                       \
        rsl_test_register(#name, test_##name);                                             \
    }                                                                                      \
    static void test_##name(void)

#define ASSERT(c)                                                                          \
    do {                                                                                   \
        if (!(c)) {                                                                        \
            rsl_test_fail(__FILE__, __LINE__, "assertion failed: %s", #c);                 \
        }                                                                                  \
    } while (0)

#define ASSERT_EQ(a, b)                                                                    \
    do {                                                                                   \
        int64_t a_ = (int64_t)(a), b_ = (int64_t)(b);                                      \
        if (a_ != b_) {                                                                    \
            rsl_test_fail(__FILE__, __LINE__, "%s == %s: %" PRId64 " != %" PRId64, #a, #b, \
                          a_, b_);                                                         \
        }                                                                                  \
    } while (0)

#define ASSERT_NEAR(a, b, eps)                                                             \
    do {                                                                                   \
        double a_ = (double)(a), b_ = (double)(b);                                         \
        if (!(fabs(a_ - b_) <= (eps))) {                                                   \
            rsl_test_fail(__FILE__, __LINE__, "%s ~ %s: %g vs %g (eps %g)", #a, #b, a_, b_, \
                          (double)(eps));                                                  \
        }                                                                                  \
    } while (0)

#define ASSERT_STR_EQ(a, b)                                                                \
    do {                                                                                   \
        const char *a_ = (a), *b_ = (b);                                                   \
        if (!a_ || !b_ || strcmp(a_, b_) != 0) {                                           \
            rsl_test_fail(__FILE__, __LINE__, "%s == %s: \"%s\" != \"%s\"", #a, #b,        \
                          a_ ? a_ : "(null)", b_ ? b_ : "(null)");                         \
        }                                                                                  \
    } while (0)

#define ASSERT_CONTAINS(hay, needle)                                                       \
    do {                                                                                   \
        const char *h_ = (hay), *n_ = (needle);                                            \
        if (!h_ || !strstr(h_, n_)) {                                                      \
            rsl_test_fail(__FILE__, __LINE__, "%s contains \"%s\": got \"%s\"", #hay, n_,  \
                          h_ ? h_ : "(null)");                                             \
        }                                                                                  \
    } while (0)

/* Writes `text` to DIR/name (creating DIR); returns 0. For policy files in tests. */
int rsl_test_write(const char *dir, const char *name, const char *text);
/* A fresh temporary directory (removed by the runner after the test). */
const char *rsl_test_tmpdir(void);

#endif
