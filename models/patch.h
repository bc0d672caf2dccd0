/* patch — images to patches and back, and the patch-embedding layer.
 *
 * Images are (B,C,H,W) float, PyTorch's layout. Two patch orderings exist, both as in
 * facebookresearch/mae: the embedding (a Conv2d with kernel = stride = p, weight
 * (D,C,p,p)) reads a patch as (c,i,j); the MAE target `patchify` lays it out as
 * (i,j,c). Patches are numbered row-major over the (H/p, W/p) grid. */
#ifndef MIMIC_PATCH_H
#define MIMIC_PATCH_H

/* MAE target: out (B, L, p*p*C) with L = (H/p)*(W/p), inner order (i,j,c). */
void patch_patchify(float *out, const float *img, int B, int C, int H, int W, int p);
/* Inverse of patch_patchify: img (B,C,H,W) from (B,L,p*p*C). */
void patch_unpatchify(float *img, const float *patches, int B, int C, int H, int W, int p);

/* One patch (number l of the row-major grid) of one image (C,H,W) in the embedding's
 * (c,i,j) order: dst (C*p*p). */
void patch_gather(float *dst, const float *img, int C, int H, int W, int p, int l);

/* Embedding as im2col + GEMM, of K patches per image: ids (B, ld) lists each image's
 * patch numbers and its first K are embedded (MAE embeds only the visible ones); ids
 * NULL embeds every patch in order (K = L). cols (B*K, C*p*p) is scratch kept for
 * backward. out (B*K, D); img (B,C,H,W); w (D,C,p,p); b (D) */
void patch_embed_forward(float *out, float *cols, const float *img, const float *w, const float *b,
                         int B, int C, int H, int W, int p, int D, const int *ids, int K, int ld);
/* dw (D,C,p,p) +=, db (D) +=; dout (B*K,D); cols from forward. No image gradient. */
void patch_embed_backward(float *dw, float *db, const float *dout, const float *cols, int B, int K,
                          int C, int p, int D);

#endif
