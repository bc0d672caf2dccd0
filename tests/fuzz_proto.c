/* fuzz_proto — libFuzzer target for the protocol's header decoder, the code that reads
 * bytes from any peer. Every input must be either refused with MIMIC_EFORMAT and a
 * reason, or accepted as a header that passes proto_validate and survives an
 * encode/decode roundtrip unchanged.
 *
 * Built two ways (proto/CMakeLists.txt):
 *  - fuzz_proto (MIMIC_FUZZ=ON, clang): libFuzzer + ASan + UBSan.
 *      ./fuzz_proto_replay --write-seeds corpus && ./fuzz_proto corpus -max_total_time=60
 *  - fuzz_proto_replay (PROTO_FUZZ_REPLAY, any compiler, a ctest): runs the same entry
 *    point over deterministic random and mutated inputs in every CI run, or over the
 *    files named on its command line (to replay a crash found by the fuzzer). */
#define _POSIX_C_SOURCE 200809L
#include "common.h"
#include "fuzzutil.h"
#include "proto.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void die(const char *what, const char *why) {
    fprintf(stderr, "fuzz_proto: %s (%s)\n", what, why ? why : "");
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    proto_hdr_t h, g;
    char why[PROTO_WHY_MAX];
    uint8_t buf[PROTO_HDR_MAX];
    size_t len = 0;
    memset(why, 0x55, sizeof why);
    int rc = proto_decode_hdr(&h, data, size, why, sizeof why);
    if (rc != 0) {
        if (rc != MIMIC_EFORMAT) die("unexpected error code", mimic_strerror(rc));
        if (!memchr(why, '\0', sizeof why) || why[0] == '\0') die("refusal without reason", "");
        return 0;
    }
    if (h.str_len != strlen(h.str)) die("str_len does not match str", h.str);
    if (proto_validate(&h, (size_t)h.nbytes, SIZE_MAX, why, sizeof why) != 0)
        die("accepted header fails proto_validate", why);
    if (h.nbytes < SIZE_MAX && proto_validate(&h, (size_t)h.nbytes + 1, SIZE_MAX, NULL, 0) == 0)
        die("payload one byte longer than n accepted", "");
    if (h.nbytes > 0 && proto_validate(&h, (size_t)h.nbytes, (size_t)h.nbytes - 1, NULL, 0) == 0)
        die("payload above the limit accepted", "");
    if (proto_encode_hdr(&h, buf, sizeof buf, &len, why, sizeof why) != 0)
        die("accepted header does not re-encode", why);
    if (proto_decode_hdr(&g, buf, len, why, sizeof why) != 0)
        die("re-encoded header does not decode", why);
    if (!proto_hdr_equal(&h, &g)) die("roundtrip changed the header", proto_type_name(h.type));
    return 0;
}

#ifdef PROTO_FUZZ_REPLAY

#define NSEEDS (2 * (PROTO_TYPE_COUNT - 1))
#define MAXIN (PROTO_HDR_MAX + 64)


typedef struct {
    uint8_t b[MAXIN];
    size_t n;
} input_t;

static void args(proto_hdr_t *h, uint32_t n, int64_t a0, int64_t a1, int64_t a2, int64_t a3,
                 int64_t a4) {
    const int64_t v[] = {a0, a1, a2, a3, a4};
    h->na = n;
    for (uint32_t i = 0; i < n && i < 5; i++)
        h->a[i] = v[i];
}

/* A valid header of `type`; `rich` adds optional fields. */
static void seed_hdr(proto_hdr_t *h, int type, int rich) {
    proto_hdr_init(h, (proto_type_t)type, rich ? 12 : 0);
    if (rich) h->seq = 77;
    switch (type) {
    case PROTO_REGISTER:
        args(h, 1, rich ? PROTO_ROLE_SERVER : PROTO_ROLE_WORKER, 0, 0, 0, 0);
        if (rich) proto_hdr_set_str(h, "tcp://127.0.0.1:5555");
        break;
    case PROTO_REGISTER_ACK:
        args(h, rich ? 5 : 4, 3, 2, 4, 1, 9);
        if (rich) h->dtype = PROTO_DT_U8, h->nbytes = 30;
        break;
    case PROTO_MEMBERSHIP:
        args(h, 2, 1, 3, 0, 0, 0);
        h->dtype = PROTO_DT_I64, h->nbytes = 3 * PROTO_MEMB_ENTRY;
        break;
    case PROTO_CHUNK_REQ:
        if (rich) args(h, 1, 2, 0, 0, 0, 0);
        break;
    case PROTO_CHUNK:
        args(h, rich ? 5 : 4, 1, 7, 700, 100, PROTO_CHUNK_OK);
        h->dtype = rich ? PROTO_DT_I64 : PROTO_DT_U32;
        h->nbytes = 100 * proto_dtype_size(h->dtype);
        break;
    case PROTO_CHUNK_DONE:
        args(h, 3, 1, 7, 100, 0, 0);
        break;
    case PROTO_PUSH:
    case PROTO_PULL_REPLY:
        h->lo = 1000, h->hi = 1256, h->step = 5;
        h->dtype = rich ? PROTO_DT_BF16 : PROTO_DT_F32; /* cluster.wire */
        h->nbytes = 256 * proto_dtype_size(h->dtype);
        if (type == PROTO_PULL_REPLY || rich) args(h, 1, rich, 0, 0, 0, 0);
        break;
    case PROTO_PUSH_ACK:
        h->lo = 1000, h->hi = 1256, h->step = 6;
        break;
    case PROTO_PULL:
        h->lo = 0, h->hi = 4096;
        args(h, rich ? 3 : 1, rich, 3, PROTO_DT_BF16, 0, 0);
        break;
    case PROTO_QUEUE_PUSH:
        args(h, 2, 8, 16, 0, 0, 0);
        h->dtype = PROTO_DT_F32, h->nbytes = 512;
        if (rich) h->step = 9;
        break;
    case PROTO_QUEUE_PULL:
        args(h, 1, 100, 0, 0, 0, 0);
        if (rich) h->step = 9;
        break;
    case PROTO_QUEUE_REPLY:
        args(h, 5, 108, 8, 16, 100, 4096);
        h->dtype = PROTO_DT_F32, h->nbytes = 512;
        if (rich) h->step = 9;
        break;
    case PROTO_KEYS_PUSH:
        args(h, 2, 4, 32, 0, 0, 0);
        h->dtype = PROTO_DT_F32, h->nbytes = 512;
        if (rich) h->step = 9;
        break;
    case PROTO_KEYS_REPLY:
        args(h, 5, 8, 16, 4, 4, 2);
        h->dtype = PROTO_DT_F32, h->nbytes = 512;
        if (rich) h->step = 9;
        break;
    case PROTO_CKPT:
        h->step = 1000;
        proto_hdr_set_str(h, "/tmp/ckpt");
        break;
    case PROTO_CKPT_DONE:
        h->step = 1000;
        args(h, 1, rich ? MIMIC_EIO : 0, 0, 0, 0, 0);
        break;
    case PROTO_METRICS:
        h->nf = rich ? 3 : 1;
        h->f[0] = 2.5, h->f[1] = 800.0, h->f[2] = 1e-4;
        break;
    case PROTO_ERROR:
        args(h, 2, MIMIC_EFORMAT, PROTO_PUSH, 0, 0, 0);
        proto_hdr_set_str(h, "header field 'n': payload is 1000 bytes but header says 996");
        break;
    case PROTO_ACK:
        args(h, 1, PROTO_LEAVE, 0, 0, 0, 0);
        break;
    default:
        if (rich) h->step = 3, proto_hdr_set_str(h, "bye");
        break;
    }
}

static void make_seeds(input_t *seeds) {
    char why[PROTO_WHY_MAX];
    for (int i = 0; i < NSEEDS; i++) {
        proto_hdr_t h;
        seed_hdr(&h, 1 + i / 2, i & 1);
        if (proto_encode_hdr(&h, seeds[i].b, sizeof seeds[i].b, &seeds[i].n, why, sizeof why))
            die("seed does not encode", why);
    }
}

/* One deterministic mutation of a seed, or fresh random bytes. */
static void mutate(input_t *in, const input_t *seeds) {
    static const uint8_t interesting[] = {0x00, 0x01, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0,
                                          0xbf, 0xc0, 0xc1, 0xc2, 0xca, 0xcb, 0xcc, 0xcf,
                                          0xd3, 0xd9, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xff};
    const input_t *s = &seeds[fuzz_below((size_t)NSEEDS)];
    *in = *s;
    switch (fuzz_below(8)) {
    case 0: /* random bytes */
        in->n = fuzz_below(96);
        for (size_t i = 0; i < in->n; i++)
            in->b[i] = (uint8_t)fuzz_rand();
        if (in->n && (fuzz_rand() & 1)) in->b[0] = (uint8_t)(0x80 | fuzz_below(16));
        break;
    case 1: /* bit flips */
        for (size_t k = 1 + fuzz_below(4); k > 0; k--)
            in->b[fuzz_below(in->n)] ^= (uint8_t)(1u << fuzz_below(8));
        break;
    case 2: /* interesting bytes */
        for (size_t k = 1 + fuzz_below(3); k > 0; k--)
            in->b[fuzz_below(in->n)] = interesting[fuzz_below(sizeof interesting)];
        break;
    case 3: /* truncation */
        in->n = fuzz_below(in->n);
        break;
    case 4: { /* insert random bytes */
        size_t at = fuzz_below(in->n + 1), k = 1 + fuzz_below(9);
        memmove(in->b + at + k, in->b + at, in->n - at);
        for (size_t i = 0; i < k; i++)
            in->b[at + i] = (uint8_t)fuzz_rand();
        in->n += k;
        break;
    }
    case 5: { /* delete a span */
        size_t at = fuzz_below(in->n), k = 1 + fuzz_below(in->n - at);
        memmove(in->b + at, in->b + at + k, in->n - at - k);
        in->n -= k;
        break;
    }
    case 6: { /* splice two seeds */
        const input_t *t = &seeds[fuzz_below((size_t)NSEEDS)];
        size_t cut = fuzz_below(s->n), from = fuzz_below(t->n);
        memcpy(in->b + cut, t->b + from, t->n - from);
        in->n = cut + t->n - from;
        break;
    }
    default: /* overwrite a value with a big or negative integer encoding */ {
        static const uint8_t big[][9] = {{0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
                                         {0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0},
                                         {0xce, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}};
        size_t at = fuzz_below(in->n), w = 1 + fuzz_below(3);
        const uint8_t *v = big[fuzz_below(3)];
        size_t vl = v[0] == 0xce ? 5 : 9;
        if (at + w > in->n) w = in->n - at;
        memmove(in->b + at + vl, in->b + at + w, in->n - at - w);
        memcpy(in->b + at, v, vl);
        in->n += vl - w;
        break;
    }
    }
}

static int run_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return mimic_err(MIMIC_EIO, "%s: cannot open", path);
    static uint8_t buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    LLVMFuzzerTestOneInput(buf, n);
    printf("%s: %zu bytes ok\n", path, n);
    return 0;
}

static int write_seeds(const char *dir, const input_t *seeds) {
    for (int i = 0; i < NSEEDS; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/seed-%02d-%s", dir, i, proto_type_name(1 + i / 2));
        FILE *f = fopen(path, "wb");
        if (!f) return mimic_err(MIMIC_EIO, "%s: cannot create", path);
        size_t w = fwrite(seeds[i].b, 1, seeds[i].n, f);
        if (fclose(f) != 0 || w != seeds[i].n)
            return mimic_err(MIMIC_EIO, "%s: write failed", path);
    }
    printf("wrote %d seeds to %s\n", NSEEDS, dir);
    return 0;
}

int main(int argc, char **argv) {
    static input_t seeds[NSEEDS];
    make_seeds(seeds);
    if (argc == 3 && strcmp(argv[1], "--write-seeds") == 0)
        return write_seeds(argv[2], seeds) ? 1 : 0;
    if (argc > 1) {
        for (int i = 1; i < argc; i++)
            if (run_file(argv[i])) return 1;
        return 0;
    }
    char why[PROTO_WHY_MAX];
    for (int i = 0; i < NSEEDS; i++) {
        proto_hdr_t h;
        if (proto_decode_hdr(&h, seeds[i].b, seeds[i].n, why, sizeof why) != 0)
            die("seed refused", why);
        LLVMFuzzerTestOneInput(seeds[i].b, seeds[i].n);
    }
    const int runs = 20000;
    int accepted = 0;
    static input_t in;
    for (int i = 0; i < runs; i++) {
        proto_hdr_t h;
        mutate(&in, seeds);
        LLVMFuzzerTestOneInput(in.b, in.n);
        accepted += proto_decode_hdr(&h, in.b, in.n, NULL, 0) == 0;
    }
    printf("fuzz_proto_replay: %d seeds + %d mutated inputs, %d accepted, all consistent\n", NSEEDS,
           runs, accepted);
    return 0;
}

#endif
