/* fiqa — SDD-FIQA quality pseudo-labels (Ou et al., CVPR 2021; METHODS.md) for any
 * labelled image set and a trained encoder, and what can be done with them.
 *
 * An image's quality is how well its embedding separates its own class from the others:
 * with the cls features of the set (eval_extract), for each image K times draw m other
 * images of its class and m images of other classes, take the cosine similarities S_P
 * and S_N and their 1-D Wasserstein distance W1(S_P, S_N); the score is the mean over
 * the K draws, min-max normalised to 0..100 over the set. Every draw comes from the
 * stream (seed, image index), so the scores do not depend on threads or order.
 *
 * Then (mimic-fiqa, eval/fiqa_main.c): the scores as a CSV (index,label,score), a
 * regression head Linear(D -> 1) on the frozen features trained with SmoothL1 (the
 * paper's quality regressor, without fine-tuning the backbone), and a filtered copy of
 * the set without its lowest-scoring fraction that the next stage trains on (an IDX
 * pair for in-memory sets, a label list for JPEG sets). */
#ifndef MIMIC_FIQA_H
#define MIMIC_FIQA_H

#include "config.h"

#include <stdint.h>

/* W1 between the empirical distributions of a (n) and b (m): the integral over t in
 * (0,1) of |Fa^-1(t) - Fb^-1(t)| (quantile functions), which for n = m is
 * mean_i |a_(i) - b_(i)| of the sorted samples and, for n != m, integrates over the
 * merged breakpoints i/n and j/m. Sorts a and b in place. n, m >= 1. */
double fiqa_wasserstein1(float *a, int n, float *b, int m);

typedef struct {
    int m;       /* same-class and other-class images per draw */
    int repeats; /* K draws averaged */
    uint64_t seed;
} fiqa_cfg_t;

/* q (n) = the quality scores, 0..100, of the n images with features x (n, D) and labels y
 * (n, >= 0). Errors (one line, naming fiqa.m or the class): fewer than 2 classes, a class
 * of one image, m larger than a class minus one or than the images outside a class.
 * raw (n), may be NULL: the mean distances before normalisation. */
int fiqa_score(float *q, float *raw, const float *x, const int *y, int n, int D,
               const fiqa_cfg_t *c);

typedef struct {
    int epochs;
    float lr, beta; /* SGD lr (momentum 0.9, half-cosine); SmoothL1 beta on q / 100 */
    uint64_t seed;
} fiqa_head_cfg_t;

typedef struct {
    int n_fit, n_held;        /* rows trained on; held out (every 10th image) */
    double loss;              /* SmoothL1 on the training rows, last epoch */
    double mae_fit, mae_held; /* mean |prediction - q| in score units (0..100) */
    double r_fit, r_held;     /* Pearson correlation of prediction and q */
} fiqa_head_result_t;

/* Fits w (D), b: q ~ x w + b (in 0..100 units) by SmoothL1 on q / 100 over the rows not
 * held out, on standardised features (folded back into w and b, so the head applies to
 * raw features). Returns 0 or an error. */
int fiqa_head_fit(float *w, float *b, fiqa_head_result_t *r, const float *x, const float *q, int n,
                  int D, const fiqa_head_cfg_t *c);

/* keep (n): 0 for the floor(drop * n) lowest scores (ties: the lower index first), else 1;
 * with labels y (n, >= 0; NULL: the whole set) the same within each class. Returns how
 * many are kept. drop in [0, 1). */
int fiqa_keep(uint8_t *keep, const float *q, const int *y, int n, float drop);

/* The CSV: a header "index,label,score" and one line per image (index = data set index). */
int fiqa_write_csv(const char *path, const uint32_t *ids, const int *y, const float *q, int n);

/* A copy of cfg's data set with only the kept rows (ids: their data set indices): for
 * IDX and CSV sets prefix-images-idx3-ubyte (idx4 for colour) and prefix-labels-idx1-ubyte;
 * for JPEG sets prefix-labels.txt, a label list of the kept files relative to data.path
 * (labels + data.label_base), read with data.kind=labellist. Logs the keys to use. */
int fiqa_write_filtered(const mimic_cfg_t *cfg, const uint32_t *ids, const uint8_t *keep, int n,
                        const char *prefix);

#endif
