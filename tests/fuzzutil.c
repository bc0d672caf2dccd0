/* fuzzutil — scratch files, input splitting and the replay driver of the file-reader
 * fuzz targets (fuzzutil.h). */
#define _POSIX_C_SOURCE 200809L
#include "fuzzutil.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

#define FUZZ_MAX_FILES 16
#define FUZZ_MAX_INPUT (1 << 20)
#define FUZZ_SLOW_SECONDS 5.0

long fuzz_accepted;
static char scratch[512];
static struct {
    char *name, *path;
} files[FUZZ_MAX_FILES];
static int nfiles;

static void remove_scratch(void) {
    for (int i = nfiles - 1; i >= 0; i--) { /* a directory's files were named after it */
        if (unlink(files[i].path) != 0) rmdir(files[i].path);
        free(files[i].name);
        free(files[i].path);
    }
    nfiles = 0;
    rmdir(scratch);
}

const char *fuzz_path(const char *name) {
    for (int i = 0; i < nfiles; i++)
        if (strcmp(files[i].name, name) == 0) return files[i].path;
    if (!scratch[0]) {
        struct stat st;
        const char *t = getenv("TMPDIR");
        if (stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) && access("/dev/shm", W_OK) == 0)
            t = "/dev/shm"; /* a file write per input: keep it off the disk */
        snprintf(scratch, sizeof scratch, "%s/mimic-fuzz-XXXXXX", t ? t : "/tmp");
        if (!mkdtemp(scratch)) fuzz_fail("fuzzutil", "cannot create a scratch directory", scratch);
        atexit(remove_scratch);
    }
    MIMIC_CHECK(nfiles < FUZZ_MAX_FILES);
    size_t n = strlen(scratch) + strlen(name) + 2;
    char *path = malloc(n), *copy = strdup(name);
    MIMIC_CHECK(path && copy);
    snprintf(path, n, "%s/%s", scratch, name);
    files[nfiles].name = copy;
    files[nfiles].path = path;
    return files[nfiles++].path;
}

void fuzz_write(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) fuzz_fail("fuzzutil", "cannot create", path);
    size_t w = n ? fwrite(data, 1, n, f) : 0;
    if (fclose(f) != 0 || w != n) fuzz_fail("fuzzutil", "cannot write", path);
}

void fuzz_fail(const char *target, const char *what, const char *detail) {
    fprintf(stderr, "fuzz_%s: %s (%s)\n", target, what, detail ? detail : "");
    abort();
}

void fuzz_check_error(const char *target, int rc) {
    static const int known[] = {MIMIC_EINVAL, MIMIC_EIO, MIMIC_EFORMAT, MIMIC_ENOMEM,
                                MIMIC_ESHAPE};
    int ok = 0;
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        ok |= rc == known[i];
    if (!ok) fuzz_fail(target, "unexpected return code", mimic_strerror(rc));
    const char *msg = mimic_last_error();
    if (!msg || !msg[0]) fuzz_fail(target, "an error without a message", mimic_strerror(rc));
    if (strchr(msg, '\n')) fuzz_fail(target, "an error message of more than one line", msg);
}

size_t fuzz_split(const uint8_t *data, size_t n, uint8_t sep, const uint8_t **rest,
                  size_t *nrest) {
    const uint8_t *at = n ? memchr(data, sep, n) : NULL;
    *rest = at ? at + 1 : NULL;
    *nrest = at ? n - (size_t)(at + 1 - data) : 0;
    return at ? (size_t)(at - data) : n;
}

void fuzz_seed_add(fuzz_seeds_t *s, const void *data, size_t n) {
    if (s->count == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 16;
        s->b = realloc(s->b, (size_t)s->cap * sizeof *s->b);
        s->n = realloc(s->n, (size_t)s->cap * sizeof *s->n);
        MIMIC_CHECK(s->b && s->n);
    }
    MIMIC_CHECK(n <= FUZZ_MAX_INPUT / 2);
    s->b[s->count] = malloc(n ? n : 1);
    MIMIC_CHECK(s->b[s->count] != NULL);
    if (n) memcpy(s->b[s->count], data, n);
    s->n[s->count++] = n;
}

static void seeds_free(fuzz_seeds_t *s) {
    for (int i = 0; i < s->count; i++)
        free(s->b[i]);
    free(s->b);
    free(s->n);
}

/* ---- deterministic mutations (the replay twin's small stand-in for libFuzzer) ---- */

static uint64_t rng_state = 0x243f6a8885a308d3ULL;
uint64_t fuzz_rand(void) { /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
size_t fuzz_below(size_t n) {
    return n ? (size_t)(fuzz_rand() % n) : 0;
}

typedef struct {
    uint8_t *b;
    size_t n, cap;
} buf_t;

/* Replaces b[at, at+del) with ins[0, nins) when it fits the buffer. */
static void put(buf_t *b, size_t at, size_t del, const void *ins, size_t nins) {
    if (at > b->n) at = b->n;
    if (del > b->n - at) del = b->n - at;
    if (b->n - del + nins > b->cap) return;
    memmove(b->b + at + nins, b->b + at + del, b->n - at - del);
    if (nins) memcpy(b->b + at, ins, nins);
    b->n = b->n - del + nins;
}

static void mutate_once(buf_t *b, const fuzz_seeds_t *s, const char *const *dict, int ndict) {
    static const char *numbers[] = {"0",     "-1",        "1",          "255",        "256",
                                    "65536", "2147483647", "2147483648", "4294967296", "1e39",
                                    "-0",    "99999999999999999999",    "nan",        "0x10"};
    static const uint8_t bytes[] = {0x00, 0x01, 0x7f, 0x80, 0xff, '\n', '\r', ',',
                                    '"',  ' ',  '=',  '[',  ']',  '{',  '}',  ':'};
    uint8_t tmp[64];
    switch (fuzz_below(10)) {
    case 0: /* bit flip */
        if (b->n) b->b[fuzz_below(b->n)] ^= (uint8_t)(1u << fuzz_below(8));
        break;
    case 1: /* interesting byte */
        if (b->n) b->b[fuzz_below(b->n)] = bytes[fuzz_below(sizeof bytes)];
        break;
    case 2: /* truncate */
        b->n = fuzz_below(b->n + 1);
        break;
    case 3: { /* random bytes in */
        size_t k = 1 + fuzz_below(16);
        for (size_t i = 0; i < k; i++)
            tmp[i] = (uint8_t)fuzz_rand();
        put(b, fuzz_below(b->n + 1), 0, tmp, k);
        break;
    }
    case 4: /* delete a span */
        put(b, fuzz_below(b->n + 1), 1 + fuzz_below(32), NULL, 0);
        break;
    case 5: { /* duplicate a span */
        size_t at = fuzz_below(b->n + 1), k = fuzz_below(b->n - at + 1);
        if (k > sizeof tmp) k = sizeof tmp;
        memcpy(tmp, b->b + at, k);
        put(b, fuzz_below(b->n + 1), 0, tmp, k);
        break;
    }
    case 6: { /* splice in a part of another seed */
        int j = (int)fuzz_below((size_t)s->count);
        size_t from = fuzz_below(s->n[j] + 1), k = fuzz_below(s->n[j] - from + 1);
        put(b, fuzz_below(b->n + 1), fuzz_below(k + 1), s->b[j] + from, k);
        break;
    }
    case 7: { /* a number over a digit run (or anywhere) */
        const char *num = numbers[fuzz_below(sizeof numbers / sizeof numbers[0])];
        size_t at = fuzz_below(b->n + 1), end = at;
        while (end < b->n && b->b[end] >= '0' && b->b[end] <= '9')
            end++;
        put(b, at, end - at, num, strlen(num));
        break;
    }
    case 8: { /* overwrite 1, 2, 4 or 8 bytes with a boundary value */
        uint64_t v = fuzz_below(2) ? ~(uint64_t)0 >> fuzz_below(64) : (uint64_t)1 << fuzz_below(64);
        size_t w = (size_t)1 << fuzz_below(4), at = fuzz_below(b->n + 1);
        if (at + w <= b->n) memcpy(b->b + at, &v, w);
        break;
    }
    default: /* a token of the format */
        if (ndict) {
            const char *tok = dict[fuzz_below((size_t)ndict)];
            put(b, fuzz_below(b->n + 1), fuzz_below(3) == 0 ? fuzz_below(8) : 0, tok, strlen(tok));
        }
        break;
    }
}

/* Runs one input. Every input takes milliseconds; one that takes seconds is a hang or
 * a resource blow-up (libFuzzer's -timeout=10 finds them; this finds them again in the
 * ASan ctest, where the huge JPEG of tests/fuzz_corpus/jpeg took 40 s). */
static void run_one(const uint8_t *data, size_t n) {
    /* a copy of exactly n bytes, so that AddressSanitizer sees any read past the input */
    uint8_t *copy = malloc(n ? n : 1);
    MIMIC_CHECK(copy != NULL);
    if (n) memcpy(copy, data, n);
    double t0 = mimic_now();
    LLVMFuzzerTestOneInput(copy, n);
    free(copy);
    char took[32];
    snprintf(took, sizeof took, "%.1f s", mimic_now() - t0);
    if (mimic_now() - t0 > FUZZ_SLOW_SECONDS) fuzz_fail("replay", "an input took over 5 s", took);
}

static int run_file(const char *path, int verbose) {
    FILE *f = fopen(path, "rb");
    if (!f) return mimic_err(MIMIC_EIO, "%s: cannot open", path);
    uint8_t *buf = malloc(FUZZ_MAX_INPUT);
    MIMIC_CHECK(buf != NULL);
    size_t n = fread(buf, 1, FUZZ_MAX_INPUT, f);
    fclose(f);
    run_one(buf, n);
    free(buf);
    if (verbose) printf("%s: %zu bytes ok\n", path, n);
    return 0;
}

/* Runs every regular file of dir (sorted order is not needed: each input stands alone).
 * Returns the number run, or -1 when dir cannot be read. */
static int run_dir(const char *dir, int verbose) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int count = 0;
    struct dirent *e;
    char path[4096];
    while ((e = readdir(d)) != NULL) {
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (e->d_name[0] == '.' || stat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        if (run_file(path, verbose)) {
            closedir(d);
            return -1;
        }
        count++;
    }
    closedir(d);
    return count;
}

static int write_seeds(const fuzz_target_t *t, const fuzz_seeds_t *s, const char *dir) {
    for (int i = 0; i < s->count; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/seed-%s-%02d", dir, t->name, i);
        FILE *f = fopen(path, "wb");
        if (!f) return mimic_err(MIMIC_EIO, "%s: cannot create", path);
        size_t w = s->n[i] ? fwrite(s->b[i], 1, s->n[i], f) : 0;
        if (fclose(f) != 0 || w != s->n[i]) return mimic_err(MIMIC_EIO, "%s: write failed", path);
    }
    printf("wrote %d seeds to %s\n", s->count, dir);
    return 0;
}

/* libFuzzer's dictionary format: one "quoted" token a line, \xNN for other bytes. */
static int write_dict(const fuzz_target_t *t, const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) return mimic_err(MIMIC_EIO, "%s: cannot create", path);
    for (int i = 0; t->dict && t->dict[i]; i++) {
        fputc('"', f);
        for (const unsigned char *c = (const unsigned char *)t->dict[i]; *c; c++)
            if (*c < 0x20 || *c >= 0x7f || *c == '"' || *c == '\\')
                fprintf(f, "\\x%02x", *c);
            else
                fputc(*c, f);
        fputs("\"\n", f);
    }
    return fclose(f) == 0 ? 0 : mimic_err(MIMIC_EIO, "%s: write failed", path);
}

int fuzz_replay_main(const fuzz_target_t *t, int argc, char **argv) {
    fuzz_seeds_t s = {0};
    t->seeds(&s);
    int rc = 0;
    if (argc == 3 && strcmp(argv[1], "--write-seeds") == 0) {
        rc = write_seeds(t, &s, argv[2]) ? 1 : 0;
    } else if (argc == 3 && strcmp(argv[1], "--write-dict") == 0) {
        rc = write_dict(t, argv[2]) ? 1 : 0;
    } else if (argc > 1) {
        for (int i = 1; i < argc && !rc; i++) {
            struct stat st;
            if (stat(argv[i], &st) == 0 && S_ISDIR(st.st_mode))
                rc = run_dir(argv[i], 1) < 0;
            else
                rc = run_file(argv[i], 1) != 0;
        }
    } else {
        for (int i = 0; i < s.count; i++)
            run_one(s.b[i], s.n[i]);
        long seeds_ok = fuzz_accepted;
        int regressions = 0;
#ifdef FUZZ_CORPUS
        regressions = run_dir(FUZZ_CORPUS, 0);
        if (regressions < 0) regressions = 0; /* no crash found yet: no directory */
#endif
        int ndict = 0;
        while (t->dict && t->dict[ndict])
            ndict++;
        buf_t b = {malloc(FUZZ_MAX_INPUT), 0, FUZZ_MAX_INPUT};
        MIMIC_CHECK(b.b != NULL);
        double t0 = mimic_now();
        fuzz_accepted = 0;
        for (int r = 0; r < t->runs; r++) {
            int j = (int)fuzz_below((size_t)s.count);
            memcpy(b.b, s.b[j], s.n[j]);
            b.n = s.n[j];
            for (size_t k = 1 + fuzz_below(4); k > 0; k--)
                mutate_once(&b, &s, t->dict, ndict);
            run_one(b.b, b.n);
        }
        free(b.b);
        printf("fuzz_%s_replay: %d seeds (%ld accepted), %d regression inputs, %d mutated "
               "inputs (%ld accepted) in %.1f s: no crash, every invariant held\n",
               t->name, s.count, seeds_ok, regressions, t->runs, fuzz_accepted,
               mimic_now() - t0);
        if (seeds_ok == 0) { /* (damaged JPEGs are all refused: mutations may be too) */
            fprintf(stderr, "fuzz_%s_replay: no seed was accepted: the seeds are stale\n",
                    t->name);
            rc = 1;
        }
    }
    seeds_free(&s);
    return rc;
}
