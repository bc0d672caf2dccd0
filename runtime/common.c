#define _POSIX_C_SOURCE 200809L
#include "common.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static _Thread_local char last_error[512];
static int quiet_flag; /* only tests set it; read-only during training */

const char *mimic_strerror(int code) {
    switch (code) {
    case MIMIC_OK:
        return "ok";
    case MIMIC_EINVAL:
        return "invalid argument";
    case MIMIC_EIO:
        return "i/o error";
    case MIMIC_EFORMAT:
        return "malformed input";
    case MIMIC_ENOMEM:
        return "out of memory";
    case MIMIC_ESHAPE:
        return "shape mismatch";
    case MIMIC_ETIMEOUT:
        return "timeout";
    case MIMIC_EPEER:
        return "peer error";
    default:
        return "unknown error";
    }
}

void mimic_set_quiet(int quiet) {
    quiet_flag = quiet;
}

void mimic_log(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void mimic_warn(const char *fmt, ...) {
    if (quiet_flag) return;
    va_list ap;
    va_start(ap, fmt);
    fputs("warning: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int mimic_err(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    if (!quiet_flag) fprintf(stderr, "error: %s\n", last_error);
    return code;
}

const char *mimic_last_error(void) {
    return last_error;
}

void mimic_check_fail(const char *expr, const char *file, int line) {
    fprintf(stderr, "%s:%d: check failed: %s\n", file, line, expr);
    abort();
}

void *mimic_alloc(size_t bytes) {
    void *p = NULL;
    size_t rounded = (bytes + 63) & ~(size_t)63;
    if (rounded == 0) rounded = 64;
    if (posix_memalign(&p, 64, rounded) != 0) {
        mimic_err(MIMIC_ENOMEM, "out of memory allocating %zu bytes", bytes);
        return NULL;
    }
    memset(p, 0, rounded);
    return p;
}

void mimic_free(void *p) {
    free(p);
}

double mimic_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int mimic_mkdir_p(const char *path) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return mimic_err(MIMIC_EINVAL, "%s: path too long", path);
    for (char *s = buf + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(buf, 0755) && errno != EEXIST) goto bad;
        *s = '/';
    }
    if (mkdir(buf, 0755) && errno != EEXIST) goto bad;
    return 0;
bad:
    return mimic_err(MIMIC_EIO, "%s: cannot create directory (%s)", buf, strerror(errno));
}

void mimic_zero(float *x, size_t n) {
    const size_t chunk = 1 << 16; /* 256 KB per task */
    long tasks = (long)((n + chunk - 1) / chunk);
#pragma omp parallel for schedule(static) if (tasks > 4)
    for (long t = 0; t < tasks; t++) {
        size_t lo = (size_t)t * chunk, len = n - lo < chunk ? n - lo : chunk;
        memset(x + lo, 0, len * sizeof(float));
    }
}
