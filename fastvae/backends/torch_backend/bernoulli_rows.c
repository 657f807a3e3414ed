/* The Bernoulli rows of the ELBO on CPU, float32: per row the value
 * sum_j x*l - softplus(l) and, per element, the scaled gradient c * (x - sigmoid(l)).
 *
 * Built at first use by fastvae/backends/torch_backend/native.py with the system C
 * compiler (-march=native: the library is built on the machine that runs it) and
 * loaded with ctypes; no torch headers: GCC/Clang vector extensions, W floats wide
 * (vecmath.h).
 *
 * Why a kernel of its own: the row pass is bound by its two transcendentals per
 * element. exp(-|l|) is shared by softplus and sigmoid, so one exp and one log1p
 * per element suffice; aten needs separate passes and inductor's Sleef functions
 * handle ranges this loop never sees (the argument of exp is <= 0, that of log1p is
 * in [0, 1]), which lets the approximations below skip the range checks.
 * torch.compile of the same closed form was measured against it before keeping it
 * (benchmarks/RESULTS.md, "CPU row kernel: C or torch.compile").
 *
 * Accuracy: the exp and log1p of vecmath.h; a row's sum blocked as vecmath.h's ROW_BLOCK
 * says, so it keeps float32's accuracy at any length.
 *
 * Threads: rows are split over an OpenMP team only when the loader has checked that
 * the OpenMP runtime this library links is the one torch already uses; otherwise
 * the library is built without -fopenmp and the loader splits rows itself. A row's
 * sum is always done by one thread in a fixed order, so results do not depend on
 * the thread count.
 */
#include "vecmath.h"

/* x*l - softplus(l) and, into *g, c * (x - sigmoid(l)); e = exp(-|l|) serves both. */
static inline vf bern(vf l, vf x, vf c, vf *g) {
  vf e = exp_nonpos((vf)((vi)l | (vi)SPLAT(-0.0f)));
  vi pos = l >= 0.0f;
  vf sp = sel(pos, l, SPLAT(0.0f)) + log1p_unit(e);
  vf s = sel(pos, SPLAT(1.0f), e) / (1.0f + e);
  *g = c * (x - s);
  return x * l - sp;
}

static void row(int64_t d, const float *x, const float *l, float *g, float c, float *out) {
  vf part = SPLAT(0.0f), cv = SPLAT(c), gv, xv, lv;
  vd acc = {0};
  int count = 0;
  int64_t j = 0;
  for (; j + W <= d; j += W) {
    memcpy(&xv, x + j, sizeof xv);
    memcpy(&lv, l + j, sizeof lv);
    part += bern(lv, xv, cv, &gv);
    if (g) memcpy(g + j, &gv, sizeof gv);
    if (++count == ROW_BLOCK) { /* float sums of ROW_BLOCK vectors, added in double */
      acc += __builtin_convertvector(part, vd);
      part = SPLAT(0.0f);
      count = 0;
    }
  }
  if (j < d) { /* the tail: padded lanes are computed, then left out of the sum */
    int64_t n = d - j;
    xv = SPLAT(0.0f);
    lv = SPLAT(0.0f);
    memcpy(&xv, x + j, n * sizeof(float));
    memcpy(&lv, l + j, n * sizeof(float));
    vf v = bern(lv, xv, cv, &gv);
    for (int64_t k = 0; k < n; ++k) part[k] += v[k];
    if (g) memcpy(g + j, &gv, n * sizeof(float));
  }
  acc += __builtin_convertvector(part, vd);
  *out = (float)sum_lanes(acc);
}

/* Per row i: out[i] = sum_j x*l - softplus(l); g[i, :] = c * (x - sigmoid(l)) if g.
   x and l rows may be strided (stride 0 for a broadcast x); elements are contiguous.
   nthreads is used only by the OpenMP build. */
int fastvae_bernoulli_rows(int64_t rows, int64_t d, const float *x, int64_t sx,
                           const float *l, int64_t sl, float *g, float c, float *out,
                           int nthreads) {
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 8) num_threads(nthreads) if (nthreads > 1)
#endif
  for (int64_t i = 0; i < rows; ++i)
    row(d, x + i * sx, l + i * sl, g ? g + i * d : 0, c, out + i);
  (void)nthreads;
  return 0;
}

/* Whether this build splits rows over OpenMP threads itself (1) or not (0). */
int fastvae_openmp(void) {
#ifdef _OPENMP
  return 1;
#else
  return 0;
#endif
}

/* Test entry point: the building blocks above, elementwise, on n floats (for the
   accuracy sweep against float64, and for timing them alone). what: 0 exp_nonpos(in),
   1 log1p_unit(in), 2 softplus(in), 3 sigmoid(in), 4 exp_any(in), 5 log_any(in),
   6 sqrt_nonneg(in), 7 cos(2 pi in), 8 sin(2 pi in) (cos_sin_turn), 9 log_normal(in).
   Returns -1 for an unknown what. */
static inline vf eval1(int what, vf v) {
  vf g, r;
  switch (what) {
    case 0: return exp_nonpos(v);
    case 1: return log1p_unit(v);
    case 4: return exp_any(v);
    case 5: return log_any(v);
    case 6: return sqrt_nonneg(v);
    case 7: cos_sin_turn(v, &r, &g); return r;
    case 8: cos_sin_turn(v, &g, &r); return r;
    case 9: return log_normal(v);
    default: /* x = 0, c = -1: the value is -softplus, the gradient sigmoid */
      r = -bern(v, SPLAT(0.0f), SPLAT(-1.0f), &g);
      return what == 2 ? r : g;
  }
}

/* The vector width this build was compiled for (vecmath.h's W). */
int fastvae_lanes(void) { return W; }

int fastvae_eval(int what, int64_t n, const float *in, float *out) {
  if (what < 0 || what > 9) return -1;
  vf v, r;
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    memcpy(&v, in + j, sizeof v);
    r = eval1(what, v);
    memcpy(out + j, &r, sizeof r);
  }
  if (j < n) {
    v = SPLAT(0.0f);
    memcpy(&v, in + j, (n - j) * sizeof(float));
    r = eval1(what, v);
    memcpy(out + j, &r, (n - j) * sizeof(float));
  }
  return 0;
}
