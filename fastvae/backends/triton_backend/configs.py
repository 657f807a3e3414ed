"""Launch configurations of the Triton kernels: tiles, warps and grids per op.

GPU tiles hold ~2048 elements per program (4-16 warps: spill-free on Triton 3.6 and the
latest, sm_80 and sm_90, fp32/bf16/fp16, which tests/test_kernels_compile.py keeps
honest); the interpreter pays per program instance, so it gets few large tiles. The
math does not depend on the tile.
"""
from __future__ import annotations

import triton

from fastvae.kernels import reparameterize as kr
from fastvae.kernels._math import (LIK_BERNOULLI, LIK_CONTINUOUS_BERNOULLI,
                                   LIK_GAUSSIAN_SAMPLES, LIK_GAUSSIAN_SCALAR,
                                   LIK_GAUSSIAN_TENSOR)

from ... import _env
from . import _launch

BERNOULLI = LIK_BERNOULLI.value
CONTINUOUS_BERNOULLI = LIK_CONTINUOUS_BERNOULLI.value
GAUSSIAN_SCALAR = LIK_GAUSSIAN_SCALAR.value
GAUSSIAN_TENSOR = LIK_GAUSSIAN_TENSOR.value
GAUSSIAN_SAMPLES = LIK_GAUSSIAN_SAMPLES.value
LIKELIHOOD_CODES = {"bernoulli": BERNOULLI, "continuous_bernoulli": CONTINUOUS_BERNOULLI,
                    "gaussian": GAUSSIAN_SCALAR}

# The ELBO row kernel: BLOCK_D columns a step (the tail block is the only masked one, so
# D = 784 wastes 48 of 832 lanes), BLOCK_B rows a program; ELBO_TILE_ELEMENTS elements a
# step by ELBO_WARPS warps is two 16-byte loads per tensor per thread for every dtype.
ELBO_BLOCK_D = 64
ELBO_TILE_ELEMENTS = {1: 2048, 2: 2048, 4: 1024}   # by element size in bytes
ELBO_WARPS = 4
ELBO_BLOCK_L = 64
# At most this many latents a step (16 a thread at 4 warps): with one data column
# (kl_standard_normal) the rows alone would make a 128 x 64 latent tile, which spills
# hundreds of bytes (both Tritons).
ELBO_LATENT_TILE = 2048
# Latents a step with int64 offsets (the 16-bit 64-latent MC training tiles took 198-235
# registers, spilled at 255; fewer rows would narrow the 16-byte loads): RESULTS.md.
ELBO_INT64_BLOCK_L = 32
# (tile elements, num_warps) by (likelihood, element size) where not the above: the
# continuous Bernoulli (its series and closed form both live) and the tensor obs_logvar's
# gradient keep more values live; the default tiles spill 4-32 bytes there in some of
# Triton 3.6/3.9 x sm_80/sm_90 (RESULTS.md), as does a 2048 x 8 continuous Bernoulli
# bf16 tile (8-16 bytes, Triton 3.9, sm_90). The tensor obs_logvar takes 4 data elements
# a thread in every dtype: fp32 data at 8 (16 x 64, 4 warps) spilled 4-8 bytes at 64-80
# registers with autocast's 16-bit recon (Triton 3.6, sm_80), and at 8 warps 8 bytes at
# 48 (Triton 3.9); 8 x 64 at 4 warps takes 32-64 and none.
ELBO_TILE_BY_LIK = {(CONTINUOUS_BERNOULLI, 4): (1024, 8), (CONTINUOUS_BERNOULLI, 2): (1024, 4),
                    (GAUSSIAN_TENSOR, 4): (512, 4), (GAUSSIAN_TENSOR, 2): (1024, 8)}
# BLOCK_L at least this by (likelihood, element size): the 16-bit continuous Bernoulli's
# 16 x 16 latent tile (two latents a thread, L <= 16) spilled 8 bytes at 64 registers
# (fp16 D = 64, Triton 3.6, sm_80); 16 x 32 takes 64 and none, ~0.03 us more issue at
# B = 4096 (8 warps instead: 40-48 registers, +0.15-0.27 us, and the L = 32 tiles move).
ELBO_MIN_BLOCK_L = {(CONTINUOUS_BERNOULLI, 2): 32}
# Software-pipeline stages of the ELBO row kernel's column loop, by element size in bytes:
# 1 keeps every load in registers (the tiles above, as measured on the H200); 2-3 stage
# the next blocks in shared memory (8-16 KB a program), which benchmarks/gpu_tiles.py
# measures against 1 where a GPU is lent.
ELBO_STAGES = {1: 1, 2: 1, 4: 1}
# The last program's sum of the per-program partials, a few per thread a step: a wider
# block would raise the whole kernel's register count (occupancy) for one program's use.
TICKET_SUM_BLOCK = 512
# BLOCK_B, BLOCK_L of free bits' first pass (64 x 64 with the MC KL spills 20-88 bytes
# in bf16 on sm_90)
KL_CLAMP_TILE = (32, 64)
INT32_LIMIT = 2**31 - 1

ROW_WARPS = 8   # num_warps of the interpreter's tiles and of every tile without its own

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

FINISH_TILE = (64, 32, 64, 8192)   # BLOCK_B (partials' rows), BLOCK_L, BLOCK_D, BLOCK_SUM
FINISH_WARPS = 4
REPARAMETERIZE_CHUNKS = 1          # chunks of 4*Q latents per program
REPARAMETERIZE_WARPS = 8
# Where B*L is not a multiple of 16 the JIT sees no divisibility, the loads are narrow
# anyway, and 8 warps spill 4 bytes (Triton 3.9, sm_80); 16 warps: 40-54 registers.
REPARAMETERIZE_WARPS_UNALIGNED = 16
# (N up to, BLOCK_B, BLOCK_N, num_warps) of sample_with_kl's row tiles; the last covers any
# N. 1024 elements a tile: each element runs its own Philox call (``normal_at``).
SAMPLE_WITH_KL_TILES = ((64, 16, 64, 4), (256, 4, 256, 4), (None, 1, 1024, 8))
# Long rows are cut into column chunks, one program per (row block, chunk), where the row
# blocks alone would leave SMs idle (a hierarchical VAE at batch 16: 16 programs of 65,536
# latents on 132 SMs): chunks enough for SAMPLE_WITH_KL_WAVES programs per SM, each at
# least SAMPLE_WITH_KL_MIN_CHUNK latents (two 1024-element steps: below that a program's
# start-up and the KL's ticket weigh). The forward folds the chunks' KL partials in the
# launch (``reduce.sum_partial_columns``, SAMPLE_WITH_KL_SUM_BLOCK chunks a step).
SAMPLE_WITH_KL_WAVES = 4
SAMPLE_WITH_KL_MIN_CHUNK = 2048
SAMPLE_WITH_KL_SUM_BLOCK = 64
SAMPLE_WITH_KL_DEFAULT_SMS = 132   # CPU tensors with the GPU tiles (tests, the catalog)
# Under the interpreter: this many chunks a row where N allows (16 latents a chunk at
# least), so the interpreter's tests run the split path and the one-chunk one.
SAMPLE_WITH_KL_INTERP_CHUNKS = 3
# One program per SM, each striding over 8192-element blocks (32 elements, two 16-byte
# loads per thread per tensor for fp32): at grad_output 1 a launch of that many programs
# reading one scalar; otherwise enough bytes in flight per SM to stream.
SCALE_BLOCK, SCALE_WARPS = 8192, 8
SCALE_SLOTS = 6                    # gradient tensors one scale launch serves
SCALE_PROGRAMS_PER_SM = 1

# None: interpreter tiles under TRITON_INTERPRET=1, GPU tiles otherwise. Tests set "gpu"
# to run the shipped GPU tiles under the interpreter.
CONFIG_MODE = None
_INTERP_TILE = 1 << 15
# TRITON_INTERPRET as first read, None before: interpreter_tiles runs several times per
# training step, and reading os.environ cost ~1.5 us a call where the variable is unset
# (os.environ.get raises and catches a KeyError). One read is Triton's own rule: triton.jit
# fixed the kernels' mode when they were decorated. A test that changes the variable calls
# reset_interpreting() for the next call to read it again.
_interpreting = None


def interpreter_tiles() -> bool:
    global _interpreting
    if CONFIG_MODE is not None:
        return CONFIG_MODE == "interpret"
    if _interpreting is None:
        _interpreting = _env.interpreting()
    return _interpreting


def reset_interpreting() -> None:
    """Forget TRITON_INTERPRET as read: :func:`interpreter_tiles` reads it again."""
    global _interpreting
    _interpreting = None


def _p2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def elbo_config(b: int, d: int, l: int, element_size: int, lik: int = BERNOULLI,
                prior: bool = False, aligned: bool = True, int64: bool = False):
    """(BLOCK_B, BLOCK_D, BLOCK_L, num_warps) of the ELBO row kernel. A learned prior adds
    two input and two gradient latent tiles: 16-bit inputs then take the fp32 tile (the
    16-bit one, twice the rows, spills 8-52 bytes at small D with the MC KL). Data rows
    not ``aligned`` (D or a row stride not a multiple of 16) take half the rows: each
    element is then its own load with its own 64-bit address, held across the column
    loop, and the full tile took 128-255 registers in a third of the launches at D = 7,
    30, 100 (half: at most 145; RESULTS.md, "ELBO rows not aligned to 16")."""
    if prior:
        element_size = 4
    if interpreter_tiles():
        block_d = min(max(_p2(d), 16), 4096)
        block_b = max(1, min(_INTERP_TILE // block_d, _p2(b)))
        return block_b, block_d, max(16, min(_p2(l), 1024)), ROW_WARPS
    # D = 0 (the latent half of a DMoL ELBO): the D >= 64 tile, whose latent part ships
    block_d = min(ELBO_BLOCK_D, max(16, _p2(d))) if d else ELBO_BLOCK_D
    block_l = min(ELBO_BLOCK_L, max(ELBO_MIN_BLOCK_L.get((lik, element_size), 16), _p2(l)))
    elements, warps = ELBO_TILE_BY_LIK.get((lik, element_size),
                                           (ELBO_TILE_ELEMENTS[element_size], ELBO_WARPS))
    block_b = min(elements // block_d, ELBO_LATENT_TILE // block_l)
    block_b = block_b if aligned else max(1, block_b // 2)
    return block_b, block_d, min(block_l, ELBO_INT64_BLOCK_L) if int64 else block_l, warps


def kl_config(n: int, l: int, element_size: int, prior: bool, stride_mu: int,
              stride_lv: int):
    """(BLOCK_B, BLOCK_D, BLOCK_L, num_warps) of the ELBO row kernel as kl_standard_normal
    and kl_normal run it (no data columns). Rows whose stride is not a multiple of 16 load
    one latent at a time, each with its own 64-bit address: 16-bit latents then take the
    fp32 tile (8 a thread, not 16; at 16, fp16 L = 3 spilled 4 bytes at 72 registers on
    Triton 3.6, sm_90)."""
    # every KL call runs this: one test of both strides (they are never negative), not
    # any() over a generator (about 0.2 us a call)
    if (stride_mu | stride_lv) % 16:
        element_size = 4
    return elbo_config(n, 1, l, element_size, prior=prior)


def elbo_stages(element_size: int, lik: int = BERNOULLI, prior: bool = False) -> int:
    """STAGES of the ELBO row kernel (its column loop's pipeline depth): ELBO_STAGES for
    the tiles ELBO_TILE_ELEMENTS gives (what benchmarks/gpu_tiles.py times), 1 for the
    others (a learned prior's fp32 tile, ELBO_TILE_BY_LIK's) and the interpreter's."""
    if interpreter_tiles() or prior or (lik, element_size) in ELBO_TILE_BY_LIK:
        return 1
    return ELBO_STAGES[element_size]


def ticket_sum_block() -> int:
    return _INTERP_TILE if interpreter_tiles() else TICKET_SUM_BLOCK


def kl_clamp_config(l: int):
    """(BLOCK_B, BLOCK_L, num_warps) of free bits' first pass."""
    if interpreter_tiles():
        return 256, max(16, min(_p2(l), 128)), ROW_WARPS
    return (*KL_CLAMP_TILE, ELBO_WARPS)


def needs_int64(*extents: int) -> bool:
    """Whether an offset (the largest of ``extents``: rows x row stride, programs x D, ...)
    can pass int32."""
    return max(extents, default=0) > INT32_LIMIT


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
    tail = max(16, _p2(rem)) if rem else 0
    # the whole chunks are read and written without a column mask: inside D
    assert (na + nb) * w <= d <= (na + nb) * w + tail, (d, w, na, nb, tail)
    return (IWAE_PAIRS_BLOCK_P, _p2(IWAE_PAIRS_BLOCK_P // k), max(16, _p2(l)),
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
        tail = _p2(tail) if tail else 0
        for k in range(k_min, k_max + 1):
            out[k, d] = (IWAE_ROW_WARPS_ROWS, 32, IWAE_ROW_WARPS_ROWS,
                         (v, nc, tail, _p2(-(-k * tail // 32))))
    return out


IWAE_ROW_WARPS_LAYOUTS = _row_warps_layouts()


def iwae_row_warps_config(b: int, k: int, d: int, l: int, lik: int, per_column_grads: bool,
                          grad_bf16: bool, need_gr: bool):
    """(BLOCK_R, BLOCK_L, num_warps, (BLOCK_V, BLOCK_NC, BLOCK_TAIL, BLOCK_TV)) of the
    row-warp IWAE kernel, or None where it does not apply: d/drecon_k not saved in bf16
    (``grad_bf16``) or not needed (``need_gr``), a likelihood other than the Bernoulli,
    d/dx, K, D, L out of IWAE_ROW_WARPS_LIMITS or a tail past IWAE_ROW_WARPS_TAIL_MAX
    (each ``BLOCK_*``, K too, a layout of its own for the compile test). Every IWAE call
    runs it: a lookup in IWAE_ROW_WARPS_LAYOUTS, not its rule (three ``_p2``, ~1 us)."""
    if (not grad_bf16 or not need_gr or lik != BERNOULLI or per_column_grads
            or l > IWAE_ROW_WARPS_LIMITS[4]):
        return None
    return IWAE_ROW_WARPS_LAYOUTS.get((k, d))


def iwae_onepass_config(b: int, k: int, d: int, l: int, lik: int = BERNOULLI):
    """(BLOCK_B, BLOCK_K, BLOCK_D, BLOCK_L, num_warps) of the one-pass IWAE kernel, or None
    when a row's K x D (or K x L) does not fit on chip (the two-pass kernel runs)."""
    tile = next((t for t in iwae_onepass_tiles(lik, d) if k <= t[1] and d <= t[2] and l <= t[3]),
                None)
    if tile is None:
        return None
    block_b, block_k, block_d, block_l = tile
    if interpreter_tiles():  # same choice of kernel, bigger tiles
        block_k, block_d, block_l = _p2(k), max(_p2(d), 16), max(_p2(l), 16)
        block_b = max(1, min(_INTERP_TILE // (block_k * max(block_d, block_l)), _p2(b)))
        return block_b, block_k, block_d, block_l, ROW_WARPS
    warps = IWAE_ONEPASS_WARPS.get((lik, block_b, block_k, block_d), ROW_WARPS)
    if block_d <= 2 * block_l:   # fewer latents than threads would repeat their math
        block_l = min(block_l, max(16, _p2(l), 64 * warps // (block_b * block_k)))
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
        block_d = min(max(_p2(d), 16), 4096)
        block_b = max(1, min(_INTERP_TILE // block_d, _p2(b)))
        return block_b, block_d, max(16, min(_p2(l), 1024)), ROW_WARPS
    block_d = min(IWAE_ROWS_BLOCK_D, max(16, _p2(d)))
    block_l = min(IWAE_ROWS_BLOCK_L, max(16, _p2(l)))
    elements, warps = IWAE_ROWS_TILE.get((lik, element_size), IWAE_ROWS_TILE[element_size])
    if block_l == IWAE_ROWS_BLOCK_L:
        elements = max(elements, IWAE_ROWS_FULL_LATENTS_ELEMENTS.get((lik, element_size), 0))
    block_b = min(elements // block_d, IWAE_ROWS_LATENT_TILE // block_l)
    warps = max(warps, block_b * block_l // (32 * IWAE_ROWS_LATENTS_A_THREAD))
    if not aligned:
        block_b = max(1, block_b // 2)
    return block_b, block_d, block_l, warps


def finish_config():
    """(BLOCK_B, BLOCK_L, BLOCK_D, BLOCK_SUM, num_warps) of the finish kernels."""
    if interpreter_tiles():
        return 256, 64, 256, _INTERP_TILE, FINISH_WARPS
    return (*FINISH_TILE, FINISH_WARPS)


def scale_block() -> int:
    return _INTERP_TILE if interpreter_tiles() else SCALE_BLOCK


def reparameterize_warps(bl: int) -> int:
    """num_warps of the sampler's kernels for B*L latents per sample."""
    return REPARAMETERIZE_WARPS if bl % 16 == 0 else REPARAMETERIZE_WARPS_UNALIGNED


def sample_with_kl_config(b: int, n: int, sms: int | None = None):
    """(BLOCK_B, BLOCK_N, CHUNK, chunks, num_warps) of the sample_with_kl kernels for (B, N)
    latents on a GPU of ``sms`` SMs (None: not a CUDA device): grid ``(cdiv(B, BLOCK_B),
    chunks)``, each program BLOCK_B rows by CHUNK columns (a multiple of BLOCK_N on the
    GPU), the last chunk of a row shorter."""
    if interpreter_tiles():
        chunk = max(1, _launch.cdiv(n, max(1, min(SAMPLE_WITH_KL_INTERP_CHUNKS, n // 16))))
        block_n = min(max(_p2(chunk), 16), 4096)
        block_b = max(1, min(_INTERP_TILE // block_n, _p2(b)))
        return block_b, block_n, chunk, _launch.cdiv(n, chunk), ROW_WARPS
    block_b, block_n, warps = next(t[1:] for t in SAMPLE_WITH_KL_TILES
                                   if t[0] is None or n <= t[0])
    programs = SAMPLE_WITH_KL_WAVES * (sms or SAMPLE_WITH_KL_DEFAULT_SMS)
    wanted = _launch.cdiv(programs, _launch.cdiv(b, block_b))   # chunks a row: fill the GPU
    most = n // max(block_n, SAMPLE_WITH_KL_MIN_CHUNK // block_b)   # none under the minimum
    chunk = max(1, _launch.cdiv(_launch.cdiv(n, max(1, min(wanted, most))), block_n)) * block_n
    return block_b, block_n, chunk, _launch.cdiv(n, chunk), warps


def sample_with_kl_sum_block() -> int:
    """Chunks a step of the forward's fold of the KL partials (BLOCK_P)."""
    return 16 if interpreter_tiles() else SAMPLE_WITH_KL_SUM_BLOCK


def reparameterize_grid(bl: int):
    """(grid, CHUNKS, CPAD) of the sampler for B*L latents per sample."""
    chunks = REPARAMETERIZE_CHUNKS
    if interpreter_tiles():
        chunks = max(1, min(16, _p2(triton.cdiv(bl, 4 * kr.Q))))
    cpad = triton.cdiv(bl, 4 * kr.Q) * kr.Q
    return (triton.cdiv(bl, 4 * kr.Q * chunks),), chunks, cpad


# The discretized logistic mixture: (BLOCK_P, num_warps) by BLOCK_M, the number of mixture
# components M padded to a power of two (at least 8): 1024-element tiles, 4 elements per
# thread (8 per thread spill for RGB, as does a 4 x 256 tile on sm_80). Larger M runs on
# the "torch" backend.
DMOL_TILES = {8: (128, 8), 16: (64, 8), 32: (32, 8), 64: (16, 8)}
DMOL_MAX_MIX = 64


def dmol_config(m: int, hw: int):
    """(BLOCK_M, BLOCK_P, num_warps) of the DMoL kernel for M components and HW pixels."""
    block_m = max(8, _p2(m))
    if interpreter_tiles():
        return block_m, max(16, min(_p2(hw), _INTERP_TILE // block_m)), ROW_WARPS
    return (block_m, *DMOL_TILES[block_m])
