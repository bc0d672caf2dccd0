/* attention — multi-head scaled dot-product self-attention on a packed qkv tensor.
 *
 * qkv is the output of the block's qkv Linear: for token t of sample b the row holds
 * [q (C) | k (C) | v (C)], each split into NH heads of C/NH (timm's layout). Forward
 * keeps the softmax probabilities (att) for backward. Backward writes (=, not +=) all
 * of dqkv and uses `scratch` (B*NH*T*T floats) for the gradient of the scores.
 * In bf16 (mm_precision) the four products run batched over every (sample, head) on
 * bf16 head-major copies with fp32 accumulation; softmax stays fp32. */
#ifndef MIMIC_ATTENTION_H
#define MIMIC_ATTENTION_H

/* out (B,T,C); att (B,NH,T,T); qkv (B,T,3C) */
void attention_forward(float *out, float *att, const float *qkv, int B, int T, int C, int NH);
/* dqkv (B,T,3C) =; scratch (B,NH,T,T); dout (B,T,C); qkv, att from forward */
void attention_backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                        const float *att, int B, int T, int C, int NH);

#endif
