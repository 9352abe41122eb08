/*
 * lines -- cache-line sized allocation for objects that threads share.  Hot atomics sit
 * on their own 64-byte lines (two threads bumping one line cost ~3x two lines), so such
 * objects are allocated line-aligned and line-sized.  Header only.
 *
 * Layer: base: it depends on nothing.
 */
#ifndef RSL_LINES_H
#define RSL_LINES_H

#include <stdlib.h>
#include <string.h>

#define RSL_LINE 64

/*
 * A zeroed, line-aligned block for a struct of `size` bytes whose trailing `char name[]`
 * flexible member starts at `name_off`; `name` is copied there (into the struct's tail
 * padding when it fits).  NULL on no memory.
 */
static inline void *rsl__lines_named(size_t size, size_t name_off, const char *name) {
    size_t len = strlen(name);
    size_t need = (name_off + len + 1 + RSL_LINE - 1) / RSL_LINE * RSL_LINE;
    need = need < size ? size : need;
    char *p = aligned_alloc(RSL_LINE, need); /* need is a multiple of the line, as C11 wants */
    if (p) {
        memset(p, 0, need);
        memcpy(p + name_off, name, len + 1);
    }
    return p;
}

#endif
