/* FER2013-style CSV reader ("emotion,pixels,Usage"): parsed whole at open. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common.h"
#include "dataset_impl.h"

#define CSV_MAX_FIELDS 16
#define CSV_MAX_LABEL (1 << 20)

static char *trim(char *s) {
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
        s[--n] = '\0';
    return s;
}

/* Splits line in place at commas outside double quotes, dropping the quotes and the
 * blanks around each field. Returns the number of fields (only the first maxf stored). */
static int split_csv(char *line, char **f, int maxf) {
    int n = 0;
    char *p = line;
    for (;;) {
        char *start = p, *w = p;
        int inq = 0;
        while (*p && (inq || *p != ',')) {
            if (*p == '"')
                inq = !inq;
            else
                *w++ = *p;
            p++;
        }
        int end = *p == '\0';
        *w = '\0';
        if (n < maxf) f[n] = trim(start);
        n++;
        if (end) return n;
        p++;
    }
}

typedef struct {
    uint8_t *v;
    size_t n, cap;
} bytes_vec;

static int bytes_grow(bytes_vec *b, size_t need) {
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < need)
        cap *= 2;
    uint8_t *p = realloc(b->v, cap);
    if (!p) return MIMIC_ENOMEM;
    b->v = p;
    b->cap = cap;
    return 0;
}

/* Parses space-separated 0..255 values into px. Returns 0, or 1 for a character that
 * is not a digit (*where = value index), 2 for a value above 255 (*value set). */
static int parse_pixels(bytes_vec *px, const char *s, size_t *where, long *value) {
    px->n = 0;
    for (;;) {
        while (*s == ' ' || *s == '\t')
            s++;
        if (!*s) return 0;
        if (*s < '0' || *s > '9') {
            *where = px->n;
            return 1;
        }
        long v = 0;
        while (*s >= '0' && *s <= '9') {
            if (v < 100000) v = v * 10 + (*s - '0');
            s++;
        }
        if (*s && *s != ' ' && *s != '\t') {
            *where = px->n;
            return 1;
        }
        if (v > 255) {
            *where = px->n;
            *value = v;
            return 2;
        }
        if (px->n == px->cap && bytes_grow(px, px->n + 1)) return MIMIC_ENOMEM;
        px->v[px->n++] = (uint8_t)v;
    }
}

static int parse_label(const char *s, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 0 || v > CSV_MAX_LABEL) return -1;
    *out = (int)v;
    return 0;
}

typedef struct {
    int emotion, pixels, usage, ncols;
} csv_columns;

static int parse_header(csv_columns *cols, char *line, const char *path, const char *usage) {
    char shown[80];
    snprintf(shown, sizeof shown, "%s", line);
    trim(shown);
    char *f[CSV_MAX_FIELDS];
    if (!strncmp(line, "\xEF\xBB\xBF", 3)) line += 3; /* UTF-8 byte order mark */
    cols->ncols = split_csv(line, f, CSV_MAX_FIELDS);
    cols->emotion = cols->pixels = cols->usage = -1;
    for (int i = 0; i < cols->ncols && i < CSV_MAX_FIELDS; i++) {
        if (!strcasecmp(f[i], "emotion")) cols->emotion = i;
        if (!strcasecmp(f[i], "pixels")) cols->pixels = i;
        if (!strcasecmp(f[i], "usage")) cols->usage = i;
    }
    if (cols->ncols > CSV_MAX_FIELDS || cols->emotion < 0 || cols->pixels < 0)
        return mimic_err(MIMIC_EFORMAT,
                         "%s:1: bad header \"%s\": expected columns emotion,pixels[,Usage]", path,
                         shown);
    if (usage && cols->usage < 0)
        return mimic_err(MIMIC_EINVAL, "%s:1: no Usage column to select \"%s\" rows", path, usage);
    return 0;
}

int dataset_csv_open(dataset_t *ds, const dataset_opts *o) {
    const char *path = o->path;
    char *line = NULL;
    size_t linecap = 0, lineno = 1, npix = 0, labcap = 0;
    bytes_vec row = {0}, all = {0};
    csv_columns cols;
    int rc = 0, side = 0;
    FILE *f = fopen(path, "r");
    if (!f) return mimic_err(MIMIC_EIO, "%s: cannot open CSV: %s", path, strerror(errno));

    if (getline(&line, &linecap, f) < 0) {
        rc = ferror(f) ? mimic_err(MIMIC_EIO, "%s: read error", path)
                       : mimic_err(MIMIC_EFORMAT, "%s:1: empty file, expected a header", path);
        goto fail;
    }
    rc = parse_header(&cols, line, path, o->usage);
    if (rc) goto fail;

    while (getline(&line, &linecap, f) >= 0) {
        lineno++;
        if (!*trim(line)) continue;
        char *fld[CSV_MAX_FIELDS] = {0};
        int nf = split_csv(line, fld, CSV_MAX_FIELDS);
        if (nf != cols.ncols) {
            rc = mimic_err(MIMIC_EFORMAT, "%s:%zu: %d fields, the header has %d", path, lineno, nf,
                           cols.ncols);
            goto fail;
        }
        int label;
        if (parse_label(fld[cols.emotion], &label)) {
            rc = mimic_err(MIMIC_EFORMAT, "%s:%zu: field emotion: bad label \"%.20s\"", path,
                           lineno, fld[cols.emotion]);
            goto fail;
        }
        size_t where = 0;
        long value = 0;
        int pr = parse_pixels(&row, fld[cols.pixels], &where, &value);
        if (pr == MIMIC_ENOMEM) {
            rc = mimic_err(MIMIC_ENOMEM, "%s: out of memory", path);
            goto fail;
        }
        if (pr) {
            rc = pr == 2
                     ? mimic_err(MIMIC_EFORMAT,
                                 "%s:%zu: field pixels: value %ld (pixel %zu) is outside "
                                 "0..255",
                                 path, lineno, value, where)
                     : mimic_err(MIMIC_EFORMAT, "%s:%zu: field pixels: not a number at pixel %zu",
                                 path, lineno, where);
            goto fail;
        }
        if (npix == 0) {
            while ((size_t)(side + 1) * (size_t)(side + 1) <= row.n)
                side++;
            if (row.n == 0 || (size_t)side * (size_t)side != row.n || side > (1 << 15)) {
                rc = mimic_err(MIMIC_EFORMAT,
                               "%s:%zu: field pixels has %zu values, not a square image", path,
                               lineno, row.n);
                goto fail;
            }
            npix = row.n;
        } else if (row.n != npix) {
            rc = mimic_err(MIMIC_EFORMAT,
                           "%s:%zu: field pixels has %zu values, expected %zu (%dx%d)", path,
                           lineno, row.n, npix, side, side);
            goto fail;
        }
        if (label + 1 > ds->num_classes) ds->num_classes = label + 1;
        if (o->usage && strcmp(fld[cols.usage], o->usage) != 0) continue;

        if (bytes_grow(&all, all.n + npix)) goto nomem;
        memcpy(all.v + all.n, row.v, npix);
        all.n += npix;
        if (ds->n == labcap) {
            labcap = labcap ? 2 * labcap : 1024;
            int *p = realloc(ds->labels, labcap * sizeof(int));
            if (!p) goto nomem;
            ds->labels = p;
        }
        ds->labels[ds->n++] = label;
    }
    if (ferror(f)) {
        rc = mimic_err(MIMIC_EIO, "%s:%zu: read error", path, lineno);
        goto fail;
    }
    if (ds->n == 0) {
        rc = o->usage ? mimic_err(MIMIC_EINVAL, "%s: no rows with Usage \"%s\"", path, o->usage)
                      : mimic_err(MIMIC_EFORMAT, "%s: no data rows", path);
        goto fail;
    }
    ds->pixels = all.v;
    ds->w = ds->h = side;
    ds->channels = 1;
    free(row.v);
    free(line);
    fclose(f);
    return 0;
nomem:
    rc = mimic_err(MIMIC_ENOMEM, "%s: out of memory", path);
fail:
    free(row.v);
    free(all.v);
    free(line);
    fclose(f);
    return rc;
}
