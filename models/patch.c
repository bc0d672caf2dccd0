#include "patch.h"

#include "linear.h"

#include <stddef.h>
#include <string.h>

/* Offset of pixel (c, y, x) of image b in a (B,C,H,W) tensor. */
static inline size_t patch_pix(int b, int c, int y, int x, int C, int H, int W) {
    return (((size_t)b * C + c) * H + y) * W + x;
}

void patch_patchify(float *out, const float *img, int B, int C, int H, int W, int p) {
    int gh = H / p, gw = W / p, L = gh * gw, P = p * p * C;
    for (int b = 0; b < B; b++)
        for (int l = 0; l < L; l++) {
            int y0 = (l / gw) * p, x0 = (l % gw) * p;
            float *dst = out + ((size_t)b * L + l) * P;
            for (int i = 0; i < p; i++)
                for (int j = 0; j < p; j++)
                    for (int c = 0; c < C; c++)
                        dst[(i * p + j) * C + c] = img[patch_pix(b, c, y0 + i, x0 + j, C, H, W)];
        }
}

void patch_unpatchify(float *img, const float *patches, int B, int C, int H, int W, int p) {
    int gh = H / p, gw = W / p, L = gh * gw, P = p * p * C;
    for (int b = 0; b < B; b++)
        for (int l = 0; l < L; l++) {
            int y0 = (l / gw) * p, x0 = (l % gw) * p;
            const float *src = patches + ((size_t)b * L + l) * P;
            for (int i = 0; i < p; i++)
                for (int j = 0; j < p; j++)
                    for (int c = 0; c < C; c++)
                        img[patch_pix(b, c, y0 + i, x0 + j, C, H, W)] = src[(i * p + j) * C + c];
        }
}

void patch_gather(float *dst, const float *img, int C, int H, int W, int p, int l) {
    int gw = W / p, y0 = (l / gw) * p, x0 = (l % gw) * p;
    for (int c = 0; c < C; c++)
        for (int i = 0; i < p; i++)
            memcpy(dst + (c * p + i) * p, img + patch_pix(0, c, y0 + i, x0, C, H, W),
                   (size_t)p * sizeof *img);
}

/* im2col in the Conv2d weight's (c,i,j) order turns the strided convolution into one
 * GEMM against w viewed as (D, C*p*p); kernel = stride means patches do not overlap,
 * so every pixel is copied exactly once. */
void patch_embed_forward(float *out, float *cols, const float *img, const float *w, const float *b,
                         int B, int C, int H, int W, int p, int D, const int *ids, int K, int ld) {
    int P = C * p * p;
    size_t img_sz = (size_t)C * H * W;
    for (int n = 0; n < B; n++)
        for (int j = 0; j < K; j++)
            patch_gather(cols + ((size_t)n * K + j) * P, img + n * img_sz, C, H, W, p,
                         ids ? ids[(size_t)n * ld + j] : j);
    linear_forward(out, cols, w, b, B * K, P, D);
}

void patch_embed_backward(float *dw, float *db, const float *dout, const float *cols, int B, int K,
                          int C, int p, int D) {
    /* The image is data, not a parameter: no input gradient, so w is not needed. */
    linear_backward(NULL, dw, db, dout, cols, NULL, B * K, C * p * p, D);
}
