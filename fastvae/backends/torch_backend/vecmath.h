/* Vector math shared by the torch backend's C kernels (float32, 8 lanes, GCC/Clang
 * vector extensions, no intrinsics). Every kernel file includes it; native.py builds
 * all of them into one library.
 *
 * Accuracy: exp is the Cephes single-precision polynomial, log1p a short atanh
 * series, log that series after splitting off the exponent; tests/test_native_kernel.py
 * sweeps each densely against float64 and states the bounds. Arguments of exp below -87 give exp(-87) rather than a denormal (an
 * absolute error below 2e-38).
 */
#ifndef FASTVAE_VECMATH_H
#define FASTVAE_VECMATH_H

#include <stdint.h>
#include <string.h>

typedef float vf __attribute__((vector_size(32)));
typedef int32_t vi __attribute__((vector_size(32)));
#define W 8
#define SPLAT(v) ((vf){v, v, v, v, v, v, v, v})

static inline vf sel(vi m, vf a, vf b) { return (vf)((m & (vi)a) | (~m & (vi)b)); }

/* exp(x) for x <= 0 (Cephes expf); x < -87 gives exp(-87) rather than a denormal. */
static inline vf exp_nonpos(vf x) {
  x = sel(x < SPLAT(-87.0f), SPLAT(-87.0f), x);
  vf t = x * 1.44269504088896341f + 12582912.0f;  /* round(x / ln 2) by the 1.5 * 2^23 trick */
  vf fn = t - 12582912.0f;
  vi n = (vi)t - 0x4B400000;
  vf r = x - fn * 0.693359375f;                   /* ln 2 in two parts: exact reduction */
  r = r + fn * 2.12194440e-4f;
  vf p = SPLAT(1.9875691500E-4f);
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * r * r + r + 1.0f;
  return p * (vf)((n + 127) << 23);               /* times 2^n, n in [-126, 0] */
}

/* exp(x) for any x: the same polynomial as exp_nonpos; inf above ~88.72, denormals then
   0 below ~-87.3, NaN kept. 2^n is applied as two factors so that n = 128 (overflow to
   inf) and n < -126 (denormal results) need no special case. */
static inline vf exp_any(vf x) {
  x = sel(x > SPLAT(89.0f), SPLAT(89.0f), x);
  x = sel(x < SPLAT(-104.0f), SPLAT(-104.0f), x);
  vf t = x * 1.44269504088896341f + 12582912.0f;
  vf fn = t - 12582912.0f;
  vi n = (vi)t - 0x4B400000;
  vf r = x - fn * 0.693359375f;
  r = r + fn * 2.12194440e-4f;
  vf p = SPLAT(1.9875691500E-4f);
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * r * r + r + 1.0f;
  vi n1 = n >> 1, n2 = n - n1;                    /* n in [-150, 128]: each in [-75, 64] */
  return p * (vf)((n1 + 127) << 23) * (vf)((n2 + 127) << 23);
}

/* log(1 + e) for e in [0, 1] as 2 atanh(s), s = e / (2 + e) in [0, 1/3]: 2s (1 + t Q(t)),
   t = s^2 <= 1/9, Q a cubic fitted (Lawson's minimax) to atanh(sqrt t) / sqrt t on [0, 1/9]
   with relative error 4.5e-9. A division, then four multiply-adds: cheaper than a logf
   (range split and a degree-8 polynomial). Tiny e: 2 + e rounds to 2 and 2s = e. */
static inline vf log1p_unit(vf e) {
  vf s = e / (2.0f + e);
  vf t = s * s;
  vf q = t * 1.4005856216E-1f + 1.4001007378E-1f;
  q = q * t + 2.0010748506E-1f;
  q = q * t + 3.3333209157E-1f;
  vf s2 = s + s;
  return s2 + (s2 * t) * q;
}

/* log(x) for any x: x = m 2^k with m in [sqrt(1/2), sqrt(2)), log m = log1p_unit(m - 1)
   (m - 1 is exact, in [-0.30, 0.42], inside the series' fitted range), k ln 2 in two
   parts. Denormals are scaled by 2^23 first; log(0) = -inf, log(inf) = inf, NaN below 0. */
static inline vf log_any(vf x) {
  vi tiny = x < SPLAT(1.17549435e-38f);
  vf xs = sel(tiny, x * 8388608.0f, x);
  vi bits = (vi)xs;
  vi k = ((bits >> 23) & 0xff) - 127;
  vf m = (vf)((bits & 0x007fffff) | 0x3f800000);  /* [1, 2) */
  vi big = m > SPLAT(1.41421356f);
  m = sel(big, m * 0.5f, m);
  k = k + (big & 1);
  vf fk = __builtin_convertvector(k, vf) - sel(tiny, SPLAT(23.0f), SPLAT(0.0f));
  vf r = (log1p_unit(m - 1.0f) - fk * 2.12194440e-4f) + fk * 0.693359375f;
  r = sel(x == SPLAT(0.0f), SPLAT(-__builtin_inff()), r);
  r = sel(x == SPLAT(__builtin_inff()), x, r);
  return sel(x < SPLAT(0.0f), SPLAT(__builtin_nanf("")), sel(x != x, x, r));
}

#endif
