#include "straggler.h"

#include <math.h>
#include <stdlib.h>

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double straggler_median(double *v, int n) {
    if (n <= 0) return 0;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int straggler_step(straggler_t *w, double step_s, double median_s, double k, int n) {
    w->step_s = step_s;
    if (median_s <= 0) return STRAGGLER_SAME; /* no one to compare with */
    w->median_s = median_s;
    w->ratio = step_s / median_s;
    if (k > 0 && w->ratio > k) {
        w->slow++;
        if (!w->flagged && w->slow >= n) {
            w->flagged = 1;
            return STRAGGLER_FLAGGED;
        }
        return STRAGGLER_SAME;
    }
    w->slow = 0;
    if (!w->flagged) return STRAGGLER_SAME;
    w->flagged = 0;
    return STRAGGLER_RECOVERED;
}

uint32_t straggler_chunk(const straggler_t *w, uint32_t chunk_size) {
    if (!w->flagged || w->ratio <= 1 || chunk_size == 0) return 0;
    uint32_t floor_n = (chunk_size + STRAGGLER_MIN_SHARE - 1) / STRAGGLER_MIN_SHARE;
    double share = floor((double)chunk_size / w->ratio);
    uint32_t c = share < floor_n ? floor_n : (uint32_t)share;
    return c >= chunk_size ? 0 : c;
}
