/* One latent group with a diagonal Gaussian prior on CPU, float32: the reparameterized
 * sample z = mu + exp(lv/2) eps, the per-row KL(N(mu, e^lv) || N(pm, e^plv)) and its
 * gradients in one pass forward, the gradients of sample_with_kl in one pass backward.
 * Used by the torch backend's kl_normal, sample_with_kl and reparameterize
 * (gaussian_rows.py binds and calls them).
 *
 * Per element, with d = mu - pm, s = exp(-plv/2), u = d s, r = exp(lv - plv):
 *   KL = 0.5 (plv - lv) + 0.5 (r - 1) + 0.5 u^2, with 0.5 r as exp(lv - plv - log 2)
 *   dKL/dmu = u s = -dKL/dpm, dKL/dlv = 0.5 (r - 1), dKL/dplv = -(0.5 (r - 1) + 0.5 u^2)
 * r is exp(lv - plv), never exp(lv) * exp(-plv), and u^2 is (d s)^2, never d^2 exp(-plv):
 * at log-variances of +-80 every factor stays inside float32 wherever the KL does, and
 * s is held at the largest float where it overflows, so that d = 0 gives u = 0.
 * Three exponentials per element forward (the sample's exp(lv/2), s and r), one
 * backward (exp(lv/2) again, for 0.5 dz exp(lv/2) eps); none without a prior's plv.
 *
 * Layout: rows of n contiguous floats; a row stride of 0 broadcasts one row to every
 * row (a prior shared by the batch, or a number made a row). A prior's column stride of
 * 0 repeats its row's first float along the row (a (B, 1, 1, 1) prior of (B, C, H, W)
 * latents), read without the (B, N) copy it would else be made. A NULL prior is 0 (a
 * NULL plv has a loop of its own, without the exp for s); a NULL output is
 * not written. The row sum is accumulated per lane (in float over blocks of 256
 * elements, the blocks in double) and added up in a fixed order by the one thread that
 * owns the row: the bits do not depend on the thread count.
 *
 * The sample: eps is drawn here from the seed (philox.h: the Triton backend's stream and
 * layout, element i of the row-major (B, N) draw at flat index i), never read from or
 * written to memory, and drawn again in the backward. draw() is the only definition of
 * z, shared by the forward here and by fastvae_gauss_sample_rows (reparameterize), so
 * both give the same bits for the same seed (the seed contract of sample_with_kl).
 *
 * Threads: each takes a contiguous block of rows (thread_rows) and one eps_stream, so a
 * chunk of normals is drawn once per thread; the bits depend on no thread count.
 */
#include "philox.h"
#include "stream.h"
#ifdef _OPENMP
#include <omp.h>
#endif

static inline vf load_part(const float *p, int64_t k) {
  vf v = SPLAT(0.0f);
  memcpy(&v, p, k * sizeof(float));
  return v;
}

/* z = mu + exp(lv / 2) eps. */
static inline vf draw(vf mu, vf lv, vf eps) { return mu + exp_any(0.5f * lv) * eps; }

/* This thread's rows [*r0, *r1) of rows, inside an OpenMP parallel region (or all). */
static inline void thread_rows(int64_t rows, int64_t *r0, int64_t *r1) {
#ifdef _OPENMP
  int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
  int64_t t = 0, nt = 1;
#endif
  *r0 = rows * t / nt;
  *r1 = rows * (t + 1) / nt;
}

/* The next span of a row's eps: the row's elements [j, *end) lie in one chunk of the
   stream (flat index flat + j on), at the returned pointer; NULL (and *end = n) without. */
static inline const float *eps_span(eps_stream *es, int64_t flat, int64_t j, int64_t n,
                                    int64_t *end) {
  *end = n;
  if (!es) return 0;
  int64_t avail;
  const float *e = eps_at(es, flat + j, &avail);
  if (j + avail < n) *end = j + avail;
  return e;
}

/* The walk every entry point shares: STEP(j, k, e) for each vector of a row's n elements,
   j its first element, k its length (the literal W in the hot loop, so the copies are
   whole vectors; less only where a chunk of the eps stream or the row ends) and e the eps
   of element j (es NULL: none, e NULL). */
#define FOR_ROW_VECTORS(es, flat, n, STEP)                         \
  for (int64_t j_ = 0, end_ = 0; j_ < (n);) {                      \
    const float *e_ = eps_span((es), (flat), j_, (n), &end_);      \
    for (; j_ + W <= end_; j_ += W, e_ += W) STEP(j_, W, e_);      \
    if (j_ < end_) {                                               \
      STEP(j_, end_ - j_, e_);                                     \
      j_ = end_;                                                   \
    }                                                              \
  }

/* The row pointers of one row, NULL where absent. */
typedef struct {
  const float *mu, *lv, *pm, *plv;
  float *z, *g_mu, *g_pm, *g_lv, *g_plv;
  int stream; /* store the gradients past the caches (stream.h) */
  int pm_one, plv_one; /* column stride 0: the row's one float, splat */
} fwd_row;

/* The saved gradients are read again only by the backward pass, after the rest of the
   model's forward and most of its backward, by when a large call's would have left the
   caches anyway: from STREAM_MIN_ELEMS elements on they are stored past them, and no
   line is fetched only to be overwritten. */
#define STREAM_MIN_ELEMS (1 << 16)

/* Elements [j, j + k) of a row (k <= W; k < W only for the tail); returns the KL terms
   with the lanes past k zeroed. has_plv is a constant after inlining, has_pm and has_z
   loop-invariant. */
static inline __attribute__((always_inline)) vf fwd_vec(fwd_row row, int64_t j, int64_t k,
                                                        const float *e, int has_pm,
                                                        int has_plv, int has_z) {
  const fwd_row *p = &row; /* by value: stores through the outputs cannot change the pointers */
  vf mu, lv, pm = SPLAT(0.0f), plv = SPLAT(0.0f), eps = SPLAT(0.0f);
  int full = k == W;
  if (full) {
    PREFETCH(p->mu + j);
    PREFETCH(p->lv + j);
    if (has_pm && !p->pm_one) PREFETCH(p->pm + j);
    if (has_plv && !p->plv_one) PREFETCH(p->plv + j);
    memcpy(&mu, p->mu + j, sizeof mu);
    memcpy(&lv, p->lv + j, sizeof lv);
    if (has_pm && !p->pm_one) memcpy(&pm, p->pm + j, sizeof pm);
    if (has_plv && !p->plv_one) memcpy(&plv, p->plv + j, sizeof plv);
    if (has_z) memcpy(&eps, e, sizeof eps);
  } else {
    mu = load_part(p->mu + j, k);
    lv = load_part(p->lv + j, k);
    if (has_pm && !p->pm_one) pm = load_part(p->pm + j, k);
    if (has_plv && !p->plv_one) plv = load_part(p->plv + j, k);
    if (has_z) eps = load_part(e, k);
  }
  /* lanes past k as well: their terms are zeroed below, as a partial load's are */
  if (has_pm && p->pm_one) pm = SPLAT(*p->pm);
  if (has_plv && p->plv_one) plv = SPLAT(*p->plv);
  vf d = has_pm ? mu - pm : mu, u, gm, r;
  if (has_plv) {
    vf s = exp_any(-0.5f * plv);
    /* held at the largest float where it overflows (plv < -177.4): a d of exactly 0 then
       gives u = 0 and gm = 0, the exact values, not inf * 0 = NaN; NaN stays NaN */
    s = sel(s > SPLAT(3.40282347e38f), SPLAT(3.40282347e38f), s);
    u = d * s;
    gm = u * s;
    r = exp_any(lv - plv - 0.69314718f);
  } else {
    u = d;
    gm = d;
    r = exp_any(lv - 0.69314718f);
  }
  vf g_lv = r - 0.5f;   /* r is half the ratio: e^89 / 2 fits float32, e^89 does not */
  vf neg_g_plv = g_lv + 0.5f * (u * u);
  vf kl = (has_plv ? 0.5f * (plv - lv) : -0.5f * lv) + neg_g_plv;
  size_t bytes = (size_t)k * sizeof(float);
  if (has_z) {
    vf z = draw(mu, lv, eps);
    memcpy(p->z + j, &z, bytes);
  }
  if (p->g_mu) store_streamed(p->g_mu + j, gm, bytes, p->stream);
  if (p->g_pm) store_streamed(p->g_pm + j, -gm, bytes, p->stream);
  if (p->g_lv) store_streamed(p->g_lv + j, g_lv, bytes, p->stream);
  if (p->g_plv) store_streamed(p->g_plv + j, -neg_g_plv, bytes, p->stream);
  if (!full) {
    vi lane = LANES;
    kl = sel(lane < (int)k, kl, SPLAT(0.0f));
  }
  return kl;
}

/* The row's KL; its eps (with z) from es at flat index flat + j. The spans of one chunk
   of eps end a stretch of vectors (a partial vector at a chunk's edge mid-row). */
static inline __attribute__((always_inline)) float fwd_row_sum(const fwd_row *p, int64_t n,
                                                               eps_stream *es, int64_t flat,
                                                               int has_pm, int has_plv,
                                                               int has_z) {
  fwd_row row = *p;
  vd acc = {0};
  vf part = SPLAT(0.0f);
  int count = 0;
  /* float sums of ROW_BLOCK vectors, added in double (vecmath.h) */
#define FWD_STEP(j, k, e)                                          \
  do {                                                             \
    part += fwd_vec(row, j, k, e, has_pm, has_plv, has_z);         \
    if (++count == ROW_BLOCK) {                                    \
      acc += __builtin_convertvector(part, vd);                    \
      part = SPLAT(0.0f);                                          \
      count = 0;                                                   \
    }                                                              \
  } while (0)
  FOR_ROW_VECTORS(has_z ? es : 0, flat, n, FWD_STEP);
#undef FWD_STEP
  acc += __builtin_convertvector(part, vd);
  return (float)sum_lanes(acc);
}

/* Specialized on plv only (it decides two of the three exps); pm and z are branches on
   loop-invariant pointers: eight specializations tripled the library's build time. */
static float fwd_plv(const fwd_row *p, int64_t n, eps_stream *es, int64_t flat) {
  return fwd_row_sum(p, n, es, flat, p->pm != 0, 1, p->z != 0);
}
static float fwd_no_plv(const fwd_row *p, int64_t n, eps_stream *es, int64_t flat) {
  return fwd_row_sum(p, n, es, flat, p->pm != 0, 0, p->z != 0);
}

/* Per row i < rows: kl[i] = the row's KL; z, g_mu (dKL/dmu), g_pm (dKL/dpm), g_lv
   (dKL/dlv), g_plv (dKL/dplv), each (rows, n) contiguous, where not NULL. mu, lv, pm,
   plv: rows of n contiguous floats at the given row strides (0: one row for all); pm or
   plv NULL: 0; cpm, cplv: pm's and plv's column strides, 1 or 0 (one float per row).
   seed (one int64) is given exactly when z is; row i's eps are the stream's flat
   elements flat0 + i n on (flat0: this call's first row in the whole (B, N)).
   saved: the gradients are kept for a backward pass (not read back at once), so a large
   call may stream them past the caches (STREAM_MIN_ELEMS). */
int fastvae_gauss_kl_rows(int64_t rows, int64_t n, const float *mu, int64_t smu,
                          const float *lv, int64_t slv, const float *pm, int64_t spm,
                          const float *plv, int64_t splv, int64_t cpm, int64_t cplv,
                          const int64_t *seed, int64_t flat0, float *z, float *kl, float *g_mu,
                          float *g_pm, float *g_lv, float *g_plv, int saved, int nthreads) {
  if ((seed == 0) != (z == 0) || rows < 0 || n < 0 || flat0 < 0 || (cpm | cplv) & ~1)
    return -1;
  float (*fn)(const fwd_row *, int64_t, eps_stream *, int64_t) = plv ? fwd_plv : fwd_no_plv;
  /* whole vectors only where rows, and the eps chunks that split them (flat multiples of
     PHILOX_CHUNK), start on vector boundaries */
  int stream = saved && rows * n >= STREAM_MIN_ELEMS && flat0 % W == 0 &&
               aligned_rows(g_mu, n) && aligned_rows(g_pm, n) && aligned_rows(g_lv, n) &&
               aligned_rows(g_plv, n);
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
#endif
  {
    int64_t r0, r1;
    thread_rows(rows, &r0, &r1);
    eps_stream es;
    if (seed) eps_start(&es, (uint64_t)*seed, 0, flat0 + r0 * n, flat0 + r1 * n);
    for (int64_t i = r0; i < r1; ++i) {
      int64_t o = i * n;
      fwd_row p = {mu + i * smu, lv + i * slv, pm ? pm + i * spm : 0, plv ? plv + i * splv : 0,
                   z ? z + o : 0, g_mu ? g_mu + o : 0, g_pm ? g_pm + o : 0,
                   g_lv ? g_lv + o : 0, g_plv ? g_plv + o : 0, stream, !cpm, !cplv};
      kl[i] = fn(&p, n, seed ? &es : 0, flat0 + o);
    }
    if (stream) stream_fence();
  }
  (void)nthreads;
  return 0;
}

/* Elements [j, j + k) of a row of z = mu + exp(lv / 2) eps (mu NULL: 0). */
static inline __attribute__((always_inline)) void sample_vec(const float *m, const float *l,
                                                             const float *e, float *zr,
                                                             int64_t j, int64_t k) {
  vf mu = SPLAT(0.0f), lv, eps, r;
  if (k == W) {
    if (m) PREFETCH(m + j);
    PREFETCH(l + j);
    if (m) memcpy(&mu, m + j, sizeof mu);
    memcpy(&lv, l + j, sizeof lv);
    memcpy(&eps, e, sizeof eps);
  } else {
    if (m) mu = load_part(m + j, k);
    lv = load_part(l + j, k);
    eps = load_part(e, k);
  }
  r = draw(mu, lv, eps);
  memcpy(zr + j, &r, (size_t)k * sizeof(float));
}

/* reparameterize's K samples per row: z[k] = mu + exp(lv / 2) eps_k (mu NULL: 0, which
   gives exp(lv / 2) eps_k, the higher-order path's factor), eps_k the stream's sample k
   (counters from k cpad on) at flat index flat0 + i n for row i; the same bits as the
   forward above gives for sample 0. mu, lv at row strides; z[k] at z + k zk, rows of n
   contiguous floats. */
int fastvae_gauss_sample_rows(int64_t rows, int64_t n, const float *mu, int64_t smu,
                              const float *lv, int64_t slv, const int64_t *seed, int64_t k_count,
                              int64_t cpad, int64_t flat0, float *z, int64_t zk,
                              int nthreads) {
  if (rows < 0 || n < 0 || k_count < 1 || flat0 < 0 || !seed) return -1;
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
#endif
  {
    int64_t r0, r1;
    thread_rows(rows, &r0, &r1);
    eps_stream es;
    for (int64_t k = 0; k < k_count; ++k) {
      eps_start(&es, (uint64_t)*seed, k * cpad, flat0 + r0 * n, flat0 + r1 * n);
      for (int64_t i = r0; i < r1; ++i) {
        const float *m = mu ? mu + i * smu : 0, *l = lv + i * slv;
        float *zr = z + k * zk + i * n;
#define SAMPLE_STEP(j, kk, e) sample_vec(m, l, e, zr, j, kk)
        FOR_ROW_VECTORS(&es, flat0 + i * n, n, SAMPLE_STEP);
#undef SAMPLE_STEP
      }
    }
  }
  (void)nthreads;
  return 0;
}

/* Elements [j, j + k) of a row of reparameterize's backward, sample by sample: d_lv
   accumulates dz_k eps_k (scaled by 0.5 exp(lv / 2) at the last), d_mu dz_k. */
static inline __attribute__((always_inline)) void sample_bwd_vec(
    const float *d, const float *l, const float *e, float *gm, float *gl, int64_t j, int64_t k,
    int first, int last) {
  vf dv, ev, acc, lv;
  if (k == W) {
    PREFETCH(d + j);
    if (!first) PREFETCH(gl + j);
    if (!first && gm) PREFETCH(gm + j);
    if (last) PREFETCH(l + j);
    memcpy(&dv, d + j, sizeof dv);
    memcpy(&ev, e, sizeof ev);
  } else {
    dv = load_part(d + j, k);
    ev = load_part(e, k);
  }
  size_t bytes = (size_t)k * sizeof(float);
  acc = dv * ev;
  if (!first) {
    vf prev = load_part(gl + j, k);
    acc = prev + acc;
  }
  if (last) {
    lv = k == W ? load_part(l + j, W) : load_part(l + j, k);
    acc = (0.5f * exp_any(0.5f * lv)) * acc;
  }
  memcpy(gl + j, &acc, bytes);
  if (gm) {
    vf s = dv;
    if (!first) s = load_part(gm + j, k) + dv;
    memcpy(gm + j, &s, bytes);
  }
}

/* reparameterize's backward per row: d_mu = sum_k dz_k (where d_mu is not NULL) and
   d_lv = 0.5 exp(lv / 2) sum_k dz_k eps_k over samples k0 .. k0 + k_count - 1, eps_k
   drawn again as the forward drew them; dz_k at dz + (k - k0) dzk, rows of n contiguous
   floats, like d_mu and d_lv. d_lv holds the running sum until the last sample scales it
   (a float32 sum in sample order: the host sums longer runs of samples in blocks). */
int fastvae_gauss_sample_bwd_rows(int64_t rows, int64_t n, const float *dz, int64_t dzk,
                                  const float *lv, int64_t slv, const int64_t *seed,
                                  int64_t k0, int64_t k_count, int64_t cpad, int64_t flat0,
                                  float *d_mu, float *d_lv, int nthreads) {
  if (rows < 0 || n < 0 || k0 < 0 || k_count < 1 || flat0 < 0 || !seed || !d_lv) return -1;
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
#endif
  {
    int64_t r0, r1;
    thread_rows(rows, &r0, &r1);
    eps_stream es;
    for (int64_t k = 0; k < k_count; ++k) {
      int first = k == 0, last = k == k_count - 1;
      eps_start(&es, (uint64_t)*seed, (k0 + k) * cpad, flat0 + r0 * n, flat0 + r1 * n);
      for (int64_t i = r0; i < r1; ++i) {
        const float *d = dz + k * dzk + i * n, *l = lv + i * slv;
        float *gm = d_mu ? d_mu + i * n : 0, *gl = d_lv + i * n;
#define SAMPLE_BWD_STEP(j, kk, e) sample_bwd_vec(d, l, e, gm, gl, j, kk, first, last)
        FOR_ROW_VECTORS(&es, flat0 + i * n, n, SAMPLE_BWD_STEP);
#undef SAMPLE_BWD_STEP
      }
    }
  }
  (void)nthreads;
  return 0;
}

/* The row pointers of one backward row, NULL where absent. */
typedef struct {
  const float *dz, *lv, *g_mu, *g_lv, *g_plv;
  float gk;
  float *d_mu, *d_lv, *d_pm, *d_plv;
} bwd_row;

static inline __attribute__((always_inline)) void bwd_vec(bwd_row row, int64_t j, int64_t k,
                                                          const float *e, int has_dz,
                                                          int has_gk) {
  const bwd_row *p = &row; /* by value: stores through the outputs cannot change the pointers */
  size_t bytes = (size_t)k * sizeof(float);
  vf dz = SPLAT(0.0f), gk = SPLAT(p->gk), g = SPLAT(0.0f), out;
  if (has_dz) PREFETCH(p->dz + j);
  if (has_gk && (p->d_mu || p->d_pm)) PREFETCH(p->g_mu + j);
  if (has_gk && p->d_lv) PREFETCH(p->g_lv + j);
  if (has_gk && p->d_plv) PREFETCH(p->g_plv + j);
  if (has_dz && p->d_lv) PREFETCH(p->lv + j);
  if (has_dz) memcpy(&dz, p->dz + j, bytes);
  if (p->d_mu || p->d_pm) {
    if (has_gk) memcpy(&g, p->g_mu + j, bytes);
    if (p->d_mu) {
      out = has_gk ? (has_dz ? dz + gk * g : gk * g) : dz;
      memcpy(p->d_mu + j, &out, bytes);
    }
    if (p->d_pm) {
      out = -(gk * g);
      memcpy(p->d_pm + j, &out, bytes);
    }
  }
  if (p->d_lv) {
    out = SPLAT(0.0f);
    if (has_dz) {
      vf lv = SPLAT(0.0f), eps = SPLAT(0.0f);
      memcpy(&lv, p->lv + j, bytes);
      memcpy(&eps, e, bytes);
      out = (0.5f * dz) * (exp_any(0.5f * lv) * eps);
    }
    if (has_gk) {
      memcpy(&g, p->g_lv + j, bytes);
      out = has_dz ? out + gk * g : gk * g;
    }
    memcpy(p->d_lv + j, &out, bytes);
  }
  if (p->d_plv) {
    out = SPLAT(0.0f);
    if (has_gk) {
      memcpy(&g, p->g_plv + j, bytes);
      out = gk * g;
    }
    memcpy(p->d_plv + j, &out, bytes);
  }
}

/* One backward row; eps (for d_lv with dz) from es at flat index flat + j. */
static inline __attribute__((always_inline)) void bwd_row_run(const bwd_row *p, int64_t n,
                                                              eps_stream *es, int64_t flat,
                                                              int has_dz, int has_gk) {
  bwd_row row = *p;
#define BWD_STEP(j, k, e) bwd_vec(row, j, k, e, has_dz, has_gk)
  FOR_ROW_VECTORS(has_dz && row.d_lv ? es : 0, flat, n, BWD_STEP);
#undef BWD_STEP
}

#define BWD_ROW_FN(name, DZ, GK)                                               \
  static void name(const bwd_row *p, int64_t n, eps_stream *es, int64_t flat) { \
    bwd_row_run(p, n, es, flat, DZ, GK);                                       \
  }
BWD_ROW_FN(bwd_00, 0, 0)
BWD_ROW_FN(bwd_01, 0, 1)
BWD_ROW_FN(bwd_10, 1, 0)
BWD_ROW_FN(bwd_11, 1, 1)
static void (*const bwd_fns[4])(const bwd_row *, int64_t, eps_stream *, int64_t) = {
    bwd_00, bwd_01, bwd_10, bwd_11};

/* sample_with_kl's backward per row i (dz or gk NULL: that output was not used, 0):
     d_mu = dz + gk[i] g_mu, d_pm = -gk[i] g_mu, d_plv = gk[i] g_plv,
     d_lv = 0.5 dz exp(lv / 2) eps + gk[i] g_lv,
   each (rows, n) contiguous, written where not NULL. dz, g_*: (rows, n) contiguous;
   lv at row stride slv; eps drawn again from seed at flat index flat0 + i n for row i,
   as the forward drew it. The inputs a wanted output needs must be given. */
int fastvae_gauss_kl_bwd_rows(int64_t rows, int64_t n, const float *dz, const float *gk,
                              const float *lv, int64_t slv, const int64_t *seed, int64_t flat0,
                              const float *g_mu, const float *g_lv, const float *g_plv,
                              float *d_mu, float *d_lv, float *d_pm, float *d_plv,
                              int nthreads) {
  if (rows < 0 || n < 0 || flat0 < 0) return -1;
  if (gk && (((d_mu || d_pm) && !g_mu) || (d_lv && !g_lv) || (d_plv && !g_plv))) return -1;
  if (dz && d_lv && (!lv || !seed)) return -1;
  void (*fn)(const bwd_row *, int64_t, eps_stream *, int64_t) =
      bwd_fns[(dz != 0) * 2 + (gk != 0)];
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
#endif
  {
    int64_t r0, r1;
    thread_rows(rows, &r0, &r1);
    eps_stream es;
    if (seed) eps_start(&es, (uint64_t)*seed, 0, flat0 + r0 * n, flat0 + r1 * n);
    for (int64_t i = r0; i < r1; ++i) {
      int64_t o = i * n;
      bwd_row p = {dz ? dz + o : 0, lv ? lv + i * slv : 0, g_mu ? g_mu + o : 0,
                   g_lv ? g_lv + o : 0, g_plv ? g_plv + o : 0, gk ? gk[i] : 0.0f,
                   d_mu ? d_mu + o : 0, d_lv ? d_lv + o : 0, d_pm ? d_pm + o : 0,
                   d_plv ? d_plv + o : 0};
      fn(&p, n, seed ? &es : 0, flat0 + o);
    }
  }
  (void)nthreads;
  return 0;
}

/* Test entry point: the stream's uniforms u[4 c + j] (word j of counter ctr0 + c) for
   count counters, and its normals n[4 c + j] likewise. */
int fastvae_philox_eval(int64_t seed, int64_t ctr0, int64_t count, float *u, float *nrm) {
  if (count < 0 || ctr0 < 0) return -1;
  for (int64_t c = 0; c < count; c += PHILOX_STEP) {
    vf v[PHILOX_V][4], nv[4];
    uniforms((uint64_t)seed, (uint64_t)(ctr0 + c), v);
    for (int b = 0; b < PHILOX_V; ++b) {
      box_muller(v[b][0], v[b][1], &nv[0], &nv[1]);
      box_muller(v[b][2], v[b][3], &nv[2], &nv[3]);
      for (int j = 0; j < 4; ++j)
        for (int l = 0; l < W && c + W * b + l < count; ++l) {
          u[4 * (c + W * b + l) + j] = v[b][j][l];
          nrm[4 * (c + W * b + l) + j] = nv[j][l];
        }
    }
  }
  return 0;
}
