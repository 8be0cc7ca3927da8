// common/alloc.c — see alloc.h.
#include "alloc.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"

static void s_oom(size_t n, const char *file, int line) {
    kvf_log_write(KVF_LOG_ERROR, file, line, "out of host memory allocating %zu bytes", n);
    abort();
}

void *kvf_xmalloc_at(size_t n, const char *file, int line) {
    void *p = malloc(n ? n : 1);
    if (!p) s_oom(n, file, line);
    return p;
}

void *kvf_xcalloc_at(size_t count, size_t size, const char *file, int line) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) s_oom(count * size, file, line);
    return p;
}

void *kvf_xrealloc_at(void *p, size_t n, const char *file, int line) {
    void *q = realloc(p, n ? n : 1);
    if (!q) s_oom(n, file, line);
    return q;
}

char *kvf_xstrdup_at(const char *s, const char *file, int line) {
    size_t n = strlen(s) + 1;
    char *p = kvf_xmalloc_at(n, file, line);
    memcpy(p, s, n);
    return p;
}
