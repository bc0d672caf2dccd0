/* relu — elementwise max(x, 0), the activation of the contrastive heads (MoCo, SupCon).
 *
 * Backward needs only the sign pattern, which the forward's input and output share, so
 * the forward may run in place and backward be given either tensor. */
#ifndef MIMIC_RELU_H
#define MIMIC_RELU_H

#include <stddef.h>

/* out (n); inp (n). out may alias inp. */
void relu_forward(float *out, const float *inp, size_t n);
/* dinp (n) += dout * [x > 0]; x is the forward's input or output (n). */
void relu_backward(float *dinp, const float *dout, const float *x, size_t n);

#endif
