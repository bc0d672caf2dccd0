#include "keyrange.h"

void keyrange_of(size_t total, int S, int s, size_t *lo, size_t *hi) {
    size_t a = (size_t)((double)total * s / S), b = (size_t)((double)total * (s + 1) / S);
    a &= ~(size_t)15;
    b = s + 1 == S ? total : (b & ~(size_t)15);
    *lo = a;
    *hi = b;
}
