/* linear — fully connected layer out = inp @ w^T + b, PyTorch's nn.Linear layout.
 *
 * Both directions are GEMMs through mm_gemm (fp32 sgemm, or bf16 products with fp32
 * accumulation when the process computes in bf16: models/mm.h). Backward accumulates (+=) into
 * dinp, dw and db so that several uses of a tensor sum their gradients; any of the
 * three may be NULL when that gradient is not wanted. */
#ifndef MIMIC_LINEAR_H
#define MIMIC_LINEAR_H

/* out (M,N); inp (M,K); w (N,K); b (N) or NULL */
void linear_forward(float *out, const float *inp, const float *w, const float *b, int M, int K,
                    int N);
/* dinp (M,K) +=, dw (N,K) +=, db (N) +=; dout (M,N); inp (M,K); w (N,K) */
void linear_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                     const float *w, int M, int K, int N);
/* The same, but dinp is written (=), not accumulated: for an input whose gradient has
 * no other source, so the caller need not clear it first. */
void linear_backward_set(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                         const float *w, int M, int K, int N);

#endif
