#include "alloccount.h"

#include <stddef.h>

#if ALLOCCOUNT_ON
#include <stdatomic.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static atomic_long allocs;

void *malloc(size_t n) {
    atomic_fetch_add(&allocs, 1);
    return __libc_malloc(n);
}
void *calloc(size_t a, size_t b) {
    atomic_fetch_add(&allocs, 1);
    return __libc_calloc(a, b);
}
void *realloc(void *p, size_t n) {
    atomic_fetch_add(&allocs, 1);
    return __libc_realloc(p, n);
}
int posix_memalign(void **p, size_t align, size_t n) {
    atomic_fetch_add(&allocs, 1);
    *p = __libc_memalign(align, n);
    return *p ? 0 : 12;
}
void free(void *p) {
    __libc_free(p);
}

long alloccount_get(void) {
    return atomic_load(&allocs);
}
#else
long alloccount_get(void) {
    return 0;
}
#endif
