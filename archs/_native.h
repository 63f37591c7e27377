/* Shared pieces of archbench's CPU kernels (archs/_native.py compiles each kernel with
 * this folder on the include path; the header is part of every build's cache key).
 *
 * REAL is float or double (-DREAL=..., REAL_IS_DOUBLE=1 for double). A `vec` is 64 bytes of
 * REAL (16 floats or 8 doubles) through GCC/clang vector extensions - no intrinsics, so the
 * same source builds on any x86-64 or ARM CPU; the compiler splits a 64-byte vector into
 * the widths the CPU has. */
#ifndef ARCHBENCH_NATIVE_H
#define ARCHBENCH_NATIVE_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef REAL
#define REAL float
#endif
typedef REAL real;

#define VBYTES 64
#define VL ((int64_t)(VBYTES / sizeof(real)))
typedef real vec __attribute__((vector_size(VBYTES)));
typedef real vec_u __attribute__((vector_size(VBYTES), aligned(sizeof(real)), may_alias));

/* -- vectors ---------------------------------------------------------------------------- */
static inline vec splat(real x) { return (vec){0} + x; }

/* w lanes from p (w < VL at the edge of a group: the rest reads as 0) */
static inline vec vload(const real* p, int64_t w) {
    if (w == VL) return *(const vec_u*)p;
    vec v = {0};
    for (int64_t i = 0; i < w; i++) v[i] = p[i];
    return v;
}

static inline void vstore(real* p, vec v, int64_t w) {
    if (w == VL) { *(vec_u*)p = v; return; }
    for (int64_t i = 0; i < w; i++) p[i] = v[i];
}

/* The sum of a vector's lanes as a tree: halves added twice (64 -> 32 -> 16 bytes), then
 * the last 4 floats / 2 doubles. A plain loop over the lanes is a chain of VL dependent
 * additions (the compiler may not reorder them without -ffast-math): ~60 cycles, not ~15. */
typedef real vec_half __attribute__((vector_size(VBYTES / 2)));
typedef real vec_quarter __attribute__((vector_size(VBYTES / 4)));
static inline real hsum(vec v) {
    vec_half a, b;
    memcpy(&a, &v, sizeof a);
    memcpy(&b, (const char*)&v + sizeof a, sizeof b);
    a += b;
    vec_quarter c, d;
    memcpy(&c, &a, sizeof c);
    memcpy(&d, (const char*)&a + sizeof c, sizeof d);
    c += d;
#if REAL_IS_DOUBLE
    return c[0] + c[1];
#else
    return (c[0] + c[2]) + (c[1] + c[3]);
#endif
}

#if REAL_IS_DOUBLE
static inline vec vexp(vec x) {
    vec r;
    for (int64_t i = 0; i < VL; i++) r[i] = exp(x[i]);
    return r;
}
#else
typedef int32_t ivec __attribute__((vector_size(VBYTES)));

/* exp for 16 floats at once: x = k ln2 + r, |r| <= ln2 / 2, a degree-7 polynomial for e^r
 * (Cephes' expf coefficients, ~1 ulp), 2^k through the exponent bits. Clamped to the normal
 * range (so exp(-inf) is 1e-38, not 0); NaN lanes stay NaN. Round-to-nearest by adding and
 * subtracting 1.5 * 2^23 (no -ffast-math anywhere, so the compiler keeps both). */
/* lane-wise `mask ? a : b`, mask lanes all-ones or zero (C has no vector ?:) */
static inline vec vselect(ivec mask, vec a, vec b) { return (vec)((mask & (ivec)a) | (~mask & (ivec)b)); }

#if defined(__AVX512F__)
#include <immintrin.h>
/* The same exp with AVX-512's own instructions for the range: k by vrndscaleps, 2^k by
 * vscalefps (no exponent-bit arithmetic), and NaN kept by the clamp itself (max/min return
 * their second operand, x, for a NaN lane), so there is no NaN repair: ~13 operations instead
 * of ~20. The decay exp(dt A) is Mamba-1's most frequent operation (one per step, channel and
 * state entry, twice with the backward's recompute). The same clamp to [-87, 88] as below, so
 * the results never go subnormal (a subnormal decay would make every later multiply of the
 * state slow on CPUs that assist them in microcode). e^r = 1 + r (1 + r P(r)), P as below. */
static inline vec vexp(vec x) {
    const __m512 c = _mm512_min_ps(_mm512_set1_ps(88.0f), _mm512_max_ps(_mm512_set1_ps(-87.0f), (__m512)x));
    const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(c, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), c);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return (vec)_mm512_scalef_ps(p, k);
}
#else
static inline vec vexp(vec x) {
    const vec lo = splat(-87.0f), hi = splat(88.0f), shifter = splat(12582912.0f);
    vec c = vselect(x > lo, x, lo); /* max / min instructions; NaN becomes -87 here ... */
    c = vselect(c < hi, c, hi);
    vec k = (c * 1.44269504088896341f + shifter) - shifter;
    vec r = c - k * 0.693359375f;
    r = r + k * 2.12194440e-4f;
    vec p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    ivec e = (__builtin_convertvector(k, ivec) + 127) << 23;
    vec out = p * (vec)e;
    return vselect(x == x, out, x); /* ... and NaN again here */
}
#endif
#endif

static inline vec vsigmoid(vec x) { return 1 / (1 + vexp(-x)); }

#if REAL_IS_DOUBLE
static inline vec vsoftplus(vec x) {
    vec r;
    for (int64_t i = 0; i < VL; i++) r[i] = (x[i] > 0 ? x[i] : 0) + log1p(exp(-fabs(x[i])));
    return r;
}
#else
/* softplus(x) = max(x, 0) + log1p(exp(-|x|)), with log1p(y) for y in (0, 1] as
 * 2 atanh(s) = 2 (s + s^3/3 + ... + s^13/13), s = y / (2 + y) <= 1/3: a relative error below
 * 1e-7, accurate for tiny y too (log1p(y) ~ 2s ~ y). NaN stays NaN, +inf stays +inf. */
static inline vec vsoftplus(vec x) {
    const vec zero = splat(0);
    const vec ax = vselect(x < zero, -x, x);
    const vec y = vexp(-ax);
    const vec s = y / (2 + y), s2 = s * s;
    vec series = splat(1.0f / 13);
    series = series * s2 + 1.0f / 11;
    series = series * s2 + 1.0f / 9;
    series = series * s2 + 1.0f / 7;
    series = series * s2 + 1.0f / 5;
    series = series * s2 + 1.0f / 3;
    series = series * s2 + 1;
    return vselect(x > zero, x, zero) + 2 * s * series; /* a NaN x gives a NaN y, hence s */
}
#endif

#endif
