"""Launch configurations of the IWAE kernels, and where each runs: the one-pass tiles
(``kernels/iwae_bound.py``), the (row, sample)-pair kernel, the row-warp and sample-warp
kernels (Bernoulli training at K 2-8 and 17-64), the two-pass kernel elsewhere
(``iwae_bound._plan`` tries them in that order). Interpreter tiles, ROW_WARPS and the
likelihood codes are ``configs``'."""
from __future__ import annotations

from .configs import (BERNOULLI, CONTINUOUS_BERNOULLI, GAUSSIAN_SCALAR, GAUSSIAN_TENSOR,
                      INTERP_TILE, ROW_WARPS, interpreter_tiles, next_pow2)

# The one-pass IWAE kernel: (BLOCK_B, BLOCK_K, BLOCK_D, BLOCK_L) tiles, the first one with
# K <= BLOCK_K, D <= BLOCK_D, L <= BLOCK_L wins; with none the two-pass kernel runs. A
# tile's recon_k part is at most IWAE_ONEPASS_ELEMENTS (the continuous Bernoulli's
# log-normaliser keeps more values live, so it gets half) and its z_k part 4096. Where
# the latents are at least half the tile's work (BLOCK_D <= 2 * BLOCK_L), BLOCK_L shrinks
# to L (a power of two, at least 16 and two latents a thread): at D = 64, L = 8 the
# 128-latent tile was 94% padding and 2.6x the issue time (RESULTS.md). In the
# 1024-column tiles they are an eighth, and shrinking them there made ptxas spill 4-8
# bytes at 64-80 registers (Triton 3.6, sm_80 and sm_90); one latent a thread spilled
# 8 bytes in a 16-warp continuous Bernoulli tile (Triton 3.9, sm_80). For the Bernoulli
# at L <= 32 and D a multiple of 16, the 64-column tiles hold 4096 elements (16 rows of
# up to 4 samples, 8 of up to 8): a program's fixed work (its latents, the sums over K
# and D, the softmax) is spread over twice the rows of the 2048-element tiles, 1.3-1.6x
# less issue time at D = 64 (RESULTS.md). The rest keep the 2048-element ones: with 4096
# the Gaussians spilled 4-20 bytes on sm_80 (Triton 3.6), fp16 rows of 60 columns on 3.9,
# at L = 64 Triton 3.9 took 135 registers (one program an SM), and unaligned rows gained
# least; the continuous Bernoulli's was not measured. Rows of 257-512 columns at K <= 4
# take a 512-column tile, not 1024 (half its lanes padding): at B = 4096, D = 300, L = 33,
# K = 4, Gaussian (B, 1) 1.3-1.4x less issue time, and ptxas no longer spills 8 bytes at
# 80 registers in training with d/dx (fp32 and fp16, Triton 3.9, sm_80; RESULTS.md).
IWAE_ONEPASS_TILES = ((16, 4, 64, 32), (8, 8, 64, 32), (8, 4, 64, 128), (4, 8, 64, 128),
                      (2, 4, 256, 128), (1, 8, 256, 128), (1, 4, 512, 128), (1, 4, 1024, 128),
                      (1, 8, 1024, 128))
IWAE_ONEPASS_ELEMENTS = {BERNOULLI: 8192, CONTINUOUS_BERNOULLI: 4096, GAUSSIAN_SCALAR: 8192,
                         GAUSSIAN_TENSOR: 8192}
IWAE_ONEPASS_NARROW_ELEMENTS = {BERNOULLI: 4096, CONTINUOUS_BERNOULLI: 2048,
                                GAUSSIAN_SCALAR: 2048, GAUSSIAN_TENSOR: 2048}   # D <= 64
IWAE_ONEPASS_NARROW_UNALIGNED_ELEMENTS = 2048                                   # D % 16
# num_warps of a one-pass tile by (LIK, BLOCK_B, BLOCK_K, BLOCK_D), where not ROW_WARPS:
# 16 warps keep 16 elements per thread in the 8192-element tiles; the Gaussian with a
# tensor obs_logvar stays at 8 there (16 spill 4 bytes with its (D,) gradient on Triton
# 3.6, sm_90; 8: 80-96 registers, no spill). The continuous Bernoulli's 2048-element
# tiles take 16 too: its 512-column one at 8 spilled 8 bytes at 64 registers (bf16,
# training with d/dx, Triton 3.9, sm_80).
# Rows not aligned to 16 load an element at a time, each with its own 64-bit address: at 8
# warps ptxas spilled 4-36 bytes at 40-168 registers in 14 (Triton 3.6) and 17 (3.9) of
# 1960 compiles of such rows (D = 7, 30, 100, 300; the 1024-column tile at D = 300 took up
# to 195); at 16 (half the elements a thread) 2 and 8, at most 123 registers, all in
# 128-latent tiles, and none with their cap, register_caps.IWAE_ONEPASS_UNALIGNED_MAXNREG
# (RESULTS.md, "The one-pass IWAE kernel on rows not aligned to 16").
IWAE_ONEPASS_UNALIGNED_WARPS = 16
IWAE_ONEPASS_WARPS = {**{(lik, 1, 8, 1024): 16 for lik in (BERNOULLI, GAUSSIAN_SCALAR)},
                      (CONTINUOUS_BERNOULLI, 2, 4, 256): 16, (CONTINUOUS_BERNOULLI, 1, 8, 256): 16,
                      (CONTINUOUS_BERNOULLI, 1, 4, 512): 16}

# The two-pass IWAE kernel (iwae_rows_config): (tile elements, num_warps) by element size
# in bytes, or by (LIK, element size) where that differs: the continuous Bernoulli's fp32
# 1024-element tile spills 8-24 bytes at 4 or 8 warps (Triton 3.6), 512 elements at 8
# warps none; 16-bit Gaussians with a tensor obs_logvar spill 16 bytes at 4 warps. 16
# rows of 64 columns at 4 warps: two programs share an SM where a grid is about as large
# as the SM count (B = 4096 on an H200), and a program's per-sample barrier holds only
# its own 4 warps (RESULTS.md, "two programs an SM for K = 50"). A tile takes more warps
# where its latents would be over IWAE_ROWS_LATENTS_A_THREAD a thread (at 64 latents 4
# warps spilled 24-76 bytes, Triton 3.6, fp32 and 16-bit).
IWAE_ROWS_BLOCK_D = 64
IWAE_ROWS_BLOCK_L = 64
IWAE_ROWS_TILE = {1: (1024, 4), 2: (1024, 4), 4: (1024, 4),
                  (CONTINUOUS_BERNOULLI, 4): (512, 8),
                  (GAUSSIAN_TENSOR, 2): (2048, 8), (GAUSSIAN_TENSOR, 1): (2048, 8)}
IWAE_ROWS_LATENTS_A_THREAD = 4
# Tile elements where the latents fill IWAE_ROWS_BLOCK_L (L > 32), if more than
# IWAE_ROWS_TILE's: the continuous Bernoulli's fp32 8 x 64 tile at 8 warps spilled 4 bytes
# at 64 registers on sm_80 with d/dx and a prior (Triton 3.6 and 3.9, B=2 D=256 L=64 K=32
# INT64); 16 x 64 at 8 warps takes 96-100 and none.
IWAE_ROWS_FULL_LATENTS_ELEMENTS = {(CONTINUOUS_BERNOULLI, 4): 1024}
IWAE_ROWS_LATENT_TILE = 1024
# Pass 1 of the Bernoulli takes one lg2 of the product of the (1 + e) factors of up to
# IWAE_ROWS_PRODUCT_BLOCKS full column blocks (each in (1, 2]: <= 126 cannot overflow)
# instead of one per element, for 16-bit inputs, whose MUFU time is past the memory floor;
# fp32's tiles spill 8-16 bytes on sm_80 with the product (Triton 3.6: 1024 elements at 4
# warps, 2048 at 8) and have MUFU to spare. The interpreter runs it for every dtype.
IWAE_ROWS_PRODUCT_BLOCKS = 126
# The two-pass kernel sums over k (the softmax's normalizer, d/dx, d/dobs_logvar, d/dmu,
# d/dlogvar, the prior's) in blocks of this many samples, the blocks' sums added after:
# K_BLOCK + K / K_BLOCK float32 additions in a row, not K (at K = 5000: 64 + 79). The
# interpreter's blocks are small, so its tests (K <= 16) run several blocks and a tail.
IWAE_ROWS_K_BLOCK = 64
IWAE_ROWS_K_BLOCK_INTERP = 4

# The pair kernel (iwae_pairs_config): BLOCK_P (row, sample) pairs of up to 784 columns a
# program (K = 5: three rows in 15 of 16 tile rows), where a row's samples would pad the
# 3-D one-pass tile most: K <= 16, 256 < D <= 784 (and some rows of 129-256 columns,
# below), L <= 64, Bernoulli. A pair's columns in one warp (its sums stay there), in
# chunks of one 16-byte load a lane; 8 warps (two pairs each), 49 elements a thread at
# D = 784 (wider rows spilled 16-764 bytes at 8 and 16 warps; 32 pairs a program spill:
# RESULTS.md, "fewer MUFU per element"). A program loads everything, then computes, then
# stores, so only a second program on the SM overlaps its loads with arithmetic: training
# at D = 784 (fp32, bf16; DReG's weights in bf16) takes <= 128 registers, two programs an
# SM (RESULTS.md, "two programs an SM").
# Rows of 129-256 columns (IWAE_PAIRS_NARROW) take it too where the one-pass kernel pads
# or wastes most: D a multiple of 16 and K <= 8, from K = 2 in fp32 (1.1-2.3x less issue
# time than the one-pass tiles; K = 1 took up to 128 registers and spilled 4 bytes at 80
# on Triton 3.6), from K = 5 for 16-bit inputs (1.1-1.25x; at K = 3 and 4 the one-pass
# tile, its K padded to 4, was up to 1.4x faster; RESULTS.md, "the pair kernel at 129-256
# columns").
IWAE_PAIRS_BLOCK_P = 16
IWAE_PAIRS_WARPS = 8
IWAE_PAIRS_LIMITS = (16, 256, 784, 64)
IWAE_PAIRS_NARROW = (128, 8, 2, 5)   # D above; K at most; K at least for 32-, 16-bit inputs
# D not a multiple of 16: scalar loads, an address per element; D = 700 in bf16 spilled
# 12 bytes on sm_80 (Triton 3.6), D = 257 and 700 in fp32 none.
IWAE_PAIRS_UNALIGNED_D_MAX = 512
IWAE_PAIRS_LOAD_BYTES = 16

# The row-warp kernel (iwae_row_warps_config): one warp per row, its K samples in that
# warp, for Bernoulli rows in training whose d/drecon_k is saved in bf16 (the held d/dl
# is rounded to bf16, then again at the store: 2u + u^2 against the pair kernel's u).
# fp16's is saved in fp32 (``_dtypes.saved_grad_dtype``): held in fp32, d/dl takes twice
# the registers (255 at K = 5, D = 784; spills at K = 8), held in fp16 it would flush
# below 6e-8 what fp32 saving keeps; fp16 stays on the pair kernel.
# BLOCK_R rows (= warps) a program. Limits: K, D (a multiple of 16), L (latents padded to
# 32 keep a row's latents in its warp); RESULTS.md, "one warp per IWAE row", measures them.
IWAE_ROW_WARPS_ROWS = 4
IWAE_ROW_WARPS_LIMITS = (2, 8, 512, 784, 32)   # K min, K max, D min, D max, L max
# Columns past the whole 256-column chunks (bf16) at most: the K samples' tails are one
# tile, and at K = 8 a tail padded to 128 took 255 registers with DReG's weights (Triton
# 3.6, sm_80/sm_90; 64: 203), one padded to 256 spilled 40-84 bytes at K = 6, 7. D =
# 592-752 stays on the pair kernel.
IWAE_ROW_WARPS_TAIL_MAX = 64


def iwae_onepass_tiles(lik: int, d: int = 0):
    """The one-pass tiles shipped for likelihood code ``lik`` and rows of ``d`` columns
    (the largest 64-column tiles need D a multiple of 16)."""
    narrow = (IWAE_ONEPASS_NARROW_ELEMENTS[lik] if d % 16 == 0
              else IWAE_ONEPASS_NARROW_UNALIGNED_ELEMENTS)
    return tuple(t for t in IWAE_ONEPASS_TILES
                 if t[0] * t[1] * t[2] <= (narrow if t[2] <= 64 else IWAE_ONEPASS_ELEMENTS[lik]))


def iwae_pairs_config(b: int, k: int, d: int, l: int, lik: int, per_column_grads: bool,
                      element_size: int = 4):
    """(BLOCK_P, BLOCK_R, BLOCK_L, num_warps, (BLOCK_W, BLOCK_NA, BLOCK_NB, BLOCK_TAIL)) of
    the (row, sample)-pair one-pass IWAE kernel, or None where it does not apply: a
    gradient summed over k per data column (d/dx), a likelihood other than the Bernoulli,
    or K, D, L out of IWAE_PAIRS_LIMITS (at D <= 256 of IWAE_PAIRS_NARROW). A row's D
    columns are pieces of NA and NB chunks of W columns (the binary digits of D // W) and
    a TAIL of the rest rounded up to a power of two (named BLOCK_*: each decomposition is
    a layout of its own for the compile test)."""
    k_max, d_min, d_max, l_max = IWAE_PAIRS_LIMITS
    narrow_min, narrow_k_max, narrow_k_32bit, narrow_k_16bit = IWAE_PAIRS_NARROW
    if d <= d_min and (   # narrow rows: only where the one-pass tiles do worse
            d <= narrow_min or d % 16 or k > narrow_k_max
            or k < (narrow_k_32bit if element_size >= 4 else narrow_k_16bit)):
        return None
    if (per_column_grads or lik != BERNOULLI or not k <= k_max
            or d > d_max or l > l_max
            or d > IWAE_PAIRS_UNALIGNED_D_MAX and d % 16):
        return None
    w = 32 * IWAE_PAIRS_LOAD_BYTES // element_size
    n, rem = divmod(d, w)
    chunks = [1 << i for i in reversed(range(n.bit_length())) if n >> i & 1]
    na, nb = (chunks + [0, 0])[:2]   # D <= 784: n <= 6, at most two binary digits, maybe none
    tail = max(16, next_pow2(rem)) if rem else 0
    # the whole chunks are read and written without a column mask: inside D
    assert (na + nb) * w <= d <= (na + nb) * w + tail, (d, w, na, nb, tail)
    return (IWAE_PAIRS_BLOCK_P, next_pow2(IWAE_PAIRS_BLOCK_P // k), max(16, next_pow2(l)),
            IWAE_PAIRS_WARPS, (w, na, nb, tail))


def _row_warps_layouts() -> dict:
    """(K, D) -> iwae_row_warps_config's answer, for every K and D the row-warp kernel
    takes: the rule below, run once here. A row is NC whole chunks of 32 V columns (16
    bytes a lane) and the rest padded to a power of two TAIL, the K samples' tails in one
    tile of TV elements a lane; latents padded to 32 (L <= 32)."""
    k_min, k_max, d_min, d_max, _ = IWAE_ROW_WARPS_LIMITS
    v = IWAE_PAIRS_LOAD_BYTES // 2
    out = {}
    for d in range(d_min, d_max + 1):
        nc, tail = divmod(d, 32 * v)
        if d % 16 or tail > IWAE_ROW_WARPS_TAIL_MAX:
            continue
        tail = next_pow2(tail) if tail else 0
        for k in range(k_min, k_max + 1):
            out[k, d] = (IWAE_ROW_WARPS_ROWS, 32, IWAE_ROW_WARPS_ROWS,
                         (v, nc, tail, next_pow2(-(-k * tail // 32))))
    return out


IWAE_ROW_WARPS_LAYOUTS = _row_warps_layouts()


def iwae_row_warps_config(b: int, k: int, d: int, l: int, lik: int, per_column_grads: bool,
                          grad_bf16: bool, need_gr: bool):
    """(BLOCK_R, BLOCK_L, num_warps, (BLOCK_V, BLOCK_NC, BLOCK_TAIL, BLOCK_TV)) of the
    row-warp IWAE kernel, or None where it does not apply: d/drecon_k not saved in bf16
    (``grad_bf16``) or not needed (``need_gr``), a likelihood other than the Bernoulli,
    d/dx, K, D, L out of IWAE_ROW_WARPS_LIMITS or a tail past IWAE_ROW_WARPS_TAIL_MAX
    (each ``BLOCK_*``, K too, a layout of its own for the compile test). Every IWAE call
    runs it: a lookup in IWAE_ROW_WARPS_LAYOUTS, not its rule (three ``next_pow2``, ~1 us)."""
    if (not grad_bf16 or not need_gr or lik != BERNOULLI or per_column_grads
            or l > IWAE_ROW_WARPS_LIMITS[4]):
        return None
    return IWAE_ROW_WARPS_LAYOUTS.get((k, d))


def iwae_onepass_config(b: int, k: int, d: int, l: int, lik: int = BERNOULLI,
                        aligned: bool = True):
    """(BLOCK_B, BLOCK_K, BLOCK_D, BLOCK_L, num_warps) of the one-pass IWAE kernel, or None
    when a row's K x D (or K x L) does not fit on chip (the two-pass kernel runs); at least
    IWAE_ONEPASS_UNALIGNED_WARPS where the rows are not ``aligned``
    (``_launch.rows_aligned``)."""
    tile = next((t for t in iwae_onepass_tiles(lik, d) if k <= t[1] and d <= t[2] and l <= t[3]),
                None)
    if tile is None:
        return None
    block_b, block_k, block_d, block_l = tile
    if interpreter_tiles():  # same choice of kernel, bigger tiles
        block_k, block_d, block_l = next_pow2(k), max(next_pow2(d), 16), max(next_pow2(l), 16)
        block_b = max(1, min(INTERP_TILE // (block_k * max(block_d, block_l)), next_pow2(b)))
        return block_b, block_k, block_d, block_l, ROW_WARPS
    warps = IWAE_ONEPASS_WARPS.get((lik, block_b, block_k, block_d), ROW_WARPS)
    if block_d <= 2 * block_l:   # fewer latents than threads would repeat their math
        block_l = min(block_l, max(16, next_pow2(l), 64 * warps // (block_b * block_k)))
    if not aligned:
        warps = max(warps, IWAE_ONEPASS_UNALIGNED_WARPS)
    return block_b, block_k, block_d, block_l, warps


def iwae_rows_log_of_product(d: int, block_d: int, element_size: int, lik: int) -> bool:
    """Whether pass 1 of the two-pass kernel takes the Bernoulli's logs as one lg2 of a
    product (``IWAE_ROWS_PRODUCT_BLOCKS``)."""
    return (lik == BERNOULLI and (interpreter_tiles() or element_size < 4)
            and d // block_d <= IWAE_ROWS_PRODUCT_BLOCKS)


def iwae_rows_k_block() -> int:
    """K_BLOCK of the two-pass IWAE kernel: samples a block of each sum over k."""
    return IWAE_ROWS_K_BLOCK_INTERP if interpreter_tiles() else IWAE_ROWS_K_BLOCK


def iwae_rows_config(b: int, d: int, l: int, element_size: int, lik: int = BERNOULLI,
                     aligned: bool = True):
    """(BLOCK_B, BLOCK_D, BLOCK_L, num_warps) of the two-pass IWAE kernel: the ELBO's shape
    of tile, BLOCK_B rows by IWAE_ROWS_BLOCK_D columns a step (only the tail block masked),
    IWAE_ROWS_TILE's elements a step; half its rows where the rows are not ``aligned``
    (``_launch.rows_aligned``)."""
    if interpreter_tiles():
        block_d = min(max(next_pow2(d), 16), 4096)
        block_b = max(1, min(INTERP_TILE // block_d, next_pow2(b)))
        return block_b, block_d, max(16, min(next_pow2(l), 1024)), ROW_WARPS
    block_d = min(IWAE_ROWS_BLOCK_D, max(16, next_pow2(d)))
    block_l = min(IWAE_ROWS_BLOCK_L, max(16, next_pow2(l)))
    elements, warps = IWAE_ROWS_TILE.get((lik, element_size), IWAE_ROWS_TILE[element_size])
    if block_l == IWAE_ROWS_BLOCK_L:
        elements = max(elements, IWAE_ROWS_FULL_LATENTS_ELEMENTS.get((lik, element_size), 0))
    block_b = min(elements // block_d, IWAE_ROWS_LATENT_TILE // block_l)
    warps = max(warps, block_b * block_l // (32 * IWAE_ROWS_LATENTS_A_THREAD))
    if not aligned:
        block_b = max(1, block_b // 2)
    return block_b, block_d, block_l, warps


# The sample-warp kernel (``kernels/iwae_bound_sample_warps.py``, iwae_sample_warps_config):
# one program a row, one warp a sample, one read of recon_k; bf16 Bernoulli training
# (d/drecon_k needed, no d/dx) at K past the one-pass kernels' (up to SAMPLE_WARPS_LIMITS'
# K), rows of whole 16-byte-a-lane chunks and a tail of at most SAMPLE_WARPS_TAIL_MAX
# columns, L <= 32.
# K min, K max, D min, D max, L max. Compiled (sm_80/sm_90), left to the two-pass kernel:
# bf16 at D = 256 (one chunk) spilled 4 bytes at K = 50 (Triton 3.9, sm_90), at D = 1024
# (4 chunks) 4 bytes at K = 9 (3.6, sm_80) and took 200 registers at K = 50; a 64-column
# tail of 64 samples took 154-158.
SAMPLE_WARPS_LIMITS = (17, 64, 512, 784, 32)
SAMPLE_WARPS_TAIL_MAX = 32
SAMPLE_WARPS_LOAD_BYTES = 16
SAMPLE_WARPS_BLOCK_L = 32
# Warps a program (samples a step): K = 50 pads to 52 (8 warps: 56). One value, and the
# samples' tiles (tail, latents) padded to K max whatever K, keep the layouts few for the
# compile test: one per column layout. (K <= 16 at these D is the pair kernel's.)
SAMPLE_WARPS_WARPS = 4
# D of each column layout (whole 256-column chunks, tail) the kernel takes, for the
# compile test's sweep (catalog.sweep_calls)
SAMPLE_WARPS_D = (512, 528, 544, 768, 784)


def iwae_sample_warps_config(k: int, d: int, l: int, lik: int, per_column_grads: bool,
                             bf16: bool, need_gr: bool):
    """(BLOCK_K, BLOCK_S, BLOCK_L, num_warps, (BLOCK_V, BLOCK_NC, BLOCK_TAIL)) of the
    sample-warp IWAE kernel, or None where it does not apply: recon_k not bf16 (fp32 at
    five and six 128-column chunks spilled 8-16 bytes, Triton 3.6; fp32 K = 50 meets the
    speed target on the two-pass kernel), d/drecon_k not needed, d/dx
    (``per_column_grads``), a likelihood other than the Bernoulli, K, D, L out of
    SAMPLE_WARPS_LIMITS, D not a multiple of 16 or a tail past SAMPLE_WARPS_TAIL_MAX
    (each ``BLOCK_*`` a layout of its own for the compile test)."""
    k_min, k_max, d_min, d_max, l_max = SAMPLE_WARPS_LIMITS
    if (not bf16 or not need_gr or per_column_grads or lik != BERNOULLI or not k_min <= k <= k_max
            or not d_min <= d <= d_max or d % 16 or l > l_max):
        return None
    v = SAMPLE_WARPS_LOAD_BYTES // 2
    nc, tail = divmod(d, 32 * v)
    if nc < 1 or tail > SAMPLE_WARPS_TAIL_MAX:
        return None
    warps = SAMPLE_WARPS_WARPS
    return (k_max, warps, SAMPLE_WARPS_BLOCK_L, warps, (v, nc, next_pow2(tail) if tail else 0))
