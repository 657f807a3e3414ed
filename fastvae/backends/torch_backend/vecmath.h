/* Vector math shared by the torch backend's C kernels (float32, W lanes, GCC/Clang
 * vector extensions, an intrinsic only where the portable form is slow). Every kernel
 * file includes it; native.py builds all of them into one library.
 *
 * Width: W = 16 (one 512-bit register) where the compiler targets AVX-512, else 8. The
 * per-lane math is the same at either width, so a value computed lane by lane (the
 * Philox normals, z, every gradient) has the same bits; only sums across lanes (the
 * row sums) may round differently. 16 lanes halve the instructions of the
 * compute-bound Philox and Box-Muller draw (1.9x on a Zen 5 core; benchmarks/RESULTS.md).
 *
 * Accuracy: exp is the Cephes single-precision polynomial, log1p a short atanh
 * series, log that series after splitting off the exponent, sqrt Newton steps, cos/sin
 * of an angle in turns Cephes' polynomials after an exact reduction; tests/test_native_kernel_accuracy.py
 * sweeps each densely against float64 and states the bounds. Arguments of exp below -87 give exp(-87) rather than a denormal (an
 * absolute error below 2e-38).
 */
#ifndef FASTVAE_VECMATH_H
#define FASTVAE_VECMATH_H

#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__GNUC__)
#include <immintrin.h>
#define W 16
#define SPLAT(v) ((vf){v, v, v, v, v, v, v, v, v, v, v, v, v, v, v, v})
#define LANES {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
#else
#define W 8
#define SPLAT(v) ((vf){v, v, v, v, v, v, v, v})
#define LANES {0, 1, 2, 3, 4, 5, 6, 7}
#endif
/* (not (vf){} + v: that turns -0.0f, a sign mask here, into +0.0f) */

typedef float vf __attribute__((vector_size(4 * W)));
typedef int32_t vi __attribute__((vector_size(4 * W)));

static inline vf sel(vi m, vf a, vf b) { return (vf)((m & (vi)a) | (~m & (vi)b)); }

/* Row sums: each lane adds ROW_BLOCK vectors in float, the blocks are added in double (a
   conversion per vector costs as much as a row's own arithmetic; a float total over a
   whole row drifts with its length: 4e-4 relative, 286 nats, at a million terms). */
typedef double vd __attribute__((vector_size(8 * W)));
#define ROW_BLOCK 32

/* The lanes' sum as a tree of neighbours: ((a0 + a1) + (a2 + a3)) + ... */
static inline double sum_lanes(vd a) {
  double t[W];
  for (int i = 0; i < W; ++i) t[i] = a[i];
  for (int n = W; n > 1; n /= 2)
    for (int i = 0; i < n / 2; ++i) t[i] = t[2 * i] + t[2 * i + 1];
  return t[0];
}

/* Cephes expf's reduction and polynomial, shared by the exps below: x = n ln 2 + r with
   |r| <= ln 2 / 2, and the result expm1(r) = r + r^2 P(r); exp(x) = 2^n (1 + expm1(r)). */
static inline vf expm1_reduced(vf x, vi *n_out) {
  vf t = x * 1.44269504088896341f + 12582912.0f;  /* round(x / ln 2) by the 1.5 * 2^23 trick */
  vf fn = t - 12582912.0f;
  *n_out = (vi)t - 0x4B400000;
  vf r = x - fn * 0.693359375f;                   /* ln 2 in two parts: exact reduction */
  r = r + fn * 2.12194440e-4f;
  vf p = SPLAT(1.9875691500E-4f);
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  return p * r * r + r;
}

/* exp(x) for x <= 0 (Cephes expf); x < -87 gives exp(-87) rather than a denormal. */
static inline vf exp_nonpos(vf x) {
  vi n;
  vf q = expm1_reduced(sel(x < SPLAT(-87.0f), SPLAT(-87.0f), x), &n);
  return (q + 1.0f) * (vf)((n + 127) << 23);      /* times 2^n, n in [-126, 0] */
}

/* exp(x) for any x: the same polynomial as exp_nonpos; inf above ~88.72, denormals then
   0 below ~-87.3, NaN kept. 2^n is applied as two factors so that n = 128 (overflow to
   inf) and n < -126 (denormal results) need no special case. */
static inline vf exp_any(vf x) {
  x = sel(x > SPLAT(89.0f), SPLAT(89.0f), x);
  x = sel(x < SPLAT(-104.0f), SPLAT(-104.0f), x);
  vi n;
  vf p = expm1_reduced(x, &n) + 1.0f;
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

/* expm1(x) = e^x - 1 for x <= 0, accurate relative to the result near 0 where e^x - 1
   cancels: the Cephes polynomial of exp_nonpos without its leading 1 (expm1(r) =
   r + r^2 P(r) on the reduced r), then 2^n expm1(r) + (2^n - 1), both terms exact
   products or differences of powers of two. x < -87 gives e^-87 - 1 = -1. */
static inline vf expm1_nonpos(vf x) {
  vi n;
  vf p = expm1_reduced(sel(x < SPLAT(-87.0f), SPLAT(-87.0f), x), &n);
  vf two_n = (vf)((n + 127) << 23);
  return p * two_n + (two_n - 1.0f);
}

/* tanh(x) for any x: sign(x) * -e / (2 + e), e = expm1(-2|x|) (no cancellation near 0,
   where 1 - exp(-2|x|) would lose all digits); +-1 beyond |x| ~ 9, NaN kept. */
static inline vf tanh_any(vf x) {
  vf a = (vf)((vi)x & 0x7fffffff);               /* |x| */
  vf e = expm1_nonpos(-2.0f * a);
  vf t = -e / (2.0f + e);
  t = (vf)((vi)t | ((vi)x & (vi)SPLAT(-0.0f)));   /* the sign of x */
  return sel(x != x, x, t);
}

/* log sigmoid(x) = min(x, 0) - log1p(e^-|x|) for any x, and into *d its derivative
   sigmoid(-x) = 1 - sigmoid(x), from the same exp and one division: with e = e^-|x| and
   q = 1 / ((1 + e)(2 + e)), log1p(e) = 2 atanh(s) with s = e / (2 + e) = e (1 + e) q (the
   series of log1p_unit) and sigmoid(-x) = [x >= 0 ? e : 1] / (1 + e) = [..] (2 + e) q.
   Below x = -87, where e^-|x| would be a denormal, exp_nonpos gives e^-87: log sigmoid(x)
   = x - 1.6e-38 then, and *d = 1. log_sigmoid_given takes e from the caller (a kernel
   that computes the exps of many arguments in one loop and finishes them in another). */
static inline vf log_sigmoid_given(vf x, vf e, vf *d) {   /* e = e^-|x|, computed by the caller */
  vi pos = x >= 0.0f;
  vf e1 = 1.0f + e, e2 = 2.0f + e;
  vf q = 1.0f / (e1 * e2);
  *d = sel(pos, e, SPLAT(1.0f)) * e2 * q;
  vf s = e * e1 * q;
  vf t = s * s;
  vf r = t * 1.4005856216E-1f + 1.4001007378E-1f;
  r = r * t + 2.0010748506E-1f;
  r = r * t + 3.3333209157E-1f;
  vf s2 = s + s;
  return sel(pos, SPLAT(0.0f), x) - (s2 + (s2 * t) * r);
}

static inline vf log_sigmoid_and_grad(vf x, vf *d) {
  return log_sigmoid_given(x, exp_nonpos((vf)((vi)x | (vi)SPLAT(-0.0f))), d);  /* e^-|x| */
}

/* Whether any lane of a mask is set. */
static inline int any_lane(vi m) {
  vi r = m;
  int k = 0;
  for (int i = 0; i < W; ++i) k |= r[i];
  return k != 0;
}

/* log(1 - e^-w) for 0 <= w <= 1, given log_w = log(w) (exact where w underflows), and
   into *d w / (e^w - 1) (= -d/ds of the result when w = c e^-s), with no transcendental:
   log w - w/2 + log(sinh(u) / u), u = w/2, and 1 - w/2 + sum B_2k w^2k / (2k)!, both even
   series truncated after the 10th power (error below 1e-9 at w = 1). */
static inline vf log1mexp_small(vf w, vf log_w, vf *d) {
  vf u2 = w * w * 0.25f;
  vf p = u2 * 2.13779007e-6f - 2.64550265e-5f;    /* 1/467775, -1/37800 */
  p = p * u2 + 3.52733686e-4f;                      /* 1/2835 */
  p = p * u2 - 5.55555556e-3f;                      /* -1/180 */
  p = p * u2 + 1.66666667e-1f;                      /* 1/6 */
  vf w2 = w * w;
  vf b = w2 * 2.08767570e-8f - 8.26719577e-7f;     /* 1/47900160, -1/1209600 */
  b = b * w2 + 3.30687831e-5f;                      /* 1/30240 */
  b = b * w2 - 1.38888889e-3f;                      /* -1/720 */
  b = b * w2 + 8.33333333e-2f;                      /* 1/12 */
  *d = (b * w2 - 0.5f * w) + 1.0f;
  return log_w - 0.5f * w + p * u2;
}

/* The same for w >= 1 (any w >= 0 in fact, less accurately below 1): log1p(-e^-w)
   (log1p_unit's series, its argument in [-0.37, 0]) and w e^-w / (1 - e^-w). */
static inline vf log1mexp_large(vf w, vf *d) {
  vf ew = exp_nonpos(-w);
  *d = w * ew / (1.0f - ew);
  return log1p_unit(-ew);
}

/* Both, by lane (w above 1: the large form); the large form is evaluated only when some
   lane needs it. */
static inline vf log1mexp_and_grad(vf w, vf log_w, vf *d) {
  vf v = log1mexp_small(w, log_w, d);
  vi big = w > SPLAT(1.0f);
  if (any_lane(big)) {
    vf dl, vl = log1mexp_large(w, &dl);
    v = sel(big, vl, v);
    *d = sel(big, dl, *d);
  }
  return v;
}

/* log sigmoid(x), sigmoid(x) = e^(log sigmoid) without it, softplus(x) = -log sigmoid(-x):
   for any x, the forms above. */
static inline vf log_sigmoid_any(vf x) {
  vf d;
  return log_sigmoid_and_grad(x, &d);
}

static inline vf sigmoid_any(vf x) {
  vf d;
  log_sigmoid_and_grad(-x, &d);
  return d;
}

static inline vf softplus_any(vf x) {
  return -log_sigmoid_any(-x);
}

/* sqrt(x) for x = 0 or x in [2^-126, 2^126] (the Box-Muller radius needs [0, 33]):
   vsqrtps where AVX is there (correctly rounded, either width); else, as GCC's per-lane
   __builtin_sqrtf keeps errno and stays scalar, the bit-trick estimate of 1/sqrt(x)
   (3.4% off), two Newton steps on it (4.5e-6), then s = x y and one Newton step on s
   itself, s + (y/2)(x - s^2), which squares the error: within 1 ulp. sqrt(0) = 0. */
static inline vf sqrt_nonneg(vf x) {
#if W == 16
  return (vf)_mm512_sqrt_ps((__m512)x);
#elif defined(__AVX__) && defined(__GNUC__)
  return __builtin_ia32_sqrtps256(x);
#else
  vf y = (vf)(0x5f375a86 - ((vi)x >> 1));
  vf hx = 0.5f * x;
  y = y * (1.5f - hx * y * y);
  y = y * (1.5f - hx * y * y);
  vf s = x * y;
  return s + (0.5f * y) * (x - s * s);
#endif
}

/* log(x) for positive normal finite x (no special values: a Box-Muller uniform in
   [1e-7, 1)): log_any's reduction and series without its guards. */
static inline vf log_normal(vf x) {
  vi bits = (vi)x;
  vi k = ((bits >> 23) & 0xff) - 127;
  vf m = (vf)((bits & 0x007fffff) | 0x3f800000);  /* [1, 2) */
  vi big = m > SPLAT(1.41421356f);
  m = sel(big, m * 0.5f, m);
  vf fk = __builtin_convertvector(k + (big & 1), vf);
  return (log1p_unit(m - 1.0f) - fk * 2.12194440e-4f) + fk * 0.693359375f;
}

/* cos(2 pi t) and sin(2 pi t) for t in [-1/2, 1/2] (a Box-Muller angle in turns). The
   reduction is exact in turns: q = round(4 t) and f = t - q/4 (a float: f is a multiple
   of t's spacing and |f| <= 1/8 <= |t| when q != 0), so the only rounding before the
   polynomials is r = 2 pi f in [-pi/4, pi/4]; Cephes sinf/cosf's polynomials there, then
   the quadrant q mod 4 swaps and negates them. */
static inline void cos_sin_turn(vf t, vf *c, vf *s) {
  vf qf = (t * 4.0f + 12582912.0f) - 12582912.0f;  /* round(4 t), 4 t exact */
  vi q = __builtin_convertvector(qf, vi);
  vf r = (t - 0.25f * qf) * 6.28318530717958648f;
  vf r2 = r * r;
  vf sp = ((-1.9515295891E-4f * r2 + 8.3321608736E-3f) * r2 - 1.6666654611E-1f) * r2 * r + r;
  vf cp = ((2.443315711809948E-5f * r2 - 1.388731625493765E-3f) * r2 + 4.166664568298827E-2f)
          * r2 * r2 - 0.5f * r2 + 1.0f;
  vi odd = (q & 1) != 0;                           /* quadrants 1, 3: cos and sin swap */
  vi qm = q & 3;                                   /* 0..3, negative q included */
  vi cneg = (qm == 1) | (qm == 2), sneg = qm >= 2;
  vi sign = (vi)SPLAT(-0.0f);
  *c = (vf)((vi)sel(odd, sp, cp) ^ (cneg & sign));
  *s = (vf)((vi)sel(odd, cp, sp) ^ (sneg & sign));
}

#endif
