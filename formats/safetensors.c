#define _POSIX_C_SOURCE 200809L
#include "safetensors.h"

#include "common.h"
#include "json.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; this module copies it as host memory"
#endif

/* ------------------------------------------------------------------ dtypes */

static const struct {
    const char *name;
    size_t size;
} dtypes[ST_NDTYPES] = {
    [ST_F64] = {"F64", 8},   [ST_F32] = {"F32", 4}, [ST_F16] = {"F16", 2}, [ST_BF16] = {"BF16", 2},
    [ST_I64] = {"I64", 8},   [ST_I32] = {"I32", 4}, [ST_I16] = {"I16", 2}, [ST_I8] = {"I8", 1},
    [ST_U64] = {"U64", 8},   [ST_U32] = {"U32", 4}, [ST_U16] = {"U16", 2}, [ST_U8] = {"U8", 1},
    [ST_BOOL] = {"BOOL", 1},
};

int st_dtype_parse(const char *name) {
    for (int k = 0; k < ST_NDTYPES; k++)
        if (strcmp(dtypes[k].name, name) == 0) return k;
    return -1;
}

const char *st_dtype_name(st_dtype_t dt) {
    return (unsigned)dt < ST_NDTYPES ? dtypes[dt].name : "?";
}

size_t st_dtype_size(st_dtype_t dt) {
    return (unsigned)dt < ST_NDTYPES ? dtypes[dt].size : 0;
}

/* prod(shape) * dsize with overflow checks; -1 if it does not fit in int64/size_t. */
static int shape_bytes(const int64_t *shape, int ndim, size_t dsize, int64_t *numel,
                       size_t *nbytes) {
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0) return -1;
        if (shape[d] != 0 && n > INT64_MAX / shape[d]) return -1;
        n *= shape[d];
    }
    if ((uint64_t)n > SIZE_MAX / dsize || (uint64_t)n > (uint64_t)INT64_MAX / dsize) return -1;
    *numel = n;
    *nbytes = (size_t)n * dsize;
    return 0;
}

/* Tensor names come from files: keep error messages on one readable line. */
static const char *printable(char out[88], const char *s) {
    size_t k = 0;
    for (; k < 80 && s[k]; k++)
        out[k] = (unsigned char)s[k] < 0x20 ? '?' : s[k];
    if (s[k])
        memcpy(out + k, "...", 4);
    else
        out[k] = '\0';
    return out;
}

static void shape_str(char *out, size_t cap, const int64_t *shape, int ndim) {
    size_t n = (size_t)snprintf(out, cap, "[");
    for (int d = 0; d < ndim && n < cap; d++)
        n += (size_t)snprintf(out + n, cap - n, d ? ",%lld" : "%lld", (long long)shape[d]);
    if (n < cap) snprintf(out + n, cap - n, "]");
}

/* ------------------------------------------------------------------ writer */

typedef struct {
    char *name;
    st_dtype_t dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t nbytes;
    const void *data;
} wtensor_t;

struct st_writer {
    wtensor_t *t;
    int n, cap;
    char **mkey, **mval;
    int nmeta, metacap;
    int no_checksums;
};

st_writer_t *st_writer_new(void) {
    st_writer_t *w = calloc(1, sizeof *w);
    if (!w) mimic_err(MIMIC_ENOMEM, "safetensors: out of memory");
    return w;
}

void st_writer_destroy(st_writer_t **wp) {
    if (!wp || !*wp) return;
    st_writer_t *w = *wp;
    for (int k = 0; k < w->n; k++)
        free(w->t[k].name);
    for (int k = 0; k < w->nmeta; k++)
        free(w->mkey[k]), free(w->mval[k]);
    free(w->t);
    free(w->mkey);
    free(w->mval);
    free(w);
    *wp = NULL;
}

static int valid_text(const char *s) {
    return json_utf8_valid(s, strlen(s));
}

int st_writer_add(st_writer_t *w, const char *name, const char *dtype, const int64_t *shape,
                  int ndim, const void *data) {
    MIMIC_CHECK(w && name && dtype);
    char pn[88];
    int dt = st_dtype_parse(dtype);
    if (!name[0] || !valid_text(name) || strcmp(name, "__metadata__") == 0)
        return mimic_err(MIMIC_EINVAL, "safetensors: bad tensor name \"%s\"", printable(pn, name));
    if (dt < 0)
        return mimic_err(MIMIC_EINVAL, "safetensors: tensor \"%s\": unknown dtype \"%s\"",
                         printable(pn, name), dtype);
    if (ndim < 0 || ndim > ST_MAX_DIMS || (ndim > 0 && !shape))
        return mimic_err(MIMIC_EINVAL, "safetensors: tensor \"%s\": bad ndim %d",
                         printable(pn, name), ndim);
    for (int k = 0; k < w->n; k++)
        if (strcmp(w->t[k].name, name) == 0)
            return mimic_err(MIMIC_EINVAL, "safetensors: tensor \"%s\" added twice",
                             printable(pn, name));
    int64_t numel;
    size_t nbytes;
    if (shape_bytes(shape, ndim, dtypes[dt].size, &numel, &nbytes) != 0)
        return mimic_err(MIMIC_EINVAL, "safetensors: tensor \"%s\": bad shape",
                         printable(pn, name));
    if (nbytes && !data)
        return mimic_err(MIMIC_EINVAL, "safetensors: tensor \"%s\": no data", printable(pn, name));
    if (w->n == w->cap) {
        int ncap = w->cap ? 2 * w->cap : 16;
        wtensor_t *t = realloc(w->t, (size_t)ncap * sizeof *t);
        if (!t) return mimic_err(MIMIC_ENOMEM, "safetensors: out of memory");
        w->t = t;
        w->cap = ncap;
    }
    wtensor_t *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return mimic_err(MIMIC_ENOMEM, "safetensors: out of memory");
    t->dtype = (st_dtype_t)dt;
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++)
        t->shape[d] = shape[d];
    t->nbytes = nbytes;
    t->data = data;
    w->n++;
    return 0;
}

int st_writer_meta(st_writer_t *w, const char *key, const char *value) {
    MIMIC_CHECK(w && key && value);
    if (!valid_text(key) || !valid_text(value))
        return mimic_err(MIMIC_EINVAL, "safetensors: metadata \"%.80s\" is not valid UTF-8", key);
    char *v = strdup(value);
    if (!v) return mimic_err(MIMIC_ENOMEM, "safetensors: out of memory");
    for (int k = 0; k < w->nmeta; k++) {
        if (strcmp(w->mkey[k], key) == 0) {
            free(w->mval[k]);
            w->mval[k] = v;
            return 0;
        }
    }
    if (w->nmeta == w->metacap) {
        int ncap = w->metacap ? 2 * w->metacap : 8;
        char **a = realloc(w->mkey, (size_t)ncap * sizeof *a);
        if (a) w->mkey = a;
        char **b = a ? realloc(w->mval, (size_t)ncap * sizeof *b) : NULL;
        if (b) w->mval = b;
        if (!a || !b) {
            free(v);
            return mimic_err(MIMIC_ENOMEM, "safetensors: out of memory");
        }
        w->metacap = ncap;
    }
    if (!(w->mkey[w->nmeta] = strdup(key))) {
        free(v);
        return mimic_err(MIMIC_ENOMEM, "safetensors: out of memory");
    }
    w->mval[w->nmeta++] = v;
    return 0;
}

/* Growable text buffer for the header; `oom` is sticky so callers check once. */
typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} sbuf_t;

static void sb_reserve(sbuf_t *b, size_t extra) {
    if (b->oom || b->n + extra + 1 <= b->cap) return;
    size_t ncap = b->cap ? b->cap : 256;
    while (ncap < b->n + extra + 1)
        ncap *= 2;
    char *p = realloc(b->p, ncap);
    if (!p) {
        b->oom = 1;
        return;
    }
    b->p = p;
    b->cap = ncap;
}

static void sb_printf(sbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf_t *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int need = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    sb_reserve(b, (size_t)need);
    if (b->oom) return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->n, b->cap - b->n, fmt, ap);
    va_end(ap);
    b->n += (size_t)need;
}

static void sb_json_string(sbuf_t *b, const char *s) {
    size_t need = json_escape(NULL, 0, s);
    sb_reserve(b, need);
    if (b->oom) return;
    json_escape(b->p + b->n, b->cap - b->n, s);
    b->n += need;
}

/* Compact JSON, __metadata__ first (as huggingface's writer does), tensors in the order
 * added with contiguous offsets, then spaces so the data starts 8-byte aligned. */
static int build_header(const st_writer_t *w, sbuf_t *b) {
    sb_printf(b, "{");
    if (w->nmeta) {
        sb_printf(b, "\"__metadata__\":{");
        for (int k = 0; k < w->nmeta; k++) {
            if (k) sb_printf(b, ",");
            sb_json_string(b, w->mkey[k]);
            sb_printf(b, ":");
            sb_json_string(b, w->mval[k]);
        }
        sb_printf(b, "}");
    }
    uint64_t off = 0;
    for (int k = 0; k < w->n; k++) {
        const wtensor_t *t = &w->t[k];
        if (k || w->nmeta) sb_printf(b, ",");
        sb_json_string(b, t->name);
        sb_printf(b, ":{\"dtype\":\"%s\",\"shape\":[", dtypes[t->dtype].name);
        for (int d = 0; d < t->ndim; d++)
            sb_printf(b, d ? ",%lld" : "%lld", (long long)t->shape[d]);
        sb_printf(b, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                  (unsigned long long)(off + t->nbytes));
        off += t->nbytes;
    }
    sb_printf(b, "}");
    while (!b->oom && (8 + b->n) % 8)
        sb_printf(b, " ");
    return b->oom ? MIMIC_ENOMEM : 0;
}

static int fsync_parent_dir(const char *path) {
    char *dir = strdup(path);
    if (!dir) return mimic_err(MIMIC_ENOMEM, "safetensors: out of memory");
    char *slash = strrchr(dir, '/');
    const char *d = dir;
    if (!slash)
        d = ".";
    else if (slash == dir)
        slash[1] = '\0';
    else
        *slash = '\0';
    int rc = 0, fd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    /* Some filesystems cannot fsync a directory (EINVAL); the rename itself went through. */
    if (fd < 0 || (fsync(fd) != 0 && errno != EINVAL))
        rc = mimic_err(MIMIC_EIO, "%s: cannot sync directory %s: %s", path, d, strerror(errno));
    if (fd >= 0) close(fd);
    free(dir);
    return rc;
}

/* The metadata key holding a tensor's checksum (malloc'ed; NULL when out of memory). */
static char *crc_key(const char *name) {
    size_t n = strlen(name) + 7;
    char *k = malloc(n);
    if (k) snprintf(k, n, "crc32.%s", name);
    return k;
}

/* CRC-32 (zlib's) of every tensor's bytes as metadata "crc32.<name>" (8 hex digits),
 * which st_open verifies: a file damaged in place (same size) is refused, not served. */
void st_writer_checksums(st_writer_t *w, int on) {
    w->no_checksums = !on;
}

static int add_checksums(st_writer_t *w) {
    char val[16];
    if (w->no_checksums) return 0;
    for (int i = 0; i < w->n; i++) {
        const wtensor_t *t = &w->t[i];
        char *key = crc_key(t->name);
        if (!key) return mimic_err(MIMIC_ENOMEM, "safetensors: out of memory");
        snprintf(val, sizeof val, "%08lx", crc32_z(0, t->data, t->nbytes));
        int rc = st_writer_meta(w, key, val);
        free(key);
        if (rc) return rc;
    }
    return 0;
}

int st_writer_save(st_writer_t *w, const char *path) {
    MIMIC_CHECK(w && path);
    sbuf_t hdr = {0};
    char *tmp = NULL;
    FILE *fp = NULL;
    int rc = add_checksums(w);
    if (!rc) rc = build_header(w, &hdr);
    if (rc) {
        mimic_err(rc, "%s: out of memory building the header", path);
        goto fail;
    }
    if (hdr.n > ST_MAX_HEADER) { /* readers, ours included, would refuse the file */
        rc = mimic_err(MIMIC_EINVAL, "%s: header of %zu bytes exceeds the 100 MB limit", path,
                       hdr.n);
        goto fail;
    }
    size_t tmplen = strlen(path) + 32;
    if (!(tmp = malloc(tmplen))) {
        rc = mimic_err(MIMIC_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    snprintf(tmp, tmplen, "%s.tmp.%ld", path, (long)getpid());
    if (!(fp = fopen(tmp, "wbe"))) { /* e: O_CLOEXEC, so forked workers do not inherit it */
        rc = mimic_err(MIMIC_EIO, "%s: cannot create %s: %s", path, tmp, strerror(errno));
        goto fail;
    }
    unsigned char len8[8];
    for (int k = 0; k < 8; k++)
        len8[k] = (unsigned char)((uint64_t)hdr.n >> (8 * k));
    int ok = fwrite(len8, 1, 8, fp) == 8 && fwrite(hdr.p, 1, hdr.n, fp) == hdr.n;
    for (int k = 0; ok && k < w->n; k++)
        ok = w->t[k].nbytes == 0 || fwrite(w->t[k].data, 1, w->t[k].nbytes, fp) == w->t[k].nbytes;
    ok = ok && fflush(fp) == 0 && fsync(fileno(fp)) == 0;
    int saved = errno;
    if (fclose(fp) != 0 && ok) ok = 0, saved = errno;
    fp = NULL;
    if (!ok) {
        rc = mimic_err(MIMIC_EIO, "%s: cannot write %s: %s", path, tmp, strerror(saved));
        goto fail;
    }
    if (rename(tmp, path) != 0) {
        rc = mimic_err(MIMIC_EIO, "%s: cannot rename %s over it: %s", path, tmp, strerror(errno));
        goto fail;
    }
    free(tmp);
    free(hdr.p);
    return fsync_parent_dir(path);
fail:
    if (fp) fclose(fp);
    if (tmp) unlink(tmp);
    free(tmp);
    free(hdr.p);
    return rc;
}

/* ------------------------------------------------------------------ reader */

struct st_file {
    char *path;
    unsigned char *buf; /* the whole file */
    size_t size;
    json_value_t *header; /* names and metadata point into it */
    st_tensor_t *t;
    void **copy;          /* per tensor: an aligned copy if the file placed it misaligned */
    st_tensor_t **byname; /* sorted by name, for st_find */
    int n;
};

static int read_all(st_file_t *f) {
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return mimic_err(MIMIC_EIO, "%s: cannot open: %s", f->path, strerror(errno));
    struct stat sb;
    int rc = 0;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        rc = mimic_err(MIMIC_EIO, "%s: not a readable regular file", f->path);
        goto done;
    }
    f->size = (size_t)sb.st_size;
    void *p = NULL;
    if (posix_memalign(&p, 64, f->size ? f->size : 1) != 0) {
        rc = mimic_err(MIMIC_ENOMEM, "%s: out of memory reading %zu bytes", f->path, f->size);
        goto done;
    }
    f->buf = p;
    for (size_t got = 0; got < f->size;) {
        ssize_t r = read(fd, f->buf + got, f->size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            rc = mimic_err(MIMIC_EIO, "%s: read failed after %zu of %zu bytes: %s", f->path, got,
                           f->size, r < 0 ? strerror(errno) : "file shrank");
            goto done;
        }
        got += (size_t)r;
    }
done:
    close(fd);
    return rc;
}

static int parse_metadata(st_file_t *f, const json_value_t *m) {
    char pn[88];
    if (m->type != JSON_OBJECT)
        return mimic_err(MIMIC_EFORMAT, "%s: __metadata__ is not an object", f->path);
    for (int k = 0; k < m->n; k++) {
        const json_value_t *v = &m->items[k];
        if (v->type != JSON_STRING)
            return mimic_err(MIMIC_EFORMAT, "%s: __metadata__ \"%s\" is not a string", f->path,
                             printable(pn, m->keys[k].str));
        if (strlen(v->str) != v->len || strlen(m->keys[k].str) != m->keys[k].len)
            return mimic_err(MIMIC_EFORMAT, "%s: __metadata__ \"%s\" contains a NUL character",
                             f->path, printable(pn, m->keys[k].str));
    }
    return 0;
}

/* Non-negative exact integer, as shapes and offsets must be. */
static int as_index(const json_value_t *v, int64_t *out) {
    if (v->type != JSON_NUMBER || !v->is_int || v->i < 0) return -1;
    *out = v->i;
    return 0;
}

static int parse_tensor(st_file_t *f, st_tensor_t *t, uint64_t *begin, const json_value_t *key,
                        const json_value_t *v, size_t data_size) {
    char pn[88];
    const char *name = printable(pn, key->str);
    if (key->len == 0 || strlen(key->str) != key->len)
        return mimic_err(MIMIC_EFORMAT, "%s: tensor name \"%s\" is empty or contains NUL", f->path,
                         name);
    if (v->type != JSON_OBJECT)
        return mimic_err(MIMIC_EFORMAT, "%s: tensor \"%s\": entry is not an object", f->path, name);
    for (int k = 0; k < v->n; k++) {
        const char *field = v->keys[k].str;
        char pf[88];
        if (strcmp(field, "dtype") && strcmp(field, "shape") && strcmp(field, "data_offsets"))
            return mimic_err(MIMIC_EFORMAT, "%s: tensor \"%s\": unknown field \"%.40s\"", f->path,
                             name, printable(pf, field));
    }
    const json_value_t *dt = json_get(v, "dtype"), *sh = json_get(v, "shape"),
                       *off = json_get(v, "data_offsets");
    char pd[88];
    if (!dt || dt->type != JSON_STRING || st_dtype_parse(dt->str) < 0)
        return mimic_err(MIMIC_EFORMAT, "%s: tensor \"%s\": missing or unknown dtype \"%.20s\"",
                         f->path, name, dt && dt->type == JSON_STRING ? printable(pd, dt->str) : "");
    t->dtype = (st_dtype_t)st_dtype_parse(dt->str);
    if (!sh || sh->type != JSON_ARRAY || sh->n > ST_MAX_DIMS)
        return mimic_err(MIMIC_EFORMAT, "%s: tensor \"%s\": shape missing or over %d dims", f->path,
                         name, ST_MAX_DIMS);
    t->ndim = sh->n;
    for (int d = 0; d < sh->n; d++)
        if (as_index(&sh->items[d], &t->shape[d]) != 0)
            return mimic_err(MIMIC_EFORMAT,
                             "%s: tensor \"%s\": shape[%d] is not a non-negative "
                             "integer",
                             f->path, name, d);
    if (shape_bytes(t->shape, t->ndim, dtypes[t->dtype].size, &t->numel, &t->nbytes) != 0)
        return mimic_err(MIMIC_EFORMAT, "%s: tensor \"%s\": shape size overflows", f->path, name);
    int64_t b, e;
    if (!off || off->type != JSON_ARRAY || off->n != 2 || as_index(&off->items[0], &b) ||
        as_index(&off->items[1], &e))
        return mimic_err(MIMIC_EFORMAT, "%s: tensor \"%s\": data_offsets must be [begin, end]",
                         f->path, name);
    if (e < b)
        return mimic_err(MIMIC_EFORMAT,
                         "%s: tensor \"%s\": data_offsets [%lld, %lld] end before begin", f->path,
                         name, (long long)b, (long long)e);
    if ((uint64_t)e > data_size)
        return mimic_err(MIMIC_EFORMAT,
                         "%s: tensor \"%s\": data_offsets [%lld, %lld] outside the "
                         "%zu-byte data section",
                         f->path, name, (long long)b, (long long)e, data_size);
    if ((uint64_t)(e - b) != t->nbytes)
        return mimic_err(MIMIC_EFORMAT,
                         "%s: tensor \"%s\": data_offsets span %lld bytes but %s "
                         "shape needs %zu",
                         f->path, name, (long long)(e - b), dt->str, t->nbytes);
    t->name = key->str;
    *begin = (uint64_t)b;
    return 0;
}

typedef struct {
    uint64_t begin, end;
    const char *name;
} span_t;

static int cmp_span(const void *a, const void *b) {
    const span_t *x = a, *y = b;
    return (x->begin > y->begin) - (x->begin < y->begin);
}

static int cmp_name(const void *a, const void *b) {
    return strcmp((*(st_tensor_t *const *)a)->name, (*(st_tensor_t *const *)b)->name);
}

static int check_overlaps(const st_file_t *f, const uint64_t *begin) {
    char pa[88], pb[88];
    span_t *s = malloc((size_t)f->n * sizeof *s + 1);
    if (!s) return mimic_err(MIMIC_ENOMEM, "%s: out of memory", f->path);
    int n = 0, rc = 0;
    for (int k = 0; k < f->n; k++) /* empty tensors occupy no bytes and cannot overlap */
        if (f->t[k].nbytes) s[n++] = (span_t){begin[k], begin[k] + f->t[k].nbytes, f->t[k].name};
    qsort(s, (size_t)n, sizeof *s, cmp_span);
    for (int k = 1; k < n && !rc; k++)
        if (s[k].begin < s[k - 1].end)
            rc = mimic_err(MIMIC_EFORMAT, "%s: tensors \"%s\" and \"%s\" overlap", f->path,
                           printable(pa, s[k - 1].name), printable(pb, s[k].name));
    free(s);
    return rc;
}

static int parse_header(st_file_t *f, size_t hlen) {
    char err[200];
    int rc = json_parse(&f->header, (const char *)f->buf + 8, hlen, err, sizeof err);
    if (rc) return mimic_err(rc, "%s: header JSON: %s", f->path, err);
    const json_value_t *root = f->header;
    if (root->type != JSON_OBJECT)
        return mimic_err(MIMIC_EFORMAT, "%s: header is not a JSON object", f->path);
    f->t = calloc((size_t)root->n + 1, sizeof *f->t);
    f->copy = calloc((size_t)root->n + 1, sizeof *f->copy);
    f->byname = calloc((size_t)root->n + 1, sizeof *f->byname);
    if (!f->t || !f->copy || !f->byname)
        return mimic_err(MIMIC_ENOMEM, "%s: out of memory", f->path);
    uint64_t *begin = calloc((size_t)root->n + 1, sizeof *begin);
    if (!begin) return mimic_err(MIMIC_ENOMEM, "%s: out of memory", f->path);
    size_t data_start = 8 + hlen, data_size = f->size - data_start;
    for (int k = 0; k < root->n && !rc; k++) {
        if (strcmp(root->keys[k].str, "__metadata__") == 0) {
            rc = parse_metadata(f, &root->items[k]);
            continue;
        }
        rc = parse_tensor(f, &f->t[f->n], &begin[f->n], &root->keys[k], &root->items[k], data_size);
        if (!rc) f->n++;
    }
    if (!rc) rc = check_overlaps(f, begin);
    for (int k = 0; !rc && k < f->n; k++) {
        st_tensor_t *t = &f->t[k];
        const unsigned char *src = f->buf + data_start + begin[k];
        f->byname[k] = t;
        t->data = src;
        if (t->nbytes == 0) t->data = f->buf; /* never read; aligned like every data pointer */
        if (t->nbytes == 0 || (uintptr_t)src % dtypes[t->dtype].size == 0) continue;
        /* Contiguous files need not align every tensor; hand out aligned memory anyway. */
        if (!(f->copy[k] = malloc(t->nbytes))) {
            rc = mimic_err(MIMIC_ENOMEM, "%s: out of memory", f->path);
            break;
        }
        memcpy(f->copy[k], src, t->nbytes);
        t->data = f->copy[k];
    }
    free(begin);
    if (!rc) qsort(f->byname, (size_t)f->n, sizeof *f->byname, cmp_name);
    return rc;
}

/* Every tensor that has a "crc32.<name>" entry (files we wrote) must match it. */
static int verify_checksums(const st_file_t *f) {
    for (int i = 0; i < f->n; i++) {
        const st_tensor_t *t = &f->t[i];
        char *key = crc_key(t->name);
        if (!key) return mimic_err(MIMIC_ENOMEM, "%s: out of memory", f->path);
        const char *want = st_meta(f, key);
        free(key);
        if (!want) continue;
        char *end;
        unsigned long stored = strtoul(want, &end, 16);
        unsigned long got = crc32_z(0, t->data, t->nbytes);
        if (*end || end == want)
            return mimic_err(MIMIC_EFORMAT, "%s: tensor %s: its checksum metadata is not hex",
                             f->path, t->name);
        if (stored != got)
            return mimic_err(MIMIC_EFORMAT,
                             "%s: tensor %s: checksum %08lx, stored %08lx: the file is corrupt",
                             f->path, t->name, got, stored);
    }
    return 0;
}

int st_open(st_file_t **out, const char *path) {
    MIMIC_CHECK(out && path);
    *out = NULL;
    st_file_t *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        return mimic_err(MIMIC_ENOMEM, "%s: out of memory", path);
    }
    int rc = read_all(f);
    if (rc) goto fail;
    if (f->size < 8) {
        rc = mimic_err(MIMIC_EFORMAT, "%s: file is %zu bytes, too short for a safetensors header",
                       path, f->size);
        goto fail;
    }
    uint64_t hlen = 0;
    for (int k = 7; k >= 0; k--)
        hlen = (hlen << 8) | f->buf[k];
    if (hlen > ST_MAX_HEADER || hlen > f->size - 8) {
        rc = mimic_err(MIMIC_EFORMAT, "%s: header length %llu exceeds %s (%zu bytes)", path,
                       (unsigned long long)hlen,
                       hlen > ST_MAX_HEADER ? "the 100 MB limit" : "the file", f->size);
        goto fail;
    }
    if ((rc = parse_header(f, (size_t)hlen)) || (rc = verify_checksums(f))) goto fail;
    *out = f;
    return 0;
fail:
    st_close(&f);
    return rc;
}

void st_close(st_file_t **fp) {
    if (!fp || !*fp) return;
    st_file_t *f = *fp;
    if (f->copy)
        for (int k = 0; k < f->n; k++)
            free(f->copy[k]);
    free(f->copy);
    free(f->byname);
    free(f->t);
    json_destroy(&f->header);
    free(f->buf);
    free(f->path);
    free(f);
    *fp = NULL;
}

const char *st_path(const st_file_t *f) {
    return f->path;
}
int st_count(const st_file_t *f) {
    return f->n;
}

const st_tensor_t *st_at(const st_file_t *f, int i) {
    return i >= 0 && i < f->n ? &f->t[i] : NULL;
}

const st_tensor_t *st_find(const st_file_t *f, const char *name) {
    int lo = 0, hi = f->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        const st_tensor_t *t = f->byname[mid];
        int c = strcmp(name, t->name);
        if (!c) return t;
        if (c < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return NULL;
}

/* parse_metadata has checked that __metadata__, when present, maps strings to strings. */
const char *st_meta(const st_file_t *f, const char *key) {
    const json_value_t *v = json_get(json_get(f->header, "__metadata__"), key);
    return v ? v->str : NULL;
}

int st_meta_count(const st_file_t *f) {
    const json_value_t *m = json_get(f->header, "__metadata__");
    return m ? m->n : 0;
}

const char *st_meta_at(const st_file_t *f, int i, const char **key) {
    const json_value_t *m = json_get(f->header, "__metadata__");
    if (!m || i < 0 || i >= m->n) return NULL;
    if (key) *key = m->keys[i].str;
    return m->items[i].str;
}

int st_read_f32(const st_file_t *f, const char *name, float *dst, const int64_t *expect_shape,
                int ndim) {
    MIMIC_CHECK(f && name && dst && ndim >= 0 && (ndim == 0 || expect_shape));
    const st_tensor_t *t = st_find(f, name);
    if (!t) return mimic_err(MIMIC_EFORMAT, "%s: no tensor \"%s\"", f->path, name);
    if (t->dtype != ST_F32)
        return mimic_err(MIMIC_EFORMAT, "%s: tensor \"%s\" is %s, expected F32", f->path, name,
                         dtypes[t->dtype].name);
    int same = t->ndim == ndim;
    for (int d = 0; same && d < ndim; d++)
        same = t->shape[d] == expect_shape[d];
    if (!same) {
        char got[200], want[200];
        shape_str(got, sizeof got, t->shape, t->ndim);
        shape_str(want, sizeof want, expect_shape, ndim > ST_MAX_DIMS ? ST_MAX_DIMS : ndim);
        return mimic_err(MIMIC_ESHAPE, "%s: tensor \"%s\" has shape %s, expected %s", f->path, name,
                         got, want);
    }
    if (t->nbytes) memcpy(dst, t->data, t->nbytes);
    return 0;
}
