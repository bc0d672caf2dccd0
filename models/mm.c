#include "mm.h"

#include "bf16.h"
#include "common.h"

#include <cblas.h>
#include <dnnl.h>
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static mm_precision_t g_precision = MM_FP32;

int mm_cpu_has_bf16(void) {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512bf16")) return 0;
    /* oneDNN's own dispatch must agree (it also honours ONEDNN_MAX_CPU_ISA) */
    return dnnl_get_effective_cpu_isa() >= dnnl_cpu_isa_avx512_core_bf16;
}

const char *mm_precision_name(mm_precision_t p) { return p == MM_BF16 ? "bf16" : "fp32"; }

int mm_precision_parse(const char *word, const char *what, mm_precision_t *out) {
    if (!strcmp(word, "fp32")) {
        *out = MM_FP32;
        return 0;
    }
    if (!strcmp(word, "auto")) {
        *out = mm_cpu_has_bf16() ? MM_BF16 : MM_FP32;
        return 0;
    }
    if (!strcmp(word, "bf16")) {
        if (!mm_cpu_has_bf16()) {
            return mimic_err(MIMIC_EINVAL, "%s=bf16: this CPU has no AVX512_BF16 (use auto or fp32)",
                             what);
        }
        *out = MM_BF16;
        return 0;
    }
    return mimic_err(MIMIC_EINVAL, "%s=%s: expected fp32, bf16 or auto", what, word);
}

void mm_set_precision(mm_precision_t p) { g_precision = p; }

int mm_setup(int threads, const char *precision, const char *what) {
    if (threads > 0) {
        openblas_set_num_threads(threads);
        omp_set_num_threads(threads);
    }
    mm_precision_t p = MM_FP32;
    int rc = mm_precision_parse(precision, what, &p);
    if (rc) return rc;
    mm_set_precision(p);
    return 0;
}
mm_precision_t mm_precision(void) { return g_precision; }

/* ---- fp32 -> bf16 ------------------------------------------------------------ */

/* runtime/bf16.h's rounding, a value at a time (the loop vectorises); the AVX512_BF16
 * instruction does the same 32 values at once where the CPU has it. */
static void to_bf16_portable(uint16_t *dst, const float *src, long n) {
    for (long i = 0; i < n; i++)
        dst[i] = bf16_round(src[i]);
}

__attribute__((target("avx512f,avx512bf16"))) static void to_bf16_avx512(uint16_t *dst,
                                                                        const float *src,
                                                                        long n) {
    long i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512bh two = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + i + 16), _mm512_loadu_ps(src + i));
        _mm512_storeu_si512((void *)(dst + i), (__m512i)two);
    }
    for (; i + 16 <= n; i += 16) {
        __m256bh one = _mm512_cvtneps_pbh(_mm512_loadu_ps(src + i));
        _mm256_storeu_si256((__m256i *)(dst + i), (__m256i)one);
    }
    to_bf16_portable(dst + i, src + i, n - i);
}

static int g_avx512bf16 = -1;

void mm_to_bf16(unsigned short *dst, const float *src, long n) {
    if (g_avx512bf16 < 0) {
        __builtin_cpu_init();
        g_avx512bf16 = __builtin_cpu_supports("avx512bf16") ? 1 : 0;
    }
    if (g_avx512bf16)
        to_bf16_avx512(dst, src, n);
    else
        to_bf16_portable(dst, src, n);
}

void mm_round(uint16_t *dst, const float *src, long n) {
    long chunk = 1L << 14;
    long nchunks = (n + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) if (nchunks > 1)
    for (long c = 0; c < nchunks; c++) {
        long lo = c * chunk, len = n - lo < chunk ? n - lo : chunk;
        mm_to_bf16(dst + lo, src + lo, len);
    }
}

/* rows x cols of src (leading dimension ld) into dst, packed (leading dimension cols) */
static void pack_bf16(uint16_t *dst, const float *src, int rows, int cols, int ld) {
    if (ld == cols) {
        mm_round(dst, src, (long)rows * cols);
        return;
    }
#pragma omp parallel for schedule(static) if ((long)rows * cols > (1L << 15))
    for (int r = 0; r < rows; r++)
        mm_to_bf16(dst + (size_t)r * cols, src + (size_t)r * ld, cols);
}

/* ---- the bf16 engine: oneDNN matmul primitives, one per GEMM shape ---------------- */

typedef struct {
    int batch, ta, tb, M, N, K, ldc, beta, bias;
    dnnl_primitive_t prim;
    dnnl_memory_t a, b, c, pad, d; /* d: the bias row */
} mm_prim_t;

static struct {
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    mm_prim_t *prims;
    int nprims, cap;
    /* the packed operands, the primitives' scratchpad, the float buffers, the partial
     * column sums and the threads' row blocks of mm_pack_rows */
    uint16_t *buf[MM_SLOTS + 1 + MM_FSLOTS + 2];
    size_t buf_len[MM_SLOTS + 1 + MM_FSLOTS + 2];
} g;

/* oneDNN fails only on a broken installation or exhausted memory: there is no step to
 * save, so the process ends with the reason. */
static void check(dnnl_status_t s, const char *what) {
    if (s == dnnl_success) return;
    mimic_err(MIMIC_EINVAL, "oneDNN: %s failed (status %d)", what, (int)s);
    exit(1);
}

static uint16_t *scratch(int i, size_t n) {
    if (n == 0) n = 1;
    if (g.buf_len[i] < n) {
        mimic_free(g.buf[i]);
        g.buf[i] = mimic_alloc(n * sizeof(uint16_t));
        if (!g.buf[i]) check(dnnl_out_of_memory, "bf16 scratch");
        g.buf_len[i] = n;
    }
    return g.buf[i];
}

static mm_prim_t *prim_for(int batch, int ta, int tb, int M, int N, int K, int ldc, int beta,
                           int bias) {
    for (int i = 0; i < g.nprims; i++) {
        mm_prim_t *p = &g.prims[i];
        if (p->batch == batch && p->ta == ta && p->tb == tb && p->M == M && p->N == N && p->K == K &&
            p->ldc == ldc && p->beta == beta && p->bias == bias)
            return p;
    }
    if (!g.engine) {
        check(dnnl_engine_create(&g.engine, dnnl_cpu, 0), "engine");
        check(dnnl_stream_create(&g.stream, g.engine, dnnl_stream_default_flags), "stream");
    }
    if (g.nprims == g.cap) {
        g.cap = g.cap ? 2 * g.cap : 32;
        g.prims = realloc(g.prims, (size_t)g.cap * sizeof *g.prims);
        if (!g.prims) check(dnnl_out_of_memory, "GEMM primitive table");
    }
    mm_prim_t *p = &g.prims[g.nprims];
    *p = (mm_prim_t){
        .batch = batch, .ta = ta, .tb = tb, .M = M, .N = N, .K = K, .ldc = ldc, .beta = beta, .bias = bias};
    /* The operands are packed as stored, so a transposed operand is the stored matrix
     * read with swapped strides; a batch (batch > 1) is the leading dimension of three,
     * its matrices one after another. */
    int nd = batch > 1 ? 3 : 2, o = nd - 2;
    dnnl_dims_t da = {0}, db = {0}, dc = {0}, dd = {0}, sa = {0}, sb = {0}, sc = {0}, sd = {0};
    if (batch > 1) {
        da[0] = db[0] = dc[0] = batch;
        dd[0] = 1;
        sa[0] = (dnnl_dim_t)M * K;
        sb[0] = (dnnl_dim_t)K * N;
        sc[0] = (dnnl_dim_t)M * ldc;
        sd[0] = N;
    }
    da[o] = M, da[o + 1] = K, sa[o] = ta ? 1 : K, sa[o + 1] = ta ? M : 1;
    db[o] = K, db[o + 1] = N, sb[o] = tb ? 1 : N, sb[o + 1] = tb ? K : 1;
    dc[o] = M, dc[o + 1] = N, sc[o] = ldc, sc[o + 1] = 1;
    dd[o] = 1, dd[o + 1] = N, sd[o] = N, sd[o + 1] = 1;
    dnnl_memory_desc_t ma, mb, mc, md;
    check(dnnl_memory_desc_init_by_strides(&md, nd, dd, dnnl_f32, sd), "bias desc");
    check(dnnl_memory_desc_init_by_strides(&ma, nd, da, dnnl_bf16, sa), "src desc");
    check(dnnl_memory_desc_init_by_strides(&mb, nd, db, dnnl_bf16, sb), "weights desc");
    check(dnnl_memory_desc_init_by_strides(&mc, nd, dc, dnnl_f32, sc), "dst desc");
    dnnl_matmul_desc_t desc;
    check(dnnl_matmul_desc_init(&desc, &ma, &mb, bias ? &md : NULL, &mc), "matmul desc");
    dnnl_primitive_attr_t attr;
    check(dnnl_primitive_attr_create(&attr), "attr");
    /* our scratchpad: oneDNN's own is allocated (and page-faulted in) on every call */
    check(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user), "scratchpad");
    dnnl_post_ops_t po = NULL;
    if (beta) {
        check(dnnl_post_ops_create(&po), "post ops");
        check(dnnl_post_ops_append_sum(po, 1.0f), "sum post op");
        check(dnnl_primitive_attr_set_post_ops(attr, po), "set post ops");
    }
    dnnl_primitive_desc_t pd;
    check(dnnl_primitive_desc_create(&pd, &desc, attr, g.engine, NULL), "matmul");
    check(dnnl_primitive_create(&p->prim, pd), "primitive");
    check(dnnl_memory_create(&p->a, &ma, g.engine, DNNL_MEMORY_NONE), "memory");
    check(dnnl_memory_create(&p->b, &mb, g.engine, DNNL_MEMORY_NONE), "memory");
    check(dnnl_memory_create(&p->c, &mc, g.engine, DNNL_MEMORY_NONE), "memory");
    check(dnnl_memory_create(&p->d, &md, g.engine, DNNL_MEMORY_NONE), "memory");
    const dnnl_memory_desc_t *mp = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    check(dnnl_memory_create(&p->pad, mp, g.engine, DNNL_MEMORY_NONE), "memory");
    dnnl_primitive_desc_destroy(pd);
    if (po) dnnl_post_ops_destroy(po);
    dnnl_primitive_attr_destroy(attr);
    g.nprims++;
    return p;
}

uint16_t *mm_pack(int slot, const float *src, int rows, int cols, int ld) {
    MIMIC_CHECK(slot >= 0 && slot < MM_SLOTS);
    uint16_t *dst = scratch(slot, (size_t)rows * cols);
    pack_bf16(dst, src, rows, cols, ld);
    return dst;
}

/* Rows per block of mm_pack_colsum's partial sums. */
#define COLSUM_ROWS 64

/* mm_pack_colsum's rows as stored */
static const float *rows_as_stored(void *ctx, int r0, int n, int cols, float *tmp) {
    (void)n;
    (void)tmp;
    return (const float *)ctx + (size_t)r0 * cols;
}

uint16_t *mm_pack_colsum(int slot, const float *src, int rows, int cols, float *colsum) {
    MIMIC_CHECK(slot >= 0 && slot < MM_SLOTS);
    if (!colsum) {
        uint16_t *dst = scratch(slot, (size_t)rows * cols);
        pack_bf16(dst, src, rows, cols, cols);
        return dst;
    }
    return mm_pack_rows(slot, rows, cols, colsum, rows_as_stored, (void *)src);
}

uint16_t *mm_pack_rows(int slot, int rows, int cols, float *colsum, mm_rows_fn make, void *ctx) {
    MIMIC_CHECK(slot >= 0 && slot < MM_SLOTS);
    uint16_t *dst = scratch(slot, (size_t)rows * cols);
    int nb = (rows + COLSUM_ROWS - 1) / COLSUM_ROWS;
    int par = (long)rows * cols > (1L << 15);
    int nt = par ? omp_get_max_threads() : 1;
    /* one row of partial sums a block, and a block of rows a thread for make, in the
     * engine's own float buffers */
    float *part = colsum ? (float *)scratch(MM_SLOTS + 1 + MM_FSLOTS, 2 * (size_t)nb * cols)
                         : NULL;
    float *tmp = (float *)scratch(MM_SLOTS + 2 + MM_FSLOTS, 2 * (size_t)nt * COLSUM_ROWS * cols);
#pragma omp parallel for schedule(static) num_threads(nt) if (par)
    for (int k = 0; k < nb; k++) {
        int r0 = k * COLSUM_ROWS, n = r0 + COLSUM_ROWS < rows ? COLSUM_ROWS : rows - r0;
        float *t = tmp + (size_t)omp_get_thread_num() * COLSUM_ROWS * cols;
        const float *blk = make(ctx, r0, n, cols, t);
        mm_to_bf16(dst + (size_t)r0 * cols, blk, (long)n * cols);
        if (!part) continue;
        float *ps = part + (size_t)k * cols;
        memcpy(ps, blk, (size_t)cols * sizeof *ps);
        for (int r = 1; r < n; r++) {
            const float *row = blk + (size_t)r * cols;
            for (int c = 0; c < cols; c++)
                ps[c] += row[c];
        }
    }
    if (!colsum) return dst;
    /* the blocks in order, columns split across the threads */
    int nc = (cols + 63) / 64;
#pragma omp parallel for schedule(static) if (par && nc > 1)
    for (int j = 0; j < nc; j++) {
        int c0 = j * 64, c1 = c0 + 64 < cols ? c0 + 64 : cols;
        float acc[64] = {0};
        for (int k = 0; k < nb; k++) {
            const float *ps = part + (size_t)k * cols;
            for (int c = c0; c < c1; c++)
                acc[c - c0] += ps[c];
        }
        for (int c = c0; c < c1; c++)
            colsum[c] += acc[c - c0];
    }
    return dst;
}

static void run_bf16(int batch, int ta, int tb, int M, int N, int K, const uint16_t *A,
                     const uint16_t *B, const float *bias, float beta, float *C, int ldc) {
    if (M == 0 || N == 0 || batch == 0) return;
    if (K == 0) { /* oneDNN refuses empty products: C = bias + beta C */
        for (long m = 0; m < (long)M * batch; m++)
            for (int n = 0; n < N; n++)
                C[(size_t)m * ldc + n] = (bias ? bias[n] : 0.0f) + (beta != 0.0f ? C[(size_t)m * ldc + n] : 0.0f);
        return;
    }
    MIMIC_CHECK(beta == 0.0f || beta == 1.0f);
    mm_prim_t *p = prim_for(batch, ta, tb, M, N, K, ldc, beta != 0.0f, bias != NULL);
    check(dnnl_memory_set_data_handle(p->a, (void *)A), "set handle");
    check(dnnl_memory_set_data_handle(p->b, (void *)B), "set handle");
    check(dnnl_memory_set_data_handle(p->c, C), "set handle");
    const dnnl_memory_desc_t *mp;
    check(dnnl_memory_get_memory_desc(p->pad, &mp), "scratchpad desc");
    size_t padb = dnnl_memory_desc_get_size(mp);
    check(dnnl_memory_set_data_handle(p->pad, scratch(MM_SLOTS, padb / sizeof(uint16_t) + 1)),
          "set handle");
    if (bias) check(dnnl_memory_set_data_handle(p->d, (void *)bias), "set handle");
    dnnl_exec_arg_t args[5] = {{DNNL_ARG_SRC, p->a},
                               {DNNL_ARG_WEIGHTS, p->b},
                               {DNNL_ARG_DST, p->c},
                               {DNNL_ARG_SCRATCHPAD, p->pad},
                               {DNNL_ARG_BIAS, p->d}};
    check(dnnl_primitive_execute(p->prim, g.stream, bias ? 5 : 4, args), "matmul");
    check(dnnl_stream_wait(g.stream), "stream wait");
}

void mm_gemm_bf16_bias(int ta, int tb, int M, int N, int K, const uint16_t *A,
                       const uint16_t *B, const float *bias, float beta, float *C, int ldc) {
    run_bf16(1, ta, tb, M, N, K, A, B, bias, beta, C, ldc);
}

void mm_gemm_bf16(int ta, int tb, int M, int N, int K, const uint16_t *A, const uint16_t *B,
                  float beta, float *C, int ldc) {
    run_bf16(1, ta, tb, M, N, K, A, B, NULL, beta, C, ldc);
}

void mm_bmm_bf16(int batch, int ta, int tb, int M, int N, int K, const uint16_t *A,
                 const uint16_t *B, float beta, float *C) {
    run_bf16(batch, ta, tb, M, N, K, A, B, NULL, beta, C, N);
}

uint16_t *mm_buffer(int slot, size_t n) {
    MIMIC_CHECK(slot >= 0 && slot < MM_SLOTS);
    return scratch(slot, n);
}

float *mm_fbuffer(int slot, size_t n) {
    MIMIC_CHECK(slot >= 0 && slot < MM_FSLOTS);
    return (float *)scratch(MM_SLOTS + 1 + slot, 2 * n);
}

void mm_gemm(int ta, int tb, int M, int N, int K, const float *A, int lda, const float *B,
             int ldb, float beta, float *C, int ldc) {
    if (g_precision == MM_FP32 || (beta != 0.0f && beta != 1.0f)) {
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    if (M == 0 || N == 0) return;
    const uint16_t *a16 = mm_pack(0, A, ta ? K : M, ta ? M : K, lda);
    const uint16_t *b16 = mm_pack(1, B, tb ? N : K, tb ? K : N, ldb);
    mm_gemm_bf16(ta, tb, M, N, K, a16, b16, beta, C, ldc);
}

void mm_release(void) {
    for (int i = 0; i < g.nprims; i++) {
        dnnl_primitive_destroy(g.prims[i].prim);
        dnnl_memory_destroy(g.prims[i].a);
        dnnl_memory_destroy(g.prims[i].b);
        dnnl_memory_destroy(g.prims[i].c);
        dnnl_memory_destroy(g.prims[i].pad);
        dnnl_memory_destroy(g.prims[i].d);
    }
    free(g.prims);
    for (int i = 0; i < MM_SLOTS + 1 + MM_FSLOTS + 2; i++) mimic_free(g.buf[i]);
    if (g.stream) dnnl_stream_destroy(g.stream);
    if (g.engine) dnnl_engine_destroy(g.engine);
    memset(&g, 0, sizeof g);
}
