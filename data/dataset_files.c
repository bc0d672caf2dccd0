/* JPEG sets: ImageFolder trees and RAF-DB-style label lists, listed at open (the
 * decoding is dataset_jpeg.c's; this file must not use TurboJPEG, see dataset_impl.h). */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "common.h"
#include "dataset_impl.h"

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
    ds->channels = 3;
    return 0;
}

/* "name.jpg" -> "name_aligned.jpg" (RAF-DB's list names the original images, its aligned
 * folder holds these). A name without an extension gets the suffix appended. */
static char *aligned_name(const char *name) {
    static const char suffix[] = "_aligned";
    const char *dot = strrchr(name, '.'), *slash = strrchr(name, '/');
    size_t stem = dot && (!slash || dot > slash) ? (size_t)(dot - name) : strlen(name);
    size_t n = strlen(name);
    char *s = malloc(n + sizeof suffix);
    if (!s) return NULL;
    memcpy(s, name, stem);
    memcpy(s + stem, suffix, sizeof suffix - 1);
    memcpy(s + stem + sizeof suffix - 1, name + stem, n - stem + 1);
    return s;
}

static int is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* The image a list line names: dir/name, or else dir/<name with _aligned>. A line whose
 * image is in neither place is an error naming the list, the line and both paths. */
static int list_image(char **out, const dataset_opts *o, size_t lineno, const char *name) {
    *out = path_join(o->path, name);
    if (!*out) return mimic_err(MIMIC_ENOMEM, "%s: out of memory", o->labels);
    if (is_file(*out)) return 0;
    char *alt = aligned_name(name), *full = alt ? path_join(o->path, alt) : NULL;
    free(alt);
    if (full && is_file(full)) {
        free(*out);
        *out = full;
        return 0;
    }
    int rc = full ? mimic_err(MIMIC_EIO, "%s:%zu: image not found: neither %s nor %s is a file",
                              o->labels, lineno, *out, full)
                  : mimic_err(MIMIC_ENOMEM, "%s: out of memory", o->labels);
    free(full);
    free(*out);
    *out = NULL;
    return rc;
}

/* Splits a list line (trimmed, not blank, not a comment) in place into the name and its
 * label counted from o->label_base. */
static int list_line(char *s, const dataset_opts *o, size_t lineno, int *label) {
    size_t len = strlen(s);
    char *sep = s + len;
    while (sep > s && sep[-1] != ' ' && sep[-1] != '\t')
        sep--;
    char *lab = sep, *end;
    while (sep > s && (sep[-1] == ' ' || sep[-1] == '\t'))
        *--sep = '\0';
    errno = 0;
    long v = strtol(lab, &end, 10);
    if (sep == s || errno || end == lab || *end || v < o->label_base || v > (1 << 20))
        return mimic_err(MIMIC_EFORMAT,
                         "%s:%zu: expected \"name label\" (label >= %d, data.label_base), got "
                         "\"%.60s\"",
                         o->labels, lineno, o->label_base, s);
    *label = (int)(v - o->label_base);
    return 0;
}

int dataset_list_open(dataset_t *ds, const dataset_opts *o) {
    struct stat st;
    if (stat(o->path, &st) != 0)
        return mimic_err(MIMIC_EIO, "%s: cannot open image directory: %s", o->path,
                         strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return mimic_err(MIMIC_EIO, "%s: image directory is not a directory", o->path);
    if (o->label_base < 0 || o->label_base > (1 << 20))
        return mimic_err(MIMIC_EINVAL, "%s: data.label_base %d is not in 0..%d", o->labels,
                         o->label_base, 1 << 20);
    FILE *f = fopen(o->labels, "r");
    if (!f)
        return mimic_err(MIMIC_EIO, "%s: cannot open label list: %s", o->labels, strerror(errno));
    char *line = NULL;
    size_t linecap = 0, lineno = 0, cap = 0, prefix = o->usage ? strlen(o->usage) : 0;
    int rc = 0;
    while (!rc && getline(&line, &linecap, f) >= 0) {
        lineno++;
        char *s = line;
        while (*s == ' ' || *s == '\t')
            s++;
        size_t len = strlen(s);
        while (len && strchr(" \t\r\n", s[len - 1]))
            s[--len] = '\0';
        int label = 0;
        if (!len || s[0] == '#' || (rc = list_line(s, o, lineno, &label))) continue;
        if (label + 1 > ds->num_classes) ds->num_classes = label + 1;
        if (prefix && strncmp(s, o->usage, prefix) != 0) continue; /* RAF-DB: train_, test_ */
        char *file;
        if (!(rc = list_image(&file, o, lineno, s))) rc = push_sample(ds, &cap, file, label);
    }
    if (!rc && ferror(f)) rc = mimic_err(MIMIC_EIO, "%s:%zu: read error", o->labels, lineno);
    free(line);
    fclose(f);
    if (rc) return rc;
    if (ds->n == 0)
        return o->usage ? mimic_err(MIMIC_EINVAL, "%s: no lines whose name starts with \"%s\"",
                                    o->labels, o->usage)
                        : mimic_err(MIMIC_EFORMAT, "%s: no \"name label\" lines", o->labels);
    ds->channels = 3;
    return 0;
}

void dataset_files_free(dataset_t *ds) {
    if (ds->files)
        for (size_t i = 0; i < ds->n; i++)
            free(ds->files[i]);
    free(ds->files);
    ds->files = NULL;
}
