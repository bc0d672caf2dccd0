// TIMEOUT: 60
/* test_safetensors — the safetensors writer/reader: a roundtrip over several dtypes,
 * metadata and names that need JSON escapes; the fixtures written by Python
 * (tests/golden/ fixtures); and a catalogue of malformed files, each of which must
 * fail with MIMIC_EFORMAT and a message naming the file, plus random byte mutations and
 * every truncation of a valid file (run it under MIMIC_SANITIZE to catch overreads). */
#define _POSIX_C_SOURCE 200809L
#include "common.h"
#include "json.h"
#include "rng.h"
#include "safetensors.h"
#include "testutil.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char path_buf[4096];

static const char *tmp_path(const char *name) {
    snprintf(path_buf, sizeof path_buf, "%s/%s", testutil_tmpdir(), name);
    return path_buf;
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *fp = fopen(path, "wb");
    MIMIC_CHECK(fp != NULL);
    MIMIC_CHECK(n == 0 || fwrite(data, 1, n, fp) == n);
    MIMIC_CHECK(fclose(fp) == 0);
}

static unsigned char *read_bytes(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    MIMIC_CHECK(fp != NULL);
    fseek(fp, 0, SEEK_END);
    long len = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)len + 1);
    MIMIC_CHECK(b && fread(b, 1, (size_t)len, fp) == (size_t)len);
    fclose(fp);
    *n = (size_t)len;
    return b;
}

/* A file whose 8-byte prefix says `hlen`, followed by `json` and `data_len` zero bytes. */
static void write_with_header(const char *path, uint64_t hlen, const char *json, size_t data_len) {
    size_t jl = strlen(json), n = 8 + jl + data_len;
    unsigned char *b = calloc(1, n);
    MIMIC_CHECK(b != NULL);
    for (int k = 0; k < 8; k++)
        b[k] = (unsigned char)(hlen >> (8 * k));
    memcpy(b + 8, json, jl);
    write_bytes(path, b, n);
    free(b);
}

static int open_quiet(const char *path, st_file_t **f) {
    mimic_set_quiet(1);
    int rc = st_open(f, path);
    mimic_set_quiet(0);
    return rc;
}

/* Opening must fail with MIMIC_EFORMAT, leave *f NULL and name the file and `want`. */
static void expect_bad_file(const char *label, const char *path, const char *want) {
    st_file_t *f = (st_file_t *)&f; /* not NULL, so we see st_open clearing it */
    int rc = open_quiet(path, &f);
    const char *msg = mimic_last_error();
    int ok = rc == MIMIC_EFORMAT && f == NULL && strstr(msg, path) && !strchr(msg, '\n') &&
             (!want || strstr(msg, want));
    printf("%-28s %s  [%s]\n", label, ok ? "rejected ok" : "FAIL", msg);
    T_CHECK(rc == MIMIC_EFORMAT);
    T_CHECK(f == NULL);
    T_CHECK(strstr(msg, path) != NULL);
    T_CHECK(strchr(msg, '\n') == NULL);
    if (want) T_CHECK(strstr(msg, want) != NULL);
    if (f) st_close(&f);
    unlink(path);
}

static void expect_bad_json(const char *label, const char *json, size_t data_len,
                            const char *want) {
    const char *path = tmp_path("bad.safetensors");
    write_with_header(path, strlen(json), json, data_len);
    expect_bad_file(label, path, want);
}

static void expect_good_json(const char *label, const char *json, size_t data_len) {
    const char *path = tmp_path("good.safetensors");
    write_with_header(path, strlen(json), json, data_len);
    st_file_t *f = NULL;
    int rc = open_quiet(path, &f);
    printf("%-28s %s\n", label, rc == 0 ? "accepted ok" : mimic_last_error());
    T_CHECK(rc == 0 && f != NULL);
    st_close(&f);
    T_CHECK(f == NULL);
    unlink(path);
}

static int no_temp_files_left(void) {
    DIR *d = opendir(testutil_tmpdir());
    MIMIC_CHECK(d != NULL);
    int clean = 1;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strstr(e->d_name, ".tmp.")) clean = 0;
    closedir(d);
    return clean;
}

/* ------------------------------------------------------------------ roundtrip */

static const char *names[] = {
    "blocks.0.attn.qkv.weight",
    "a\"quote",
    "back\\slash",
    "new\nline\ttab",
    "unicode-\xc3\xa9\xe2\x82\xac",
    "ids",
    "counts",
    "bytes",
    "after_bytes",
    "scalar",
    "empty",
};

static void test_roundtrip(void) {
    float w[6] = {1.5f, -2.25f, 3.0f, 1e-30f, -0.0f, 65504.0f};
    float q[4] = {0.1f, 0.2f, 0.3f, 0.4f}, r[2] = {-7.0f, 8.0f}, s[1] = {4.0f};
    int64_t ids[4] = {0, -1, INT64_MAX, INT64_MIN};
    int32_t counts[8] = {1, 2, 3, 4, -5, 6, 7, INT32_MIN};
    uint8_t bytes[5] = {0, 1, 127, 128, 255};
    float after[3] = {3.25f, -1.0f, 0.5f};
    int64_t sh_w[2] = {2, 3}, sh_q[1] = {4}, sh_r[2] = {1, 2}, sh_s[1] = {1}, sh_ids[1] = {4},
            sh_c[3] = {2, 2, 2}, sh_b[1] = {5}, sh_after[1] = {3}, sh_empty[2] = {0, 4};

    st_writer_t *w8 = st_writer_new();
    T_CHECK(w8 != NULL);
    T_CHECK(st_writer_add(w8, names[0], "F32", sh_w, 2, w) == 0);
    T_CHECK(st_writer_add(w8, names[1], "F32", sh_q, 1, q) == 0);
    T_CHECK(st_writer_add(w8, names[2], "F32", sh_r, 2, r) == 0);
    T_CHECK(st_writer_add(w8, names[3], "F32", sh_s, 1, s) == 0);
    T_CHECK(st_writer_add(w8, names[4], "F32", sh_s, 1, s) == 0);
    T_CHECK(st_writer_add(w8, names[5], "I64", sh_ids, 1, ids) == 0);
    T_CHECK(st_writer_add(w8, names[6], "I32", sh_c, 3, counts) == 0);
    T_CHECK(st_writer_add(w8, names[7], "U8", sh_b, 1, bytes) == 0);
    T_CHECK(st_writer_add(w8, names[8], "F32", sh_after, 1, after) == 0); /* misaligned */
    T_CHECK(st_writer_add(w8, names[9], "F32", NULL, 0, s) == 0);
    T_CHECK(st_writer_add(w8, names[10], "F32", sh_empty, 2, NULL) == 0);
    T_CHECK(st_writer_meta(w8, "format", "mimicps-test") == 0);
    T_CHECK(st_writer_meta(w8, "version", "0") == 0);
    T_CHECK(st_writer_meta(w8, "version", "1") == 0); /* replaces */
    T_CHECK(st_writer_meta(w8, "note \"quoted\"", "line1\nline2\\") == 0);

    /* Writer argument errors. */
    mimic_set_quiet(1);
    T_CHECK(st_writer_add(w8, names[0], "F32", sh_w, 2, w) == MIMIC_EINVAL);
    T_CHECK(st_writer_add(w8, "x", "F31", sh_w, 2, w) == MIMIC_EINVAL);
    int64_t neg[1] = {-2}, huge[3] = {INT64_MAX / 2, 4, 4};
    T_CHECK(st_writer_add(w8, "x", "F32", neg, 1, w) == MIMIC_EINVAL);
    T_CHECK(st_writer_add(w8, "x", "F32", huge, 3, w) == MIMIC_EINVAL);
    T_CHECK(st_writer_add(w8, "", "F32", sh_w, 2, w) == MIMIC_EINVAL);
    T_CHECK(st_writer_add(w8, "__metadata__", "F32", sh_w, 2, w) == MIMIC_EINVAL);
    T_CHECK(st_writer_add(w8, "bad\xff", "F32", sh_w, 2, w) == MIMIC_EINVAL);
    T_CHECK(st_writer_add(w8, "x", "F32", sh_w, 9, w) == MIMIC_EINVAL);
    const char *nodir = "/nonexistent-mimic-dir/x.safetensors";
    T_CHECK(st_writer_save(w8, nodir) == MIMIC_EIO);
    T_CHECK(strstr(mimic_last_error(), nodir) != NULL);
    mimic_set_quiet(0);

    char path[4096];
    snprintf(path, sizeof path, "%s", tmp_path("roundtrip.safetensors"));
    write_bytes(path, "old contents", 12); /* save must replace it */
    T_CHECK(st_writer_save(w8, path) == 0);
    T_CHECK(st_writer_save(w8, path) == 0); /* and again over its own output */
    T_CHECK(no_temp_files_left());
    /* A save that fails at the rename (the target is a directory) cleans up after itself. */
    char dirpath[4096];
    snprintf(dirpath, sizeof dirpath, "%s", tmp_path("a-directory"));
    T_CHECK(mkdir(dirpath, 0700) == 0);
    mimic_set_quiet(1);
    T_CHECK(st_writer_save(w8, dirpath) == MIMIC_EIO);
    mimic_set_quiet(0);
    T_CHECK(strstr(mimic_last_error(), dirpath) != NULL);
    T_CHECK(no_temp_files_left());
    T_CHECK(rmdir(dirpath) == 0);
    st_writer_destroy(&w8);
    T_CHECK(w8 == NULL);
    st_writer_destroy(&w8); /* no-op */

    size_t n;
    unsigned char *raw = read_bytes(path, &n);
    uint64_t hlen = 0;
    for (int k = 7; k >= 0; k--)
        hlen = (hlen << 8) | raw[k];
    T_CHECK((8 + hlen) % 8 == 0);
    T_CHECK(raw[8] == '{');
    T_CHECK(n == 8 + hlen + 24 + 16 + 8 + 4 + 4 + 32 + 32 + 5 + 12 + 4);
    free(raw);

    st_file_t *f = NULL;
    T_CHECK(st_open(&f, path) == 0);
    if (!f) return;
    T_CHECK(strcmp(st_path(f), path) == 0);
    T_CHECK(st_count(f) == 11);
    for (int k = 0; k < st_count(f) && k < 11; k++) {
        const st_tensor_t *t = st_at(f, k);
        T_CHECK(strcmp(t->name, names[k]) == 0); /* order added, names unescaped */
        T_CHECK(st_find(f, names[k]) == t);
        T_CHECK((uintptr_t)t->data % st_dtype_size(t->dtype) == 0);
    }
    T_CHECK(st_at(f, 11) == NULL && st_at(f, -1) == NULL);
    T_CHECK(st_find(f, "missing") == NULL);
    T_CHECK(strcmp(st_meta(f, "format"), "mimicps-test") == 0);
    T_CHECK(strcmp(st_meta(f, "version"), "1") == 0);
    T_CHECK(strcmp(st_meta(f, "note \"quoted\""), "line1\nline2\\") == 0);
    T_CHECK(st_meta(f, "absent") == NULL);

    const st_tensor_t *t = st_find(f, names[0]);
    T_CHECK(t->dtype == ST_F32 && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3);
    T_CHECK(t->numel == 6 && t->nbytes == 24 && memcmp(t->data, w, 24) == 0);
    t = st_find(f, "ids");
    T_CHECK(t->dtype == ST_I64 && t->ndim == 1 && memcmp(t->data, ids, sizeof ids) == 0);
    t = st_find(f, "counts");
    T_CHECK(t->dtype == ST_I32 && t->ndim == 3 && t->shape[2] == 2);
    T_CHECK(memcmp(t->data, counts, sizeof counts) == 0);
    t = st_find(f, "bytes");
    T_CHECK(t->dtype == ST_U8 && t->nbytes == 5 && memcmp(t->data, bytes, 5) == 0);
    t = st_find(f, "after_bytes");
    T_CHECK(t->dtype == ST_F32 && memcmp(t->data, after, sizeof after) == 0);
    t = st_find(f, "scalar");
    T_CHECK(t->ndim == 0 && t->numel == 1 && *(const float *)t->data == 4.0f);
    t = st_find(f, "empty");
    T_CHECK(t->ndim == 2 && t->numel == 0 && t->nbytes == 0);
    t = st_find(f, names[4]);
    T_CHECK(t && *(const float *)t->data == 4.0f);

    float got[6] = {0};
    T_CHECK(st_read_f32(f, names[0], got, sh_w, 2) == 0);
    T_CHECK(memcmp(got, w, sizeof w) == 0);
    T_CHECK(st_read_f32(f, "scalar", got, NULL, 0) == 0 && got[0] == 4.0f);
    int64_t wrong[2] = {3, 2};
    mimic_set_quiet(1);
    T_CHECK(st_read_f32(f, names[0], got, wrong, 2) == MIMIC_ESHAPE);
    const char *msg = mimic_last_error();
    T_CHECK(strstr(msg, path) && strstr(msg, "[2,3]") && strstr(msg, "[3,2]") &&
            strstr(msg, "qkv"));
    T_CHECK(st_read_f32(f, names[0], got, sh_w, 1) == MIMIC_ESHAPE);
    T_CHECK(st_read_f32(f, "ids", got, sh_ids, 1) == MIMIC_EFORMAT);
    T_CHECK(strstr(mimic_last_error(), "I64") != NULL);
    T_CHECK(st_read_f32(f, "nope", got, sh_ids, 1) == MIMIC_EFORMAT);
    T_CHECK(strstr(mimic_last_error(), "nope") != NULL);
    mimic_set_quiet(0);
    st_close(&f);
    T_CHECK(f == NULL);
    st_close(&f); /* no-op */

    /* An empty writer still makes a valid file. */
    st_writer_t *e = st_writer_new();
    const char *epath = tmp_path("empty.safetensors");
    T_CHECK(st_writer_save(e, epath) == 0);
    st_writer_destroy(&e);
    T_CHECK(st_open(&f, epath) == 0 && st_count(f) == 0);
    st_close(&f);
    unlink(epath);
    printf("roundtrip: 11 tensors, 5 dtypes, escaped names and metadata ok\n");
}

/* ------------------------------------------------------------------ python fixtures */

static void check_golden_file(const char *rel, const char *tensor, const int64_t *shape, int ndim,
                              int expect_count) {
    char path[4096];
    snprintf(path, sizeof path, "%s", testutil_src_path(rel));
    st_file_t *f = NULL;
    int rc = st_open(&f, path);
    T_CHECK(rc == 0);
    if (rc) return;
    T_CHECK(st_meta(f, "format") && strcmp(st_meta(f, "format"), "mimicps-golden") == 0);
    T_CHECK(st_meta(f, "version") && strcmp(st_meta(f, "version"), "1") == 0);
    T_CHECK(st_count(f) == expect_count);
    const st_tensor_t *t = st_find(f, tensor);
    T_CHECK(t != NULL);
    if (t) {
        float *buf = malloc(t->nbytes + 4);
        T_CHECK(st_read_f32(f, tensor, buf, shape, ndim) == 0);
        int finite = 1;
        for (int64_t k = 0; k < t->numel; k++)
            finite &= buf[k] == buf[k] && buf[k] - buf[k] == 0;
        T_CHECK(finite);
        free(buf);
    }
    printf("%s: %d tensors, %s ok\n", rel, st_count(f), tensor);
    st_close(&f);
}

static void test_python_fixtures(void) {
    /* Tiny MAE, depth 2, decoder depth 1: 12 tensors per block; the two pos embeds are
     * stored with the weights but are not trained, so they have no grad/param entry. */
    const int n_weights = 4 + 12 * 2 + 2 + 2 + 2 + 12 * 1 + 2 + 2;
    int64_t pw[4] = {32, 3, 4, 4}, img[4] = {3, 3, 16, 16}, pred[3] = {3, 16, 48};
    int64_t pos[3] = {1, 17, 32}, loss[1] = {1}, qkv[2] = {72, 24};
    check_golden_file("tests/golden/mae_tiny_weights.safetensors", "patch_embed.proj.weight", pw, 4,
                      n_weights);
    check_golden_file("tests/golden/mae_tiny_weights.safetensors", "pos_embed", pos, 3, n_weights);
    check_golden_file("tests/golden/mae_tiny_batch.safetensors", "images", img, 4, 2);
    /* loss, pred, mask, latent, target, ids_shuffle (I64) + one grad per trainable */
    check_golden_file("tests/golden/mae_tiny_expect.safetensors", "loss", loss, 1,
                      6 + n_weights - 2);
    check_golden_file("tests/golden/mae_tiny_expect.safetensors", "pred", pred, 3,
                      6 + n_weights - 2);
    /* param.<name> and delta.<name> per trainable tensor */
    check_golden_file("tests/golden/adamw_expect.safetensors",
                      "param.decoder_blocks.0.attn.qkv.weight", qkv, 2, 2 * (n_weights - 2));
    check_golden_file("tests/golden/adamw_expect.safetensors",
                      "delta.decoder_blocks.0.attn.qkv.weight", qkv, 2, 2 * (n_weights - 2));

    /* The fixed sin-cos table: row 0 (cls) is zero; patch (0,0) has sin 0 / cos 1. */
    st_file_t *f = NULL;
    if (st_open(&f, testutil_src_path("tests/golden/mae_tiny_weights.safetensors")) != 0) return;
    const st_tensor_t *t = st_find(f, "pos_embed");
    const float *pe = t ? t->data : NULL;
    T_CHECK(pe != NULL);
    if (pe) {
        int ok = 1;
        for (int d = 0; d < 32; d++)
            ok &= pe[d] == 0.0f;
        for (int d = 0; d < 32; d++)
            ok &= pe[32 + d] == ((d % 16) < 8 ? 0.0f : 1.0f);
        T_CHECK(ok);
    }
    /* Rewriting the Python file through the C writer reproduces it byte for byte (without
     * the checksums, which the Python writer does not add). */
    st_writer_t *w = st_writer_new();
    st_writer_checksums(w, 0);
    for (int k = 0; k < st_meta_count(f); k++) {
        const char *key = NULL, *val = st_meta_at(f, k, &key);
        T_CHECK(val && st_writer_meta(w, key, val) == 0);
    }
    T_CHECK(st_meta_at(f, st_meta_count(f), NULL) == NULL);
    for (int k = 0; k < st_count(f); k++) {
        const st_tensor_t *x = st_at(f, k);
        T_CHECK(st_writer_add(w, x->name, st_dtype_name(x->dtype), x->shape, x->ndim, x->data) ==
                0);
    }
    const char *copy = tmp_path("copy.safetensors");
    T_CHECK(st_writer_save(w, copy) == 0);
    st_writer_destroy(&w);
    size_t na, nb;
    unsigned char *a =
        read_bytes(testutil_src_path("tests/golden/mae_tiny_weights.safetensors"), &na);
    unsigned char *b = read_bytes(copy, &nb);
    T_CHECK(na == nb && memcmp(a, b, na) == 0);
    printf("C writer reproduces the Python-written weights file byte for byte: %s\n",
           na == nb && memcmp(a, b, na) == 0 ? "ok" : "FAIL");
    free(a);
    free(b);
    unlink(copy);
    /* With checksums (the default): one byte changed in place anywhere in a tensor's data
     * is refused at open, naming the tensor; the untouched file opens. */
    w = st_writer_new();
    for (int k = 0; k < st_count(f); k++) {
        const st_tensor_t *x = st_at(f, k);
        T_CHECK(st_writer_add(w, x->name, st_dtype_name(x->dtype), x->shape, x->ndim, x->data) ==
                0);
    }
    T_CHECK(st_writer_save(w, copy) == 0);
    st_writer_destroy(&w);
    st_file_t *g = NULL;
    T_CHECK(st_open(&g, copy) == 0 && g && st_meta(g, "crc32.cls_token"));
    st_close(&g);
    b = read_bytes(copy, &nb);
    int refused = 0, tries = 0;
    for (size_t at = nb - 1; b && at > nb / 2; at -= nb / 13, tries++) {
        b[at] ^= 0x5a;
        FILE *o = fopen(copy, "wb");
        fwrite(b, 1, nb, o);
        fclose(o);
        mimic_set_quiet(1);
        int rc = st_open(&g, copy);
        mimic_set_quiet(0);
        refused += rc == MIMIC_EFORMAT && strstr(mimic_last_error(), "checksum") &&
                   strstr(mimic_last_error(), "corrupt");
        st_close(&g);
        b[at] ^= 0x5a;
    }
    printf("a byte flipped in the data (%d places): refused with the tensor named %d times\n",
           tries, refused);
    T_CHECK(tries > 3 && refused == tries);
    free(b);
    unlink(copy);

    const st_tensor_t *ids = NULL;
    st_file_t *e = NULL;
    if (st_open(&e, testutil_src_path("tests/golden/mae_tiny_expect.safetensors")) == 0) {
        ids = st_find(e, "ids_shuffle");
        T_CHECK(ids && ids->dtype == ST_I64 && ids->ndim == 2 && ids->shape[1] == 16);
        st_close(&e);
    }
    st_close(&f);
}

/* ------------------------------------------------------------------ malformed files */

static void test_malformed(void) {
    const char *path = tmp_path("bad.safetensors");
    write_bytes(path, "", 0);
    expect_bad_file("empty file", path, "too short");
    write_bytes(path, "\x02\0\0\0\0\0\0", 7);
    expect_bad_file("7 bytes", path, "too short");
    write_with_header(path, 64, "{}", 0);
    expect_bad_file("header longer than file", path, "exceeds the file");
    write_with_header(path, 1ULL << 63, "{}", 0);
    expect_bad_file("header length 2^63", path, "100 MB");
    write_with_header(path, UINT64_MAX, "{}", 0);
    expect_bad_file("header length 2^64-1", path, "100 MB");
    write_with_header(path, 101u << 20, "{}", 0);
    expect_bad_file("header length 101 MB", path, "100 MB");
    write_with_header(path, 0, "", 16);
    expect_bad_file("header length 0", path, "header JSON");
    write_bytes(path, "\x04\0\0\0\0\0\0\0{}\0\0", 12);
    expect_bad_file("NUL padding", path, "header JSON");

    expect_bad_json("non-JSON header", "hello world!", 0, "header JSON");
    expect_bad_json("truncated JSON", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_off", 4,
                    "header JSON");
    expect_bad_json("unterminated string", "{\"a", 0, "unterminated string");
    expect_bad_json("header is an array", "[1,2]", 0, "not a JSON object");
    expect_bad_json("trailing garbage",
                    "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":"
                    "[0,4]}}x",
                    4, "trailing");
    expect_bad_json("two objects", "{} {}", 0, "trailing");
    expect_bad_json("trailing comma",
                    "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":"
                    "[0,4]},}",
                    4, "header JSON");
    expect_bad_json("offsets out of range",
                    "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],"
                    "\"data_offsets\":[0,8]}}",
                    4, "outside");
    expect_bad_json("end < begin",
                    "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],"
                    "\"data_offsets\":[8,4]}}",
                    8, "end before begin");
    expect_bad_json("size != shape",
                    "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],"
                    "\"data_offsets\":[0,4]}}",
                    8, "needs 8");
    expect_bad_json("size != dtype",
                    "{\"a\":{\"dtype\":\"I64\",\"shape\":[2],"
                    "\"data_offsets\":[0,8]}}",
                    16, "needs 16");
    expect_bad_json("overlapping tensors",
                    "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],"
                    "\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],"
                    "\"data_offsets\":[4,12]}}",
                    12, "overlap");
    expect_bad_json("identical ranges",
                    "{\"b\":{\"dtype\":\"U8\",\"shape\":[4],"
                    "\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"I32\",\"shape\":[1],"
                    "\"data_offsets\":[0,4]}}",
                    4, "overlap");
    expect_bad_json("unknown dtype",
                    "{\"a\":{\"dtype\":\"F31\",\"shape\":[1],"
                    "\"data_offsets\":[0,4]}}",
                    4, "dtype");
    expect_bad_json("lowercase dtype",
                    "{\"a\":{\"dtype\":\"f32\",\"shape\":[1],"
                    "\"data_offsets\":[0,4]}}",
                    4, "dtype");
    expect_bad_json("dtype not a string",
                    "{\"a\":{\"dtype\":4,\"shape\":[1],"
                    "\"data_offsets\":[0,4]}}",
                    4, "dtype");
    expect_bad_json("missing dtype", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "dtype");
    expect_bad_json("missing shape", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4,
                    "shape");
    expect_bad_json("missing data_offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4,
                    "data_offsets");
    expect_bad_json("negative shape",
                    "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],"
                    "\"data_offsets\":[0,4]}}",
                    4, "shape[0]");
    expect_bad_json("fractional shape",
                    "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.0],"
                    "\"data_offsets\":[0,4]}}",
                    4, "shape[0]");
    expect_bad_json("shape > int64",
                    "{\"a\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],"
                    "\"data_offsets\":[0,4]}}",
                    4, "shape[0]");
    expect_bad_json("shape product overflow",
                    "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,"
                    "4294967296,4294967296],\"data_offsets\":[0,0]}}",
                    0, "overflow");
    expect_bad_json("shape bytes overflow",
                    "{\"a\":{\"dtype\":\"F64\",\"shape\":"
                    "[4611686018427387904],\"data_offsets\":[0,0]}}",
                    0, "overflow");
    expect_bad_json("overflow to zero",
                    "{\"a\":{\"dtype\":\"U8\",\"shape\":[4294967296,"
                    "4294967296],\"data_offsets\":[0,0]}}",
                    0, "overflow");
    expect_bad_json("9 dims",
                    "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                    "\"data_offsets\":[0,1]}}",
                    1, "shape");
    expect_bad_json("shape not an array",
                    "{\"a\":{\"dtype\":\"U8\",\"shape\":1,"
                    "\"data_offsets\":[0,1]}}",
                    1, "shape");
    expect_bad_json("offsets not a pair",
                    "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],"
                    "\"data_offsets\":[0,1,2]}}",
                    2, "data_offsets");
    expect_bad_json("negative offset",
                    "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],"
                    "\"data_offsets\":[-1,0]}}",
                    2, "data_offsets");
    expect_bad_json("offset 2^64",
                    "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],"
                    "\"data_offsets\":[18446744073709551615,0]}}",
                    2, "data_offsets");
    expect_bad_json("duplicate names",
                    "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],"
                    "\"data_offsets\":[0,1]},\"a\":{\"dtype\":\"U8\",\"shape\":[1],"
                    "\"data_offsets\":[1,2]}}",
                    2, "duplicate key \"a\"");
    expect_bad_json("duplicate via escape",
                    "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],"
                    "\"data_offsets\":[0,1]},\"\\u0061\":{\"dtype\":\"U8\",\"shape\":[1],"
                    "\"data_offsets\":[1,2]}}",
                    2, "duplicate");
    expect_bad_json("duplicate field",
                    "{\"a\":{\"dtype\":\"U8\",\"dtype\":\"U8\",\"shape\":[1],"
                    "\"data_offsets\":[0,1]}}",
                    1, "duplicate");
    expect_bad_json("unknown field",
                    "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],"
                    "\"data_offsets\":[0,1],\"offsets\":[0,1]}}",
                    1, "unknown field");
    expect_bad_json("entry not an object", "{\"a\":[1]}", 0, "not an object");
    expect_bad_json("empty name",
                    "{\"\":{\"dtype\":\"U8\",\"shape\":[1],"
                    "\"data_offsets\":[0,1]}}",
                    1, "empty");
    expect_bad_json("NUL in name",
                    "{\"a\\u0000b\":{\"dtype\":\"U8\",\"shape\":[1],"
                    "\"data_offsets\":[0,1]}}",
                    1, "NUL");
    expect_bad_json("invalid UTF-8 name",
                    "{\"a\xff\":{\"dtype\":\"U8\",\"shape\":[1],"
                    "\"data_offsets\":[0,1]}}",
                    1, "UTF-8");
    expect_bad_json("overlong UTF-8", "{\"\xc0\xaf\":{}}", 0, "UTF-8");
    expect_bad_json("UTF-8 surrogate", "{\"\xed\xa0\x80\":{}}", 0, "UTF-8");
    expect_bad_json("lone surrogate escape", "{\"\\ud800\":{}}", 0, "surrogate");
    expect_bad_json("bad escape", "{\"\\x41\":{}}", 0, "escape");
    expect_bad_json("raw newline in name", "{\"a\nb\":{}}", 0, "control");
    expect_bad_json("leading zero",
                    "{\"a\":{\"dtype\":\"U8\",\"shape\":[01],"
                    "\"data_offsets\":[0,1]}}",
                    1, "leading zero");
    expect_bad_json("metadata not object", "{\"__metadata__\":[\"x\"]}", 0, "__metadata__");
    expect_bad_json("metadata value number", "{\"__metadata__\":{\"k\":1}}", 0, "\"k\"");
    expect_bad_json("bare literal", "{\"__metadata__\":{\"k\":nul}}", 0, "literal");

    /* Deep nesting must not exhaust the stack. */
    char deep[4200] = "{\"a\":";
    size_t dn = strlen(deep);
    for (int k = 0; k < 2000; k++)
        deep[dn++] = '[';
    for (int k = 0; k < 2000; k++)
        deep[dn++] = ']';
    deep[dn++] = '}';
    deep[dn] = '\0';
    expect_bad_json("2000-deep nesting", deep, 0, "too deep");
    /* beyond jansson's own limit (JSON_PARSER_MAX_DEPTH 2048): its error, in our words */
    static char deeper[6100] = "{\"a\":";
    dn = strlen(deeper);
    for (int k = 0; k < 3000; k++)
        deeper[dn++] = '[';
    for (int k = 0; k < 3000; k++)
        deeper[dn++] = ']';
    deeper[dn++] = '}';
    deeper[dn] = '\0';
    expect_bad_json("3000-deep nesting", deeper, 0, "too deep");
    expect_bad_json("NUL in metadata value", "{\"__metadata__\":{\"k\":\"a\\u0000b\"}}", 0, "NUL");
    expect_bad_json("number 1.", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1.],\"data_offsets\":[0,1]}}", 1,
                    "malformed number");
    expect_bad_json("duplicate key with a newline",
                    "{\"a\\n\":{},\"a\\n\":{}}", 0, "duplicate key \"a\\n\"");

    /* Things the format allows: padding, whitespace, gaps, empty header, no metadata. */
    expect_good_json("space padding",
                     "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],"
                     "\"data_offsets\":[0,1]}}        ",
                     1);
    expect_good_json("whitespace in JSON",
                     " {\n\t\"a\" : { \"shape\" : [ 1 ] , \"dtype\":"
                     "\"U8\", \"data_offsets\": [0, 1] } }\r\n",
                     1);
    expect_good_json("empty object", "{}", 0);
    expect_good_json("gap between tensors",
                     "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],"
                     "\"data_offsets\":[3,4]}}",
                     8);
    expect_good_json("empty tensor inside another",
                     "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],"
                     "\"data_offsets\":[0,4]},\"z\":{\"dtype\":\"F32\",\"shape\":[0,3],"
                     "\"data_offsets\":[2,2]}}",
                     4);

    /* Not a regular file / missing file: i/o errors, still naming the path. */
    st_file_t *f = NULL;
    T_CHECK(open_quiet(testutil_tmpdir(), &f) == MIMIC_EIO && f == NULL);
    T_CHECK(strstr(mimic_last_error(), testutil_tmpdir()) != NULL);
    T_CHECK(open_quiet(tmp_path("does-not-exist"), &f) == MIMIC_EIO && f == NULL);
    T_CHECK(strstr(mimic_last_error(), "does-not-exist") != NULL);
}

/* ------------------------------------------------------------------ mutations */

/* Touches every byte a successfully opened file hands out, so ASan sees any overread. */
static unsigned touch_all(const st_file_t *f) {
    unsigned acc = 0;
    for (int k = 0; k < st_count(f); k++) {
        const st_tensor_t *t = st_at(f, k);
        acc += (unsigned)strlen(t->name);
        for (size_t b = 0; b < t->nbytes; b++)
            acc += ((const unsigned char *)t->data)[b];
    }
    return acc;
}

static void test_mutations(void) {
    size_t n;
    unsigned char *orig = read_bytes(tmp_path("roundtrip.safetensors"), &n);
    unsigned char *buf = malloc(n);
    const char *path = tmp_path("mutant.safetensors");
    uint64_t hlen = 0;
    for (int k = 7; k >= 0; k--)
        hlen = (hlen << 8) | orig[k];
    rng_t r;
    rng_seed(&r, 1234);
    int opened = 0, rejected = 0, other = 0;
    unsigned sink = 0;
    static const char tokens[] = "{}[]\",:0123456789-.eE \\u\xff";
    for (int it = 0; it < 4000; it++) {
        memcpy(buf, orig, n);
        int edits = 1 + (int)rng_below(&r, 4);
        for (int e = 0; e < edits; e++) {
            /* Mostly hit the length prefix and the JSON, where the parsing is. */
            size_t at = rng_below(&r, 10) < 9 ? rng_below(&r, 8 + hlen) : rng_below(&r, n);
            buf[at] = rng_below(&r, 2) ? (unsigned char)rng_u64(&r)
                                       : (unsigned char)tokens[rng_below(&r, sizeof tokens - 1)];
        }
        write_bytes(path, buf, n);
        st_file_t *f = NULL;
        int rc = open_quiet(path, &f);
        if (rc == 0) {
            opened++;
            sink += touch_all(f);
            st_close(&f);
        } else if (rc == MIMIC_EFORMAT && f == NULL) {
            rejected++;
        } else {
            other++;
        }
    }
    printf("mutations: %d opened, %d rejected, %d other (sink %u)\n", opened, rejected, other,
           sink & 1);
    T_CHECK(other == 0);
    T_CHECK(rejected > 3000);

    int trunc_ok = 1;
    for (size_t len = 0; len < n; len++) {
        write_bytes(path, orig, len);
        st_file_t *f = NULL;
        int rc = open_quiet(path, &f);
        if (rc != MIMIC_EFORMAT || f != NULL) {
            trunc_ok = 0;
            printf("truncation to %zu bytes: rc %d\n", len, rc);
            st_close(&f);
        }
    }
    printf("every truncation (%zu lengths) rejected: %s\n", n, trunc_ok ? "ok" : "FAIL");
    T_CHECK(trunc_ok);
    unlink(path);
    free(buf);
    free(orig);
}

int main(void) {
    test_roundtrip();
    test_python_fixtures();
    test_malformed();
    test_mutations();
    unlink(tmp_path("roundtrip.safetensors"));
    rmdir(testutil_tmpdir());
    return testutil_summary("test_safetensors");
}
