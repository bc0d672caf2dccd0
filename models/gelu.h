/* gelu — exact (erf) GELU, PyTorch's nn.GELU() default.
 *
 * The erf is a branch-free polynomial approximation (fastmath.h) so the loops
 * vectorise; its error (< 2e-7 absolute) is far below float32 training noise and the
 * parity tolerance. Results do not depend on the OpenMP thread count. */
#ifndef MIMIC_GELU_H
#define MIMIC_GELU_H

#include <stddef.h>

/* out (n); inp (n). out may alias inp. */
void gelu_forward(float *out, const float *inp, size_t n);
/* The same rounded to bfloat16 (models/mm.h) for the GEMM that consumes it, without an
 * f32 copy; out must not alias inp. */
void gelu_forward_bf16(unsigned short *out, const float *inp, size_t n);
/* dinp (n) = dout * gelu'(inp): written, not accumulated (its one caller, the MLP, has
 * no other gradient for the pre-activation). */
void gelu_backward(float *dinp, const float *dout, const float *inp, size_t n);

/* bf16 (models/mm.h): gelu_backward's dinp (rows x cols) rounded into the engine's packed
 * buffer `slot` for the GEMMs that consume it, its column sums added to colsum (the next
 * linear layer's bias gradient; NULL: none) in the same pass, without an f32 copy. */
unsigned short *gelu_backward_pack(int slot, float *colsum, const float *dout, const float *inp,
                                   int rows, int cols);

#endif
