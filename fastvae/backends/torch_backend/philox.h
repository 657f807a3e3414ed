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

typedef uint32_t vu __attribute__((vector_size(32)));
typedef uint64_t vq __attribute__((vector_size(32)));

/* The low and high 32 bits of a * b per lane: a 32 x 32 -> 64 multiply of the even
   lanes and one of the odd lanes (vpmuludq), recombined. */
static inline void mulhilo(uint32_t a, vu b, vu *lo, vu *hi) {
  vq b64 = (vq)b;
  vq even = (b64 & 0xffffffffu) * (uint64_t)a;
  vq odd = (b64 >> 32) * (uint64_t)a;
  *lo = (vu)((even & 0xffffffffu) | (odd << 32));
  *hi = (vu)((even >> 32) | (odd & 0xffffffff00000000u));
}

/* Philox4x32, 10 rounds, on counters (c0, c1, 0, 0) and key (k0, k1): Triton's
   philox_impl with its constants. */
static inline void philox4x32_10(vu c0, vu c1, uint32_t k0, uint32_t k1, vu x[4]) {
  vu c2 = (vu){0}, c3 = (vu){0};
  for (int round = 0; round < 10; ++round) {
    vu lo_b, hi_b, lo_a, hi_a;
    mulhilo(0xCD9E8D57u, c2, &lo_b, &hi_b);
    mulhilo(0xD2511F53u, c0, &lo_a, &hi_a);
    c0 = hi_b ^ c1 ^ k0;
    c2 = hi_a ^ c3 ^ k1;
    c1 = lo_b;
    c3 = lo_a;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  x[0] = c0;
  x[1] = c1;
  x[2] = c2;
  x[3] = c3;
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
  vf r = sqrt_nonneg(-2.0f * log_any(sel(u1 < lo, lo, u1)));
  vf c, s;
  cos_sin_turn(u2 - 0.5f, &c, &s);
  *n_cos = -r * c;
  *n_sin = -r * s;
}

/* The eight counters base + 0..7 as (lo, hi) words. */
static inline void counters(uint64_t base, vu *c0, vu *c1) {
  vu lane = {0, 1, 2, 3, 4, 5, 6, 7};
  vu lo = (vu){0} + (uint32_t)base;
  *c0 = lo + lane;
  *c1 = ((vu){0} + (uint32_t)(base >> 32)) - (vu)(*c0 < lo);  /* the carry: mask -1 */
}

/* The uniforms of counters base + 0..7 (tests compare them with tl.rand4x's). */
static inline void uniforms8(uint64_t seed, uint64_t base, vf u[4]) {
  vu c0, c1, x[4];
  counters(base, &c0, &c1);
  philox4x32_10(c0, c1, (uint32_t)seed, (uint32_t)(seed >> 32), x);
  for (int j = 0; j < 4; ++j) u[j] = uniform_of(x[j]);
}

/* buf[j Q + l] = normal j of counter ctr + l, for l in [l0, l1) (multiples of W). */
static void normals_fill(float *buf, uint64_t seed, int64_t ctr, int64_t l0, int64_t l1) {
  for (int64_t l = l0; l < l1; l += W) {
    vf u[4], n0, n1, n2, n3;
    uniforms8(seed, (uint64_t)(ctr + l), u);
    box_muller(u[0], u[1], &n0, &n1);
    box_muller(u[2], u[3], &n2, &n3);
    memcpy(buf + l, &n0, sizeof n0);
    memcpy(buf + PHILOX_Q + l, &n1, sizeof n1);
    memcpy(buf + 2 * PHILOX_Q + l, &n2, sizeof n2);
    memcpy(buf + 3 * PHILOX_Q + l, &n3, sizeof n3);
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
      l0 = a % PHILOX_Q / W * W;
      l1 = ((b - 1) % PHILOX_Q + W) / W * W;
    }
    normals_fill(s->buf, s->seed, s->ctr + c * PHILOX_Q, l0, l1);
    s->chunk = c;
  }
  *avail = first + PHILOX_CHUNK - i;
  return s->buf + (i - first);
}

#endif
