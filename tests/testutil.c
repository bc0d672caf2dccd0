#define _GNU_SOURCE
#include "testutil.h"

#include "common.h"


#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <turbojpeg.h>
#include <time.h>
#include <unistd.h>

int testutil_failures;

void testutil_check(int ok, const char *expr, const char *file, int line) {
    if (!ok) {
        fprintf(stderr, "FAIL %s:%d: %s\n", file, line, expr);
        testutil_failures++;
    }
}

double testutil_rel_err(const float *a, const float *b, size_t n) {
    double maxdiff = 0.0, maxref = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= maxdiff)) maxdiff = d; /* also catches NaN */
        if (fabs((double)b[i]) > maxref) maxref = fabs((double)b[i]);
    }
    return maxdiff / (maxref > 1e-30 ? maxref : 1e-30);
}

void testutil_close(const char *name, const float *a, const float *b, size_t n, double tol) {
    double e = testutil_rel_err(a, b, n);
    int ok = e <= tol;
    printf("%-48s rel err %.3e %s\n", name, e, ok ? "ok" : "FAIL");
    if (!ok) testutil_failures++;
}

void testutil_fill(float *x, size_t n, float lo, float hi, unsigned long long *seed) {
    for (size_t i = 0; i < n; i++) {
        *seed = *seed * 6364136223846793005ULL + 1442695040888963407ULL;
        double u = (double)(*seed >> 40) / (double)(1ULL << 24);
        x[i] = lo + (hi - lo) * (float)u;
    }
}

/* Central differences at up to max_checks evenly spaced entries; atol_frac >= 0 makes
 * the absolute tolerance relative to the largest finite difference seen. */
static void fd_check(const char *name, testutil_loss_fn loss, void *ctx, float *param,
                     const float *grad, size_t n, int max_checks, double h, double rtol,
                     double atol, double atol_frac) {
    size_t stride = n > (size_t)max_checks ? n / (size_t)max_checks : 1;
    size_t count = (n + stride - 1) / stride;
    double *fds = malloc(count * sizeof *fds);
    double maxfd = 0.0;
    for (size_t k = 0, i = 0; i < n; i += stride, k++) {
        float saved = param[i];
        param[i] = (float)(saved + h);
        double lp = loss(ctx);
        param[i] = (float)(saved - h);
        double lm = loss(ctx);
        param[i] = saved;
        fds[k] = (lp - lm) / (2.0 * h);
        if (fabs(fds[k]) > maxfd) maxfd = fabs(fds[k]);
    }
    if (atol_frac >= 0) atol = atol_frac * maxfd + 1e-9;
    int bad = 0;
    for (size_t k = 0, i = 0; i < n; i += stride, k++) {
        double diff = fabs(fds[k] - (double)grad[i]);
        if (!(diff <= atol + rtol * fabs(fds[k]))) {
            if (bad < 5)
                fprintf(stderr, "  %s[%zu]: finite diff %.6g analytic %.6g\n", name, i, fds[k],
                        (double)grad[i]);
            bad++;
        }
    }
    free(fds);
    printf("%-48s finite-difference %s\n", name, bad ? "FAIL" : "ok");
    if (bad) testutil_failures++;
}

void testutil_fd_check(const char *name, testutil_loss_fn loss, void *ctx, float *param,
                       const float *grad, size_t n, int max_checks, double h, double rtol,
                       double atol) {
    fd_check(name, loss, ctx, param, grad, n, max_checks, h, rtol, atol, -1.0);
}

void testutil_fd_check_scaled(const char *name, testutil_loss_fn loss, void *ctx, float *param,
                              const float *grad, size_t n, int max_checks, double h, double rtol,
                              double atol_frac) {
    fd_check(name, loss, ctx, param, grad, n, max_checks, h, rtol, 0.0, atol_frac);
}

int testutil_write_idx(const char *images, const char *labels, int n, int side,
                       unsigned long long seed) {
    FILE *f = fopen(images, "wb"), *g = labels ? fopen(labels, "wb") : NULL;
    if (!f || (labels && !g)) {
        if (f) fclose(f);
        if (g) fclose(g);
        return -1;
    }
    unsigned char hdr[16] = {0, 0, 8, 3,
                             0, 0, 0, (unsigned char)n,
                             0, 0, 0, (unsigned char)side,
                             0, 0, 0, (unsigned char)side};
    unsigned char lhdr[8] = {0, 0, 8, 1, 0, 0, 0, (unsigned char)n};
    fwrite(hdr, 1, 16, f);
    if (g) fwrite(lhdr, 1, 8, g);
    for (int i = 0; i < n; i++) {
        float c[4];
        testutil_fill(c, 4, 0.0f, 1.0f, &seed);
        for (int y = 0; y < side; y++)
            for (int x = 0; x < side; x++)
                fputc((int)(127 + 120 * sin(c[0] * 6 + x * (0.2 + c[1] * 0.4)) *
                                      cos(c[2] * 6 + y * (0.2 + c[3] * 0.4))),
                      f);
        if (g) fputc(i % 10, g);
    }
    fclose(f);
    if (g) fclose(g);
    return 0;
}

const char *testutil_src_path(const char *rel) {
    static char buf[4096];
    const char *root = getenv("MIMIC_SOURCE_DIR");
    snprintf(buf, sizeof buf, "%s/%s", root ? root : ".", rel);
    return buf;
}

static char tmpdir_buf[4096];

const char *testutil_tmpdir_created(void) {
    return tmpdir_buf[0] ? tmpdir_buf : NULL;
}

const char *testutil_tmpdir(void) {
    char *buf = tmpdir_buf;
    if (buf[0]) return buf;
    const char *t = getenv("TMPDIR");
    snprintf(buf, sizeof tmpdir_buf, "%s/mimic-test-XXXXXX", t ? t : "/tmp");
    if (!mkdtemp(buf)) {
        perror("mkdtemp");
        exit(2);
    }
    return buf;
}

int testutil_spawn(char *const argv[], const char *log) {
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execv(argv[0], argv);
        _exit(127);
    }
    return (int)pid;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int testutil_wait_pid(int pid, int timeout_ms) {
    for (int waited = 0;; waited += 20) {
        int status;
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        if (r < 0 || waited >= timeout_ms) return -1;
        sleep_ms(20);
    }
}

void testutil_kill(int pid) {
    if (pid <= 0) return;
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

char *testutil_slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = n >= 0 ? calloc((size_t)n + 1, 1) : NULL;
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) s[0] = 0;
    fclose(f);
    return s;
}

long testutil_rss_kb(int pid) {
    char path[64], line[256];
    long kb = -1;
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    while (kb < 0 && fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) kb = strtol(line + 6, NULL, 10);
    fclose(f);
    return kb;
}

int testutil_wait_file(const char *path, const char *contains, int timeout_ms) {
    for (int waited = 0; waited <= timeout_ms; waited += 20) {
        char *s = testutil_slurp(path);
        int ok = s && (!contains || strstr(s, contains));
        free(s);
        if (ok) return 1;
        sleep_ms(20);
    }
    return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

int testutil_summary(const char *test_name) {
    const char *dir = testutil_tmpdir_created();
    if (testutil_failures) {
        printf("%s: %d check(s) FAILED%s%s\n", test_name, testutil_failures,
               dir ? "; files kept in " : "", dir ? dir : "");
        return 1;
    }
    if (dir) nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    printf("%s: all checks passed\n", test_name);
    return 0;
}

static float *scratch[128];
static int nscratch;

float *testutil_zeros(size_t n) {
    MIMIC_CHECK(nscratch < (int)(sizeof scratch / sizeof *scratch));
    float *x = mimic_alloc((n ? n : 1) * sizeof *x);
    MIMIC_CHECK(x);
    return scratch[nscratch++] = x;
}

float *testutil_rnd(size_t n, float lo, float hi, unsigned long long *seed) {
    float *x = testutil_zeros(n);
    testutil_fill(x, n, lo, hi, seed);
    return x;
}

void testutil_release_all(void) {
    while (nscratch > 0)
        mimic_free(scratch[--nscratch]);
}

double testutil_dot(const float *a, const float *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += (double)a[i] * b[i];
    return s;
}

/* A w x h RGB JPEG of smooth colour blobs, encoded with TurboJPEG. */
int testutil_write_jpeg(const char *path, int w, int h, unsigned long long seed) {
    unsigned char *px = malloc((size_t)w * h * 3), *jpg = NULL;
    unsigned long size = 0;
    float c[6];
    testutil_fill(c, 6, 0.0f, 1.0f, &seed);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int k = 0; k < 3; k++)
                px[(y * w + x) * 3 + k] =
                    (unsigned char)(127 + 120 * sin(c[k] * 6 + x * 0.3 * c[3]) *
                                              cos(y * 0.3 * c[4 + k % 2]));
    tjhandle t = tjInitCompress();
    int rc = tjCompress2(t, px, w, 0, h, TJPF_RGB, &jpg, &size, TJSAMP_420, 90, 0);
    FILE *f = rc == 0 ? fopen(path, "wb") : NULL;
    if (f) {
        fwrite(jpg, 1, size, f);
        fclose(f);
    }
    tjFree(jpg);
    tjDestroy(t);
    free(px);
    return f ? 0 : -1;
}
