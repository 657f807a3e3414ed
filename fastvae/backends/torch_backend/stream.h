/* How the C kernels move large streams: a software prefetch ahead of each input stream's
 * loads, and stores past the caches for outputs that are read again only much later.
 *
 * A pass over several large tensors evicts the few MB of cache a core has: the loads of
 * four or five concurrent streams then wait on memory (the hardware prefetchers alone do
 * not keep up), and the Python and torch code that runs between two passes is slowed
 * several-fold when the passes have evicted its lines. Non-temporal prefetches and stores
 * leave more of the caches to that code. Measurements: benchmarks/RESULTS.md
 * ("sample_with_kl on CPU: memory traffic, prefetch, and the host code run cold").
 */
#ifndef FASTVAE_STREAM_H
#define FASTVAE_STREAM_H

#include "vecmath.h"
#ifdef __AVX__
#include <immintrin.h>
#endif

/* 4 KB ahead, as a non-temporal prefetch. Past the end of a buffer the address is another
   buffer's or unmapped, which a prefetch ignores. */
#define PREFETCH_AHEAD 1024 /* floats */
#define PREFETCH(p) __builtin_prefetch((p) + PREFETCH_AHEAD, 0, 0)

/* Whether every row of n floats from p starts on a vector boundary (true where p is
   absent): the condition for streamed stores into its rows. */
static inline int aligned_rows(const float *p, int64_t n) {
  return !p || (((uintptr_t)p % sizeof(vf)) == 0 && n % W == 0);
}

/* bytes of v stored at p: past the caches where stream is set and v is stored whole (p is
   then vector-aligned: aligned_rows), else an ordinary store. */
static inline void store_streamed(float *p, vf v, size_t bytes, int stream) {
#if W == 16
  if (stream && bytes == sizeof v) {
    _mm512_stream_ps(p, (__m512)v);
    return;
  }
#elif defined(__AVX__)
  if (stream && bytes == sizeof v) {
    _mm256_stream_ps(p, (__m256)v);
    return;
  }
#endif
  (void)stream;
  memcpy(p, &v, bytes);
}

/* Orders this thread's streamed stores before what follows (they are weakly ordered). */
static inline void stream_fence(void) {
#ifdef __AVX__
  _mm_sfence();
#endif
}

#endif
