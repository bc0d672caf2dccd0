/* reference — plain loop versions of the optimised kernels, for the tests to check
 * the BLAS paths against (the library ships only the optimised ones). */
#ifndef MIMIC_TEST_REFERENCE_H
#define MIMIC_TEST_REFERENCE_H

/* linear.h's layer as a triple loop in double: out (M,N); inp (M,K); w (N,K); b (N) or NULL */
void linear_forward_ref(float *out, const float *inp, const float *w, const float *b, int M, int K,
                        int N);
/* dinp (M,K) +=, dw (N,K) +=, db (N) +=; any may be NULL */
void linear_backward_ref(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                         const float *w, int M, int K, int N);

/* batchnorm.h's training-mode layer, one channel at a time in double from the
 * definition: out (N,C); mean, rstd (C); inp (N,C); w, b (C) or NULL */
void batchnorm_forward_ref(float *out, float *mean, float *rstd, const float *inp, const float *w,
                           const float *b, int N, int C, float eps);
/* dinp (N,C) +=, dw (C) +=, db (C) +=; any may be NULL; statistics recomputed */
void batchnorm_backward_ref(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                            const float *w, int N, int C, float eps);

#endif
