/* Causal self-attention with small heads, forward and backward, as one CPU kernel.
 *
 *     s_ij = scale * q_i . k_j  (j <= i),   p_ij = softmax_j(s_ij),   o_i = sum_j p_ij v_j
 *
 * Why a kernel: the small models of the studies have heads of 8-16 channels (d_model 64,
 * 8 heads in the Mamba paper's induction protocol). torch's CPU flash-attention kernel
 * blocks the work as small matrix products over the head dimension, which at 8 channels
 * are mostly overhead: 35 ms for one layer's forward + backward at (B 8, H 8, L 256),
 * three times as long as the same work in 4 heads of 16. Here one task owns one (sequence,
 * head) and keeps K and V transposed, (head_dim, L), so that a query row's scores, its
 * softmax and its readout are vector operations over 16 keys at a time, whatever the head
 * width; nothing of size L x L is ever stored.
 *
 * With RoPE tables (cos, sin of each position's angles) q and k are rotated here, row by
 * row as they are read, and their gradients rotated back as they are written: the layer
 * makes no rotated copies and runs no rotation ops (archs/attention/layer.py).
 *
 * The backward pass recomputes each row's probabilities from the saved log-sum-exp (as
 * FlashAttention does) and accumulates dK and dV transposed, in a buffer owned by the
 * task. With grouped-query attention (kv_heads < heads) a task owns a K/V head and walks
 * the query heads that share it, so no two tasks write the same dK/dV.
 *
 * Compiled twice by archs/_native.py (REAL = float, and double with libm's exp for the
 * float64 checks). Layouts: q, o, gout, dq (batch, heads, L, head_dim) and k, v, dk, dv
 * (batch, kv_heads, L, head_dim), each with its own (batch, head, time) strides and the
 * head_dim axis packed - so the layer's (batch, L, heads, head_dim) projections are read and
 * written in place, no transposed copies; lse (batch, heads, L) packed; cs, sn
 * (L, head_dim / 2) packed, or NULL (no rotation).
 */
#include "_native.h"

typedef struct {
    int64_t batch, heads, kv_heads, seqlen, head_dim, nthreads;
    double scale;
    /* element strides of (batch, head, time) per tensor; the head_dim axis is packed */
    int64_t s_q[3], s_k[3], s_v[3], s_o[3], s_g[3], s_dq[3], s_dk[3], s_dv[3];
} attn_dims;

/* the (batch b, head h) rows of tensor x with strides s: row t at HEAD(...) + t * s[2] */
#define HEAD(x, s, b, h) ((x) + (b) * (s)[0] + (h) * (s)[1])

#define NEG_BIG ((real)-1e30)

/* CALL(HD) with HD a compile-time 8, 16 or 32 where hd is one of them (the loops over a
 * head's channels then unroll), else with hd itself */
#define DISPATCH_HD(hd, CALL) do { \
        if ((hd) == 8) CALL(8); else if ((hd) == 16) CALL(16); else if ((hd) == 32) CALL(32); \
        else CALL(hd); } while (0)

/* lane-wise max through a comparison mask (a lane loop with ?: is not vectorised) */
#if REAL_IS_DOUBLE
typedef int64_t mask_vec __attribute__((vector_size(VBYTES)));
#else
typedef int32_t mask_vec __attribute__((vector_size(VBYTES)));
#endif
static inline vec vmax(vec a, vec b) {
    const mask_vec m = a > b;
    return (vec)((m & (mask_vec)a) | (~m & (mask_vec)b));
}

/* the largest lane, as a tree like hsum's */
static inline real hmax(vec v) {
    vec_half a, b;
    memcpy(&a, &v, sizeof a);
    memcpy(&b, (const char*)&v + sizeof a, sizeof b);
    for (int64_t l = 0; l < VL / 2; l++) a[l] = a[l] > b[l] ? a[l] : b[l];
    real m = a[0];
    for (int64_t l = 1; l < VL / 2; l++) m = a[l] > m ? a[l] : m;
    return m;
}

/* RoPE in the half-split layout (archs.positional.RotaryEmbedding): channel c < hd/2 and
 * c + hd/2 rotated by position t's angle, cs = cos, sn = sin of the row's hd/2 angles;
 * unrotate applies the transpose (the inverse), which takes a gradient back. */
static inline void rotate(const real* x, const real* cs, const real* sn, int64_t hd, real* out) {
    const int64_t h = hd / 2;
    for (int64_t c = 0; c < h; c++) {
        const real x1 = x[c], x2 = x[c + h];
        out[c] = x1 * cs[c] - x2 * sn[c];
        out[c + h] = x1 * sn[c] + x2 * cs[c];
    }
}

static inline void unrotate(const real* x, const real* cs, const real* sn, int64_t hd, real* out) {
    const int64_t h = hd / 2;
    for (int64_t c = 0; c < h; c++) {
        const real x1 = x[c], x2 = x[c + h];
        out[c] = x1 * cs[c] + x2 * sn[c];
        out[c + h] = x2 * cs[c] - x1 * sn[c];
    }
}

/* rows (L, hd), row j at x + j * ld -> columns (hd, Lp), zero-padded to Lp = a whole
 * number of vectors; each row rotated first when rope tables (cs, sn: (L, hd/2)) are given */
static void transpose_in(const real* x, int64_t ld, int64_t L, int64_t hd, int64_t Lp,
                         const real* cs, const real* sn, real* xT) {
    real row[hd];
    for (int64_t j = 0; j < L; j++) {
        const real* src = x + j * ld;
        if (cs) {
            rotate(src, cs + j * (hd / 2), sn + j * (hd / 2), hd, row);
            src = row;
        }
        for (int64_t c = 0; c < hd; c++) xT[c * Lp + j] = src[c];
    }
    for (int64_t c = 0; c < hd; c++)
        for (int64_t j = L; j < Lp; j++) xT[c * Lp + j] = 0;
}

/* columns (hd, Lp) -> rows (L, hd), each row unrotated when rope tables are given */
static void transpose_out(const real* xT, int64_t L, int64_t hd, int64_t Lp, const real* cs,
                          const real* sn, real* x, int64_t ld) {
    real row[hd];
    for (int64_t j = 0; j < L; j++) {
        for (int64_t c = 0; c < hd; c++) row[c] = xT[c * Lp + j];
        if (cs) unrotate(row, cs + j * (hd / 2), sn + j * (hd / 2), hd, x + j * ld);
        else memcpy(x + j * ld, row, sizeof(real) * hd);
    }
}

/* In the diagonal key block, row r of a row block sees lanes 0..r (ROWS = VL below): the
 * lanes after r (keys after the query) are set to `fill` */
static inline void mask_after(vec* v, int64_t r, real fill) {
    for (int64_t l = r + 1; l < VL; l++) (*v)[l] = fill;
}

/* query row i (at qi), rotated when rope tables are given, times the softmax scale */
static inline void query_row(const real* qi, int64_t i, int64_t hd, const real* cs, const real* sn,
                             real scale, real* out) {
    if (cs) rotate(qi, cs + i * (hd / 2), sn + i * (hd / 2), hd, out);
    else memcpy(out, qi, sizeof(real) * hd);
    for (int64_t c = 0; c < hd; c++) out[c] *= scale;
}

/* Query rows handled together, one vector's worth (ROWS = VL): each key block's K and V
 * columns are loaded once per ROWS rows (from L2 at long lengths), the backward pass adds
 * each block's dK and dV partial sums to the task's buffers once per ROWS rows, and every
 * row of a row block sees the same key blocks: all whole but the last, the diagonal one,
 * which is the only one with masked lanes. The whole blocks' loops over rows are
 * branch-free and unrolled, so the compiler interleaves independent rows' dependency
 * chains (a dot product, then an exp, ~100 cycles of latency per row). */
#define ROWS VL

/* q_row . cols[c] over the head's channels, as two interleaved chains (half the latency) */
static inline vec dot_cols(const real* x, const vec* cols, const int64_t HD) {
    vec s0 = splat(0), s1 = splat(0);
    int64_t c = 0;
    for (; c + 1 < HD; c += 2) {
        s0 += x[c] * cols[c];
        s1 += x[c + 1] * cols[c + 1];
    }
    if (c < HD) s0 += x[c] * cols[c];
    return s0 + s1;
}

/* Forward, one key block jb for the rows of a row block. Pass 1 (fwd_scores): scores and
 * running maxima; pass 2 (fwd_readout): probabilities, their sums and the readout. DIAG:
 * the diagonal block, whose lanes after each row's own position are masked. */
static inline __attribute__((always_inline)) void fwd_scores(
        const int64_t HD, const int DIAG, int64_t rows, int64_t jb, int64_t NB, const vec* kc,
        real qs[][HD], vec* S, vec* mx) {
#pragma GCC unroll 4
    for (int64_t r = 0; r < rows; r++) {
        vec s = dot_cols(qs[r], kc, HD);
        if (DIAG) mask_after(&s, r, NEG_BIG);
        S[r * NB + jb] = s;
        mx[r] = vmax(mx[r], s);
    }
}

static inline __attribute__((always_inline)) void fwd_readout(
        const int64_t HD, const int DIAG, int64_t rows, int64_t jb, int64_t NB, const vec* vc,
        const real* m, const vec* S, vec* total, vec* acc) {
#pragma GCC unroll 4
    for (int64_t r = 0; r < rows; r++) {
        vec pj = vexp(S[r * NB + jb] - m[r]);
        if (DIAG) mask_after(&pj, r, 0);
        total[r] += pj;
        for (int64_t c = 0; c < HD; c++) acc[r * HD + c] += pj * vc[c];
    }
}

/* One (sequence, head) of the forward pass. HD is a compile-time 8, 16 or 32 in the common
 * cases (the callers dispatch), so the loops over the head's channels unroll. */
static inline __attribute__((always_inline)) void fwd_task(
        const attn_dims* p, const int64_t HD, int64_t task, const real* q, const real* k,
        const real* v, const real* cs, const real* sn, real* o, real* lse, real* kT, vec* S,
        vec* acc) {
    const int64_t L = p->seqlen, H = p->heads, G = p->heads / p->kv_heads;
    const int64_t Lp = (L + VL - 1) / VL * VL, NB = Lp / VL;
    const real scale = (real)p->scale;
    const int64_t b = task / H, h = task % H;
    real* vT = kT + HD * Lp;
    transpose_in(HEAD(k, p->s_k, b, h / G), p->s_k[2], L, HD, Lp, cs, sn, kT);
    transpose_in(HEAD(v, p->s_v, b, h / G), p->s_v[2], L, HD, Lp, NULL, NULL, vT);
    const real* qb = HEAD(q, p->s_q, b, h);
    real* ob = HEAD(o, p->s_o, b, h);
    real qs[ROWS][HD], m[ROWS];
    vec mx[ROWS], total[ROWS];
    for (int64_t i0 = 0; i0 < L; i0 += ROWS) {
        const int64_t rows = L - i0 < ROWS ? L - i0 : ROWS, jd = i0 / VL; /* jd: diagonal block */
        for (int64_t r = 0; r < rows; r++) {
            query_row(qb + (i0 + r) * p->s_q[2], i0 + r, HD, cs, sn, scale, qs[r]);
            for (int64_t c = 0; c < HD; c++) acc[r * HD + c] = splat(0);
            mx[r] = splat(NEG_BIG);
            total[r] = splat(0);
        }
        for (int64_t jb = 0; jb <= jd; jb++) {
            vec kc[HD];
            for (int64_t c = 0; c < HD; c++) kc[c] = *(const vec*)(kT + c * Lp + jb * VL);
            if (jb < jd) fwd_scores(HD, 0, rows, jb, NB, kc, qs, S, mx);
            else fwd_scores(HD, 1, rows, jb, NB, kc, qs, S, mx);
        }
        for (int64_t r = 0; r < rows; r++) m[r] = hmax(mx[r]);
        for (int64_t jb = 0; jb <= jd; jb++) {
            vec vc[HD];
            for (int64_t c = 0; c < HD; c++) vc[c] = *(const vec*)(vT + c * Lp + jb * VL);
            if (jb < jd) fwd_readout(HD, 0, rows, jb, NB, vc, m, S, total, acc);
            else fwd_readout(HD, 1, rows, jb, NB, vc, m, S, total, acc);
        }
        for (int64_t r = 0; r < rows; r++) {
            const real l = hsum(total[r]);
            for (int64_t c = 0; c < HD; c++) ob[(i0 + r) * p->s_o[2] + c] = hsum(acc[r * HD + c]) / l;
            lse[task * L + i0 + r] = m[r] + log(l);
        }
    }
}

void attn_fwd(const attn_dims* p, const real* q, const real* k, const real* v, const real* cs,
              const real* sn, real* o, real* lse) {
    const int64_t hd = p->head_dim, Lp = (p->seqlen + VL - 1) / VL * VL;
#pragma omp parallel num_threads(p->nthreads)
    {
        real* kT = aligned_alloc(VBYTES, sizeof(real) * 2 * hd * Lp);
        vec* S = aligned_alloc(VBYTES, sizeof(real) * ROWS * Lp);
        vec* acc = aligned_alloc(VBYTES, sizeof(vec) * ROWS * hd);
#pragma omp for schedule(static)
        for (int64_t task = 0; task < p->batch * p->heads; task++) {
#define FWD(HD) fwd_task(p, HD, task, q, k, v, cs, sn, o, lse, kT, S, acc)
            DISPATCH_HD(hd, FWD);
#undef FWD
        }
        free(kT);
        free(S);
        free(acc);
    }
}

/* Backward, one key block for the rows of a row block: recompute the probabilities from
 * the log-sum-exp, then ds = p (dp - delta) into dq's accumulators (acc) and the block's
 * dK and dV partial sums (dkc, dvc). DIAG as in the forward pass. */
static inline __attribute__((always_inline)) void bwd_block(
        const int64_t HD, const int DIAG, int64_t rows, const vec* kc, const vec* vc,
        real qs[][HD], real gs[][HD], const real* li, const real* delta, vec* acc, vec* dkc,
        vec* dvc) {
#pragma GCC unroll 2
    for (int64_t r = 0; r < rows; r++) {
        vec pj = vexp(dot_cols(qs[r], kc, HD) - li[r]);
        if (DIAG) mask_after(&pj, r, 0);
        const vec ds = pj * (dot_cols(gs[r], vc, HD) - delta[r]);
        for (int64_t c = 0; c < HD; c++) {
            acc[r * HD + c] += ds * kc[c];
            dkc[c] += ds * qs[r][c];
            dvc[c] += pj * gs[r][c];
        }
    }
}

/* One K/V head of the backward pass (the query heads sharing it, one after the other).
 * gout = dL/do. delta_i = gout_i . o_i; ds_ij = p_ij (gout_i . v_j - delta_i);
 * dq_i = scale sum_j ds_ij k_j, dk_j = scale sum_i ds_ij q_i, dv_j = sum_i p_ij gout_i */
static inline __attribute__((always_inline)) void bwd_task(
        const attn_dims* p, const int64_t HD, int64_t task, const real* q, const real* k,
        const real* v, const real* cs, const real* sn, const real* o, const real* lse,
        const real* gout, real* dq, real* dk, real* dv, real* kT, vec* acc) {
    const int64_t L = p->seqlen, H = p->heads, G = p->heads / p->kv_heads;
    const int64_t Lp = (L + VL - 1) / VL * VL;
    const real scale = (real)p->scale;
    real *vT = kT + HD * Lp, *dkT = vT + HD * Lp, *dvT = dkT + HD * Lp;
    const int64_t b = task / p->kv_heads, hk = task % p->kv_heads, h0 = hk * G;
    transpose_in(HEAD(k, p->s_k, b, hk), p->s_k[2], L, HD, Lp, cs, sn, kT);
    transpose_in(HEAD(v, p->s_v, b, hk), p->s_v[2], L, HD, Lp, NULL, NULL, vT);
    memset(dkT, 0, sizeof(real) * 2 * HD * Lp);
    real qs[ROWS][HD], gs[ROWS][HD], delta[ROWS], li[ROWS];
    for (int64_t h = h0; h < h0 + G; h++) {
        const int64_t row0 = (b * H + h) * L; /* lse is (batch, heads, L), packed */
        const real *qb = HEAD(q, p->s_q, b, h), *ob = HEAD(o, p->s_o, b, h);
        const real* gb = HEAD(gout, p->s_g, b, h);
        real* dqb = HEAD(dq, p->s_dq, b, h);
        for (int64_t i0 = 0; i0 < L; i0 += ROWS) {
            const int64_t rows = L - i0 < ROWS ? L - i0 : ROWS;
            for (int64_t r = 0; r < rows; r++) {
                const int64_t i = i0 + r;
                delta[r] = 0;
                query_row(qb + i * p->s_q[2], i, HD, cs, sn, scale, qs[r]);
                for (int64_t c = 0; c < HD; c++) {
                    gs[r][c] = gb[i * p->s_g[2] + c];
                    delta[r] += gs[r][c] * ob[i * p->s_o[2] + c];
                    acc[r * HD + c] = splat(0);
                }
                li[r] = lse[row0 + i];
            }
            const int64_t jd = i0 / VL; /* the diagonal key block */
            for (int64_t jb = 0; jb <= jd; jb++) {
                vec kc[HD], vc[HD], dkc[HD], dvc[HD];
                for (int64_t c = 0; c < HD; c++) {
                    kc[c] = *(const vec*)(kT + c * Lp + jb * VL);
                    vc[c] = *(const vec*)(vT + c * Lp + jb * VL);
                    dkc[c] = dvc[c] = splat(0);
                }
                if (jb < jd) bwd_block(HD, 0, rows, kc, vc, qs, gs, li, delta, acc, dkc, dvc);
                else bwd_block(HD, 1, rows, kc, vc, qs, gs, li, delta, acc, dkc, dvc);
                for (int64_t c = 0; c < HD; c++) {
                    *(vec*)(dkT + c * Lp + jb * VL) += dkc[c];
                    *(vec*)(dvT + c * Lp + jb * VL) += dvc[c];
                }
            }
            for (int64_t r = 0; r < rows; r++) { /* dL/d(rotated q), then back through the rotation */
                real g[HD];
                for (int64_t c = 0; c < HD; c++) g[c] = scale * hsum(acc[r * HD + c]);
                real* dqi = dqb + (i0 + r) * p->s_dq[2];
                if (cs) unrotate(g, cs + (i0 + r) * (HD / 2), sn + (i0 + r) * (HD / 2), HD, dqi);
                else memcpy(dqi, g, sizeof(real) * HD);
            }
        }
    }
    transpose_out(dkT, L, HD, Lp, cs, sn, HEAD(dk, p->s_dk, b, hk), p->s_dk[2]);
    transpose_out(dvT, L, HD, Lp, NULL, NULL, HEAD(dv, p->s_dv, b, hk), p->s_dv[2]);
}

void attn_bwd(const attn_dims* p, const real* q, const real* k, const real* v, const real* cs,
              const real* sn, const real* o, const real* lse, const real* gout, real* dq, real* dk,
              real* dv) {
    const int64_t hd = p->head_dim, Lp = (p->seqlen + VL - 1) / VL * VL;
#pragma omp parallel num_threads(p->nthreads)
    {
        real* kT = aligned_alloc(VBYTES, sizeof(real) * 4 * hd * Lp);
        vec* acc = aligned_alloc(VBYTES, sizeof(vec) * ROWS * hd);
#pragma omp for schedule(static)
        for (int64_t task = 0; task < p->batch * p->kv_heads; task++) {
#define BWD(HD) bwd_task(p, HD, task, q, k, v, cs, sn, o, lse, gout, dq, dk, dv, kT, acc)
            DISPATCH_HD(hd, BWD);
#undef BWD
        }
        free(kT);
        free(acc);
    }
}
