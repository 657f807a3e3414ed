"""Fused sampling and KL of one latent group: ``z = mu_q + exp(0.5*logvar_q) * eps`` and
``KL(N(mu_q, exp(logvar_q)) || N(mu_p, exp(logvar_p)))`` per row, with eps drawn in the
kernel and drawn again in backward (no noise tensor, only a one-element int64 seed).

eps follows ``reparameterize``'s counter layout and sampler (``reparameterize.normal_at``,
the same uniforms through the same fast Box-Muller as ``normal4x``): element
``i`` of the row-major (B, N) posterior gets the very draw that ``reparameterize`` gives
element ``i`` of a (B, N) input with the same seed, so the two ops agree bit for bit.

``sample_with_kl_fwd_kernel`` — grid ``(cdiv(B, BLOCK_B), chunks)``; each program owns
``BLOCK_B`` rows and one chunk of ``CHUNK`` columns of them (a batch of 16 rows of 65,536
latents would otherwise be 16 programs on a GPU of 132 SMs), walked in ``BLOCK_N``
blocks: reads mu_q, logvar_q (and the prior's mu_p, logvar_p with ``PRIOR``; row stride 0
for a prior shared by every row), writes z, and the KL's gradients per the constexpr
switches (``NEED_GMU``: dKL/dmu_q, which is also -dKL/dmu_p; ``NEED_GLV``; ``NEED_GPLV``).
The rows' KL (fp32): with one chunk (``SPLIT`` off) the program writes it; with
``SPLIT`` each program writes its chunk's partial to ``PARTIALS`` (chunks, B), and the
last program of a row block to finish (an integer ticket, ``reduce.last_ticket``, one
counter per row block) sums the block's partials in a fixed order and writes the KL:
one launch, no float atomics, the same bits for the same inputs and chunking (the
chunking follows the shape and the GPU's SM count, ``configs.sample_with_kl_config``).
Bytes per element, ``s`` each, training with a learned prior: ``8s`` (read 4, write z
and 3 gradients), plus 4 bytes per row and chunk for the partials.

``sample_with_kl_bwd_kernel`` — the same grid, no reduction: ``dmu_q = dz + g_kl dKL/dmu_q``,
``dlogvar_q = 0.5 dz exp(0.5 logvar_q) eps + g_kl dKL/dlogvar_q``, ``dmu_p = -g_kl
dKL/dmu_q``, ``dlogvar_p = g_kl dKL/dlogvar_p`` (per row; the host sums a shared prior's
over rows), eps regenerated only where dlogvar_q needs it. ``HAS_DZ`` / ``HAS_GKL``
(constexpr): which of z and the KL had a gradient. Bytes per element: at most ``9s``
(read dz, logvar_q and 3 saved gradients, write 4) plus ``4`` per row of g_kl.
"""
import triton
import triton.language as tl

from ._math import latent_kl_tile, load_f32, load_prior, program_rows, store_as
from .reduce import last_ticket, sum_partial_columns
from .reparameterize import normal_at


@triton.jit
def _chunk(N, CHUNK, SPLIT: tl.constexpr):
    """(first column, end) of this program's chunk of its rows; without ``SPLIT`` the
    whole row, 0 to N, with no chunk arithmetic (it cost registers: at 4 warps, a 4-byte
    spill of the 16 x 64 tile on sm_90 with Triton 3.6)."""
    if SPLIT:
        # in N's int type (int64 once N passes 2^31, where the chunks' starts would wrap)
        start = (N * 0 + tl.program_id(1)) * CHUNK
        return start, start + tl.minimum(CHUNK, N - start)   # no int32 overflow past N
    else:
        return 0, N


@triton.jit
def sample_with_kl_fwd_kernel(
    MU, LV, PM, PLV, SEED,        # inputs: (B, N) rows; the prior (PRIOR); one int64 seed
    Z, KL,                        # outputs: (B, N) contiguous, in mu's dtype; (B,) fp32
    GMU, GLV, GPLV,               # dKL/dmu_q, dKL/dlogvar_q, dKL/dlogvar_p (B, N), per NEED_*
    PARTIALS, COUNTER,            # SPLIT: (chunks, B) fp32 scratch; a ticket per row block
    B, N, CHUNK,
    stride_mu, stride_lv, stride_pm, stride_plv,
    PRIOR: tl.constexpr, NEED_GMU: tl.constexpr, NEED_GLV: tl.constexpr,
    NEED_GPLV: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, Q: tl.constexpr,
):
    pid, rows, rmask = program_rows(B, BLOCK_B)
    rows2 = rows[:, None]
    start, end = _chunk(N, CHUNK, SPLIT)
    seed = tl.load(SEED)
    acc = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
    for n0 in range(start, end, BLOCK_N):
        cols2 = (n0 + tl.arange(0, BLOCK_N))[None, :]
        m = rmask[:, None] & (cols2 < end)
        mu = load_f32(MU, rows2 * stride_mu + cols2, m)
        lv = load_f32(LV, rows2 * stride_lv + cols2, m)
        out = rows2 * N + cols2
        eps = normal_at(seed, out, Q)
        store_as(Z, out, mu + tl.exp(0.5 * lv) * eps, m)   # reparameterize's expression
        pm, plv = load_prior(PM, PLV, rows2 * stride_pm + cols2, rows2 * stride_plv + cols2, m,
                             PRIOR)
        kl, d_mu, d_lv, d_z, d_pm, d_plv = latent_kl_tile(mu, lv, mu, pm, plv, False, PRIOR)
        acc += tl.where(m, kl, 0.0)
        if NEED_GMU:
            store_as(GMU, out, d_mu, m)
        if NEED_GLV:
            store_as(GLV, out, d_lv, m)
        if NEED_GPLV:
            store_as(GPLV, out, d_plv, m)
    if SPLIT:
        store_as(PARTIALS, tl.program_id(1) * B + rows, tl.sum(acc, axis=1), rmask)
        if last_ticket(COUNTER + pid, tl.num_programs(1)):
            tl.debug_barrier()
            sum_partial_columns(PARTIALS, KL, pid, B, tl.num_programs(1), BLOCK_P, BLOCK_B)
            tl.atomic_xchg(COUNTER + pid, 0)
    else:
        store_as(KL, rows, tl.sum(acc, axis=1), rmask)


@triton.jit
def sample_with_kl_bwd_kernel(
    DZ, GKL, LV, SEED,            # inputs: (B, N) dz (HAS_DZ), (B,) g_kl (HAS_GKL), logvar_q, seed
    GMU, GLV, GPLV,               # the forward's saved dKL/d(mu_q, logvar_q, logvar_p), (B, N)
    DMU, DLV, DPM, DPLV,          # outputs (B, N), per NEED_GMU / NEED_GLV / NEED_GPM / NEED_GPLV
    B, N, CHUNK,
    stride_lv,
    HAS_DZ: tl.constexpr, HAS_GKL: tl.constexpr, NEED_GMU: tl.constexpr,
    NEED_GLV: tl.constexpr, NEED_GPM: tl.constexpr, NEED_GPLV: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, Q: tl.constexpr,
):
    pid, rows, rmask = program_rows(B, BLOCK_B)
    rows2 = rows[:, None]
    if HAS_GKL:
        gk = tl.load(GKL + rows, mask=rmask, other=0.0).to(tl.float32)[:, None]
    start, end = _chunk(N, CHUNK, SPLIT)
    seed = tl.load(SEED)
    for n0 in range(start, end, BLOCK_N):
        cols2 = (n0 + tl.arange(0, BLOCK_N))[None, :]
        m = rmask[:, None] & (cols2 < end)
        off = rows2 * N + cols2
        if HAS_DZ:
            dz = load_f32(DZ, off, m)
        else:
            dz = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
        if NEED_GMU or NEED_GPM:
            if HAS_GKL:
                g_mu = gk * load_f32(GMU, off, m)
            else:
                g_mu = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
            if NEED_GMU:
                store_as(DMU, off, dz + g_mu, m)
            if NEED_GPM:
                store_as(DPM, off, -g_mu, m)
        if NEED_GLV:
            if HAS_GKL:
                d_lv = gk * load_f32(GLV, off, m)
            else:
                d_lv = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
            if HAS_DZ:
                lv = load_f32(LV, rows2 * stride_lv + cols2, m)
                d_lv += 0.5 * tl.exp(0.5 * lv) * (dz * normal_at(seed, off, Q))
            store_as(DLV, off, d_lv, m)
        if NEED_GPLV:
            if HAS_GKL:
                d_plv = gk * load_f32(GPLV, off, m)
            else:
                d_plv = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
            store_as(DPLV, off, d_plv, m)
