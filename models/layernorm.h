/* layernorm — LayerNorm over the last dimension (PyTorch nn.LayerNorm, biased variance).
 *
 * Forward stores the per-row mean and reciprocal standard deviation that backward
 * needs, so the input is not normalised twice. Backward accumulates (+=); any of its
 * three gradient outputs may be NULL when that gradient is not wanted. */
#ifndef MIMIC_LAYERNORM_H
#define MIMIC_LAYERNORM_H

/* out (M,C); mean (M); rstd (M); inp (M,C); w (C); b (C) */
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                       const float *b, int M, int C, float eps);
/* The same with out rounded to bfloat16 (models/mm.h) for the GEMM that consumes it:
 * the values layernorm_forward writes, rounded, without an f32 copy. */
void layernorm_forward_bf16(unsigned short *out, float *mean, float *rstd, const float *inp,
                            const float *w, const float *b, int M, int C, float eps);
/* dinp (M,C) +=, dw (C) +=, db (C) +=; dout, inp (M,C); mean, rstd (M) from forward */
void layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                        const float *w, const float *mean, const float *rstd, int M, int C);

#endif
