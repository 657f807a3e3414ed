/* The discretized mixture of logistics on CPU, float32: per sample the log-likelihood
 * sum over pixels of logsumexp_m [log_softmax(pi)_m + sum_c l_cm] and, per parameter,
 * scale * d/dparams, in one pass over the parameters (read once, gradient written once).
 *
 * Layout: channels-first, x (B, C, HW), params (B, S*M, HW) with S = 10 slots for RGB
 * ([logits | mean, log-scale, coeff of channel 0 | of channel 1 | of channel 2]) and 3
 * for grayscale ([logits | mean | log-scale]), each slot M planes of HW pixels. The W
 * lanes of a vector are W neighbouring pixels of one plane; tiles of TILE pixels of every
 * plane are staged into a contiguous buffer (see unit), a pixel's C*M (channel,
 * component) terms computed in small work arrays, their partials kept until the
 * responsibilities are known, then the gradient written and copied out.
 *
 * Per channel c and component m (l_cm, u+- = e^-s (y - mean +- h), w = 2h e^-s):
 * bottom bin log sigmoid(u+), top bin log sigmoid(-u-), interior
 * log sigmoid(u+) + log sigmoid(-u-) + log(1 - e^-w) (= log(sigmoid(u+) - sigmoid(u-)),
 * stable for every input; log(1 - e^-w) from log w = log(2h) - s plus a series for w <= 1,
 * so it stays exact where w underflows). The bin is
 * decided by k = round(x * n), n = 2^bits - 1, never by a float threshold. log-scales
 * clamped below at -7 (no gradient below), coeffs through tanh, autoregressive means
 * m1 = mean1 + t0 y0, m2 = mean2 + t1 y0 + t2 y1. The same math as terms.logistic_bin.
 *
 * Sums: a unit is a block of PB pixels of one sample (fixed by the shape, not by the
 * thread count); a unit's pixels are summed lane-wise in order, the lanes in a fixed
 * order, one thread per unit: the same bits for any number of threads.
 */
#include <stdlib.h>

#include "vecmath.h"

#define LOG_SCALE_MIN -7.0f
#ifndef TILE
#define TILE 64            /* pixels staged at a time (a multiple of W and of 16) */
#endif

typedef struct {
  int64_t hw, m;            /* pixels per plane, components */
  float nlev, two_over_n;   /* n = 2^bits - 1, 2/n (the grid step on [-1, 1]) */
  float h, two_h, log_2h;   /* half bin width 1/n, 2h, log(2h) */
  float scale;              /* the gradient's factor */
} dims;

static inline __attribute__((always_inline)) vf load(const float *p, int nv) {
  vf v = SPLAT(0.0f);
  memcpy(&v, p, (size_t)nv * sizeof(float));
  return v;
}

static inline __attribute__((always_inline)) void store(float *p, vf v, int nv) {
  memcpy(p, &v, (size_t)nv * sizeof(float));
}

/* The grid value y = 2k/n - 1 of x's bin k = round(x n) (clamped to [0, n]; NaN kept),
   and masks of the bins that use u+ (not the top) and u- (not the bottom). */
static inline vf grid(vf x, const dims *d, vi *use_a, vi *use_b) {
  vf t = x * d->nlev + 0.5f;
  t = sel(t < SPLAT(0.0f), SPLAT(0.0f), t);
  t = sel(t > SPLAT(d->nlev), SPLAT(d->nlev), t);
  vf k = __builtin_convertvector(__builtin_convertvector(t, vi), vf);
  *use_a = k != SPLAT(d->nlev);
  *use_b = k != SPLAT(0.0f);
  vf y = k * d->two_over_n - 1.0f;
  return sel(x != x, x, y);
}

/* Vectors of work space per component: per channel the mean (then the bin's value),
   d/dmean, d/ds, and while the bins are computed the raw log-scale, e^-s, u+, u-, and
   their exps (9 per channel); 3 tanh' factors (RGB); the logit (then its exp) and the
   total: RGB 32, gray 11. */
static inline int64_t buf_per_m(int rgb) { return rgb ? 32 : 11; }

/* log p of W pixels at x, p (plane stride TILE: the staged tile) and, when g, their
   gradient.
   The work is a series of loops over the C*M (channel, component) pairs whose
   iterations are independent and short, so that the core overlaps many of them (one
   loop doing a whole bin has a ~150-cycle chain of dependent steps and ran at about one
   instruction a cycle): the log-scales and e^-s; u+- and the exps of -|u+-|; then the
   log-sigmoids, log(1 - e^-w) and the partials. Then the mixture and the gradient. */
static inline __attribute__((always_inline)) vf pixels(int rgb, const float *x, const float *p,
                                                         float *g, const dims *d, vf *buf) {
  const int nv = W;
  const int64_t hw = TILE, M = d->m, C = rgb ? 3 : 1, cm = C * M;
  const int64_t per = rgb ? 3 : 2;              /* slots per channel */
  vf *mu = buf, *dm = mu + cm, *ds = dm + cm, *raw = ds + cm, *inv = raw + cm, *ua_ = inv + cm;
  vf *ub_ = ua_ + cm, *ea = ub_ + cm, *eb = ea + cm, *pi = eb + cm, *lp = pi + M;
  vf *tf = lp + M;                               /* RGB: 3M tanh' factors */
  vf y[3];
  vi use_a[3], use_b[3];
  for (int64_t c = 0; c < C; ++c) y[c] = grid(load(x + c * hw, nv), d, &use_a[c], &use_b[c]);
  for (int64_t m = 0; m < M; ++m) pi[m] = load(p + m * hw, nv);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t m = 0; m < M; ++m) {
      mu[c * M + m] = load(p + ((1 + per * c) * M + m) * hw, nv);
      raw[c * M + m] = load(p + ((2 + per * c) * M + m) * hw, nv);
    }
  if (rgb) {  /* m1 = mean1 + t0 y0, m2 = mean2 + t1 y0 + t2 y1; tf: d mean / d coeff */
    for (int64_t c = 0; c < 3; ++c)
      for (int64_t m = 0; m < M; ++m)
        tf[c * M + m] = tanh_any(load(p + ((3 + 3 * c) * M + m) * hw, nv));
    for (int64_t m = 0; m < M; ++m) {
      vf t0 = tf[m], t1 = tf[M + m], t2 = tf[2 * M + m];
      mu[M + m] += t0 * y[0];
      mu[2 * M + m] += t1 * y[0] + t2 * y[1];
      tf[m] = y[0] * ((1.0f - t0) * (1.0f + t0));  /* tanh' = 1 - t^2 */
      tf[M + m] = y[0] * ((1.0f - t1) * (1.0f + t1));
      tf[2 * M + m] = y[1] * ((1.0f - t2) * (1.0f + t2));
    }
  }
  vi big = (vi)SPLAT(0.0f);                      /* any w = 2h e^-s above 1 */
  for (int64_t i = 0; i < cm; ++i) {
    vf s = sel(raw[i] < SPLAT(LOG_SCALE_MIN), SPLAT(LOG_SCALE_MIN), raw[i]);
    inv[i] = exp_any(-s);
    big |= d->two_h * inv[i] > SPLAT(1.0f);
  }
  for (int64_t c = 0; c < C; ++c)
    for (int64_t m = 0; m < M; ++m) {
      int64_t i = c * M + m;
      vf cen = y[c] - mu[i];
      vf a = (cen + d->h) * inv[i], nb = (d->h - cen) * inv[i];   /* u+, -u- */
      ua_[i] = a;
      ub_[i] = nb;
      ea[i] = exp_nonpos((vf)((vi)a | (vi)SPLAT(-0.0f)));
      eb[i] = exp_nonpos((vf)((vi)nb | (vi)SPLAT(-0.0f)));
    }
  const int any_big = any_lane(big);
  for (int64_t c = 0; c < C; ++c) {
    const vi uac = use_a[c], ubc = use_b[c], inter = uac & ubc;
    for (int64_t m = 0; m < M; ++m) {
      int64_t i = c * M + m;
      vf pa, pb, dgap;
      vf a = ua_[i], nb = ub_[i];
      vf la = log_sigmoid_given(a, ea[i], &pa);    /* log sigmoid(u+), sigmoid(-u+) */
      vf lb = log_sigmoid_given(nb, eb[i], &pb);   /* log sigmoid(-u-), sigmoid(u-) */
      vi clamped = raw[i] < SPLAT(LOG_SCALE_MIN);
      vf s = sel(clamped, SPLAT(LOG_SCALE_MIN), raw[i]);
      vf w = d->two_h * inv[i];                    /* log(1 - e^-w) = log(sig(u+) - sig(u-)) - la - lb */
      vf gap = log1mexp_small(w, d->log_2h - s, &dgap);
      if (any_big) {
        vi wide = w > SPLAT(1.0f);
        vf dl, gl = log1mexp_large(w, &dl);
        gap = sel(wide, gl, gap);
        dgap = sel(wide, dl, dgap);
      }
      pa = sel(uac, pa, SPLAT(0.0f));
      pb = sel(ubc, pb, SPLAT(0.0f));
      dm[i] = (pb - pa) * inv[i];
      /* u sigmoid(-u) is 0 past u = 87, not u times exp_nonpos's floor e^-87 (-5 at
         u = 3e38: a mean far beyond an edge bin that it holds with certainty), nor
         inf * 0 = NaN where u overflowed or its side is unused */
      vf ta = sel((pa == SPLAT(0.0f)) | (a > SPLAT(87.0f)), SPLAT(0.0f), a * pa);
      vf tb = sel((pb == SPLAT(0.0f)) | (nb > SPLAT(87.0f)), SPLAT(0.0f), nb * pb);
      vf dsv = -(tb + ta) - sel(inter, dgap, SPLAT(0.0f));
      ds[i] = dsv * sel(clamped, SPLAT(0.0f), SPLAT(1.0f));  /* NaN * 0 stays NaN */
      mu[i] = sel(uac, la, SPLAT(0.0f)) + sel(ubc, lb, SPLAT(0.0f)) + sel(inter, gap, SPLAT(0.0f));
    }
  }
  /* log p = lse(pi + l) - lse(pi) with the logits taken relative to their largest: pi + l
     at the logits' own magnitude would round l to ulp(pi), so that a shift of every
     logit moved log p */
  vf lmax = SPLAT(-__builtin_inff()), pmax = lmax;
  for (int64_t m = 0; m < M; ++m) pmax = sel(pi[m] > pmax, pi[m], pmax);
  vi nan = lmax != lmax;   /* a NaN input (x or a parameter): log p NaN, as in eager */
  for (int64_t m = 0; m < M; ++m) {
    pi[m] -= pmax;
    vf tot = pi[m];
    for (int64_t c = 0; c < C; ++c) tot += mu[c * M + m];
    lp[m] = tot;
    nan |= tot != tot;
    lmax = sel(tot > lmax, tot, lmax);
  }
  /* a pixel whose every component's mass is below float32 (a mean ~1e36 away) has lmax
     -inf: its log p is -inf, not -inf - -inf = NaN (shifted by 0 instead, and the -inf
     set below) */
  vi none = lmax == SPLAT(-__builtin_inff());
  lmax = sel(none, SPLAT(0.0f), lmax);
  vf sl = SPLAT(0.0f), sp = SPLAT(0.0f);
  for (int64_t m = 0; m < M; ++m) {
    /* 0 below e^-87, where exp_nonpos stops: a component of no mass takes responsibility
       0, and its gradient is 0 below (its partials can be inf or NaN: a mean ~1e35 away) */
    vf dl = lp[m] - lmax;
    lp[m] = sel(dl < SPLAT(-87.0f), SPLAT(0.0f), exp_nonpos(dl));
    pi[m] = exp_nonpos(pi[m]);
    sl += lp[m];
    sp += pi[m];
  }
  vf logp = sel(nan, SPLAT(__builtin_nanf("")),
                sel(none, SPLAT(-__builtin_inff()), lmax + log_any(sl)) - log_any(sp));
  if (g) {
    vf il = d->scale / sl, ip = d->scale / sp;
    for (int64_t m = 0; m < M; ++m) {
      vf r = lp[m] * il;                         /* scale * responsibility */
      lp[m] = r;
      store(g + m * hw, r - pi[m] * ip, nv);     /* scale * (r - softmax(pi)) */
    }
    for (int64_t c = 0; c < C; ++c) {
      float *gm = g + (1 + per * c) * M * hw, *gs = gm + M * hw;
      for (int64_t m = 0; m < M; ++m) {
        int64_t i = c * M + m;
        vi off = lp[m] == SPLAT(0.0f);
        dm[i] = sel(off, SPLAT(0.0f), dm[i] * lp[m]);
        store(gm + m * hw, dm[i], nv);
        store(gs + m * hw, sel(off, SPLAT(0.0f), ds[i] * lp[m]), nv);
      }
    }
    if (rgb) {  /* coeff0 through mean1, coeff1 and coeff2 through mean2 */
      float *g0 = g + 3 * M * hw, *g1 = g + 6 * M * hw, *g2 = g + 9 * M * hw;
      for (int64_t m = 0; m < M; ++m) {
        store(g0 + m * hw, dm[M + m] * tf[m], nv);
        store(g1 + m * hw, dm[2 * M + m] * tf[M + m], nv);
        store(g2 + m * hw, dm[2 * M + m] * tf[2 * M + m], nv);
      }
    }
  }
  return logp;
}

/* TILE floats, as vector moves (a memcpy of 256 bytes is a library call). */
static inline void copy_tile(float *dst, const float *src) {
  for (int l = 0; l < TILE; l += W) store(dst + l, load(src + l, W), W);
}

/* One unit: pixels [j0, j1) of one sample; returns their log p summed in a fixed order.
   Tiles of TILE pixels are copied from the planes into a contiguous stage first, and the
   tile's gradient copied out of one: the S*M planes lie hw floats apart, so that for
   hw = 1024 or 4096 the same pixel of every plane falls into one cache set of L1 (and a
   few of L2), and reading them in place in 8-pixel steps thrashed those sets (every line
   fetched twice, from L3). Whole lines of each plane are copied at once instead, and the
   next tile's lines prefetched while this one is computed. stage: (C + S*M) * TILE floats
   in, S*M * TILE out. */
__attribute__((flatten)) static float unit(int rgb, int64_t j0, int64_t j1, const float *x,
                                           const float *p, float *g, const dims *d, vf *buf,
                                           float *in, float *out) {
  const int64_t hw = d->hw, planes = (rgb ? 10 : 3) * d->m, c = rgb ? 3 : 1;
  float *sp = in + c * TILE;
  vf acc = SPLAT(0.0f);
  for (int64_t j = j0; j < j1; j += TILE) {
    const int64_t n = j1 - j < TILE ? j1 - j : TILE;
    if (j + TILE < j1)
      for (int64_t k = 0; k < planes; ++k)
        for (int64_t l = 0; l < TILE; l += 16) {  /* 16 floats a line */
          __builtin_prefetch(p + k * hw + j + TILE + l, 0, 3);
          if (g) __builtin_prefetch(g + k * hw + j + TILE + l, 1, 3);
        }
    if (n == TILE) {
      for (int64_t k = 0; k < c; ++k) copy_tile(in + k * TILE, x + k * hw + j);
      for (int64_t k = 0; k < planes; ++k) copy_tile(sp + k * TILE, p + k * hw + j);
    } else { /* zeros past n: finite, computed, then left out of the sum and the copy-out */
      for (int64_t k = 0; k < c; ++k) memcpy(in + k * TILE, x + k * hw + j, n * sizeof(float));
      for (int64_t k = 0; k < planes; ++k) memcpy(sp + k * TILE, p + k * hw + j, n * sizeof(float));
      for (int64_t k = 0; k < c + planes; ++k) memset(in + k * TILE + n, 0, (TILE - n) * sizeof(float));
    }
    for (int64_t v = 0; v < n; v += W) {
      vf r = rgb ? pixels(1, in + v, sp + v, g ? out + v : 0, d, buf)
                 : pixels(0, in + v, sp + v, g ? out + v : 0, d, buf);
      if (n - v >= W) {
        acc += r;
      } else {
        for (int64_t k = 0; k < n - v; ++k) acc[k] += r[k];
      }
    }
    if (g && n == TILE)
      for (int64_t k = 0; k < planes; ++k) copy_tile(g + k * hw + j, out + k * TILE);
    else if (g)
      for (int64_t k = 0; k < planes; ++k) memcpy(g + k * hw + j, out + k * TILE, n * sizeof(float));
  }
  float s = 0.0f;
  for (int k = 0; k < W; ++k) s += acc[k];
  return s;
}

/* Units u0 .. u0 + count - 1 of nblk per sample (pb pixels each, the last one shorter):
   partial[u - u0] = that unit's sum of log p; g (may be null) = scale * d/dparams.
   x, p, g: the first sample's bases (sample strides sx, sp, sg; plane stride hw).
   Returns 0, -1 for bad arguments, -2 when a work buffer cannot be allocated. */
int fastvae_dmol_rows(int64_t u0, int64_t count, int64_t nblk, int64_t pb, int64_t hw,
                      int64_t channels, int64_t m, int64_t bits, const float *x, int64_t sx,
                      const float *p, int64_t sp, float *g, int64_t sg, float scale,
                      float *partial, int nthreads) {
  if ((channels != 1 && channels != 3) || m < 1 || bits < 1 || bits > 16 || pb < 1 ||
      nblk < 1 || hw < 1)
    return -1;
  double n = (double)((1 << bits) - 1);
  dims d = {hw, m, (float)n, (float)(2.0 / n), (float)(1.0 / n), (float)(2.0 / n),
            (float)__builtin_log(2.0 / n), scale};
  const int rgb = channels == 3;
  const size_t work = (size_t)m * buf_per_m(rgb) * sizeof(vf);
  const size_t planes = (size_t)(rgb ? 10 : 3) * m;
  const size_t bytes = work + (channels + 2 * planes) * TILE * sizeof(float);
  int err = 0;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (nthreads > 1) \
    reduction(| : err)
#endif
  for (int64_t u = u0; u < u0 + count; ++u) {
    vf *buf = aligned_alloc(sizeof(vf), bytes);
    if (!buf) {
      err |= 1;
      continue;
    }
    float *in = (float *)((char *)buf + work), *out = in + (channels + planes) * TILE;
    int64_t b = u / nblk, j0 = (u % nblk) * pb, j1 = j0 + pb < hw ? j0 + pb : hw;
    partial[u - u0] = unit(rgb, j0, j1, x + b * sx, p + b * sp, g ? g + b * sg : 0, &d, buf,
                           in, out);
    free(buf);
  }
  (void)nthreads;
  return err ? -2 : 0;
}

/* Test entry point: vecmath.h's functions added for this kernel, elementwise on n floats.
   what: 0 expm1_nonpos, 1 tanh_any, 2 sigmoid_any, 3 softplus_any, 4 log_sigmoid_any,
   5 the derivative log_sigmoid_and_grad gives (sigmoid(-x)), 6 log1mexp_and_grad's value
   log(1 - e^-w) (log_w = log_any(w)), 7 its w / (e^w - 1). Returns -1 for an unknown
   what. */
static inline vf eval_dmol1(int what, vf v) {
  vf d;
  switch (what) {
    case 0: return expm1_nonpos(v);
    case 1: return tanh_any(v);
    case 2: return sigmoid_any(v);
    case 3: return softplus_any(v);
    case 4: return log_sigmoid_any(v);
    case 5: log_sigmoid_and_grad(v, &d); return d;
    case 6: return log1mexp_and_grad(v, log_any(v), &d);
    default: log1mexp_and_grad(v, log_any(v), &d); return d;
  }
}

int fastvae_dmol_eval(int what, int64_t n, const float *in, float *out) {
  if (what < 0 || what > 7) return -1;
  int64_t j = 0;
  for (; j + W <= n; j += W) store(out + j, eval_dmol1(what, load(in + j, W)), W);
  if (j < n) store(out + j, eval_dmol1(what, load(in + j, (int)(n - j))), (int)(n - j));
  return 0;
}
