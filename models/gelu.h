/* gelu — exact (erf) GELU, PyTorch's nn.GELU() default.
 *
 * The erf is a branch-free polynomial approximation (see gelu.c) so the loops
 * vectorise; its error is far below float32 training noise and the parity tolerance. */
#ifndef MIMIC_GELU_H
#define MIMIC_GELU_H

#include <stddef.h>

/* out (n); inp (n). out may alias inp. */
void gelu_forward(float *out, const float *inp, size_t n);
/* dinp (n) += dout * gelu'(inp) */
void gelu_backward(float *dinp, const float *dout, const float *inp, size_t n);

#endif
