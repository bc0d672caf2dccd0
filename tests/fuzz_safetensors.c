/* fuzz_safetensors — libFuzzer target for the safetensors reader: the u64 header
 * length, the header JSON (formats/json.c) and the tensors' dtypes, shapes and
 * data_offsets. The input is the whole file. Every input must be refused with one line
 * naming the file, or open as tensors whose bytes lie inside the file (every byte is
 * read, so AddressSanitizer sees any that does not), that st_find finds by name and
 * st_read_f32 copies, and that st_writer writes to a file which reads back equal.
 * Built as fuzz_safetensors (MIMIC_FUZZ=ON, clang) and as the ctest
 * fuzz_safetensors_replay. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "fuzzutil.h"
#include "safetensors.h"

/* A checksum of every byte of t, so that a tensor pointing outside the file is read. */
static unsigned sum_bytes(const st_tensor_t *t) {
    unsigned sum = 0;
    for (size_t i = 0; i < t->nbytes; i++)
        sum += ((const uint8_t *)t->data)[i];
    return sum;
}

static void check_tensor(const st_file_t *f, const st_tensor_t *t) {
    if (!t->name || st_find(f, t->name) != t) fuzz_fail("safetensors", "st_find misses", t->name);
    int64_t numel = 1;
    for (int d = 0; d < t->ndim; d++)
        numel *= t->shape[d];
    if (numel != t->numel || t->nbytes != (size_t)numel * st_dtype_size(t->dtype))
        fuzz_fail("safetensors", "numel or nbytes disagree with the shape", t->name);
    if (t->nbytes && (uintptr_t)t->data % st_dtype_size(t->dtype) != 0)
        fuzz_fail("safetensors", "tensor data is misaligned", t->name);
    (void)sum_bytes(t);
    if (t->dtype != ST_F32 || t->nbytes > ((size_t)1 << 24)) return;
    float *dst = malloc(t->nbytes ? t->nbytes : 1);
    MIMIC_CHECK(dst != NULL);
    if (st_read_f32(f, t->name, dst, t->shape, t->ndim) != 0 ||
        (t->nbytes && memcmp(dst, t->data, t->nbytes) != 0))
        fuzz_fail("safetensors", "st_read_f32 does not copy the tensor", t->name);
    free(dst);
}

/* Everything f holds, written again with st_writer. */
static int rewrite(const st_file_t *f, const char *path) {
    st_writer_t *w = st_writer_new();
    int rc = w ? 0 : MIMIC_ENOMEM;
    if (w) st_writer_checksums(w, 0); /* the same entries back, no checksums added */
    for (int i = 0; !rc && i < st_count(f); i++) {
        const st_tensor_t *t = st_at(f, i);
        rc = st_writer_add(w, t->name, st_dtype_name(t->dtype), t->shape, t->ndim, t->data);
    }
    for (int i = 0; !rc && i < st_meta_count(f); i++) {
        const char *key, *value = st_meta_at(f, i, &key);
        rc = st_writer_meta(w, key, value);
    }
    if (!rc) rc = st_writer_save(w, path);
    st_writer_destroy(&w);
    return rc;
}

static void check_same(const st_file_t *a, const st_file_t *b) {
    if (st_count(a) != st_count(b) || st_meta_count(a) != st_meta_count(b))
        fuzz_fail("safetensors", "the rewritten file holds other entries", NULL);
    for (int i = 0; i < st_count(a); i++) {
        const st_tensor_t *x = st_at(a, i), *y = st_find(b, x->name);
        if (!y || y->dtype != x->dtype || y->ndim != x->ndim || y->nbytes != x->nbytes ||
            memcmp(y->shape, x->shape, sizeof x->shape[0] * (size_t)x->ndim) != 0 ||
            (x->nbytes && memcmp(x->data, y->data, x->nbytes) != 0))
            fuzz_fail("safetensors", "a tensor changed on rewriting", x->name);
    }
    for (int i = 0; i < st_meta_count(a); i++) {
        const char *key, *value = st_meta_at(a, i, &key), *again = st_meta(b, key);
        if (!again || strcmp(again, value) != 0)
            fuzz_fail("safetensors", "a metadata value changed on rewriting", key);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_path("in.safetensors"), *out = fuzz_path("out.safetensors");
    fuzz_write(path, data, size);
    mimic_set_quiet(1);
    st_file_t *f = NULL, *g = NULL;
    int rc = st_open(&f, path);
    if (rc) {
        fuzz_check_error("safetensors", rc);
        if (!strstr(mimic_last_error(), path))
            fuzz_fail("safetensors", "an error that does not name the file", mimic_last_error());
        return 0;
    }
    for (int i = 0; i < st_count(f); i++)
        check_tensor(f, st_at(f, i));
    for (int i = 0; i < st_meta_count(f); i++) {
        const char *key = NULL, *value = st_meta_at(f, i, &key);
        if (!key || !value || st_meta(f, key) != value)
            fuzz_fail("safetensors", "st_meta does not find a metadata key", key);
    }
    if ((rc = rewrite(f, out)) != 0)
        fuzz_fail("safetensors", "what was read cannot be written", mimic_last_error());
    if ((rc = st_open(&g, out)) != 0)
        fuzz_fail("safetensors", "the rewritten file does not open", mimic_last_error());
    check_same(f, g);
    st_close(&g);
    st_close(&f);
    fuzz_accepted++;
    return 0;
}

#ifdef FUZZ_REPLAY
/* A file saved by st_writer (so the seeds are what checkpoints look like). */
static void seed_written(fuzz_seeds_t *s, int variant) {
    const char *path = fuzz_path("seed.safetensors");
    static const float w[6] = {1, -2, 3.5f, 0, 1e-3f, 7};
    static const int64_t ids[2] = {-1, 1LL << 40};
    static const uint8_t u8[3] = {1, 2, 255};
    const int64_t s23[2] = {2, 3}, s2[1] = {2}, s3[1] = {3}, s0[2] = {0, 4};
    st_writer_t *wr = st_writer_new();
    MIMIC_CHECK(wr != NULL);
    MIMIC_CHECK(st_writer_add(wr, "blocks.0.attn.qkv.weight", "F32", s23, 2, w) == 0);
    if (variant > 0) {
        MIMIC_CHECK(st_writer_add(wr, "step_ids", "I64", s2, 1, ids) == 0);
        MIMIC_CHECK(st_writer_add(wr, "mask", "U8", s3, 1, u8) == 0); /* misaligns what follows */
        MIMIC_CHECK(st_writer_add(wr, "scalar", "F32", NULL, 0, w) == 0);
        MIMIC_CHECK(st_writer_add(wr, "empty", "F16", s0, 2, NULL) == 0);
        MIMIC_CHECK(st_writer_meta(wr, "format", "mimicps") == 0);
        MIMIC_CHECK(st_writer_meta(wr, "step", "12") == 0);
    }
    if (variant > 1) MIMIC_CHECK(st_writer_meta(wr, "name \"q\"\n", "\xc3\xa9t\xc3\xa9") == 0);
    MIMIC_CHECK(st_writer_save(wr, path) == 0);
    st_writer_destroy(&wr);
    FILE *f = fopen(path, "rb");
    uint8_t buf[4096];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    fuzz_seed_add(s, buf, n);
}

/* A header written by hand: the 8-byte length, the JSON, then `data` bytes of zeros. */
static void seed_json(fuzz_seeds_t *s, const char *json, size_t data) {
    uint8_t buf[1024] = {0};
    size_t h = strlen(json);
    for (int k = 0; k < 8; k++)
        buf[k] = (uint8_t)((uint64_t)h >> (8 * k));
    memcpy(buf + 8, json, h);
    fuzz_seed_add(s, buf, 8 + h + data);
}

static void seeds(fuzz_seeds_t *s) {
    for (int v = 0; v < 3; v++)
        seed_written(s, v);
    seed_json(s, "{}", 0);
    seed_json(s, "{\"a\":{\"dtype\":\"BF16\",\"shape\":[1,2],\"data_offsets\":[0,4]},"
                 "\"b\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[8,16]}}",
              16);
    seed_json(s, "{\"__metadata__\":{\"k\":\"\\u00e9\\ud83d\\ude00\"},\"x\":{\"dtype\":\"BOOL\","
                 "\"shape\":[3],\"data_offsets\":[0,3]}} ",
              3);
}

static const char *const dict[] = {
    "{", "}", "[", "]", ":", ",", "\"", "\\u0000", "\\ud800", "\"dtype\"", "\"shape\"",
    "\"data_offsets\"", "\"__metadata__\"", "\"F32\"", "\"F16\"", "\"BF16\"", "\"I64\"",
    "\"U8\"", "\"BOOL\"", "\"F64\"", "1e400", "-0", "9223372036854775807",
    "18446744073709551616", "0.5", "true", "null", NULL};

int main(int argc, char **argv) {
    static const fuzz_target_t t = {"safetensors", seeds, dict, 10000};
    return fuzz_replay_main(&t, argc, argv);
}
#endif
