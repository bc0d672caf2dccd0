/* JPEG decoding for ImageFolder trees and label lists (listed by dataset_files.c): one
 * TurboJPEG handle, one libjpeg decompressor and one file buffer per reader, DCT scaling
 * when the file (or the crop) is much larger than needed, corrupt files flagged once per
 * sample across all readers. Whole images go through TurboJPEG; a crop (the training
 * path, dataset_read_crop) through libjpeg's own API, which can skip rows and crop
 * columns: only what the crop needs is transformed, and nothing below it is decoded. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <turbojpeg.h>

#include <jpeglib.h> /* after stdio.h: it uses FILE and size_t without including them */

#include "common.h"
#include "dataset_impl.h"

#define JPEG_MAX_FILE_BYTES ((long long)256 << 20)
/* 64 Mpixel (8192 x 8192), of the file and of the decoded image. The file's own size
 * counts too: a progressive JPEG makes libjpeg hold every coefficient of the full-size
 * image, so a 261-byte file saying 62760 x 64479 had it allocate gigabytes before it
 * found the scan broken (40 s under ASan; found by fuzz_jpeg). */
#define JPEG_MAX_PIXELS ((size_t)1 << 26)

/* libjpeg's decompressor with an error manager that longjmps back to the decode call
 * (libjpeg's default one calls exit()), keeping the message. */
typedef struct {
    struct jpeg_decompress_struct d;
    struct jpeg_error_mgr err;
    struct jpeg_progress_mgr progress;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX];
} jdec_t;

struct dataset_reader {
    tjhandle tj;      /* NULL for in-memory sets */
    jdec_t *jd;       /* made at the first dataset_read_crop of a JPEG set */
    uint8_t *filebuf; /* last file read */
    size_t filecap;
};

static void jdec_destroy(jdec_t **pj);

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
    jdec_destroy(&rd->jd);
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
             tjGetErrorCode(rd->tj) == TJERR_WARNING ? "warning: " : "", tjGetErrorStr2(rd->tj));
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

/* ------------------------------------------------------------ crops through libjpeg */

static void jdec_error_exit(j_common_ptr c) {
    jdec_t *j = (jdec_t *)c->client_data;
    c->err->format_message(c, j->msg);
    longjmp(j->jb, 1);
}

/* Warnings (level -1: a truncated or damaged stream) stop decoding, as
 * TJFLAG_STOPONWARNING does for whole images; trace messages are dropped. */
static void jdec_emit_message(j_common_ptr c, int level) {
    if (level < 0) jdec_error_exit(c);
}

/* TJFLAG_LIMITSCANS: a progressive file with thousands of tiny scans would take minutes
 * (found by fuzzing TurboJPEG; the same limit, 500 scans). */
static void jdec_progress(j_common_ptr c) {
    jdec_t *j = (jdec_t *)c->client_data;
    if (c->is_decompressor && ((j_decompress_ptr)c)->input_scan_number > 500) {
        snprintf(j->msg, sizeof j->msg, "progressive JPEG with more than 500 scans");
        longjmp(j->jb, 1);
    }
}

static void jdec_destroy(jdec_t **pj) {
    if (!pj || !*pj) return;
    jpeg_destroy_decompress(&(*pj)->d);
    free(*pj);
    *pj = NULL;
}

static int jdec_new(jdec_t **out) {
    jdec_t *j = calloc(1, sizeof *j);
    *out = NULL;
    if (!j) return MIMIC_ENOMEM;
    j->d.err = jpeg_std_error(&j->err);
    j->err.error_exit = jdec_error_exit;
    j->err.emit_message = jdec_emit_message;
    j->d.client_data = j;
    if (setjmp(j->jb)) { /* out of memory inside libjpeg */
        free(j);
        return MIMIC_ENOMEM;
    }
    jpeg_create_decompress(&j->d);
    j->d.client_data = j; /* jpeg_create_decompress clears the struct but for err */
    j->progress.progress_monitor = jdec_progress;
    j->d.progress = &j->progress;
    *out = j;
    return 0;
}

/* The power-of-two DCT scale num/8 (8: none) that shrinks a bw x bh box most while
 * keeping both its sides >= target: the SIMD-accelerated reduced IDCTs of libjpeg-turbo
 * (7/8 and friends have no SIMD code and are slower than the full IDCT). */
static int crop_scale(double bw, double bh, int target) {
    int num = 8;
    while (target > 0 && num > 1 && bw * (num / 2) / 8.0 >= target &&
           bh * (num / 2) / 8.0 >= target)
        num /= 2;
    return num;
}

/* Decodes the rows and iMCU columns the crop needs from rd->filebuf (size bytes) into
 * img; see dataset_read_crop. Called with j->jb set by the caller. */
static int crop_decode(dataset_t *ds, jdec_t *j, size_t i, long long size, image_u8 *img,
                       int target, dataset_crop_fn crop, void *arg, augment_box *box,
                       const uint8_t *buf) {
    struct jpeg_decompress_struct *d = &j->d;
    jpeg_mem_src(d, buf, (unsigned long)size);
    jpeg_read_header(d, TRUE);
    const int W = (int)d->image_width, H = (int)d->image_height;
    if (d->jpeg_color_space == JCS_CMYK || d->jpeg_color_space == JCS_YCCK) {
        jpeg_abort_decompress(d);
        return bad_sample(ds, i, img, "CMYK JPEGs are not supported");
    }
    if (W <= 0 || H <= 0 || (size_t)W * (size_t)H > JPEG_MAX_PIXELS) {
        jpeg_abort_decompress(d);
        return bad_sample(ds, i, img, "%dx%d pixels is too large", W, H);
    }
    int rc = crop(arg, W, H, box);
    if (rc) {
        jpeg_abort_decompress(d);
        return rc;
    }
    MIMIC_CHECK(box->x >= 0 && box->y >= 0 && box->w > 0 && box->h > 0 && box->x + box->w <= W &&
                box->y + box->h <= H);
    const int num = crop_scale(box->w, box->h, target);
    d->scale_num = (unsigned)num;
    d->scale_denom = 8;
    d->out_color_space = JCS_RGB; /* gray files too: one channel count per data set */
    jpeg_start_decompress(d);
    const double s = num / 8.0;
    const int ow = (int)d->output_width, oh = (int)d->output_height;
    augment_box sb = {box->x * s, box->y * s, box->w * s, box->h * s};
    if (sb.x + sb.w > ow) sb.w = ow - sb.x; /* the scaled size is rounded up: never past it */
    if (sb.y + sb.h > oh) sb.h = oh - sb.y;
    /* one column more on each side, so that the chroma upsampling at the crop's edges
     * reads real neighbours (libjpeg then widens the range to whole iMCUs) */
    int c0 = (int)floor(sb.x) - 1, c1 = (int)ceil(sb.x + sb.w) + 1;
    if (c0 < 0) c0 = 0;
    if (c1 > ow) c1 = ow;
    JDIMENSION xoff = (JDIMENSION)c0, cw = (JDIMENSION)(c1 - c0);
    if ((int)cw < ow)
        jpeg_crop_scanline(d, &xoff, &cw);
    else
        xoff = 0;
    const int r0 = (int)floor(sb.y), r1 = (int)ceil(sb.y + sb.h);
    rc = image_u8_reserve(img, (int)d->output_width, r1 - r0, 3);
    if (rc) {
        jpeg_abort_decompress(d);
        return rc;
    }
    if (r0 > 0 && jpeg_skip_scanlines(d, (JDIMENSION)r0) != (JDIMENSION)r0) {
        jpeg_abort_decompress(d);
        return bad_sample(ds, i, img, "corrupt JPEG (rows missing)");
    }
    const size_t stride = (size_t)img->w * 3;
    while ((int)d->output_scanline < r1) {
        JSAMPROW row = img->px + (size_t)((int)d->output_scanline - r0) * stride;
        if (jpeg_read_scanlines(d, &row, 1) != 1) {
            jpeg_abort_decompress(d);
            return bad_sample(ds, i, img, "corrupt JPEG (rows missing)");
        }
    }
    jpeg_abort_decompress(d); /* the rows below the crop are never decoded */
    *box = (augment_box){sb.x - (double)xoff, sb.y - r0, sb.w, sb.h};
    return 0;
}

int dataset_jpeg_crop(dataset_t *ds, dataset_reader_t *rd, size_t i, image_u8 *img, int target,
                      dataset_crop_fn crop, void *arg, augment_box *box) {
    MIMIC_CHECK(rd != NULL && ds->files != NULL); /* a reader made for this dataset */
    if (!rd->jd && jdec_new(&rd->jd))
        return mimic_err(MIMIC_ENOMEM, "%s: cannot set up the JPEG decoder", ds->path);
    long long size = read_whole(rd, ds->files[i]);
    if (size < 0) return bad_sample(ds, i, img, "cannot read: %s", strerror(errno));
    jdec_t *j = rd->jd;
    if (setjmp(j->jb)) {
        /* a fresh decompressor after a failure, as with the TurboJPEG handle: nothing of
         * a broken file's state can leak into the next one */
        char msg[JMSG_LENGTH_MAX];
        snprintf(msg, sizeof msg, "%s", j->msg);
        jdec_destroy(&rd->jd);
        jdec_new(&rd->jd); /* NULL: the next call reports it */
        return bad_sample(ds, i, img, "corrupt JPEG (%s)", msg);
    }
    return crop_decode(ds, j, i, size, img, target, crop, arg, box, rd->filebuf);
}
