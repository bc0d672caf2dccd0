#define _GNU_SOURCE /* mkostemp */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

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

/* fsync of the directory holding path: the rename into it is durable only then. */
static int fsync_dir_of(const char *path) {
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        dir[1] = 0;
    else if (slash)
        *slash = 0;
    else
        snprintf(dir, sizeof dir, ".");
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    /* some filesystems cannot fsync a directory (EINVAL); the rename itself went through */
    int ok = fd >= 0 && (fsync(fd) == 0 || errno == EINVAL);
    int e = errno;
    if (fd >= 0) close(fd);
    errno = e;
    return ok ? 0 : -1;
}

int mimic_write_atomic(const char *path, const void *data, size_t len, unsigned mode) {
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", path) >= (int)sizeof tmp)
        return mimic_err(MIMIC_EINVAL, "%s: path too long", path);
    int fd = mkostemp(tmp, O_CLOEXEC); /* O_CREAT | O_EXCL, mode 0600 */
    if (fd < 0) return mimic_err(MIMIC_EIO, "%s: cannot create (%s)", tmp, strerror(errno));
    const char *p = data;
    size_t off = 0;
    if (fchmod(fd, (mode_t)mode) != 0) goto fail;
    while (off < len) {
        ssize_t w = write(fd, p + off, len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) goto fail;
        off += (size_t)w;
    }
    if (fsync(fd) != 0) goto fail;
    int closed = close(fd);
    fd = -1;
    if (closed != 0 || rename(tmp, path) != 0) goto fail;
    if (fsync_dir_of(path) != 0)
        return mimic_err(MIMIC_EIO, "%s: cannot sync its directory (%s)", path, strerror(errno));
    return 0;
fail:;
    int e = errno;
    if (fd >= 0) close(fd);
    unlink(tmp);
    return mimic_err(MIMIC_EIO, "%s: cannot write (%s)", path, strerror(e));
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
