/* fuzzutil — what the libFuzzer targets of the file readers (tests/fuzz_*.c) share.
 *
 * The readers take paths, so a target writes its input to a scratch file
 * (fuzz_path: a directory of this process under /dev/shm or $TMPDIR, removed at exit)
 * and opens that. Several files come from one input by cutting it at a separator byte
 * (fuzz_split). Each target also builds as a plain program, its "replay twin" and a
 * ctest (FUZZ_REPLAY defined, any compiler, no libFuzzer): fuzz_replay_main runs the
 * target's seeds, the regression inputs committed in tests/fuzz_corpus/<name>/ and a
 * few thousand deterministic mutations of the seeds, or the files named on its command
 * line (to replay a crash the fuzzer wrote); --write-seeds DIR and --write-dict FILE
 * give libFuzzer a starting corpus and the target's tokens:
 *   ./fuzz_csv_replay --write-seeds c && ./fuzz_csv c -dict=csv.dict -runs=1000000 */
#ifndef MIMIC_FUZZUTIL_H
#define MIMIC_FUZZUTIL_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Path of the scratch file `name`, valid until exit (the same pointer for the same
 * name). The directory is created on first use; whatever was named is removed at exit
 * (files first, so "d" then "d/x" may be a directory and its file). */
const char *fuzz_path(const char *name);
/* Writes data to path (whole file, replaced); aborts on failure. */
void fuzz_write(const char *path, const void *data, size_t n);
/* Reports a broken invariant of target `what` on stderr and aborts (the fuzzer keeps
 * the input as a crash). */
void fuzz_fail(const char *target, const char *what, const char *detail)
    __attribute__((noreturn));
/* Inputs the target accepted (it counts them): the replay reports how many of its
 * mutations got past the parser, so that a seed set gone stale shows. */
extern long fuzz_accepted;

/* Checks the reader's error report for a failure rc: a known MIMIC_E* code and one
 * non-empty line in mimic_last_error(). */
void fuzz_check_error(const char *target, int rc);

/* The length of data's first part, up to the first byte `sep` (or all of it); *rest
 * and *nrest get what follows the separator (NULL and 0 when there is none). */
size_t fuzz_split(const uint8_t *data, size_t n, uint8_t sep, const uint8_t **rest,
                  size_t *nrest);

/* ---- replay twin ---- */
/* The replay's deterministic random stream (splitmix64), for targets that mutate too. */
uint64_t fuzz_rand(void);
size_t fuzz_below(size_t n); /* uniform in [0, n), 0 when n is 0 */

typedef struct {
    uint8_t **b;
    size_t *n;
    int count, cap;
} fuzz_seeds_t;

/* Appends a copy of data as a seed. */
void fuzz_seed_add(fuzz_seeds_t *s, const void *data, size_t n);
static inline void fuzz_seed_str(fuzz_seeds_t *s, const char *text) {
    size_t n = 0;
    while (text[n])
        n++;
    fuzz_seed_add(s, text, n);
}

typedef struct {
    const char *name;                      /* "csv": fuzz_csv, tests/fuzz_corpus/csv */
    void (*seeds)(fuzz_seeds_t *s);        /* valid (or nearly valid) inputs */
    const char *const *dict;               /* tokens the mutator inserts, NULL-ended */
    int runs;                              /* mutated inputs per ctest run */
} fuzz_target_t;

/* main() of a replay twin: see the header comment. FUZZ_CORPUS (a compile definition)
 * names the committed regression directory. Returns the process exit code. */
int fuzz_replay_main(const fuzz_target_t *t, int argc, char **argv);

#ifdef MIMIC_DATASET_H
#include "common.h"
/* For the data set targets (dataset.h included first): dataset_open and dataset_count on
 * o, held against each other, then check(set) on what opened. A refusal is one line
 * (fuzz_check_error) and both give the same answer (IDX excepted where dataset.h says
 * so: counting reads the headers only, so it may accept a file whose payload is cut).
 * Inline so that fuzzutil.c, linked by fuzz_proto too, needs no data library. */
static inline void fuzz_run_set(const char *target, const dataset_opts *o,
                                void (*check)(dataset_t *ds)) {
    dataset_t *ds = NULL;
    size_t count = 0;
    mimic_set_quiet(1);
    int rc = dataset_open(&ds, o);
    if (rc) fuzz_check_error(target, rc);
    int rc_count = dataset_count(o, &count);
    if (rc_count) fuzz_check_error(target, rc_count);
    if (o->kind == DATASET_IDX ? rc_count && !rc : rc != rc_count)
        fuzz_fail(target, "dataset_count and dataset_open disagree", mimic_last_error());
    if (!ds) return;
    if (count != dataset_size(ds) || count == 0) fuzz_fail(target, "dataset_count differs", NULL);
    check(ds);
    fuzz_accepted++;
    dataset_destroy(&ds);
}
#endif

#endif
