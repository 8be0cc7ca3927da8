// common/alloc.h — checked host allocation.
//
// Small host allocations that fail mean the machine is out of memory: that is
// not bad input, so these log where they were called and abort (as Redis's
// zmalloc does). Large allocations whose size comes from input (a model file, a
// memory plan) must use plain malloc and return KVF_E_NOMEM instead.
#ifndef KVF_ALLOC_H
#define KVF_ALLOC_H

#include <stddef.h>

void *kvf_xmalloc_at(size_t n, const char *file, int line);
void *kvf_xcalloc_at(size_t count, size_t size, const char *file, int line);
void *kvf_xrealloc_at(void *p, size_t n, const char *file, int line);
char *kvf_xstrdup_at(const char *s, const char *file, int line);

#define kvf_xmalloc(n) kvf_xmalloc_at((n), __FILE__, __LINE__)
#define kvf_xcalloc(c, s) kvf_xcalloc_at((c), (s), __FILE__, __LINE__)
#define kvf_xrealloc(p, n) kvf_xrealloc_at((p), (n), __FILE__, __LINE__)
#define kvf_xstrdup(s) kvf_xstrdup_at((s), __FILE__, __LINE__)

#endif
