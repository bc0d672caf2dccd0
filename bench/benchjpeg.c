#define _GNU_SOURCE
#include "benchjpeg.h"

#include "rng.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <unistd.h>

enum { WAVES = 4, BLOBS = 24 };

/* One photo-like w x h RGB image into px. Sines are evaluated through the product
 * formula sin(a + b) = sin a cos b + cos a sin b from per-column and per-row tables, so
 * that a 500 x 375 image costs a few milliseconds. */
static void paint(uint8_t *px, int w, int h, rng_t *r, float *tab) {
    float g[3][3]; /* per channel: base, x slope, y slope */
    for (int c = 0; c < 3; c++) {
        g[c][0] = 40.0f + 140.0f * rng_uniform(r);
        g[c][1] = (rng_uniform(r) - 0.5f) * 80.0f / (float)w;
        g[c][2] = (rng_uniform(r) - 0.5f) * 80.0f / (float)h;
    }
    float amp[WAVES][3];
    float *sx = tab, *cx = sx + (size_t)WAVES * w, *sy = cx + (size_t)WAVES * w,
          *cy = sy + (size_t)WAVES * h;
    for (int k = 0; k < WAVES; k++) {
        /* periods from ~3 to ~60 pixels: fine texture to broad shading */
        float per = 3.0f * powf(20.0f, rng_uniform(r)), ang = 6.2832f * rng_uniform(r);
        float fx = 6.2832f * cosf(ang) / per, fy = 6.2832f * sinf(ang) / per;
        for (int c = 0; c < 3; c++)
            amp[k][c] = (0.4f + 0.6f * rng_uniform(r)) * (per < 8.0f ? 12.0f : 16.0f);
        for (int x = 0; x < w; x++) {
            sx[k * w + x] = sinf(fx * (float)x);
            cx[k * w + x] = cosf(fx * (float)x);
        }
        for (int y = 0; y < h; y++) {
            sy[k * h + y] = sinf(fy * (float)y);
            cy[k * h + y] = cosf(fy * (float)y);
        }
    }
    float bx[BLOBS], by[BLOBS], br[BLOBS], bc[BLOBS][3];
    for (int k = 0; k < BLOBS; k++) {
        bx[k] = (float)w * rng_uniform(r);
        by[k] = (float)h * rng_uniform(r);
        br[k] = (0.03f + 0.2f * rng_uniform(r)) * (float)(w < h ? w : h);
        for (int c = 0; c < 3; c++)
            bc[k][c] = (rng_uniform(r) - 0.5f) * 120.0f;
    }
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            float v[3];
            for (int c = 0; c < 3; c++)
                v[c] = g[c][0] + g[c][1] * (float)x + g[c][2] * (float)y;
            for (int k = 0; k < WAVES; k++) {
                float s = sx[k * w + x] * cy[k * h + y] + cx[k * w + x] * sy[k * h + y];
                for (int c = 0; c < 3; c++)
                    v[c] += amp[k][c] * s;
            }
            for (int k = 0; k < BLOBS; k++) {
                float dx = (float)x - bx[k], dy = (float)y - by[k];
                float d2 = (dx * dx + dy * dy) / (br[k] * br[k]);
                if (d2 < 1.0f) /* a disc with a soft rim: edges, as objects have */
                    for (int c = 0; c < 3; c++)
                        v[c] += bc[k][c] * (d2 < 0.8f ? 1.0f : 5.0f * (1.0f - d2));
            }
            uint8_t *o = px + ((size_t)y * w + x) * 3;
            for (int c = 0; c < 3; c++) {
                float t = v[c] + (float)rng_below(r, 49) - 24.0f;
                o[c] = (uint8_t)(t < 0.0f ? 0.0f : t > 255.0f ? 255.0f : t);
            }
        }
}

static void file_name(char *p, size_t len, const char *dir, int i) {
    snprintf(p, len, "%s/c%d/%05d.jpg", dir, i % 4, i);
}

int bench_jpeg_folder(char *dir, size_t dir_len, int n, int w, int h, unsigned seed,
                      size_t *bytes) {
    const char *t = getenv("TMPDIR");
    snprintf(dir, dir_len, "%.800s/bench-jpeg-XXXXXX", t ? t : "/tmp");
    if (!mkdtemp(dir)) {
        perror("bench: mkdtemp");
        return -1;
    }
    uint8_t *px = malloc((size_t)w * h * 3);
    float *tab = malloc(sizeof(float) * 2 * WAVES * ((size_t)w + h));
    tjhandle tj = tjInitCompress();
    char p[1024];
    int rc = px && tab && tj ? 0 : -1;
    for (int c = 0; c < 4 && !rc; c++) {
        snprintf(p, sizeof p, "%s/c%d", dir, c);
        rc = mkdir(p, 0755);
    }
    rng_t r;
    rng_seed(&r, seed);
    for (int i = 0; i < n && !rc; i++) {
        paint(px, w, h, &r, tab);
        unsigned char *buf = NULL;
        unsigned long size = 0;
        rc = tjCompress2(tj, px, w, 0, h, TJPF_RGB, &buf, &size, TJSAMP_420, 90, 0) ? -1 : 0;
        file_name(p, sizeof p, dir, i);
        FILE *f = rc ? NULL : fopen(p, "wb");
        if (!f || fwrite(buf, 1, size, f) != size) rc = -1;
        if (f && fclose(f)) rc = -1;
        if (bytes) *bytes += size;
        tjFree(buf);
    }
    if (tj) tjDestroy(tj);
    free(px);
    free(tab);
    if (rc) {
        fprintf(stderr, "bench: cannot write the JPEG folder %s\n", dir);
        bench_jpeg_folder_remove(dir, n);
    }
    return rc;
}

void bench_jpeg_folder_remove(const char *dir, int n) {
    char p[1024];
    for (int i = 0; i < n; i++) {
        file_name(p, sizeof p, dir, i);
        unlink(p);
    }
    for (int c = 0; c < 4; c++) {
        snprintf(p, sizeof p, "%s/c%d", dir, c);
        rmdir(p);
    }
    rmdir(dir);
}
