"""Fused ELBO: one row pass (value and every gradient), then, only for a batch reduction
or free bits, one small deterministic finish launch.

``elbo_rows_kernel`` — grid ``cdiv(B, BLOCK_B)``; each program owns ``BLOCK_B`` rows and
walks their ``D`` data columns in ``BLOCK_D`` blocks (any D: masked tail), then their
``L`` latents in ``BLOCK_L`` blocks. Every input element is read once; the per-row value
and, per the ``flags`` bits (``_math.NEED_*``), the gradients w.r.t. x, recon,
obs_logvar, mu, logvar and z (and a learned prior's mean and log-variance, ``PRIOR``:
``_math.kl_prior_tile``) are written in the same pass, already multiplied by the
backward scale (``c`` for data terms, ``-beta*c`` for latent terms). Row offsets are
int64. Bytes per row, ``s`` per element, training: ``(2D + 4L) s`` in and out for
Bernoulli with the analytic KL (read x, recon, mu, logvar; write d recon, d mu, d logvar).

``elbo_free_bits_kernel`` — grid ``1 + cdiv(D, BLOCK_D)``: program 0 applies free bits
(per-latent batch mean of the saved (B, L) KL, clamp, row values fixed up, clamped
latents' gradients zeroed; one program, so O(B*L / (BLOCK_B*BLOCK_L)) dependent steps:
cheap only for modest B*L), then writes the rows or their sum; programs 1.. sum the
per-program partial obs_logvar gradients (``reduce.sum_partial_columns``). Without free
bits a reduction finishes in ``reduce.finish_kernel``.

The standalone ``gaussian_log_prob`` (L = 0), ``kl_standard_normal`` and ``kl_normal``
(D = 0, beta = -1) are this same row kernel with one half of the row empty.
"""
import triton
import triton.language as tl

from ._math import (KL_MC, NEED_GLV, NEED_GMU, NEED_GOBS_PARTIAL, NEED_GOBS_ROWS, NEED_GPLV,
                    NEED_GPM, NEED_GR, NEED_GX, NEED_GZ, PRIOR, STORE_KL, latent_kl_tile,
                    likelihood_tile, load_data, load_f32, load_prior, program_rows, store_as)
from .reduce import sum_partial_columns


@triton.jit(do_not_specialize=["obs_scalar", "beta", "c", "row_scale", "flags"])
def elbo_rows_kernel(
    X, R, OBS, MU, LV, Z,                     # inputs (OBS: LIK_GAUSSIAN_TENSOR; Z: KL_MC)
    PM, PLV,                                  # the prior's mean and log-variance (PRIOR)
    ROW_VALUES, KL_LATENT,                    # (B,) fp32 rows; (B, L) fp32 KL (STORE_KL)
    GX, GR, GOBS, GMU, GLV, GZ, GPM, GPLV,    # gradients, per the flags
    B, D, L,
    stride_x, stride_r, stride_obs, stride_mu, stride_lv, stride_z,
    stride_pm, stride_plv,                    # 0 for a prior shared by every row
    obs_scalar, beta, c, row_scale, flags,
    LIK: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    # Scalars from inductor arrive as fp64: cast once.
    obs_scalar = tl.cast(obs_scalar, tl.float32)
    beta = tl.cast(beta, tl.float32)
    c = tl.cast(c, tl.float32)
    row_scale = tl.cast(row_scale, tl.float32)
    pid, rows, rmask = program_rows(B, BLOCK_B)
    rows2 = rows[:, None]

    # ---- log p(x|z) over the D columns -------------------------------------------
    acc = tl.zeros([BLOCK_B, BLOCK_D], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        cols2 = cols[None, :]
        m = rmask[:, None] & (cols2 < D)
        x, r, s = load_data(X, R, OBS, rows2 * stride_x + cols2, rows2 * stride_r + cols2,
                            rows2 * stride_obs + cols2, m, obs_scalar, LIK)
        value, g_r, g_x, g_s = likelihood_tile(x, r, s, LIK)
        acc += tl.where(m, value, 0.0)
        out = rows2 * D + cols2
        if (flags & NEED_GX) != 0:
            store_as(GX, out, g_x * c, m)
        if (flags & NEED_GR) != 0:
            store_as(GR, out, g_r * c, m)
        if (flags & NEED_GOBS_ROWS) != 0:
            store_as(GOBS, out, g_s * c, m)
        if (flags & NEED_GOBS_PARTIAL) != 0:
            store_as(GOBS, pid * D + cols, tl.sum(tl.where(m, g_s * c, 0.0), axis=0), cols < D)
    log_px = tl.sum(acc, axis=1)

    # ---- KL over the L latents ---------------------------------------------------
    is_mc = (flags & KL_MC) != 0
    has_prior = (flags & PRIOR) != 0
    g_scale = -beta * c
    kacc = tl.zeros([BLOCK_B, BLOCK_L], dtype=tl.float32)
    for l0 in range(0, L, BLOCK_L):
        lat2 = (l0 + tl.arange(0, BLOCK_L))[None, :]
        m = rmask[:, None] & (lat2 < L)
        mu = load_f32(MU, rows2 * stride_mu + lat2, m)
        lv = load_f32(LV, rows2 * stride_lv + lat2, m)
        if is_mc:
            z = load_f32(Z, rows2 * stride_z + lat2, m)
        else:
            z = mu * 0.0
        pm, plv = load_prior(PM, PLV, rows2 * stride_pm + lat2, rows2 * stride_plv + lat2, m,
                             has_prior)
        kl, d_mu, d_lv, d_z, d_pm, d_plv = latent_kl_tile(mu, lv, z, pm, plv, is_mc, has_prior)
        kl = tl.where(m, kl, 0.0)
        kacc += kl
        out = rows2 * L + lat2
        if (flags & STORE_KL) != 0:
            store_as(KL_LATENT, out, kl, m)
        if (flags & NEED_GMU) != 0:
            store_as(GMU, out, d_mu * g_scale, m)
        if (flags & NEED_GLV) != 0:
            store_as(GLV, out, d_lv * g_scale, m)
        if (flags & NEED_GZ) != 0:
            store_as(GZ, out, d_z * g_scale, m)
        if (flags & NEED_GPM) != 0:
            store_as(GPM, out, d_pm * g_scale, m)
        if (flags & NEED_GPLV) != 0:
            store_as(GPLV, out, d_plv * g_scale, m)
    per_row = log_px - beta * tl.sum(kacc, axis=1)
    store_as(ROW_VALUES, rows, per_row * row_scale, rmask)


@triton.jit(do_not_specialize=["beta", "free_bits", "c", "reduce", "flags"])
def elbo_free_bits_kernel(
    ROW_VALUES, KL_LATENT, GOBS_PARTIALS,     # inputs from the row pass (fp32)
    CLAMPED, OUT, GMU, GLV, GZ, GPM, GPLV,    # (L,) i32 scratch; the value; gradients to fix
    GOBS,
    B, L, D, NPART,
    beta, free_bits, c, reduce, flags,
    BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    beta = tl.cast(beta, tl.float32)
    free_bits = tl.cast(free_bits, tl.float32)
    c = tl.cast(c, tl.float32)
    pid = tl.program_id(0)
    if pid == 0:
        # Phase 1: which latents' batch-mean KL lies below free_bits.
        for l0 in range(0, L, BLOCK_L):
            lat = l0 + tl.arange(0, BLOCK_L)
            lmask = lat < L
            kacc = tl.zeros([BLOCK_B, BLOCK_L], dtype=tl.float32)
            for b0 in range(0, B, BLOCK_B):
                rows = b0 + tl.arange(0, BLOCK_B).to(tl.int64)
                m = (rows < B)[:, None] & lmask[None, :]
                kacc += tl.load(KL_LATENT + rows[:, None] * L + lat[None, :], mask=m, other=0.0)
            mean = tl.sum(kacc, axis=0) / B
            tl.store(CLAMPED + lat, (mean < free_bits).to(tl.int32), mask=lmask)
        tl.debug_barrier()  # CLAMPED is read back by other threads of this program
        # Phase 2: clamped latents add free_bits - KL to the row's KL and pass no gradient.
        total = tl.zeros([BLOCK_B], dtype=tl.float32)
        for b0 in range(0, B, BLOCK_B):
            rows = b0 + tl.arange(0, BLOCK_B).to(tl.int64)
            rmask = rows < B
            adj = tl.zeros([BLOCK_B, BLOCK_L], dtype=tl.float32)
            for l0 in range(0, L, BLOCK_L):
                lat = l0 + tl.arange(0, BLOCK_L)
                lmask = lat < L
                clamped = tl.load(CLAMPED + lat, mask=lmask, other=0) != 0
                m = rmask[:, None] & (lmask & clamped)[None, :]
                off = rows[:, None] * L + lat[None, :]
                kl = tl.load(KL_LATENT + off, mask=m, other=0.0)
                adj += tl.where(m, free_bits - kl, 0.0)
                zero = tl.zeros([BLOCK_B, BLOCK_L], dtype=tl.float32)
                if (flags & NEED_GMU) != 0:
                    store_as(GMU, off, zero, m)
                if (flags & NEED_GLV) != 0:
                    store_as(GLV, off, zero, m)
                if (flags & NEED_GZ) != 0:
                    store_as(GZ, off, zero, m)
                if (flags & NEED_GPM) != 0:
                    store_as(GPM, off, zero, m)
                if (flags & NEED_GPLV) != 0:
                    store_as(GPLV, off, zero, m)
            v = tl.load(ROW_VALUES + rows, mask=rmask, other=0.0) - beta * tl.sum(adj, axis=1)
            if reduce != 0:
                total += tl.where(rmask, v, 0.0)
            else:
                store_as(OUT, rows, v * c, rmask)
        if reduce != 0:
            tl.store(OUT, (tl.sum(total, axis=0) * c).to(OUT.dtype.element_ty))
    else:
        sum_partial_columns(GOBS_PARTIALS, GOBS, pid - 1, D, NPART, BLOCK_B, BLOCK_D)
