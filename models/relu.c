#include "relu.h"

void relu_forward(float *out, const float *inp, size_t n) {
    for (size_t i = 0; i < n; i++)
        out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
}

void relu_backward(float *dinp, const float *dout, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        dinp[i] += x[i] > 0.0f ? dout[i] : 0.0f;
}
