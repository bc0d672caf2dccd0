/* safetensors — read and write tensors in the safetensors format (huggingface/safetensors).
 *
 * Layout: u64 little-endian N, N bytes of JSON header {"__metadata__": {str: str},
 * "name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...}, then the
 * raw little-endian data (offsets relative to its start). Checkpoints, golden test data
 * and exported weights all use it, so PyTorch loads them with safetensors.torch.load_file.
 *
 * Writer: st_writer_new, st_writer_add (borrows the data until save), st_writer_meta,
 * st_writer_save (atomic: temp file, fsync, rename, fsync dir), st_writer_destroy.
 * Reader: st_open loads and validates the whole file, checksums included (any defect ->
 * MIMIC_EFORMAT with a message naming the file and tensor); st_find / st_at / st_meta look inside;
 * st_read_f32 copies one tensor out after checking dtype and shape; st_close. */
#ifndef MIMIC_SAFETENSORS_H
#define MIMIC_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER (100u * 1024u * 1024u) /* larger headers are rejected as hostile */

typedef enum {
    ST_F64,
    ST_F32,
    ST_F16,
    ST_BF16,
    ST_I64,
    ST_I32,
    ST_I16,
    ST_I8,
    ST_U64,
    ST_U32,
    ST_U16,
    ST_U8,
    ST_BOOL,
    ST_NDTYPES
} st_dtype_t;

/* "F32" -> ST_F32; -1 for an unknown name. */
int st_dtype_parse(const char *name);
const char *st_dtype_name(st_dtype_t dt);
size_t st_dtype_size(st_dtype_t dt);

typedef struct {
    const char *name;
    st_dtype_t dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;
    size_t nbytes;
    const void *data; /* aligned for dtype; valid until st_close */
} st_tensor_t;

typedef struct st_writer st_writer_t;
typedef struct st_file st_file_t;

/* ---- writer ---- */
st_writer_t *st_writer_new(void);
/* Queues a tensor; `data` (nbytes = prod(shape) * dtype size, little-endian) is read at
 * save time, so the caller keeps it alive until then. dtype is a name ("F32", "I64",
 * "I32", "U8", ...). Returns MIMIC_EINVAL for a duplicate/empty name, unknown dtype or
 * bad shape. Tensors are written in the order added. */
int st_writer_add(st_writer_t *w, const char *name, const char *dtype, const int64_t *shape,
                  int ndim, const void *data);
/* Sets (or replaces) a __metadata__ entry. Strings are copied. */
int st_writer_meta(st_writer_t *w, const char *key, const char *value);
/* Writes path.tmp.<pid>, fsyncs it, renames it over path and fsyncs the directory, so a
 * crash leaves either the old or the new file. MIMIC_EIO names the path on failure.
 * Every tensor's CRC-32 goes into the metadata as "crc32.<name>" (8 hex digits), and
 * st_open refuses a file whose tensor no longer matches it (damage in place, same
 * size); st_writer_checksums(w, 0) leaves them out (a file laid out exactly as
 * another writer's). */
void st_writer_checksums(st_writer_t *w, int on);
int st_writer_save(st_writer_t *w, const char *path);
void st_writer_destroy(st_writer_t **w);

/* ---- reader ---- */
int st_open(st_file_t **out, const char *path);
void st_close(st_file_t **f);
const char *st_path(const st_file_t *f);
int st_count(const st_file_t *f);
/* Tensors in header order; NULL when i is out of range. */
const st_tensor_t *st_at(const st_file_t *f, int i);
const st_tensor_t *st_find(const st_file_t *f, const char *name);
/* Metadata value or NULL. */
const char *st_meta(const st_file_t *f, const char *key);
/* Metadata entries in file order (to copy or list them): the i-th value, its key in
 * *key; NULL when i is out of range. */
int st_meta_count(const st_file_t *f);
const char *st_meta_at(const st_file_t *f, int i, const char **key);
/* Copies F32 tensor `name` of shape expect_shape[0..ndim) into dst. Errors (naming the
 * file, the tensor and both shapes): MIMIC_EFORMAT if missing or not F32,
 * MIMIC_ESHAPE if the shape differs. */
int st_read_f32(const st_file_t *f, const char *name, float *dst, const int64_t *expect_shape,
                int ndim);

#endif
