"""Fused ELBO: one row pass writes the value and every gradient, and folds the batch sum.

``elbo_rows_kernel`` — grid ``cdiv(B, BLOCK_B)``; each program owns ``BLOCK_B`` rows. It
reads their ``L`` latents first (``BLOCK_L`` at a time), then walks their ``D`` data
columns ``BLOCK_D`` at a time: full blocks unmasked, one masked tail block. Every input
element is read once; the gradients the constexpr switches ask for (``NEED_*``, ``OBS_GRAD``)
are written in the same pass, already multiplied by the backward scale (``c`` for data
terms, ``-beta*c`` for latent terms). Bytes per row, ``s`` per element, training with
the Bernoulli likelihood and the analytic KL: ``(3D + 4L) s`` (read x, recon, mu, logvar;
write d recon, d mu, d logvar).

With ``REDUCE`` the program adds its rows and writes one fp32 partial; an integer ticket
(``COUNTER``, zero between calls) tells the last program to finish, which sums the
partials in program order, writes ``c * sum`` and puts the ticket back to zero: one
launch, no float atomics, the same bits for the same inputs. Otherwise each row's value
is written.

Free bits (``FREE_BITS``): ``kl_clamp_kernel`` runs first, a parallel column reduction
of the per-latent KL over the batch (the same ticket finish) that marks each latent whose
batch mean lies below ``free_bits``; the row pass then gives a marked latent the
constant ``free_bits`` and no gradient.

A learned prior (``PRIOR``): the KL is to ``N(prior_mu, exp(prior_logvar))`` per latent
(``_math.kl_prior_tile``; row stride 0 for one prior row shared by the batch), and
``NEED_GPM`` / ``NEED_GPLV`` write its gradients per row like mu's. Without it the
prior pointers are never read and the kernel is the N(0, I) one.

The standalone ``gaussian_log_prob`` (L = 0), ``kl_standard_normal`` and ``kl_normal``
(D = 0, beta = -1) are this same row kernel with one half of the row empty.
"""
import triton
import triton.language as tl

from ._math import (GOBS_PARTIAL, GOBS_ROWS, LIK_GAUSSIAN_SCALAR, LIK_GAUSSIAN_TENSOR,
                    latent_kl_tile, likelihood_tile, load_f32, load_prior, row_block, store_as,
                    to_f32)
from .reduce import finish_by_ticket, last_ticket


@triton.jit
def _latents(MU, LV, Z, PM, PLV, CLAMPED, GMU, GLV, GZ, GPM, GPLV, rows2, rmask2, L,
             stride_mu, stride_lv, stride_z, stride_pm, stride_plv, g_scale, free_bits,
             KL_MC: tl.constexpr, FREE_BITS: tl.constexpr, PRIOR: tl.constexpr,
             NEED_GMU: tl.constexpr, NEED_GLV: tl.constexpr, NEED_GZ: tl.constexpr,
             NEED_GPM: tl.constexpr, NEED_GPLV: tl.constexpr,
             BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr):
    """The rows' KL term (BLOCK_B,), its gradients times ``g_scale`` written on the way."""
    kl_rows = tl.zeros([BLOCK_B], dtype=tl.float32)
    for l0 in range(0, L, BLOCK_L):
        lat = l0 + tl.arange(0, BLOCK_L)
        lat2 = lat[None, :]
        m = rmask2 & (lat2 < L)
        mu = load_f32(MU, rows2 * stride_mu + lat2, m)
        lv = load_f32(LV, rows2 * stride_lv + lat2, m)
        if KL_MC:
            z = load_f32(Z, rows2 * stride_z + lat2, m)
        else:
            z = mu
        pm, plv = load_prior(PM, PLV, rows2 * stride_pm + lat2, rows2 * stride_plv + lat2, m,
                             PRIOR)
        kl, d_mu, d_lv, d_z, d_pm, d_plv = latent_kl_tile(mu, lv, z, pm, plv, KL_MC, PRIOR)
        if FREE_BITS:  # a clamped latent: the constant free_bits and no gradient
            clamped = (tl.load(CLAMPED + lat, mask=lat < L, other=0) != 0)[None, :]
            kl = tl.where(clamped, free_bits, kl)
            d_mu = tl.where(clamped, 0.0, d_mu)
            d_lv = tl.where(clamped, 0.0, d_lv)
            if KL_MC:
                d_z = tl.where(clamped, 0.0, d_z)
            if PRIOR:
                d_pm = tl.where(clamped, 0.0, d_pm)
                d_plv = tl.where(clamped, 0.0, d_plv)
        kl_rows += tl.sum(tl.where(m, kl, 0.0), axis=1)
        out = rows2 * L + lat2
        if NEED_GMU:
            store_as(GMU, out, d_mu * g_scale, m)
        if NEED_GLV:
            store_as(GLV, out, d_lv * g_scale, m)
        if NEED_GZ:
            store_as(GZ, out, d_z * g_scale, m)
        if NEED_GPM:
            store_as(GPM, out, d_pm * g_scale, m)
        if NEED_GPLV:
            store_as(GPLV, out, d_plv * g_scale, m)
    return kl_rows


@triton.jit
def _load(at, m, MASKED: tl.constexpr):
    """A tile in fp32: masked (0 where ``m`` is false) in the tail block; unmasked in the
    full blocks, whose rows are clamped into the batch (no predicate, no zero fill)."""
    if MASKED:
        v = tl.load(at, mask=m, other=0.0)
    else:
        v = tl.load(at)
    return to_f32(v)


@triton.jit
def _tile_at(X, R, OBS, rows_in, rows2, stride_x, stride_r, stride_obs, D,
             WIDTH: tl.constexpr):
    """Pointer tiles of a (BLOCK_B, WIDTH) column step at column 0: x, recon and
    obs_logvar at rows ``rows_in``, and the (B, D) gradients' offsets at rows ``rows2``."""
    cols0 = tl.arange(0, WIDTH)[None, :]
    return (X + rows_in * stride_x + cols0, R + rows_in * stride_r + cols0,
            OBS + rows_in * stride_obs + cols0, rows2 * D + cols0)


@triton.jit
def _data_block(x_at, r_at, obs_at, gx_at, gr_at, gobs_at, GOBS, pid, cols, m, D, obs_scalar,
                c, LIK: tl.constexpr, NEED_GX: tl.constexpr, NEED_GR: tl.constexpr,
                OBS_GRAD: tl.constexpr, MASKED: tl.constexpr):
    """One (BLOCK_B, BLOCK_D) block of log p(x|z) at the pointer tiles ``*_at``: its
    values, gradients written where ``m``."""
    x = _load(x_at, m, MASKED)
    r = _load(r_at, m, MASKED)
    if LIK == LIK_GAUSSIAN_TENSOR:
        s = _load(obs_at, m, MASKED)
    else:
        s = obs_scalar
    value, g_r, g_x, g_s = likelihood_tile(x, r, s, LIK)
    if NEED_GX:
        tl.store(gx_at, (g_x * c).to(gx_at.dtype.element_ty), mask=m)
    if NEED_GR:
        tl.store(gr_at, (g_r * c).to(gr_at.dtype.element_ty), mask=m)
    if LIK >= LIK_GAUSSIAN_SCALAR:
        if OBS_GRAD == GOBS_ROWS:
            tl.store(gobs_at, (g_s * c).to(gobs_at.dtype.element_ty), mask=m)
        if OBS_GRAD == GOBS_PARTIAL:
            store_as(GOBS, pid * D + cols, tl.sum(tl.where(m, g_s * c, 0.0), axis=0),
                     cols < D)
    return value


@triton.jit(do_not_specialize=["obs_scalar", "beta", "c", "free_bits"])
def elbo_rows_kernel(
    X, R, OBS, MU, LV, Z,             # inputs (OBS: LIK_GAUSSIAN_TENSOR; Z: KL_MC)
    PM, PLV,                          # PRIOR: the prior's mean and log-variance
    CLAMPED,                          # FREE_BITS: (L,) int32 from kl_clamp_kernel
    ROW_VALUES, PARTIALS, COUNTER,    # (B,) rows, or with REDUCE (programs,) fp32 + ticket
    GX, GR, GOBS, GMU, GLV, GZ,       # gradients, per the NEED_* switches
    GPM, GPLV,                        # the prior's gradients per row (NEED_GPM, NEED_GPLV)
    B, D, L,
    stride_x, stride_r, stride_obs, stride_mu, stride_lv, stride_z,
    stride_pm, stride_plv,            # 0 for one prior row shared by every row
    obs_scalar, beta, c, free_bits,
    LIK: tl.constexpr, KL_MC: tl.constexpr, FREE_BITS: tl.constexpr, REDUCE: tl.constexpr,
    NEED_GX: tl.constexpr, NEED_GR: tl.constexpr, OBS_GRAD: tl.constexpr,
    NEED_GMU: tl.constexpr, NEED_GLV: tl.constexpr, NEED_GZ: tl.constexpr,
    PRIOR: tl.constexpr, NEED_GPM: tl.constexpr, NEED_GPLV: tl.constexpr,
    INT64: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    BLOCK_SUM: tl.constexpr, STAGES: tl.constexpr,
):
    # The tail's step with the GPU tiles (BLOCK_D <= 64): 512-element tiles, at least 16
    # columns (BLOCK_B 32: 16 columns; 16: 32, which keeps ptxas from unrolling a one-trip
    # loop of two elements a thread); one block with the interpreter's wide ones.
    TAIL_D: tl.constexpr = (min(max(512 // BLOCK_B, 16), BLOCK_D) if BLOCK_D <= 64
                            else BLOCK_D)
    # Scalars from inductor arrive as fp64: cast once.
    obs_scalar = tl.cast(obs_scalar, tl.float32)
    beta = tl.cast(beta, tl.float32)
    c = tl.cast(c, tl.float32)
    free_bits = tl.cast(free_bits, tl.float32)
    pid, rows, rmask = row_block(B, BLOCK_B, INT64)
    rows2 = rows[:, None]
    rmask2 = rmask[:, None]

    kl_rows = _latents(MU, LV, Z, PM, PLV, CLAMPED, GMU, GLV, GZ, GPM, GPLV, rows2, rmask2, L,
                       stride_mu, stride_lv, stride_z, stride_pm, stride_plv, -beta * c,
                       free_bits, KL_MC, FREE_BITS, PRIOR, NEED_GMU, NEED_GLV, NEED_GZ,
                       NEED_GPM, NEED_GPLV, BLOCK_B, BLOCK_L)

    # Full column blocks: pointer tiles at column 0, moved BLOCK_D a step; rows clamped
    # into the batch, so the loads need no mask (a padded row reads row B - 1; its values
    # are dropped with the row, its stores masked).
    rows_in = tl.minimum(rows2, B - 1)
    x_at, r_at, obs_at, out = _tile_at(X, R, OBS, rows_in, rows2, stride_x, stride_r,
                                       stride_obs, D, BLOCK_D)
    acc = tl.zeros([BLOCK_B, BLOCK_D], dtype=tl.float32)
    d_full = D - D % BLOCK_D
    # STAGES > 1: the next blocks' loads go to shared memory (cp.async) while this one is
    # computed, so a program keeps more bytes in flight than its registers hold; 1: none.
    for d0 in tl.range(0, d_full, BLOCK_D, num_stages=STAGES):
        acc += _data_block(x_at + d0, r_at + d0, obs_at + d0, GX + out + d0, GR + out + d0,
                           GOBS + out + d0, GOBS, pid, d0 + tl.arange(0, BLOCK_D), rmask2, D,
                           obs_scalar, c, LIK, NEED_GX, NEED_GR, OBS_GRAD, False)
    per_row = tl.sum(acc, axis=1)
    # The D % BLOCK_D columns left, masked, in narrower TAIL_D steps (D = 784: one step of
    # 16 columns, where a BLOCK_D step would compute 64). A multiple of TAIL_D the
    # compiler can see: the masks then hold per 16-byte vector (D a multiple of 16), and
    # the loads and stores stay vectorized.
    x_at, r_at, obs_at, out = _tile_at(X, R, OBS, rows_in, rows2, stride_x, stride_r,
                                       stride_obs, D, TAIL_D)
    acc_tail = tl.zeros([BLOCK_B, TAIL_D], dtype=tl.float32)
    d_start = tl.multiple_of(d_full, BLOCK_D)
    for d_tail in range(0, D - d_full, TAIL_D):
        d0 = d_start + d_tail
        cols = d0 + tl.arange(0, TAIL_D)
        m = rmask2 & (cols[None, :] < D)
        value = _data_block(x_at + d0, r_at + d0, obs_at + d0, GX + out + d0, GR + out + d0,
                            GOBS + out + d0, GOBS, pid, cols, m, D, obs_scalar, c, LIK,
                            NEED_GX, NEED_GR, OBS_GRAD, True)
        acc_tail += tl.where(m, value, 0.0)
    per_row += tl.sum(acc_tail, axis=1)
    # no KL term at beta = 0, also where it overflowed (not 0 * inf); its gradients the
    # host writes 0 over (triton_backend.elbo)
    per_row -= tl.where(beta != 0, beta * kl_rows, 0.0)

    if REDUCE:
        finish_by_ticket(PARTIALS, COUNTER, ROW_VALUES, pid,
                         tl.sum(tl.where(rmask, per_row, 0.0), axis=0), c, BLOCK_SUM)
    else:
        store_as(ROW_VALUES, rows, per_row * c, rmask)


@triton.jit(do_not_specialize=["free_bits"])
def kl_clamp_kernel(
    MU, LV, Z, PM, PLV,               # inputs (Z: KL_MC; PM, PLV: PRIOR)
    PARTIALS, COUNTER, CLAMPED,       # (programs, L) fp32 scratch + ticket; (L,) int32 out
    B, L,
    stride_mu, stride_lv, stride_z, stride_pm, stride_plv,
    free_bits,
    KL_MC: tl.constexpr, PRIOR: tl.constexpr, INT64: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """Free bits' first pass: which latents' batch-mean KL lies below ``free_bits``.

    Grid ``cdiv(B, BLOCK_B)``: each program writes its rows' per-latent KL sums; the last
    (by ticket) adds them, BLOCK_B programs' at a time in a fixed order, and marks
    ``CLAMPED[l] = mean_l < free_bits``."""
    free_bits = tl.cast(free_bits, tl.float32)
    pid, rows, rmask = row_block(B, BLOCK_B, INT64)
    rows2 = rows[:, None]
    for l0 in range(0, L, BLOCK_L):
        lat = l0 + tl.arange(0, BLOCK_L)
        m = rmask[:, None] & (lat < L)[None, :]
        mu = load_f32(MU, rows2 * stride_mu + lat[None, :], m)
        lv = load_f32(LV, rows2 * stride_lv + lat[None, :], m)
        if KL_MC:
            z = load_f32(Z, rows2 * stride_z + lat[None, :], m)
        else:
            z = mu
        p_mu, p_lv = load_prior(PM, PLV, rows2 * stride_pm + lat[None, :],
                                rows2 * stride_plv + lat[None, :], m, PRIOR)
        kl, d_mu, d_lv, d_z, d_pm, d_plv = latent_kl_tile(mu, lv, z, p_mu, p_lv, KL_MC, PRIOR)
        tl.store(PARTIALS + pid * L + lat, tl.sum(tl.where(m, kl, 0.0), axis=0), mask=lat < L)
    if last_ticket(COUNTER, tl.num_programs(0)):
        tl.debug_barrier()
        for l0 in range(0, L, BLOCK_L):
            lat = l0 + tl.arange(0, BLOCK_L)
            acc = tl.zeros([BLOCK_B, BLOCK_L], dtype=tl.float32)
            for p0 in range(0, tl.num_programs(0), BLOCK_B):
                parts = p0 + tl.arange(0, BLOCK_B)
                pm = (parts < tl.num_programs(0))[:, None] & (lat < L)[None, :]
                acc += tl.load(PARTIALS + parts[:, None] * L + lat[None, :], mask=pm, other=0.0)
            mean = tl.sum(acc, axis=0) / B
            tl.store(CLAMPED + lat, (mean < free_bits).to(tl.int32), mask=lat < L)
        tl.atomic_xchg(COUNTER, 0)
