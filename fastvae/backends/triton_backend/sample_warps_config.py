"""Where the sample-warp IWAE kernel runs (``kernels/iwae_bound_sample_warps.py``: one
program a row, one warp a sample, one read of recon_k) and its layout: bf16 Bernoulli
training (d/drecon_k needed, no d/dx) at K past the one-pass kernels' (up to
SAMPLE_WARPS_LIMITS' K), rows of whole 16-byte-a-lane chunks and a tail of at most
SAMPLE_WARPS_TAIL_MAX columns, L <= 32. Elsewhere the two-pass kernel runs."""
from __future__ import annotations

from .configs import BERNOULLI

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


def _p2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


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
    return (k_max, warps, SAMPLE_WARPS_BLOCK_L, warps, (v, nc, _p2(tail) if tail else 0))
