/* FER2013-style CSV reader ("emotion,pixels,Usage"): parsed whole at open (pixels kept,
 * or only rows counted by dataset_count); FERPlus's vote file (fer2013new.csv) is read
 * row by row beside it when given as the labels. */
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

typedef struct votes votes_t;

/* The state of one pass over the data lines. */
typedef struct {
    const char *path;
    csv_columns cols;
    votes_t *votes; /* FERPlus labels, or NULL: the emotion column */
    size_t lineno;
    size_t npix; /* pixels per row, set by the first row */
    int side;
    bytes_vec row; /* pixels of the current row */
} csv_pass;

/* FERPlus (microsoft/FERPlus fer2013new.csv): "Usage,Image name,neutral,happiness,
 * surprise,sadness,anger,disgust,fear,contempt,unknown,NF", ten taggers' votes per row,
 * one row per row of fer2013.csv in the same order. */
#define FERPLUS_VOTES 10  /* the 8 emotions, unknown, not a face */
#define FERPLUS_CLASSES 8 /* neutral .. contempt = labels 0..7 */

struct votes {
    FILE *f;
    const char *path;
    size_t lineno;
    int ncols, usage;         /* usage: column index or -1 */
    int col[FERPLUS_VOTES];   /* column of each vote */
    char *line;
    size_t cap;
};

/* FERPlus's "majority" label (src/ferplus.py): single votes are dropped as outliers,
 * then the top class must hold more than half of the remaining votes; -1 when none
 * does or when it is unknown / not a face (FERPlus leaves those images out). */
static int ferplus_majority(const int *votes) {
    int sum = 0, best = 0, top = 0;
    for (int k = 0; k < FERPLUS_VOTES; k++) {
        int v = votes[k] > 1 ? votes[k] : 0;
        sum += v;
        if (v > top) top = v, best = k;
    }
    return 2 * top > sum && best < FERPLUS_CLASSES ? best : -1;
}

static int votes_open(votes_t *v, const char *path) {
    static const char *names[FERPLUS_VOTES] = {"neutral", "happiness", "surprise", "sadness",
                                               "anger",   "disgust",   "fear",     "contempt",
                                               "unknown", "NF"};
    memset(v, 0, sizeof *v);
    v->path = path;
    v->lineno = 1;
    if (!(v->f = fopen(path, "r")))
        return mimic_err(MIMIC_EIO, "%s: cannot open FERPlus labels: %s", path, strerror(errno));
    if (getline(&v->line, &v->cap, v->f) < 0)
        return mimic_err(MIMIC_EFORMAT, "%s:1: empty file, expected the FERPlus header", path);
    char *f[CSV_MAX_FIELDS], *line = v->line;
    if (!strncmp(line, "\xEF\xBB\xBF", 3)) line += 3;
    v->ncols = split_csv(line, f, CSV_MAX_FIELDS);
    v->usage = -1;
    for (int k = 0; k < FERPLUS_VOTES; k++)
        v->col[k] = -1;
    for (int i = 0; i < v->ncols && i < CSV_MAX_FIELDS; i++) {
        if (!strcasecmp(f[i], "usage")) v->usage = i;
        for (int k = 0; k < FERPLUS_VOTES; k++)
            if (!strcasecmp(f[i], names[k])) v->col[k] = i;
    }
    for (int k = 0; k < FERPLUS_VOTES; k++)
        if (v->col[k] < 0 || v->ncols > CSV_MAX_FIELDS)
            return mimic_err(MIMIC_EFORMAT,
                             "%s:1: not FERPlus's fer2013new.csv (no column %s); data.labels of a "
                             "CSV set is that vote file, empty for the emotion column",
                             path, names[k]);
    return 0;
}

/* The label of the vote row beside data row p->lineno (-1: FERPlus has none for it). */
static int votes_next(votes_t *v, const csv_pass *p, const char *usage, int *label) {
    char *fld[CSV_MAX_FIELDS] = {0}, *s = NULL;
    while (getline(&v->line, &v->cap, v->f) >= 0) {
        v->lineno++;
        if (*(s = trim(v->line))) break;
        s = NULL;
    }
    if (!s)
        return ferror(v->f) ? mimic_err(MIMIC_EIO, "%s:%zu: read error", v->path, v->lineno)
                            : mimic_err(MIMIC_EFORMAT, "%s: ends at line %zu, before the row of %s:%zu",
                                        v->path, v->lineno, p->path, p->lineno);
    int nf = split_csv(s, fld, CSV_MAX_FIELDS), votes[FERPLUS_VOTES];
    if (nf != v->ncols)
        return mimic_err(MIMIC_EFORMAT, "%s:%zu: %d fields, the header has %d", v->path, v->lineno,
                         nf, v->ncols);
    for (int k = 0; k < FERPLUS_VOTES; k++)
        if (parse_label(fld[v->col[k]], &votes[k]))
            return mimic_err(MIMIC_EFORMAT, "%s:%zu: bad vote count \"%.20s\"", v->path, v->lineno,
                             fld[v->col[k]]);
    if (usage && v->usage >= 0 && strcmp(usage, fld[v->usage]) != 0)
        return mimic_err(MIMIC_EFORMAT,
                         "%s:%zu: Usage \"%.20s\" but %s:%zu says \"%.20s\": the files are not "
                         "row for row",
                         v->path, v->lineno, fld[v->usage], p->path, p->lineno, usage);
    *label = ferplus_majority(votes);
    return 0;
}

/* After the last data row: the vote file must end too. */
static int votes_finish(votes_t *v, const csv_pass *p) {
    while (getline(&v->line, &v->cap, v->f) >= 0) {
        v->lineno++;
        if (*trim(v->line))
            return mimic_err(MIMIC_EFORMAT, "%s:%zu: more vote rows than %s has rows", v->path,
                             v->lineno, p->path);
    }
    return ferror(v->f) ? mimic_err(MIMIC_EIO, "%s:%zu: read error", v->path, v->lineno) : 0;
}

static void votes_free(votes_t *v) {
    if (v->f) fclose(v->f);
    free(v->line);
    memset(v, 0, sizeof *v);
}

/* Checks the pixel count of the row just parsed: the first row sets a square size that
 * every other row must repeat. */
static int check_row_size(csv_pass *p) {
    if (p->npix == 0) {
        while ((size_t)(p->side + 1) * (size_t)(p->side + 1) <= p->row.n)
            p->side++;
        if (p->row.n == 0 || (size_t)p->side * (size_t)p->side != p->row.n || p->side > (1 << 15))
            return mimic_err(MIMIC_EFORMAT,
                             "%s:%zu: field pixels has %zu values, not a square image", p->path,
                             p->lineno, p->row.n);
        p->npix = p->row.n;
    } else if (p->row.n != p->npix) {
        return mimic_err(MIMIC_EFORMAT, "%s:%zu: field pixels has %zu values, expected %zu (%dx%d)",
                         p->path, p->lineno, p->row.n, p->npix, p->side, p->side);
    }
    return 0;
}

/* Parses one non-blank data line: *label, the pixels into p->row, *usage its Usage field
 * (NULL without that column). Every defect is reported naming the line. */
static int parse_row(csv_pass *p, char *line, int *label, const char **usage) {
    char *fld[CSV_MAX_FIELDS] = {0};
    int nf = split_csv(line, fld, CSV_MAX_FIELDS);
    if (nf != p->cols.ncols)
        return mimic_err(MIMIC_EFORMAT, "%s:%zu: %d fields, the header has %d", p->path, p->lineno,
                         nf, p->cols.ncols);
    if (parse_label(fld[p->cols.emotion], label))
        return mimic_err(MIMIC_EFORMAT, "%s:%zu: field emotion: bad label \"%.20s\"", p->path,
                         p->lineno, fld[p->cols.emotion]);
    size_t where = 0;
    long value = 0;
    int pr = parse_pixels(&p->row, fld[p->cols.pixels], &where, &value);
    if (pr == MIMIC_ENOMEM) return mimic_err(MIMIC_ENOMEM, "%s: out of memory", p->path);
    if (pr == 2)
        return mimic_err(MIMIC_EFORMAT,
                         "%s:%zu: field pixels: value %ld (pixel %zu) is outside 0..255", p->path,
                         p->lineno, value, where);
    if (pr)
        return mimic_err(MIMIC_EFORMAT, "%s:%zu: field pixels: not a number at pixel %zu", p->path,
                         p->lineno, where);
    *usage = p->cols.usage >= 0 ? fld[p->cols.usage] : NULL;
    return check_row_size(p);
}

/* Appends the row's pixels (to all) and its label (to ds). */
static int keep_row(dataset_t *ds, bytes_vec *all, size_t *labcap, const bytes_vec *row,
                    int label) {
    if (bytes_grow(all, all->n + row->n)) return MIMIC_ENOMEM;
    memcpy(all->v + all->n, row->v, row->n);
    all->n += row->n;
    if (ds->n == *labcap) {
        size_t cap = *labcap ? 2 * *labcap : 1024;
        int *l = realloc(ds->labels, cap * sizeof(int));
        if (!l) return MIMIC_ENOMEM;
        ds->labels = l;
        *labcap = cap;
    }
    ds->labels[ds->n++] = label;
    return 0;
}

/* Reads the data lines after the header: every row is checked, the rows whose Usage
 * matches are counted (and kept with keep_pixels). */
static int read_rows(dataset_t *ds, csv_pass *p, FILE *f, const char *usage, int keep_pixels,
                     bytes_vec *all) {
    char *line = NULL;
    size_t linecap = 0, labcap = 0;
    int rc = 0;
    while (!rc && getline(&line, &linecap, f) >= 0) {
        p->lineno++;
        if (!*trim(line)) continue;
        int label = 0;
        const char *row_usage = NULL;
        if ((rc = parse_row(p, line, &label, &row_usage))) break;
        if (p->votes && (rc = votes_next(p->votes, p, row_usage, &label))) break;
        if (label < 0) continue; /* FERPlus: no majority, unknown or not a face */
        if (label + 1 > ds->num_classes) ds->num_classes = label + 1;
        if (usage && strcmp(row_usage, usage) != 0) continue;
        if (!keep_pixels)
            ds->n++;
        else if (keep_row(ds, all, &labcap, &p->row, label))
            rc = mimic_err(MIMIC_ENOMEM, "%s: out of memory", p->path);
    }
    free(line);
    if (!rc && ferror(f)) rc = mimic_err(MIMIC_EIO, "%s:%zu: read error", p->path, p->lineno);
    return rc;
}

int dataset_csv_open(dataset_t *ds, const dataset_opts *o, int keep_pixels) {
    csv_pass p = {.path = o->path, .lineno = 1};
    votes_t votes = {0};
    bytes_vec all = {0};
    char *line = NULL;
    size_t linecap = 0;
    int rc;
    FILE *f = fopen(o->path, "r");
    if (!f) return mimic_err(MIMIC_EIO, "%s: cannot open CSV: %s", o->path, strerror(errno));
    if (o->labels && (rc = votes_open(&votes, o->labels))) goto out;
    if (o->labels) p.votes = &votes;
    if (getline(&line, &linecap, f) < 0) {
        rc = ferror(f) ? mimic_err(MIMIC_EIO, "%s: read error", o->path)
                       : mimic_err(MIMIC_EFORMAT, "%s:1: empty file, expected a header", o->path);
        goto out;
    }
    if ((rc = parse_header(&p.cols, line, o->path, o->usage))) goto out;
    if ((rc = read_rows(ds, &p, f, o->usage, keep_pixels, &all))) goto out;
    if (p.votes && (rc = votes_finish(&votes, &p))) goto out;
    if (ds->n == 0) {
        rc = o->usage ? mimic_err(MIMIC_EINVAL, "%s: no rows with Usage \"%s\"%s", o->path,
                                  o->usage, o->labels ? " and a FERPlus label" : "")
             : o->labels ? mimic_err(MIMIC_EFORMAT, "%s: no rows with a FERPlus label in %s",
                                     o->path, o->labels)
                         : mimic_err(MIMIC_EFORMAT, "%s: no data rows", o->path);
        goto out;
    }
    ds->pixels = all.v;
    all.v = NULL;
    ds->w = ds->h = p.side;
    ds->channels = 1;
out:
    votes_free(&votes);
    free(all.v);
    free(p.row.v);
    free(line);
    fclose(f);
    return rc;
}
