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

/* The bf16 path with operands the caller rounded already (models/mm.h; the process
 * computes in bf16): inp (M,K) and w (N,K) as bfloat16. A layer stack that keeps its
 * rounded inputs and weights from forward for backward rounds each once a step. */
void linear_forward_bf16(float *out, const unsigned short *inp, const unsigned short *w,
                         const float *b, int M, int K, int N);
/* dinp (M,K) = (written), dw +=, db +=, as linear_backward_set. */
void linear_backward_bf16(float *dinp, float *dw, float *db, const float *dout,
                          const unsigned short *inp, const unsigned short *w, int M, int K,
                          int N);

/* The same with dout rounded already (and the bias gradient taken where it was rounded:
 * gelu_backward_pack): the two products only. */
void linear_backward_bf16_packed(float *dinp, float *dw, const unsigned short *dout,
                                 const unsigned short *inp, const unsigned short *w, int M, int K,
                                 int N);

#endif
