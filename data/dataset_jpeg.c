/* JPEG sets: ImageFolder trees and RAF-DB-style label lists, listed at open and decoded
 * per sample with TurboJPEG (DCT scaling when the file is much larger than needed). */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <turbojpeg.h>

#include "common.h"
#include "dataset_impl.h"

#define JPEG_MAX_FILE_BYTES ((long long)256 << 20)
#define JPEG_MAX_PIXELS ((size_t)1 << 26) /* after DCT scaling: 64 Mpixel, 192 MB RGB */
#define FOLDER_MAX_DEPTH 16

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static char *path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

static int is_jpeg_name(const char *name) {
    const char *dot = strrchr(name, '.');
    return dot && (!strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg"));
}

static void free_names(char **names, size_t n) {
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

/* Sorted entry names of dir, dot-files skipped (also macOS "._x.jpg" resource forks). */
static int list_dir(const char *dir, char ***out, size_t *nout) {
    *out = NULL;
    *nout = 0;
    DIR *d = opendir(dir);
    if (!d) return mimic_err(MIMIC_EIO, "%s: cannot open directory: %s", dir, strerror(errno));
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            char **p = realloc(names, cap * sizeof *names);
            if (!p) goto nomem;
            names = p;
        }
        if (!(names[n] = strdup(e->d_name))) goto nomem;
        n++;
    }
    closedir(d);
    if (n > 1) qsort(names, n, sizeof *names, cmp_str);
    *out = names;
    *nout = n;
    return 0;
nomem:
    closedir(d);
    free_names(names, n);
    return mimic_err(MIMIC_ENOMEM, "%s: out of memory listing the directory", dir);
}

/* Appends (file, label) to the sample list, taking ownership of file. */
static int push_sample(dataset_t *ds, size_t *cap, char *file, int label) {
    if (!file) return mimic_err(MIMIC_ENOMEM, "%s: out of memory", ds->path);
    if (ds->n == *cap) {
        size_t ncap = *cap ? 2 * *cap : 1024;
        char **f = realloc(ds->files, ncap * sizeof *f);
        if (f) ds->files = f;
        int *l = realloc(ds->labels, ncap * sizeof *l);
        if (l) ds->labels = l;
        if (!f || !l) {
            free(file);
            return mimic_err(MIMIC_ENOMEM, "%s: out of memory", ds->path);
        }
        *cap = ncap;
    }
    ds->files[ds->n] = file;
    ds->labels[ds->n] = label;
    ds->n++;
    return 0;
}

/* Adds the JPEG files under dir (recursively, in sorted order) with the given label. */
static int walk_class(dataset_t *ds, size_t *cap, const char *dir, int label, int depth,
                      size_t *skipped) {
    char **names;
    size_t n;
    int rc = list_dir(dir, &names, &n);
    if (rc) return rc;
    for (size_t i = 0; i < n && !rc; i++) {
        char *full = path_join(dir, names[i]);
        struct stat st;
        if (!full) {
            rc = mimic_err(MIMIC_ENOMEM, "%s: out of memory", dir);
        } else if (stat(full, &st) != 0) {
            (*skipped)++; /* dangling symlink */
            free(full);
        } else if (S_ISDIR(st.st_mode)) {
            if (depth < FOLDER_MAX_DEPTH) rc = walk_class(ds, cap, full, label, depth + 1, skipped);
            free(full);
        } else if (S_ISREG(st.st_mode) && is_jpeg_name(names[i])) {
            rc = push_sample(ds, cap, full, label);
        } else {
            (*skipped)++;
            free(full);
        }
    }
    free_names(names, n);
    return rc;
}

static int jpeg_init(dataset_t *ds) {
    ds->channels = 3;
    ds->bad = calloc(ds->n, 1);
    ds->tj = tjInitDecompress();
    if (!ds->bad || !ds->tj)
        return mimic_err(MIMIC_ENOMEM, "%s: cannot set up the JPEG decoder", ds->path);
    return 0;
}

int dataset_folder_open(dataset_t *ds, const dataset_opts *o) {
    char **names;
    size_t n, cap = 0, skipped = 0;
    int rc = list_dir(o->path, &names, &n);
    if (rc) return rc;
    for (size_t i = 0; i < n && !rc; i++) {
        char *full = path_join(o->path, names[i]);
        struct stat st;
        if (!full) {
            rc = mimic_err(MIMIC_ENOMEM, "%s: out of memory", o->path);
            break;
        }
        if (stat(full, &st) == 0 && S_ISDIR(st.st_mode)) {
            size_t before = ds->n;
            rc = walk_class(ds, &cap, full, ds->num_classes, 0, &skipped);
            if (!rc && ds->n == before)
                mimic_warn("%s: class folder %s holds no JPEG files", o->path, names[i]);
            ds->num_classes++;
        }
        free(full);
    }
    free_names(names, n);
    if (rc) return rc;
    if (ds->num_classes == 0)
        return mimic_err(MIMIC_EFORMAT,
                         "%s: no class folders (ImageFolder layout root/class/x.jpg)", o->path);
    if (ds->n == 0)
        return mimic_err(MIMIC_EFORMAT, "%s: no .jpg/.jpeg files in its %d class folders", o->path,
                         ds->num_classes);
    if (skipped) mimic_warn("%s: skipped %zu files that are not .jpg/.jpeg", o->path, skipped);
    return jpeg_init(ds);
}

int dataset_list_open(dataset_t *ds, const dataset_opts *o) {
    struct stat st;
    if (stat(o->path, &st) != 0)
        return mimic_err(MIMIC_EIO, "%s: cannot open image directory: %s", o->path,
                         strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return mimic_err(MIMIC_EIO, "%s: image directory is not a directory", o->path);
    FILE *f = fopen(o->labels, "r");
    if (!f)
        return mimic_err(MIMIC_EIO, "%s: cannot open label list: %s", o->labels, strerror(errno));
    char *line = NULL;
    size_t linecap = 0, lineno = 0, cap = 0;
    int rc = 0;
    while (!rc && getline(&line, &linecap, f) >= 0) {
        lineno++;
        char *s = line;
        while (*s == ' ' || *s == '\t')
            s++;
        size_t len = strlen(s);
        while (len && strchr(" \t\r\n", s[len - 1]))
            s[--len] = '\0';
        if (!len || s[0] == '#') continue;
        char *sep = s + len;
        while (sep > s && sep[-1] != ' ' && sep[-1] != '\t')
            sep--;
        char *lab = sep, *end;
        while (sep > s && (sep[-1] == ' ' || sep[-1] == '\t'))
            *--sep = '\0';
        errno = 0;
        long v = strtol(lab, &end, 10);
        if (sep == s || errno || end == lab || *end || v < 0 || v > (1 << 20)) {
            rc = mimic_err(MIMIC_EFORMAT,
                           "%s:%zu: expected \"name label\" (label >= 0), got \"%.60s\"", o->labels,
                           lineno, s);
            break;
        }
        rc = push_sample(ds, &cap, path_join(o->path, s), (int)v);
        if (!rc && (int)v + 1 > ds->num_classes) ds->num_classes = (int)v + 1;
    }
    if (!rc && ferror(f)) rc = mimic_err(MIMIC_EIO, "%s:%zu: read error", o->labels, lineno);
    free(line);
    fclose(f);
    if (rc) return rc;
    if (ds->n == 0) return mimic_err(MIMIC_EFORMAT, "%s: no \"name label\" lines", o->labels);
    return jpeg_init(ds);
}

void dataset_jpeg_free(dataset_t *ds) {
    if (ds->files)
        for (size_t i = 0; i < ds->n; i++)
            free(ds->files[i]);
    free(ds->files);
    ds->files = NULL;
    if (ds->tj) tjDestroy(ds->tj);
    ds->tj = NULL;
    free(ds->filebuf);
    free(ds->bad);
}

/* Marks sample i bad (warning only the first time) and fails the call. */
static int bad_sample(dataset_t *ds, size_t i, image_u8 *img, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int bad_sample(dataset_t *ds, size_t i, image_u8 *img, const char *fmt, ...) {
    img->w = img->h = 0; /* a caller ignoring the error cannot train on stale pixels */
    if (ds->bad[i]) return MIMIC_EFORMAT;
    ds->bad[i] = 1;
    ds->bad_count++;
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    mimic_warn("%s: skipping sample %zu: %s", ds->files[i], i, msg);
    return MIMIC_EFORMAT;
}

/* Reads the whole file into ds->filebuf. Returns its size, or -1 with errno set. */
static long long read_whole(dataset_t *ds, const char *file) {
    FILE *f = fopen(file, "rb");
    if (!f) return -1;
    struct stat st;
    long long size = -1;
    if (fstat(fileno(f), &st) != 0) goto done;
    if (!S_ISREG(st.st_mode) || st.st_size <= 0 || st.st_size > JPEG_MAX_FILE_BYTES) {
        errno = S_ISREG(st.st_mode) ? (st.st_size ? EFBIG : ENODATA) : EISDIR;
        goto done;
    }
    if ((size_t)st.st_size > ds->filecap) {
        uint8_t *p = realloc(ds->filebuf, (size_t)st.st_size);
        if (!p) {
            errno = ENOMEM;
            goto done;
        }
        ds->filebuf = p;
        ds->filecap = (size_t)st.st_size;
    }
    if (fread(ds->filebuf, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
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

int dataset_jpeg_get(dataset_t *ds, size_t i, image_u8 *img, int target_size) {
    const char *file = ds->files[i];
    long long size = read_whole(ds, file);
    if (size < 0) return bad_sample(ds, i, img, "cannot read: %s", strerror(errno));
    tjhandle tj = ds->tj;
    int w, h, subsamp, cs;
    if (tjDecompressHeader3(tj, ds->filebuf, (unsigned long)size, &w, &h, &subsamp, &cs) != 0)
        return bad_sample(ds, i, img, "not a JPEG (%s)", tjGetErrorStr2(tj));
    if (cs == TJCS_CMYK || cs == TJCS_YCCK)
        return bad_sample(ds, i, img, "CMYK JPEGs are not supported");
    tjscalingfactor sf = pick_scale(w, h, target_size);
    int sw = TJSCALED(w, sf), sh = TJSCALED(h, sf);
    if (sw <= 0 || sh <= 0 || (size_t)sw * (size_t)sh > JPEG_MAX_PIXELS)
        return bad_sample(ds, i, img, "%dx%d pixels is too large", sw, sh);
    int rc = image_u8_reserve(img, sw, sh, 3);
    if (rc) return rc;
    /* Gray JPEGs decode to RGB too so that a data set has one channel count. Warnings
     * (a truncated file is one) stop decoding and count as corruption. */
    if (tjDecompress2(tj, ds->filebuf, (unsigned long)size, img->px, sw, 0, sh, TJPF_RGB,
                      TJFLAG_STOPONWARNING | TJFLAG_LIMITSCANS) != 0)
        return bad_sample(ds, i, img, "corrupt JPEG (%s: %s)",
                          tjGetErrorCode(tj) == TJERR_WARNING ? "warning" : "error",
                          tjGetErrorStr2(tj));
    return 0;
}
