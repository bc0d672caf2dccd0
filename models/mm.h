/* mm — the GEMM engine of the linear layers, in one of two precisions.
 *
 * fp32: OpenBLAS's sgemm, as everywhere else.
 * bf16: operands rounded to bfloat16 (round to nearest even) and multiplied by oneDNN's
 *   matmul with fp32 accumulation and an fp32 result: on CPUs with AVX512_BF16
 *   (vdpbf16ps: Zen4, Sapphire Rapids and later) about twice sgemm's rate. Weights,
 *   gradients, optimiser state and every element-wise layer stay fp32; only the
 *   products of a GEMM see 8-bit mantissas, as under torch.autocast("cpu", bfloat16).
 *   No loss scaling: bf16 has fp32's 8-bit exponent, so small gradients do not
 *   underflow the way fp16's 5-bit exponent makes them (docs/precision.md).
 *
 * The precision is one process-wide setting (mm_set_precision), chosen once at start
 * from train.precision; the default is fp32, so a program that never sets it computes
 * exactly as before. Not thread-safe: the GEMMs of the layers run on the calling
 * thread (they are parallel inside). */
#ifndef MIMIC_MM_H
#define MIMIC_MM_H

#include <stddef.h>

typedef enum { MM_FP32 = 0, MM_BF16 = 1 } mm_precision_t;

/* 1 when the CPU has AVX512_BF16 and oneDNN will run its bf16 kernels on it. */
int mm_cpu_has_bf16(void);

/* "fp32" | "bf16" | "auto" (bf16 where mm_cpu_has_bf16, fp32 elsewhere) -> *out.
 * -1 with a one-line error naming `what` for another word or for bf16 on a CPU
 * without it. */
int mm_precision_parse(const char *word, const char *what, mm_precision_t *out);
void mm_set_precision(mm_precision_t p);
/* A binary's compute set-up from its config: threads (> 0: OpenBLAS and OpenMP; 0
 * leaves the environment's) and the precision word of `what` (train.precision).
 * 0, or MIMIC_EINVAL with the one-line reason. */
int mm_setup(int threads, const char *precision, const char *what);
mm_precision_t mm_precision(void);
const char *mm_precision_name(mm_precision_t p);

/* C(M,N) = op(A) op(B) + beta C, row-major, op(X) = X or X^T (ta/tb nonzero), beta 0
 * or 1: the products the linear layers need, in the current precision. */
void mm_gemm(int ta, int tb, int M, int N, int K, const float *A, int lda, const float *B,
             int ldb, float beta, float *C, int ldc);

/* The bf16 path in two steps, for a caller that uses one operand in several products
 * (linear_backward: dout in both). mm_pack rounds rows x cols of src (leading
 * dimension ld) into the engine's buffer `slot` (0 .. MM_SLOTS-1), packed (leading
 * dimension cols), valid until that slot is packed again; mm_gemm_bf16 multiplies
 * packed operands as stored (op(A) is A^T when ta: A packed as K x M). */
enum { MM_SLOTS = 10, MM_FSLOTS = 3 };
unsigned short *mm_pack(int slot, const float *src, int rows, int cols, int ld);
/* mm_pack of a packed (ld = cols) matrix that also adds its column sums to colsum (cols
 * floats, +=; NULL: none) in the same pass: linear_backward's bias gradient. The rows
 * are summed in fixed blocks and the blocks in order, so the sums do not depend on the
 * thread count. */
unsigned short *mm_pack_colsum(int slot, const float *src, int rows, int cols, float *colsum);
/* The same for a matrix made block by block as it is packed, never stored in f32 (GELU's
 * backward output): make(ctx, r0, n, cols, tmp) returns rows r0 .. r0+n-1 (n <= 64),
 * either computed into tmp (room for n x cols floats, the calling thread's) or stored
 * elsewhere. colsum may be NULL. */
typedef const float *(*mm_rows_fn)(void *ctx, int r0, int n, int cols, float *tmp);
unsigned short *mm_pack_rows(int slot, int rows, int cols, float *colsum, mm_rows_fn make,
                             void *ctx);
/* mm_to_bf16 of n floats into a caller's buffer, on the OpenMP threads. */
void mm_round(unsigned short *dst, const float *src, long n);
void mm_gemm_bf16(int ta, int tb, int M, int N, int K, const unsigned short *A,
                  const unsigned short *B, float beta, float *C, int ldc);
/* The same plus a bias row added to every row of C (N floats; NULL: none), in the
 * product's own pass. */
void mm_gemm_bf16_bias(int ta, int tb, int M, int N, int K, const unsigned short *A,
                       const unsigned short *B, const float *bias, float beta, float *C,
                       int ldc);

/* batch products at once, each operand's matrices one after another (A: batch of M x K
 * or K x M when ta, ...), C batch x M x N: attention's per-head products. */
void mm_bmm_bf16(int batch, int ta, int tb, int M, int N, int K, const unsigned short *A,
                 const unsigned short *B, float beta, float *C);
/* The engine's buffers (grow-only, valid until asked for again with a larger n): bf16
 * slot 0 .. MM_SLOTS-1 (shared with mm_pack: linear uses 0-2, attention 4-8) and float
 * slot 0 .. MM_FSLOTS-1 (attention). */
unsigned short *mm_buffer(int slot, size_t n);
float *mm_fbuffer(int slot, size_t n);

/* Rounds n floats to bfloat16 (round to nearest even; NaN stays NaN). */
void mm_to_bf16(unsigned short *dst, const float *src, long n);

/* Releases the bf16 engine's primitives and scratch (tests, leak checks). */
void mm_release(void);

#endif
