#include "posemb.h"

#include "common.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

/* MAE's get_1d_sincos_pos_embed_from_grid for one position: dst (2*quarter) =
 * [sin(pos*omega_k) | cos(pos*omega_k)]. Computed in double like the numpy
 * original, then rounded once to float. */
static void posemb_1d(float *dst, int quarter, double pos) {
    for (int k = 0; k < quarter; k++) {
        double omega = 1.0 / pow(10000.0, (double)k / quarter);
        dst[k] = (float)sin(pos * omega);
        dst[quarter + k] = (float)cos(pos * omega);
    }
}

void posemb_sincos_2d(float *out, int D, int grid, int cls) {
    MIMIC_CHECK(D % 4 == 0);
    int quarter = D / 4;
    if (cls) {
        memset(out, 0, (size_t)D * sizeof *out);
        out += D;
    }
    /* np.meshgrid(grid_w, grid_h) puts the column coordinate first, so the first
     * half of each row embeds the column and the second half the row. */
    for (int r = 0; r < grid; r++)
        for (int c = 0; c < grid; c++) {
            float *row = out + ((size_t)r * grid + c) * D;
            posemb_1d(row, quarter, c);
            posemb_1d(row + D / 2, quarter, r);
        }
}
