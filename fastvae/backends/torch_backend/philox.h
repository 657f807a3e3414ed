/* eps ~ N(0, 1) drawn in the C kernels from the Triton backend's stream (the counter
 * layout of kernels/reparameterize.py), so no eps tensor is written or kept: the
 * forward draws it in registers and the backward draws it again from the seed.
 *
 * The stream, as Triton's tl.rand4x builds it (triton/language/random.py): Philox4x32-10
 * with key (seed lo, seed hi) and counter (c lo, c hi, 0, 0) for the int64 counter c;
 * each of the four words x becomes a uniform in [0, 1) as float(x < 0 ? ~x : x) *
 * 0x1.fffffep-32 (x read as int32, converted with rounding to nearest, one float
 * multiply): these uniforms are the Triton kernels' bit for bit. Box-Muller pairs words
 * 1, 2 and 3, 4 as kernels/reparameterize.py's _box_muller does: radius
 * sqrt(-2 log max(1e-7, u1)), angle 2 pi (u2 - 1/2) (exact in turns), normals -r cos and
 * -r sin; the transcendentals are vecmath.h's (the Triton kernels use the GPU's fast
 * ones), so the normals agree to a bound, not bit for bit (tests/test_philox.py).
 *
 * Layout (independent of threads and blocks): element i of sample k of a B*L draw is
 * normal (i mod 4Q) / Q of the counter k CPAD + (i / 4Q) Q + i mod Q, Q = 1024,
 * CPAD = ceil(B L / 4Q) Q. One Philox call feeds a "chunk" of 4Q elements at four
 * places Q apart; a thread fills a chunk's normals into a 16 KB buffer (in L1) once and
 * reads them in whatever order its rows walk (eps_at).
 */
#ifndef FASTVAE_PHILOX_H
#define FASTVAE_PHILOX_H

#include "vecmath.h"

#define PHILOX_Q 1024
#define PHILOX_CHUNK (4 * PHILOX_Q)

typedef uint32_t vu __attribute__((vector_size(4 * W)));
typedef uint64_t vq __attribute__((vector_size(4 * W)));

/* The 64-bit products of the even 32-bit lanes of a and b (vpmuludq). GCC synthesizes a
   full 64 x 64 multiply (three vpmuludq and shifts) from the portable form even though
   the high halves are zero: the AVX-512 or AVX2 instruction where it exists. */
static inline vq mul_even(vu a, vu b) {
#if W == 16
  return (vq)_mm512_mul_epu32((__m512i)a, (__m512i)b);
#elif defined(__AVX2__) && defined(__GNUC__)
  typedef int vsi __attribute__((vector_size(32)));
  return (vq)__builtin_ia32_pmuludq256((vsi)a, (vsi)b);
#else
  return ((vq)a & 0xffffffffu) * ((vq)b & 0xffffffffu);
#endif
}

/* The low and high 32 bits of a * b per lane: the low by a lane multiply (vpmulld), the
   high from the even lanes' 64-bit products and the odd lanes', recombined. Rebuilding
   the low half from those products as well takes two more shuffle-port operations per
   call, the ports a Philox round is bound by (15% more time per normal). */
static inline void mulhilo(uint32_t a, vu b, vu *lo, vu *hi) {
  vu av = (vu){0} + a;
  vq even = mul_even(av, b);
  vq odd = mul_even(av, (vu)((vq)b >> 32));
  *lo = av * b;
  /* a blend of 32-bit lanes: even lanes from the first vector, odd from the second */
#if W == 16
  *hi = __builtin_shufflevector((vu)(even >> 32), (vu)odd, 0, 17, 2, 19, 4, 21, 6, 23, 8, 25,
                                10, 27, 12, 29, 14, 31);
#else
  *hi = __builtin_shufflevector((vu)(even >> 32), (vu)odd, 0, 9, 2, 11, 4, 13, 6, 15);
#endif
}

/* Philox4x32, 10 rounds, on counters (c0, c1, 0, 0) and key (k0, k1): Triton's
   philox_impl with its constants, for PHILOX_V independent vectors of counters at once.
   One vector's rounds are a chain of multiply latencies; four chains keep the multiply
   ports busy (a draw of normals 1.25x faster than two on a Zen 5 core at either width,
   with no spill at 16 lanes: 16 state registers of 32). */
#define PHILOX_V 4
static inline void philox4x32_10(const vu *c0_in, const vu *c1_in, uint32_t k0, uint32_t k1,
                                 vu x[][4]) {
  vu c0[PHILOX_V], c1[PHILOX_V], c2[PHILOX_V], c3[PHILOX_V];
  for (int v = 0; v < PHILOX_V; ++v) {
    c0[v] = c0_in[v];
    c1[v] = c1_in[v];
    c2[v] = c3[v] = (vu){0};
  }
  for (int round = 0; round < 10; ++round) {
    for (int v = 0; v < PHILOX_V; ++v) {
      vu lo_b, hi_b, lo_a, hi_a;
      mulhilo(0xCD9E8D57u, c2[v], &lo_b, &hi_b);
      mulhilo(0xD2511F53u, c0[v], &lo_a, &hi_a);
      c0[v] = hi_b ^ c1[v] ^ k0;
      c2[v] = hi_a ^ c3[v] ^ k1;
      c1[v] = lo_b;
      c3[v] = lo_a;
    }
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  for (int v = 0; v < PHILOX_V; ++v) {
    x[v][0] = c0[v];
    x[v][1] = c1[v];
    x[v][2] = c2[v];
    x[v][3] = c3[v];
  }
}

/* Triton's uint_to_uniform_float for 32-bit words: [0, 1), the largest 1 - 2^-24. */
static inline vf uniform_of(vu x) {
  vi v = (vi)x;
  v = v ^ (v >> 31);                               /* x < 0 ? ~x : x */
  return __builtin_convertvector(v, vf) * 0x1.fffffep-32f;
}

/* Two normals from two uniforms, as kernels/reparameterize.py's _box_muller pairs them. */
static inline void box_muller(vf u1, vf u2, vf *n_cos, vf *n_sin) {
  vf lo = SPLAT(0x1.ad7f2ap-24f);                  /* 1e-7 in float32, tl.maximum's bound */
  vf r = sqrt_nonneg(-2.0f * log_normal(sel(u1 < lo, lo, u1)));
  vf c, s;
  cos_sin_turn(u2 - 0.5f, &c, &s);
  *n_cos = -r * c;
  *n_sin = -r * s;
}

/* The W counters base + 0..W-1 as (lo, hi) words. */
static inline void counters(uint64_t base, vu *c0, vu *c1) {
  vu lane = (vu)LANES;
  vu lo = (vu){0} + (uint32_t)base;
  *c0 = lo + lane;
  *c1 = ((vu){0} + (uint32_t)(base >> 32)) - (vu)(*c0 < lo);  /* the carry: mask -1 */
}

/* The uniforms u[v][j] (word j) of the counters base + W v + 0..W-1, v < PHILOX_V (tests
   compare them with tl.rand4x's). */
static inline void uniforms(uint64_t seed, uint64_t base, vf u[][4]) {
  vu c0[PHILOX_V], c1[PHILOX_V], x[PHILOX_V][4];
  for (int v = 0; v < PHILOX_V; ++v) counters(base + (uint64_t)(W * v), &c0[v], &c1[v]);
  philox4x32_10(c0, c1, (uint32_t)seed, (uint32_t)(seed >> 32), x);
  for (int v = 0; v < PHILOX_V; ++v)
    for (int j = 0; j < 4; ++j) u[v][j] = uniform_of(x[v][j]);
}

/* buf[j Q + l] = normal j of counter ctr + l, for l in [l0, l1) (multiples of PHILOX_STEP). */
#define PHILOX_STEP (W * PHILOX_V)
static void normals_fill(float *buf, uint64_t seed, int64_t ctr, int64_t l0, int64_t l1) {
  for (int64_t l = l0; l < l1; l += PHILOX_STEP) {
    vf u[PHILOX_V][4], n[PHILOX_V][4];
    uniforms(seed, (uint64_t)(ctr + l), u);
    for (int v = 0; v < PHILOX_V; ++v) {
      box_muller(u[v][0], u[v][1], &n[v][0], &n[v][1]);
      box_muller(u[v][2], u[v][3], &n[v][2], &n[v][3]);
    }
    for (int v = 0; v < PHILOX_V; ++v)
      for (int j = 0; j < 4; ++j) memcpy(buf + j * PHILOX_Q + l + W * v, &n[v][j], sizeof(vf));
  }
}

/* One thread's view of a sample's normals: it will ask for flat elements in [lo, hi),
   in increasing order; each chunk is filled once, only the counters that range needs. */
typedef struct {
  uint64_t seed;
  int64_t ctr;                                     /* k CPAD: the sample's first counter */
  int64_t lo, hi;
  int64_t chunk;                                   /* the chunk in buf, -1 none */
  float buf[PHILOX_CHUNK] __attribute__((aligned(32)));
} eps_stream;

static inline void eps_start(eps_stream *s, uint64_t seed, int64_t ctr, int64_t lo, int64_t hi) {
  s->seed = seed;
  s->ctr = ctr;
  s->lo = lo;
  s->hi = hi;
  s->chunk = -1;
}

/* The normals of flat elements i, i + 1, ... up to the end of i's chunk (*avail of them). */
static inline const float *eps_at(eps_stream *s, int64_t i, int64_t *avail) {
  int64_t c = i / PHILOX_CHUNK, first = c * PHILOX_CHUNK;
  if (c != s->chunk) {
    int64_t a = (s->lo > first ? s->lo : first) - first;
    int64_t b = (s->hi < first + PHILOX_CHUNK ? s->hi : first + PHILOX_CHUNK) - first;
    int64_t l0 = 0, l1 = PHILOX_Q;
    if (b - a < PHILOX_Q && a % PHILOX_Q < (b - 1) % PHILOX_Q + 1) { /* one quarter's part */
      l0 = a % PHILOX_Q / PHILOX_STEP * PHILOX_STEP;
      l1 = ((b - 1) % PHILOX_Q + PHILOX_STEP) / PHILOX_STEP * PHILOX_STEP;
    }
    normals_fill(s->buf, s->seed, s->ctr + c * PHILOX_Q, l0, l1);
    s->chunk = c;
  }
  *avail = first + PHILOX_CHUNK - i;
  return s->buf + (i - first);
}

#endif
