"""Fused sampling and KL of one latent group: ``z = mu_q + exp(0.5*logvar_q) * eps`` and
``KL(N(mu_q, exp(logvar_q)) || N(mu_p, exp(logvar_p)))`` per row, with eps drawn in the
kernel and drawn again in backward (no noise tensor, only a one-element int64 seed).

eps follows ``reparameterize``'s counter layout (``reparameterize.normal_at``): element
``i`` of the row-major (B, N) posterior gets the very draw that ``reparameterize`` gives
element ``i`` of a (B, N) input with the same seed, so the two ops agree bit for bit.

``sample_with_kl_fwd_kernel`` — grid ``cdiv(B, BLOCK_B)``; each program owns ``BLOCK_B``
rows and walks their ``N`` latents in ``BLOCK_N`` blocks: reads mu_q, logvar_q (and the
prior's mu_p, logvar_p with ``PRIOR``; row stride 0 for a prior shared by every row),
writes z, and the KL's gradients per the flags (``_math.NEED_GMU``: dKL/dmu_q, which is
also -dKL/dmu_p; ``NEED_GLV``; ``NEED_GPLV``), then the row's KL (fp32), summed in a
fixed order (no atomics). Bytes per element, ``s`` each, training with a learned prior:
``8s`` (read 4, write z and 3 gradients).

``sample_with_kl_bwd_kernel`` — same grid: ``dmu_q = dz + g_kl dKL/dmu_q``,
``dlogvar_q = 0.5 dz exp(0.5 logvar_q) eps + g_kl dKL/dlogvar_q``, ``dmu_p = -g_kl
dKL/dmu_q``, ``dlogvar_p = g_kl dKL/dlogvar_p`` (per row; the host sums a shared prior's
over rows), eps regenerated only where dlogvar_q needs it. ``HAS_DZ`` / ``HAS_GKL``: which
of z and the KL had a gradient. Bytes per element: at most ``9s`` (read dz, logvar_q and
3 saved gradients, write 4) plus ``4`` per row of g_kl.
"""
import triton
import triton.language as tl

from ._math import (NEED_GLV, NEED_GMU, NEED_GPLV, NEED_GPM, PRIOR, kl_prior_tile, kl_tile,
                    load_f32, program_rows, store_as)
from .reparameterize import normal_at

HAS_DZ = tl.constexpr(1 << 12)    # backward: z has a gradient
HAS_GKL = tl.constexpr(1 << 13)   # backward: the KL has a gradient


@triton.jit
def sample_with_kl_fwd_kernel(
    MU, LV, PM, PLV, SEED,        # inputs: (B, N) rows; the prior (PRIOR); one int64 seed
    Z, KL,                        # outputs: (B, N) contiguous, in mu's dtype; (B,) fp32
    GMU, GLV, GPLV,               # dKL/dmu_q, dKL/dlogvar_q, dKL/dlogvar_p (B, N), per the flags
    B, N,
    stride_mu, stride_lv, stride_pm, stride_plv,
    flags,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, Q: tl.constexpr,
):
    pid, rows, rmask = program_rows(B, BLOCK_B)
    rows2 = rows[:, None]
    seed = tl.load(SEED)
    has_prior = (flags & PRIOR) != 0
    acc = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        cols2 = (n0 + tl.arange(0, BLOCK_N))[None, :]
        m = rmask[:, None] & (cols2 < N)
        mu = load_f32(MU, rows2 * stride_mu + cols2, m)
        lv = load_f32(LV, rows2 * stride_lv + cols2, m)
        out = rows2 * N + cols2
        eps = normal_at(seed, out, Q)
        store_as(Z, out, mu + tl.exp(0.5 * lv) * eps, m)   # reparameterize's expression
        if has_prior:
            pm = load_f32(PM, rows2 * stride_pm + cols2, m)
            plv = load_f32(PLV, rows2 * stride_plv + cols2, m)
            kl, d_mu, d_lv, d_z, d_pm, d_plv = kl_prior_tile(mu, lv, mu, pm, plv, False)
        else:
            kl, d_mu, d_lv, d_z = kl_tile(mu, lv, mu, False)
            d_plv = d_mu * 0.0
        acc += tl.where(m, kl, 0.0)
        if (flags & NEED_GMU) != 0:
            store_as(GMU, out, d_mu, m)
        if (flags & NEED_GLV) != 0:
            store_as(GLV, out, d_lv, m)
        if (flags & NEED_GPLV) != 0:
            store_as(GPLV, out, d_plv, m)
    store_as(KL, rows, tl.sum(acc, axis=1), rmask)


@triton.jit
def _saved(G, off, m, has_gkl):
    """A saved KL gradient tile (0 where the KL has no grad_output: nothing was saved)."""
    if has_gkl:
        g = load_f32(G, off, m)
    else:
        g = tl.zeros_like(off).to(tl.float32)
    return g


@triton.jit
def sample_with_kl_bwd_kernel(
    DZ, GKL, LV, SEED,            # inputs: (B, N) dz (HAS_DZ), (B,) g_kl (HAS_GKL), logvar_q, seed
    GMU, GLV, GPLV,               # the forward's saved dKL/d(mu_q, logvar_q, logvar_p), (B, N)
    DMU, DLV, DPM, DPLV,          # outputs (B, N), per NEED_GMU / NEED_GLV / NEED_GPM / NEED_GPLV
    B, N,
    stride_lv,
    flags,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, Q: tl.constexpr,
):
    pid, rows, rmask = program_rows(B, BLOCK_B)
    rows2 = rows[:, None]
    has_dz = (flags & HAS_DZ) != 0
    has_gkl = (flags & HAS_GKL) != 0
    if has_gkl:
        gk = tl.load(GKL + rows, mask=rmask, other=0.0).to(tl.float32)[:, None]
    else:
        gk = tl.zeros([BLOCK_B, 1], dtype=tl.float32)
    seed = tl.load(SEED)
    for n0 in range(0, N, BLOCK_N):
        cols2 = (n0 + tl.arange(0, BLOCK_N))[None, :]
        m = rmask[:, None] & (cols2 < N)
        off = rows2 * N + cols2
        if has_dz:
            dz = load_f32(DZ, off, m)
        else:
            dz = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
        if (flags & (NEED_GMU | NEED_GPM)) != 0:
            g_mu = gk * _saved(GMU, off, m, has_gkl)
            if (flags & NEED_GMU) != 0:
                store_as(DMU, off, dz + g_mu, m)
            if (flags & NEED_GPM) != 0:
                store_as(DPM, off, -g_mu, m)
        if (flags & NEED_GLV) != 0:
            d_lv = gk * _saved(GLV, off, m, has_gkl)
            if has_dz:
                lv = load_f32(LV, rows2 * stride_lv + cols2, m)
                d_lv += 0.5 * dz * tl.exp(0.5 * lv) * normal_at(seed, off, Q)
            store_as(DLV, off, d_lv, m)
        if (flags & NEED_GPLV) != 0:
            store_as(DPLV, off, gk * _saved(GPLV, off, m, has_gkl), m)
