/* alloccount — counts the calls into the C allocator of a test program, for the tests
 * that assert a training step allocates nothing (test_noalloc, test_loader). A test
 * that includes this header gets tests/alloccount.c linked in (tests/CMakeLists.txt),
 * which interposes malloc, calloc, realloc and posix_memalign over glibc's. Not in
 * sanitizer builds: AddressSanitizer owns malloc (ALLOCCOUNT_ON is then 0). */
#ifndef MIMIC_ALLOCCOUNT_H
#define MIMIC_ALLOCCOUNT_H

#if defined(__SANITIZE_ADDRESS__)
#define ALLOCCOUNT_ON 0
#else
#define ALLOCCOUNT_ON 1
#endif

/* Allocations so far (0 when not counting). */
long alloccount_get(void);

#endif
