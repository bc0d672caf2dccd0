/* benchjpeg — JPEG ImageFolder trees for the data-path benchmarks, written with
 * TurboJPEG under a temporary directory and removed after. The pixels are photo-like
 * rather than flat: a colour gradient, a few soft blobs and edges, sine textures of
 * several frequencies and a little pixel noise, so that the files (quality 90, 4:2:0)
 * come out near ImageNet's ~0.5 bytes per pixel and cost the entropy decoder what real
 * photos cost. Deterministic for a given seed. */
#ifndef MIMIC_BENCHJPEG_H
#define MIMIC_BENCHJPEG_H

#include <stddef.h>

/* Makes a fresh directory under $TMPDIR (or /tmp) into dir (size dir_len) and writes
 * n w x h JPEGs into 4 class folders c0..c3. Returns 0 and adds the bytes written to
 * *bytes (may be NULL), or -1 after printing why (the directory is removed again). */
int bench_jpeg_folder(char *dir, size_t dir_len, int n, int w, int h, unsigned seed, size_t *bytes);
/* Removes what bench_jpeg_folder(dir, ..., n, ...) wrote, and dir. */
void bench_jpeg_folder_remove(const char *dir, int n);

#endif
