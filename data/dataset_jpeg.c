/* JPEG decoding for ImageFolder trees and label lists (listed by dataset_files.c): one
 * TurboJPEG handle and file buffer per reader, DCT scaling when the file is much larger
 * than needed, corrupt files flagged once per sample across all readers. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <turbojpeg.h>

#include "common.h"
#include "dataset_impl.h"

#define JPEG_MAX_FILE_BYTES ((long long)256 << 20)
/* 64 Mpixel (8192 x 8192), of the file and of the decoded image. The file's own size
 * counts too: a progressive JPEG makes libjpeg hold every coefficient of the full-size
 * image, so a 261-byte file saying 62760 x 64479 had it allocate gigabytes before it
 * found the scan broken (40 s under ASan; found by fuzz_jpeg). */
#define JPEG_MAX_PIXELS ((size_t)1 << 26)

struct dataset_reader {
    tjhandle tj;      /* NULL for in-memory sets */
    uint8_t *filebuf; /* last file read */
    size_t filecap;
};

int dataset_reader_new(dataset_reader_t **out, const dataset_t *ds) {
    *out = NULL;
    dataset_reader_t *rd = calloc(1, sizeof *rd);
    if (rd && ds->files) rd->tj = tjInitDecompress();
    if (!rd || (ds->files && !rd->tj)) {
        dataset_reader_destroy(&rd);
        return mimic_err(MIMIC_ENOMEM, "%s: cannot set up the JPEG decoder", ds->path);
    }
    *out = rd;
    return 0;
}

void dataset_reader_destroy(dataset_reader_t **prd) {
    if (!prd || !*prd) return;
    dataset_reader_t *rd = *prd;
    if (rd->tj) tjDestroy(rd->tj);
    free(rd->filebuf);
    free(rd);
    *prd = NULL;
}

int dataset_jpeg_init(dataset_t *ds) {
    ds->bad = calloc(ds->n, sizeof *ds->bad);
    if (!ds->bad) return mimic_err(MIMIC_ENOMEM, "%s: out of memory", ds->path);
    return dataset_reader_new(&ds->rd, ds);
}

/* Marks sample i bad (warning only the first time) and fails the call. */
static int bad_sample(dataset_t *ds, size_t i, image_u8 *img, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int bad_sample(dataset_t *ds, size_t i, image_u8 *img, const char *fmt, ...) {
    img->w = img->h = 0; /* a caller ignoring the error cannot train on stale pixels */
    if (atomic_exchange(&ds->bad[i], 1)) return MIMIC_EFORMAT; /* another reader warned */
    atomic_fetch_add(&ds->bad_count, 1);
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    mimic_warn("%s: skipping sample %zu: %s", ds->files[i], i, msg);
    return MIMIC_EFORMAT;
}

/* Reads the whole file into rd->filebuf. Returns its size, or -1 with errno set. */
static long long read_whole(dataset_reader_t *rd, const char *file) {
    FILE *f = fopen(file, "rb");
    if (!f) return -1;
    struct stat st;
    long long size = -1;
    if (fstat(fileno(f), &st) != 0) goto done;
    if (!S_ISREG(st.st_mode) || st.st_size <= 0 || st.st_size > JPEG_MAX_FILE_BYTES) {
        errno = S_ISREG(st.st_mode) ? (st.st_size ? EFBIG : ENODATA) : EISDIR;
        goto done;
    }
    if ((size_t)st.st_size > rd->filecap) {
        uint8_t *p = realloc(rd->filebuf, (size_t)st.st_size);
        if (!p) {
            errno = ENOMEM;
            goto done;
        }
        rd->filebuf = p;
        rd->filecap = (size_t)st.st_size;
    }
    if (fread(rd->filebuf, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
        if (!errno) errno = EIO;
        goto done;
    }
    size = st.st_size;
done:
    fclose(f);
    return size;
}

/* The strongest DCT scaling that keeps both sides >= target, used only when the image
 * is at least twice the target on both sides (scaled IDCT trades a little sharpness for
 * several times less decoding work). */
static tjscalingfactor pick_scale(int w, int h, int target) {
    tjscalingfactor best = {1, 1};
    if (target <= 0 || w / 2 < target || h / 2 < target) return best;
    int n = 0;
    tjscalingfactor *sf = tjGetScalingFactors(&n);
    for (int k = 0; sf && k < n; k++) {
        if ((long)sf[k].num * best.denom >= (long)best.num * sf[k].denom) continue;
        if (TJSCALED(w, sf[k]) >= target && TJSCALED(h, sf[k]) >= target) best = sf[k];
    }
    return best;
}

/* A file TurboJPEG failed on, as a bad sample; the handle is replaced. TurboJPEG 2.1.5
 * leaves a handle that failed in tjDecompressHeader3 in its error state: every later
 * file on it failed the same way ("Unsupported marker type 0xfa" for all), so one
 * corrupt file lost every sample its reader decoded after it (found by fuzz_jpeg). */
static int bad_decode(dataset_t *ds, dataset_reader_t *rd, size_t i, image_u8 *img,
                      const char *what) {
    char why[200];
    snprintf(why, sizeof why, "%s (%s%s)", what,
             tjGetErrorCode(rd->tj) == TJERR_WARNING ? "warning: " : "",
             tjGetErrorStr2(rd->tj));
    tjDestroy(rd->tj);
    rd->tj = tjInitDecompress(); /* NULL: the next call reports it */
    return bad_sample(ds, i, img, "%s", why);
}

int dataset_jpeg_get(dataset_t *ds, dataset_reader_t *rd, size_t i, image_u8 *img,
                     int target_size) {
    MIMIC_CHECK(rd != NULL && ds->files != NULL); /* a reader made for this dataset */
    if (!rd->tj && !(rd->tj = tjInitDecompress()))
        return mimic_err(MIMIC_ENOMEM, "%s: cannot set up the JPEG decoder", ds->path);
    long long size = read_whole(rd, ds->files[i]);
    if (size < 0) return bad_sample(ds, i, img, "cannot read: %s", strerror(errno));
    tjhandle tj = rd->tj;
    /* TurboJPEG 2.1.5 returns success without setting the size for a file whose start
     * marker is followed by no other marker ("Premature end of JPEG file"): hence the
     * zeros and the check. */
    int w = 0, h = 0, subsamp = 0, cs = 0;
    if (tjDecompressHeader3(tj, rd->filebuf, (unsigned long)size, &w, &h, &subsamp, &cs) != 0 ||
        w <= 0 || h <= 0)
        return bad_decode(ds, rd, i, img, "not a JPEG");
    if (cs == TJCS_CMYK || cs == TJCS_YCCK)
        return bad_sample(ds, i, img, "CMYK JPEGs are not supported");
    if ((size_t)w * (size_t)h > JPEG_MAX_PIXELS)
        return bad_sample(ds, i, img, "%dx%d pixels is too large", w, h);
    tjscalingfactor sf = pick_scale(w, h, target_size);
    int sw = TJSCALED(w, sf), sh = TJSCALED(h, sf);
    if (sw <= 0 || sh <= 0 || (size_t)sw * (size_t)sh > JPEG_MAX_PIXELS)
        return bad_sample(ds, i, img, "%dx%d pixels is too large", sw, sh);
    int rc = image_u8_reserve(img, sw, sh, 3);
    if (rc) return rc;
    /* Gray JPEGs decode to RGB too so that a data set has one channel count. Warnings
     * (a truncated file is one) stop decoding and count as corruption. */
    if (tjDecompress2(tj, rd->filebuf, (unsigned long)size, img->px, sw, 0, sh, TJPF_RGB,
                      TJFLAG_STOPONWARNING | TJFLAG_LIMITSCANS) != 0)
        return bad_decode(ds, rd, i, img, "corrupt JPEG");
    return 0;
}
