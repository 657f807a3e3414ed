"""Launch configurations of the Triton kernels: tiles, warps and grids per op (the IWAE
kernels' in ``iwae_configs``).

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

FINISH_TILE = (64, 32, 64, 8192)   # BLOCK_B (partials' rows), BLOCK_L, BLOCK_D, BLOCK_SUM
FINISH_WARPS = 4
REPARAMETERIZE_CHUNKS = 1          # chunks of 4*Q latents per program
REPARAMETERIZE_WARPS = 8
# Where B*L is not a multiple of 16 the JIT sees no divisibility, the loads are narrow
# anyway, and 8 warps spill 4 bytes (Triton 3.9, sm_80); 16 warps: 40-54 registers.
REPARAMETERIZE_WARPS_UNALIGNED = 16
# (N up to, BLOCK_B, BLOCK_N, num_warps) of sample_with_kl's row tiles; the last covers any
# N. 1024 elements a tile: each element runs its own Philox call (``normal_at``), so 8
# warps (4 elements a thread): at 4 warps the 16 x 64 and 4 x 256 tiles took up to 168-206
# registers and spilled 4 bytes with a learned prior (Triton 3.6: fp16 16 x 64 on sm_90,
# bf16 4 x 256 on sm_80); at 8 the classes tier's launches take 26-107, none spilling
# (RESULTS.md, "The classes tier's small kernels").
SAMPLE_WITH_KL_TILES = ((64, 16, 64, 8), (256, 4, 256, 8), (None, 1, 1024, 8))
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
INTERP_TILE = 1 << 15
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


def next_pow2(n: int) -> int:
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
        block_d = min(max(next_pow2(d), 16), 4096)
        block_b = max(1, min(INTERP_TILE // block_d, next_pow2(b)))
        return block_b, block_d, max(16, min(next_pow2(l), 1024)), ROW_WARPS
    # D = 0 (the latent half of a DMoL ELBO): the D >= 64 tile, whose latent part ships
    block_d = min(ELBO_BLOCK_D, max(16, next_pow2(d))) if d else ELBO_BLOCK_D
    block_l = min(ELBO_BLOCK_L,
                  max(ELBO_MIN_BLOCK_L.get((lik, element_size), 16), next_pow2(l)))
    elements, warps = ELBO_TILE_BY_LIK.get((lik, element_size),
                                           (ELBO_TILE_ELEMENTS[element_size], ELBO_WARPS))
    block_b = min(elements // block_d, ELBO_LATENT_TILE // block_l)
    block_b = block_b if aligned else max(1, block_b // 2)
    return block_b, block_d, min(block_l, ELBO_INT64_BLOCK_L) if int64 else block_l, warps


def kl_config(n: int, l: int, element_size: int, prior: bool, stride_mu: int,
              stride_lv: int, int64: bool = False):
    """(BLOCK_B, BLOCK_D, BLOCK_L, num_warps) of the ELBO row kernel as kl_standard_normal
    and kl_normal run it (no data columns). Rows whose stride is not a multiple of 16 load
    one latent at a time, each with its own 64-bit address: 16-bit latents then take the
    fp32 tile (8 a thread, not 16; at 16, fp16 L = 3 spilled 4 bytes at 72 registers on
    Triton 3.6, sm_90), and with ``int64`` offsets half its rows (the full tile took
    220-255 registers at L = 30 and 100, and spilled 12-220 bytes in training with a
    (B, L) prior, both Tritons; RESULTS.md, "KL rows with int64 offsets")."""
    # every KL call runs this: one test of both strides (they are never negative), not
    # any() over a generator (about 0.2 us a call)
    if (stride_mu | stride_lv) % 16:
        return elbo_config(n, 1, l, 4, prior=prior, aligned=not int64)
    return elbo_config(n, 1, l, element_size, prior=prior)


def elbo_stages(element_size: int, lik: int = BERNOULLI, prior: bool = False) -> int:
    """STAGES of the ELBO row kernel (its column loop's pipeline depth): ELBO_STAGES for
    the tiles ELBO_TILE_ELEMENTS gives (what benchmarks/gpu_tiles.py times), 1 for the
    others (a learned prior's fp32 tile, ELBO_TILE_BY_LIK's) and the interpreter's."""
    if interpreter_tiles() or prior or (lik, element_size) in ELBO_TILE_BY_LIK:
        return 1
    return ELBO_STAGES[element_size]


def ticket_sum_block() -> int:
    return INTERP_TILE if interpreter_tiles() else TICKET_SUM_BLOCK


def kl_clamp_config(l: int):
    """(BLOCK_B, BLOCK_L, num_warps) of free bits' first pass."""
    if interpreter_tiles():
        return 256, max(16, min(next_pow2(l), 128)), ROW_WARPS
    return (*KL_CLAMP_TILE, ELBO_WARPS)


def needs_int64(*extents: int) -> bool:
    """Whether an offset (the largest of ``extents``: rows x row stride, programs x D, ...)
    can pass int32."""
    return max(extents, default=0) > INT32_LIMIT


def finish_config():
    """(BLOCK_B, BLOCK_L, BLOCK_D, BLOCK_SUM, num_warps) of the finish kernels."""
    if interpreter_tiles():
        return 256, 64, 256, INTERP_TILE, FINISH_WARPS
    return (*FINISH_TILE, FINISH_WARPS)


def scale_block() -> int:
    return INTERP_TILE if interpreter_tiles() else SCALE_BLOCK


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
        block_n = min(max(next_pow2(chunk), 16), 4096)
        block_b = max(1, min(INTERP_TILE // block_n, next_pow2(b)))
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
        chunks = max(1, min(16, next_pow2(triton.cdiv(bl, 4 * kr.Q))))
    cpad = triton.cdiv(bl, 4 * kr.Q) * kr.Q
    return (triton.cdiv(bl, 4 * kr.Q * chunks),), chunks, cpad


# The discretized logistic mixture: (BLOCK_P, num_warps) by BLOCK_M, the number of mixture
# components M padded to a power of two (at least 8): 1024-element tiles, 4 elements per
# thread (8 per thread spill for RGB, as does a 4 x 256 tile on sm_80). Larger M runs on
# the "torch" backend.
DMOL_TILES = {8: (128, 8), 16: (64, 8), 32: (32, 8), 64: (16, 8)}
DMOL_MAX_MIX = 64
# The kernel's offsets within one sample are int32 (its INT64 widens the row base alone):
# a sample of more parameters (8 GiB of fp32 for one image) runs on the "torch" backend.
DMOL_ROW_LIMIT = 2**31 - 1


def dmol_config(m: int, hw: int):
    """(BLOCK_M, BLOCK_P, num_warps) of the DMoL kernel for M components and HW pixels."""
    block_m = max(8, next_pow2(m))
    if interpreter_tiles():
        return block_m, max(16, min(next_pow2(hw), INTERP_TILE // block_m)), ROW_WARPS
    return (block_m, *DMOL_TILES[block_m])
