/* testutil — tiny helpers shared by the C tests: checks that count failures, a
 * relative-error comparison, finite-difference gradient checking and paths to the
 * source tree. A test's main returns testutil_summary(), non-zero on any failure. */
#ifndef MIMIC_TESTUTIL_H
#define MIMIC_TESTUTIL_H

#include <stddef.h>

extern int testutil_failures;

#define T_CHECK(cond) testutil_check((cond), #cond, __FILE__, __LINE__)
void testutil_check(int ok, const char *expr, const char *file, int line);

/* max |a-b| / max(|b|, tiny): a norm-wise relative error robust to zeros in b. */
double testutil_rel_err(const float *a, const float *b, size_t n);
/* Checks rel_err(a, b) <= tol, printing "name: rel err X" either way. */
void testutil_close(const char *name, const float *a, const float *b, size_t n, double tol);

/* Scratch buffers for a test: testutil_zeros returns zeroed floats recorded in one
 * pool, testutil_release_all frees them all (so the sanitizer build also checks leaks).
 * testutil_rnd: zeros filled by testutil_fill from *seed. */
float *testutil_zeros(size_t n);
float *testutil_rnd(size_t n, float lo, float hi, unsigned long long *seed);
void testutil_release_all(void);
/* sum a[i]*b[i] in double. */
double testutil_dot(const float *a, const float *b, size_t n);

/* Fills x with uniform values in [lo, hi) from a fixed-seed generator. */
void testutil_fill(float *x, size_t n, float lo, float hi, unsigned long long *seed);

/* Loss callback for finite differences: returns a scalar for the current params. */
typedef double (*testutil_loss_fn)(void *ctx);
/* Compares analytic gradient `grad` of the `n` floats at `param` with central
 * differences of loss(ctx) (step h, perturbing up to `max_checks` evenly spaced
 * entries). Passes when |fd - an| <= atol + rtol*|fd| for every entry checked. */
void testutil_fd_check(const char *name, testutil_loss_fn loss, void *ctx, float *param,
                       const float *grad, size_t n, int max_checks, double h, double rtol,
                       double atol);

/* Like testutil_fd_check, but the absolute tolerance is atol_frac * max |fd| over the
 * entries checked, so a tensor whose gradients are all tiny is still checked tightly
 * (differences are computed for every checked entry first, then judged). */
void testutil_fd_check_scaled(const char *name, testutil_loss_fn loss, void *ctx, float *param,
                              const float *grad, size_t n, int max_checks, double h, double rtol,
                              double atol_frac);

/* Writes an IDX data set of n side x side gray images (smooth random blobs, so that
 * masked patches are predictable from the visible ones) and, when labels is not NULL,
 * an IDX label file (i % 10). n <= 255. Returns 0, or -1 if a file cannot be written. */
int testutil_write_idx(const char *images, const char *labels, int n, int side,
                       unsigned long long seed);

/* Path under the source tree ($MIMIC_SOURCE_DIR, set by ctest). Static buffer. */
const char *testutil_src_path(const char *rel);
/* A fresh temporary directory for this test (mkdtemp under $TMPDIR or /tmp); removed
 * by testutil_summary when every check passed, kept (and named) otherwise. */
const char *testutil_tmpdir(void);
const char *testutil_tmpdir_created(void); /* NULL if testutil_tmpdir was never called */

/* A w x h RGB JPEG of smooth colour blobs (seeded), encoded with TurboJPEG: 0 or -1. */
int testutil_write_jpeg(const char *path, int w, int h, unsigned long long seed);

/* Child processes for integration tests (loopback only; killed by pid).
 * testutil_spawn starts argv[0] with argv (NULL-terminated), stdout and stderr
 * appended to log; returns the pid or -1. */
int testutil_spawn(char *const argv[], const char *log);
/* Waits up to timeout_ms for pid to exit; returns its exit status (128+signal when
 * killed) or -1 on timeout (the process is left running). */
int testutil_wait_pid(int pid, int timeout_ms);
/* SIGKILLs and reaps pid (no-op for pid <= 0). */
void testutil_kill(int pid);
/* Waits up to timeout_ms until path exists and (when `contains` is not NULL) its
 * content contains that text; returns 1 if so, 0 on timeout. */
int testutil_wait_file(const char *path, const char *contains, int timeout_ms);
/* Reads a whole file (NUL-terminated, caller frees) or NULL. */
char *testutil_slurp(const char *path);
/* Resident memory of process pid in kB (VmRSS of /proc/<pid>/status), or -1. */
long testutil_rss_kb(int pid);

int testutil_summary(const char *test_name);

#endif
