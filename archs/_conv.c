/* The short causal depthwise convolution of Mamba / Mamba-2, with its SiLU, as one CPU
 * kernel (the PyTorch version in _conv.py is the reference it is tested against).
 *
 *     pre_t = bias + sum_k w[k] * ext[t + k]        ext = [K-1 inputs before x; x]
 *     out_t = silu(pre_t)  (or pre_t when silu == 0)
 *
 * Why: in PyTorch this is K multiply-adds forward, 2K backward, a SiLU and its derivative
 * over (B, L, E) tensors, about a sixth of a small Mamba model's training step in per-op
 * overhead and memory passes. Here a task owns one vector of channels of one sequence and
 * walks it: the K taps and the K inputs a step needs stay in registers, and the backward
 * pass keeps the last K pre-activation gradients there too, so every element is read and
 * written once.
 *
 * Layouts: x (batch, L, dim) with (batch, time) strides s_x, its last dimension packed;
 * prefix, g_prefix (batch, K-1, dim) = the K-1 inputs before x (the conv state, transposed);
 * out, g, g_x (batch, L, dim) contiguous; wT (K, dim) = the weights transposed; partial sums
 * the caller reduces over the batch: dw_part (batch, K, dim), db_part (batch, dim).
 */
#include "_native.h"

#define KMAX 16

typedef struct { int64_t batch, seqlen, dim, taps, silu, nthreads, s_x[2]; } conv_dims;

static inline vec act(vec pre, int64_t silu) { return silu ? pre * vsigmoid(pre) : pre; }

/* input s of [prefix; x] for sequence b at channel e0: the prefix's rows, then x's */
static inline const real* input_row(const conv_dims* p, const real* x, const real* prefix,
                                    int64_t b, int64_t s, int64_t e0) {
    const int64_t K1 = p->taps - 1;
    return s < K1 ? prefix + (b * K1 + s) * p->dim + e0
                  : x + b * p->s_x[0] + (s - K1) * p->s_x[1] + e0;
}

/* Both passes keep the K inputs a step needs in a register window that shifts by one row
 * per step (one new load, not K), and the backward keeps the last K pre-activation
 * gradients the same way. K is a compile-time 4 (Mamba's d_conv) after dispatch, so the
 * shifts unroll into register moves; other widths take the same code with a runtime K. */

/* in[1..K-1] = the K-1 prefix rows: the window before output 0 */
static inline __attribute__((always_inline)) void window_start(
        const conv_dims* p, const int64_t K, vec* in, const real* x, const real* prefix,
        int64_t b, int64_t e0, int64_t w) {
    for (int64_t k = 0; k + 1 < K; k++) in[k + 1] = vload(input_row(p, x, prefix, b, k, e0), w);
}

/* shift the window to output t (in[k] = input t + k, the newest x's row t) and return
 * output t's pre-activation */
static inline __attribute__((always_inline)) vec window_step(
        const conv_dims* p, const int64_t K, vec* in, const vec* wk, vec bv, const real* x,
        int64_t b, int64_t t, int64_t e0, int64_t w) {
    for (int64_t k = 0; k + 1 < K; k++) in[k] = in[k + 1];
    in[K - 1] = vload(x + b * p->s_x[0] + t * p->s_x[1] + e0, w);
    vec pre = bv;
    for (int64_t k = 0; k < K; k++) pre += wk[k] * in[k];
    return pre;
}

static inline __attribute__((always_inline)) void fwd_task(
        const conv_dims* p, const int64_t K, int64_t b, int64_t e0, const real* x,
        const real* prefix, const real* wT, const real* bias, real* out) {
    const int64_t E = p->dim, L = p->seqlen;
    const int64_t w = E - e0 < VL ? E - e0 : VL;
    vec wk[KMAX], in[KMAX]; /* in[k] = input t + k for the output t */
    for (int64_t k = 0; k < K; k++) wk[k] = vload(wT + k * E + e0, w);
    window_start(p, K, in, x, prefix, b, e0, w);
    const vec bv = bias ? vload(bias + e0, w) : splat(0);
    real* o = out + b * L * E + e0;
    for (int64_t t = 0; t < L; t++)
        vstore(o + t * E, act(window_step(p, K, in, wk, bv, x, b, t, e0, w), p->silu), w);
}

void conv_fwd(const conv_dims* p, const real* x, const real* prefix, const real* wT,
              const real* bias, real* out) {
    const int64_t per_batch = (p->dim + VL - 1) / VL;
#pragma omp parallel for num_threads(p->nthreads) schedule(static)
    for (int64_t task = 0; task < p->batch * per_batch; task++) {
        const int64_t b = task / per_batch, e0 = (task % per_batch) * VL;
        if (p->taps == 4)
            fwd_task(p, 4, b, e0, x, prefix, wT, bias, out);
        else
            fwd_task(p, p->taps, b, e0, x, prefix, wT, bias, out);
    }
}

/* The gradient of input s is sum_k w[k] * gpre[s - k] over the outputs t = s - k in [0, L):
 * gq[k] holds gpre at t = s - k (zero outside [0, L)). Inputs s < K-1 are the prefix's
 * (g_prefix), the rest x's (g_x). */
static inline __attribute__((always_inline)) void bwd_task(
        const conv_dims* p, const int64_t K, int64_t b, int64_t e0, const real* x,
        const real* prefix, const real* wT, const real* bias, const real* g, real* g_x,
        real* g_prefix, real* dw_part, real* db_part) {
    const int64_t E = p->dim, L = p->seqlen, T = L + K - 1, K1 = K - 1;
    const int64_t w = E - e0 < VL ? E - e0 : VL;
    vec wk[KMAX], dw[KMAX], gq[KMAX], in[KMAX];
    for (int64_t k = 0; k < K; k++) {
        wk[k] = vload(wT + k * E + e0, w);
        dw[k] = gq[k] = splat(0);
    }
    window_start(p, K, in, x, prefix, b, e0, w);
    const vec bv = bias ? vload(bias + e0, w) : splat(0);
    vec db = splat(0);
    const real* gb = g + b * L * E + e0;
    for (int64_t s = 0; s < T; s++) {
        for (int64_t k = K - 1; k > 0; k--) gq[k] = gq[k - 1];
        gq[0] = splat(0);
        if (s < L) { /* the output at t = s: its pre-activation gradient joins the window */
            const vec pre = window_step(p, K, in, wk, bv, x, b, s, e0, w);
            vec gp = vload(gb + s * E, w);
            if (p->silu) {
                const vec sg = vsigmoid(pre);
                gp *= sg * (1 + pre * (1 - sg));
            }
            db += gp;
            for (int64_t k = 0; k < K; k++) dw[k] += gp * in[k];
            gq[0] = gp;
        }
        vec acc = splat(0); /* input s fed outputs t = s - k, k = 0..K-1 */
        for (int64_t k = 0; k < K; k++) acc += wk[k] * gq[k];
        vstore(s < K1 ? g_prefix + (b * K1 + s) * E + e0 : g_x + (b * L + s - K1) * E + e0, acc, w);
    }
    for (int64_t k = 0; k < K; k++) vstore(dw_part + (b * K + k) * E + e0, dw[k], w);
    vstore(db_part + b * E + e0, db, w);
}

void conv_bwd(const conv_dims* p, const real* x, const real* prefix, const real* wT,
              const real* bias, const real* g, real* g_x, real* g_prefix, real* dw_part,
              real* db_part) {
    const int64_t per_batch = (p->dim + VL - 1) / VL;
#pragma omp parallel for num_threads(p->nthreads) schedule(static)
    for (int64_t task = 0; task < p->batch * per_batch; task++) {
        const int64_t b = task / per_batch, e0 = (task % per_batch) * VL;
        if (p->taps == 4)
            bwd_task(p, 4, b, e0, x, prefix, wT, bias, g, g_x, g_prefix, dw_part, db_part);
        else
            bwd_task(p, p->taps, b, e0, x, prefix, wT, bias, g, g_x, g_prefix, dw_part, db_part);
    }
}
