/* RMSNorm over groups of channels, forward and backward, as one CPU kernel (the PyTorch
 * forms in archs/blocks.py - nn.RMSNorm, GatedRMSNorm without a gate - are what it is
 * tested against).
 *
 *     rstd_{r,g} = 1 / sqrt(mean_{s < S} x_{r,g,s}^2 + eps)
 *     out_{r,g,s} = x_{r,g,s} * rstd_{r,g} * w_{g,s}
 *
 * Why: at the small models' sizes ((8 * 256) rows of 64 or 128 channels) PyTorch runs this as
 * ~6 elementwise passes forward and ~12 backward over (rows, channels) tensors, each a few
 * tens of microseconds of overhead and a trip through memory: about 1 ms a norm per training
 * step, 2-3 ms of a small Mamba-2's step. Here a row is read once forward and twice backward.
 *
 * Backward, with q = g_out * w:
 *     g_x = rstd * q - x * rstd^3 * mean_s(q * x)        g_w = sum over rows of g_out * x * rstd
 * g_w is summed per thread into its own row of gw_part (nthreads, G * S), in a fixed order,
 * and those rows by the caller: deterministic for a given thread count.
 *
 * Layouts: x (rows, G * S) with row stride s_x, channels packed; out, g_out, g_x packed
 * (rows, G * S); rstd (rows, G); w (G * S) or NULL (no weight: w = 1).
 */
#include "_native.h"

#include <omp.h>

typedef struct { int64_t rows, groups, size, s_x, nthreads; double eps; } norm_dims;

/* how many of a group's S channels the vector starting at channel i holds (VL but at the end) */
static inline int64_t lanes(int64_t S, int64_t i) { return S - i < VL ? S - i : VL; }

/* the sum over one group's S channels of a(i) * b(i) */
static inline real dot(const real* a, const real* b, int64_t S) {
    vec acc = splat(0);
    for (int64_t i = 0; i < S; i += VL) {
        const int64_t w = lanes(S, i);
        acc += vload(a + i, w) * vload(b + i, w);
    }
    return hsum(acc);
}

void norm_fwd(const norm_dims* p, const real* x, const real* wt, real* out, real* rstd) {
    const int64_t G = p->groups, S = p->size;
#pragma omp parallel for num_threads(p->nthreads) schedule(static)
    for (int64_t r = 0; r < p->rows; r++) {
        for (int64_t g = 0; g < G; g++) {
            const real* xr = x + r * p->s_x + g * S;
            real* o = out + (r * G + g) * S;
            const real rs = 1 / sqrt(dot(xr, xr, S) / S + (real)p->eps);
            rstd[r * G + g] = rs;
            for (int64_t i = 0; i < S; i += VL) {
                const int64_t w = lanes(S, i);
                const vec scale = wt ? vload(wt + g * S + i, w) * rs : splat(rs);
                vstore(o + i, vload(xr + i, w) * scale, w);
            }
        }
    }
}

void norm_bwd(const norm_dims* p, const real* x, const real* wt, const real* rstd,
              const real* gout, real* gx, real* gw_part) {
    const int64_t G = p->groups, S = p->size, E = G * S;
#pragma omp parallel num_threads(p->nthreads)
    {
        real* gw = gw_part ? gw_part + (int64_t)omp_get_thread_num() * E : NULL;
        if (gw) memset(gw, 0, sizeof(real) * E);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < p->rows; r++) {
            for (int64_t g = 0; g < G; g++) {
                const real* xr = x + r * p->s_x + g * S;
                const real* go = gout + (r * G + g) * S;
                const real* w_g = wt ? wt + g * S : NULL;
                const real rs = rstd[r * G + g];
                vec acc = splat(0); /* sum_s q x */
                for (int64_t i = 0; i < S; i += VL) {
                    const int64_t w = lanes(S, i);
                    const vec q = w_g ? vload(go + i, w) * vload(w_g + i, w) : vload(go + i, w);
                    acc += q * vload(xr + i, w);
                }
                const real c = rs * rs * rs * hsum(acc) / S;
                real* gxr = gx + (r * G + g) * S;
                for (int64_t i = 0; i < S; i += VL) {
                    const int64_t w = lanes(S, i);
                    const vec xv = vload(xr + i, w), gov = vload(go + i, w);
                    const vec q = w_g ? gov * vload(w_g + i, w) : gov;
                    vstore(gxr + i, q * rs - xv * c, w);
                    if (gw) vstore(gw + g * S + i, vload(gw + g * S + i, w) + gov * xv * rs, w);
                }
            }
        }
    }
}
