/* IDX reader (Fashion-MNIST / MNIST ubyte files), gzip or raw: loaded whole at open. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* Loads an unsigned-byte IDX array with min_nd..max_nd dimensions; `what` names the
 * expected content in messages. The header is not trusted for the allocation size: the
 * buffer grows as data actually arrives. */
static int idx_load(idx_array *a, const char *path, const char *what, int min_nd, int max_nd) {
    memset(a, 0, sizeof *a);
    const char *why;
    char dims[96];
    int rc;
    errno = 0;
    gzFile f = gzopen(path, "rb");
    if (!f)
        return mimic_err(MIMIC_EIO, "%s: cannot open %s: %s", path, what,
                         errno ? strerror(errno) : "gzopen failed");
    gzbuffer(f, 1u << 17);

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
    a->ndims = hdr[3];
    if (a->ndims < min_nd || a->ndims > max_nd) {
        rc = mimic_err(MIMIC_EFORMAT, "%s: IDX %s with %d dimensions (expected %d%s%d)", path, what,
                       a->ndims, min_nd, min_nd == max_nd ? "" : " to ", max_nd);
        a->ndims = 0;
        goto fail;
    }
    got = gz_fill(f, hdr, 4 * (size_t)a->ndims, &why);
    if (got < 4 * (size_t)a->ndims) {
        rc = mimic_err(MIMIC_EFORMAT, "%s: truncated IDX header (dimensions)", path);
        goto fail;
    }
    size_t bytes = 1;
    for (int d = 0; d < a->ndims; d++) {
        const uint8_t *p = hdr + 4 * d;
        a->dims[d] = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
        if (a->dims[d] == 0 || a->dims[d] > IDX_MAX_BYTES / bytes) {
            dims_str(dims, sizeof dims, a);
            rc = mimic_err(MIMIC_EFORMAT, "%s: bad IDX dimensions %s", path, dims);
            goto fail;
        }
        bytes *= a->dims[d];
    }
    dims_str(dims, sizeof dims, a);

    size_t cap = bytes < ((size_t)1 << 24) ? bytes : ((size_t)1 << 24);
    a->data = malloc(cap);
    if (!a->data) {
        rc = mimic_err(MIMIC_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    size_t have = 0;
    for (;;) {
        have += gz_fill(f, a->data + have, cap - have, &why);
        if (have < cap || cap == bytes) break;
        size_t ncap = cap * 2 < bytes ? cap * 2 : bytes;
        uint8_t *p = realloc(a->data, ncap);
        if (!p) {
            rc = mimic_err(MIMIC_ENOMEM, "%s: out of memory for %zu bytes", path, ncap);
            goto fail;
        }
        a->data = p;
        cap = ncap;
    }
    if (have < bytes) {
        rc = mimic_err(MIMIC_EFORMAT,
                       "%s: size does not match header dims %s: truncated, %zu of %zu data "
                       "bytes%s%s",
                       path, dims, have, bytes, why ? ": " : "", why ? why : "");
        goto fail;
    }
    uint8_t extra;
    if (gz_fill(f, &extra, 1, &why) != 0) {
        rc = mimic_err(MIMIC_EFORMAT,
                       "%s: size does not match header dims %s: more than %zu data bytes", path,
                       dims, bytes);
        goto fail;
    }
    if (why) {
        rc = mimic_err(MIMIC_EFORMAT, "%s: gzip stream broken after the data: %s", path, why);
        goto fail;
    }
    a->bytes = bytes;
    gzclose(f);
    return 0;
fail:
    gzclose(f);
    free(a->data);
    a->data = NULL;
    return rc;
}

int dataset_idx_open(dataset_t *ds, const dataset_opts *o) {
    idx_array im, lb = {0};
    int rc = idx_load(&im, o->path, "images", 3, 4);
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

    rc = idx_load(&lb, o->labels, "labels", 1, 1);
    if (rc) return rc;
    if (lb.dims[0] != ds->n) {
        rc = mimic_err(MIMIC_EFORMAT, "%s: %u labels but %s holds %zu images", o->labels,
                       lb.dims[0], o->path, ds->n);
        goto fail;
    }
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
