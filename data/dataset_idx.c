/* IDX reader (Fashion-MNIST / MNIST ubyte files), gzip or raw: loaded whole at open. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "common.h"
#include "dataset_impl.h"

#define IDX_UBYTE 0x08
#define IDX_MAX_BYTES ((size_t)1 << 40)

typedef struct {
    int ndims;
    uint32_t dims[4];
    uint8_t *data;
    size_t bytes;
} idx_array;

/* Reads up to n bytes; *why is set to zlib's reason when the stream is broken. */
static size_t gz_fill(gzFile f, uint8_t *buf, size_t n, const char **why) {
    size_t got = 0;
    *why = NULL;
    while (got < n) {
        size_t want = n - got > (1u << 30) ? (1u << 30) : n - got;
        int r = gzread(f, buf + got, (unsigned)want);
        int zerr = Z_OK;
        if (r <= 0) {
            const char *msg = gzerror(f, &zerr);
            if (zerr != Z_OK) *why = msg;
            break;
        }
        got += (size_t)r;
    }
    return got;
}

static void dims_str(char *buf, size_t cap, const idx_array *a) {
    size_t len = 0;
    buf[0] = '\0';
    for (int d = 0; d < a->ndims && len < cap; d++)
        len += (size_t)snprintf(buf + len, cap - len, d ? "x%u" : "%u", a->dims[d]);
}

/* Opens path and reads an unsigned-byte IDX header with min_nd..max_nd dimensions into
 * a->ndims/dims (`what` names the expected content in messages). On success *out is the
 * stream, positioned at the data. */
static int idx_header(gzFile *out, idx_array *a, const char *path, const char *what, int min_nd,
                      int max_nd) {
    memset(a, 0, sizeof *a);
    const char *why;
    int rc;
    errno = 0;
    gzFile f = gzopen(path, "rb");
    if (!f)
        return mimic_err(MIMIC_EIO, "%s: cannot open %s: %s", path, what,
                         errno ? strerror(errno) : "gzopen failed");
    /* 128 KB of input (and zlib's 256 KB of output) speed up a 30 MB file; a small one
     * keeps zlib's 8 KB default, so that a header read or a tiny file does not map
     * 384 KB (fuzz_idx: 180 -> 700 files/s). */
    struct stat st;
    gzbuffer(f, stat(path, &st) == 0 && st.st_size < (1 << 17) ? 8192u : 1u << 17);

    uint8_t hdr[16];
    size_t got = gz_fill(f, hdr, 4, &why);
    if (got < 4) {
        rc = mimic_err(MIMIC_EFORMAT, "%s: truncated IDX header (%zu bytes)%s%s", path, got,
                       why ? ": " : "", why ? why : "");
        goto fail;
    }
    if (hdr[0] != 0 || hdr[1] != 0) {
        rc = mimic_err(MIMIC_EFORMAT,
                       "%s: bad IDX magic 0x%02x%02x%02x%02x (expected 0x000008%02x for ubyte %s)",
                       path, hdr[0], hdr[1], hdr[2], hdr[3], max_nd, what);
        goto fail;
    }
    if (hdr[2] != IDX_UBYTE) {
        rc = mimic_err(MIMIC_EFORMAT,
                       "%s: IDX element type 0x%02x not supported (only unsigned byte 0x08)", path,
                       hdr[2]);
        goto fail;
    }
    if (hdr[3] < min_nd || hdr[3] > max_nd) {
        rc = mimic_err(MIMIC_EFORMAT, "%s: IDX %s with %d dimensions (expected %d%s%d)", path, what,
                       hdr[3], min_nd, min_nd == max_nd ? "" : " to ", max_nd);
        goto fail;
    }
    a->ndims = hdr[3];
    got = gz_fill(f, hdr, 4 * (size_t)a->ndims, &why);
    if (got < 4 * (size_t)a->ndims) {
        rc = mimic_err(MIMIC_EFORMAT, "%s: truncated IDX header (dimensions)", path);
        goto fail;
    }
    a->bytes = 1;
    for (int d = 0; d < a->ndims; d++) {
        const uint8_t *p = hdr + 4 * d;
        a->dims[d] = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
        if (a->dims[d] == 0 || a->dims[d] > IDX_MAX_BYTES / a->bytes) {
            char dims[96];
            dims_str(dims, sizeof dims, a);
            rc = mimic_err(MIMIC_EFORMAT, "%s: bad IDX dimensions %s", path, dims);
            goto fail;
        }
        a->bytes *= a->dims[d];
    }
    *out = f;
    return 0;
fail:
    gzclose(f);
    a->ndims = 0;
    return rc;
}

/* Reads the a->bytes data bytes the header announced, and checks that nothing follows.
 * The header is not trusted for the allocation size: the buffer starts at 64 KB and
 * doubles as data actually arrives (a 16 MB start made every small or lying file cost
 * a 16 MB mapping: 180 files/s under the fuzzer). */
static int idx_body(idx_array *a, gzFile f, const char *path) {
    const char *why;
    char dims[96];
    dims_str(dims, sizeof dims, a);
    size_t bytes = a->bytes, cap = bytes < ((size_t)1 << 16) ? bytes : ((size_t)1 << 16);
    if (!(a->data = malloc(cap))) return mimic_err(MIMIC_ENOMEM, "%s: out of memory", path);
    size_t have = 0;
    for (;;) {
        have += gz_fill(f, a->data + have, cap - have, &why);
        if (have < cap || cap == bytes) break;
        size_t ncap = cap * 2 < bytes ? cap * 2 : bytes;
        uint8_t *p = realloc(a->data, ncap);
        if (!p) return mimic_err(MIMIC_ENOMEM, "%s: out of memory for %zu bytes", path, ncap);
        a->data = p;
        cap = ncap;
    }
    if (have < bytes)
        return mimic_err(MIMIC_EFORMAT,
                         "%s: size does not match header dims %s: truncated, %zu of %zu data "
                         "bytes%s%s",
                         path, dims, have, bytes, why ? ": " : "", why ? why : "");
    uint8_t extra;
    if (gz_fill(f, &extra, 1, &why) != 0)
        return mimic_err(MIMIC_EFORMAT,
                         "%s: size does not match header dims %s: more than %zu data bytes", path,
                         dims, bytes);
    if (why)
        return mimic_err(MIMIC_EFORMAT, "%s: gzip stream broken after the data: %s", path, why);
    return 0;
}

/* Loads an IDX array (header and, when `body`, the data; a->data is NULL otherwise). */
static int idx_load(idx_array *a, const char *path, const char *what, int min_nd, int max_nd,
                    int body) {
    gzFile f = NULL;
    int rc = idx_header(&f, a, path, what, min_nd, max_nd);
    if (rc) return rc;
    if (body && (rc = idx_body(a, f, path))) {
        free(a->data);
        a->data = NULL;
    }
    gzclose(f);
    return rc;
}

int dataset_idx_open(dataset_t *ds, const dataset_opts *o, int keep_pixels) {
    idx_array im, lb = {0};
    int rc = idx_load(&im, o->path, "images", 3, 4, keep_pixels);
    if (rc) return rc;
    int c = im.ndims == 4 ? (int)im.dims[3] : 1;
    if (c != 1 && c != 3) {
        rc = mimic_err(MIMIC_EFORMAT, "%s: IDX images with %d channels (need 1 or 3)", o->path, c);
        goto fail;
    }
    if (im.dims[1] > (1u << 15) || im.dims[2] > (1u << 15)) {
        rc = mimic_err(MIMIC_EFORMAT, "%s: IDX images of %ux%u are too large", o->path, im.dims[1],
                       im.dims[2]);
        goto fail;
    }
    ds->n = im.dims[0];
    ds->h = (int)im.dims[1];
    ds->w = (int)im.dims[2];
    ds->channels = c;
    ds->pixels = im.data;
    im.data = NULL;
    if (!o->labels) return 0;

    rc = idx_load(&lb, o->labels, "labels", 1, 1, keep_pixels);
    if (rc) return rc;
    if (lb.dims[0] != ds->n) {
        rc = mimic_err(MIMIC_EFORMAT, "%s: %u labels but %s holds %zu images", o->labels,
                       lb.dims[0], o->path, ds->n);
        goto fail;
    }
    if (!keep_pixels) return 0; /* counting: the labels file was checked, not read */
    ds->labels = malloc(ds->n * sizeof(int));
    if (!ds->labels) {
        rc = mimic_err(MIMIC_ENOMEM, "%s: out of memory", o->labels);
        goto fail;
    }
    for (size_t i = 0; i < ds->n; i++) {
        ds->labels[i] = lb.data[i];
        if (ds->labels[i] + 1 > ds->num_classes) ds->num_classes = ds->labels[i] + 1;
    }
    free(lb.data);
    return 0;
fail:
    free(im.data);
    free(lb.data);
    return rc;
}
