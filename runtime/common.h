/* common — error codes, the always-on check macro and logging shared by every module.
 *
 * Functions return 0 or a negative MIMIC_E* code; the caller decides what to do.
 * MIMIC_CHECK guards programmer errors (it stays on in release builds, unlike assert).
 * mimic_log/mimic_warn print one line to stderr; mimic_err also records the message
 * so that a caller can forward the reason to a peer (mimic_last_error). */
#ifndef MIMIC_COMMON_H
#define MIMIC_COMMON_H

#include <stddef.h>
#include <stdint.h>

enum {
    MIMIC_OK = 0,
    MIMIC_EINVAL = -1,  /* bad argument, flag or config value */
    MIMIC_EIO = -2,     /* file could not be read or written */
    MIMIC_EFORMAT = -3, /* file or message content is malformed */
    MIMIC_ENOMEM = -4,  /* allocation failed */
    MIMIC_ESHAPE = -5,  /* tensor shape does not match */
    MIMIC_ETIMEOUT = -6,
    MIMIC_EPEER = -7, /* peer failed or refused */
};

const char *mimic_strerror(int code);

/* Printf-style one-line messages to stderr. mimic_err keeps the formatted text in a
 * thread-local buffer readable with mimic_last_error() and returns `code`, so error
 * paths read `return mimic_err(MIMIC_EFORMAT, "%s: bad header", path);`. */
void mimic_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void mimic_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int mimic_err(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *mimic_last_error(void);
/* Silences mimic_err/mimic_warn output (tests that feed broken input on purpose). */
void mimic_set_quiet(int quiet);

void mimic_check_fail(const char *expr, const char *file, int line) __attribute__((noreturn));
#define MIMIC_CHECK(cond)                                                                          \
    do {                                                                                           \
        if (!(cond)) mimic_check_fail(#cond, __FILE__, __LINE__);                                  \
    } while (0)

/* Checked allocation: returns NULL (and records an error) on failure, zeroed memory,
 * 64-byte aligned so SIMD loads never split cache lines. Free with mimic_free. */
void *mimic_alloc(size_t bytes);
void mimic_free(void *p);

double mimic_now(void); /* monotonic seconds */

/* Sets n floats to 0, large buffers in parallel with OpenMP: backward passes clear
 * their scratch and gradients every step, and a serial memset leaves a core idle. */
void mimic_zero(float *x, size_t n);
/* mkdir -p: creates path and its missing parents (0755); errors name the directory. */
int mimic_mkdir_p(const char *path);
/* Replaces path with len bytes at once: a unique temp file beside it (O_EXCL, created
 * 0600 and then given `mode`, so it is never more open than mode), fsync, rename over
 * path, fsync of the directory. A crash leaves the old file or the new one, never a
 * mix. 0 or MIMIC_EIO naming the path. */
int mimic_write_atomic(const char *path, const void *data, size_t len, unsigned mode);

#endif
