/* Vector math shared by the torch backend's C kernels (float32, 8 lanes, GCC/Clang
 * vector extensions, no intrinsics). Every kernel file includes it; native.py builds
 * all of them into one library.
 *
 * Accuracy: exp is the Cephes single-precision polynomial, log1p a short atanh
 * series; tests/test_native_kernel.py sweeps both densely against float64 and states
 * the bounds. Arguments of exp below -87 give exp(-87) rather than a denormal (an
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

#endif
