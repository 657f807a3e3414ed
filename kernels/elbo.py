"""Fused ELBO: one row pass (value and every gradient) plus one small deterministic finish.

``elbo_rows_kernel`` — grid ``cdiv(B, BLOCK_B)``; each program owns ``BLOCK_B`` rows and
walks their ``D`` data columns in ``BLOCK_D`` blocks (any D: masked tail), then their
``L`` latents in ``BLOCK_L`` blocks. Every input element is read once; the per-row
value and, per the ``flags`` bits, the gradients w.r.t. x, recon, obs_logvar, mu,
logvar and z are written in the same pass, already multiplied by the backward scale
(``c`` for data terms, ``-beta*c`` for latent terms). Row offsets are int64.

``elbo_finish_kernel`` — grid ``1 + cdiv(D, BLOCK_D)`` (only when needed): program 0
applies free bits (per-latent batch mean of the saved (B, L) KL, clamp, row values
fixed up, clamped latents' gradients zeroed; one program, so O(B*L / 2048) dependent
steps: free bits is cheap only for modest B*L) and sums the rows in a fixed order
(without free bits in blocks of BLOCK_SUM rows);
programs 1.. sum the per-program partial obs_logvar gradients column by column.
No atomics: the same inputs give the same bits.

The standalone ``gaussian_log_prob`` (L = 0) and ``kl_standard_normal`` (D = 0,
beta = -1) are this same row kernel with one half of the row empty.
"""
import triton
import triton.language as tl

from ._math import kl_tile, likelihood_tile

# flags bits (a runtime int, so no combination of needed gradients recompiles)
NEED_GX = 1
NEED_GR = 2
NEED_GOBS_ROWS = 4       # d/dobs per element, (B, D)
NEED_GOBS_PARTIAL = 8    # d/dobs summed over each program's rows, (num_programs, D)
NEED_GMU = 16
NEED_GLV = 32
NEED_GZ = 64
KL_MC = 128
STORE_KL = 256           # save the per-latent KL (B, L) for free bits
# finish kernel flags
FIN_FREE_BITS = 1
FIN_REDUCE = 2           # sum the rows into one value (else write them)


@triton.jit(do_not_specialize=["obs_scalar", "beta", "c", "row_scale", "flags"])
def elbo_rows_kernel(
    X, R, OBS, MU, LV, Z,
    ROWV, KLBL, GX, GR, GOBS, GMU, GLV, GZ,
    B, D, L,
    stride_x, stride_r, stride_obs, stride_mu, stride_lv, stride_z,
    obs_scalar, beta, c, row_scale, flags,
    LIK: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    # Scalars from inductor arrive as fp64: cast once.
    obs_scalar = tl.cast(obs_scalar, tl.float32)
    beta = tl.cast(beta, tl.float32)
    c = tl.cast(c, tl.float32)
    row_scale = tl.cast(row_scale, tl.float32)
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    rows2 = rows[:, None]

    # ---- log p(x|z) over the D columns -------------------------------------------
    acc = tl.zeros([BLOCK_B, BLOCK_D], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        cols2 = cols[None, :]
        m = rmask[:, None] & (cols2 < D)
        x = tl.load(X + rows2 * stride_x + cols2, mask=m, other=0.0).to(tl.float32)
        r = tl.load(R + rows2 * stride_r + cols2, mask=m, other=0.0).to(tl.float32)
        if LIK == 3:
            s = tl.load(OBS + rows2 * stride_obs + cols2, mask=m, other=0.0).to(tl.float32)
        else:
            s = obs_scalar
        value, g_r, g_x, g_s = likelihood_tile(x, r, s, LIK)
        acc += tl.where(m, value, 0.0)
        out_off = rows2 * D + cols2
        if (flags & 1) != 0:
            tl.store(GX + out_off, (g_x * c).to(GX.dtype.element_ty), mask=m)
        if (flags & 2) != 0:
            tl.store(GR + out_off, (g_r * c).to(GR.dtype.element_ty), mask=m)
        if (flags & 4) != 0:
            tl.store(GOBS + out_off, (g_s * c).to(GOBS.dtype.element_ty), mask=m)
        if (flags & 8) != 0:
            part = tl.sum(tl.where(m, g_s * c, 0.0), axis=0)
            tl.store(GOBS + pid * D + cols, part, mask=cols < D)
    log_px = tl.sum(acc, axis=1)

    # ---- KL over the L latents ---------------------------------------------------
    is_mc = (flags & 128) != 0
    g_scale = -beta * c
    kacc = tl.zeros([BLOCK_B, BLOCK_L], dtype=tl.float32)
    for l0 in range(0, L, BLOCK_L):
        lat = l0 + tl.arange(0, BLOCK_L)
        lat2 = lat[None, :]
        m = rmask[:, None] & (lat2 < L)
        mu = tl.load(MU + rows2 * stride_mu + lat2, mask=m, other=0.0).to(tl.float32)
        lv = tl.load(LV + rows2 * stride_lv + lat2, mask=m, other=0.0).to(tl.float32)
        if is_mc:
            z = tl.load(Z + rows2 * stride_z + lat2, mask=m, other=0.0).to(tl.float32)
        else:
            z = mu * 0.0
        kl, d_mu, d_lv, d_z = kl_tile(mu, lv, z, is_mc)
        kl = tl.where(m, kl, 0.0)
        kacc += kl
        out_off = rows2 * L + lat2
        if (flags & 256) != 0:
            tl.store(KLBL + out_off, kl, mask=m)
        if (flags & 16) != 0:
            tl.store(GMU + out_off, (d_mu * g_scale).to(GMU.dtype.element_ty), mask=m)
        if (flags & 32) != 0:
            tl.store(GLV + out_off, (d_lv * g_scale).to(GLV.dtype.element_ty), mask=m)
        if (flags & 64) != 0:
            tl.store(GZ + out_off, (d_z * g_scale).to(GZ.dtype.element_ty), mask=m)
    per_row = log_px - beta * tl.sum(kacc, axis=1)
    tl.store(ROWV + rows, (per_row * row_scale).to(ROWV.dtype.element_ty), mask=rmask)


@triton.jit(do_not_specialize=["beta", "free_bits", "c", "flags"])
def elbo_finish_kernel(
    ROWV, KLBL, BELOW, GMU, GLV, GZ, OUT, GOBS_PART, GOBS,
    B, L, D, NPART,
    beta, free_bits, c, flags, grad_flags,
    BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SUM: tl.constexpr,
):
    beta = tl.cast(beta, tl.float32)
    free_bits = tl.cast(free_bits, tl.float32)
    c = tl.cast(c, tl.float32)
    pid = tl.program_id(0)
    if pid == 0:
        total = tl.zeros([BLOCK_B], dtype=tl.float32)
        if (flags & 1) != 0:
            # Phase 1: which latents' batch-mean KL lies below free_bits.
            for l0 in range(0, L, BLOCK_L):
                lat = l0 + tl.arange(0, BLOCK_L)
                lmask = lat < L
                kacc = tl.zeros([BLOCK_B, BLOCK_L], dtype=tl.float32)
                for b0 in range(0, B, BLOCK_B):
                    rows = b0 + tl.arange(0, BLOCK_B).to(tl.int64)
                    m = (rows < B)[:, None] & lmask[None, :]
                    kacc += tl.load(KLBL + rows[:, None] * L + lat[None, :], mask=m, other=0.0)
                mean = tl.sum(kacc, axis=0) / B
                tl.store(BELOW + lat, (mean < free_bits).to(tl.int32), mask=lmask)
            tl.debug_barrier()  # BELOW is read back by other threads of this program
            # Phase 2: clamped latents add free_bits - KL to the row's KL and pass no gradient.
            for b0 in range(0, B, BLOCK_B):
                rows = b0 + tl.arange(0, BLOCK_B).to(tl.int64)
                rmask = rows < B
                adj = tl.zeros([BLOCK_B, BLOCK_L], dtype=tl.float32)
                for l0 in range(0, L, BLOCK_L):
                    lat = l0 + tl.arange(0, BLOCK_L)
                    lmask = lat < L
                    below = tl.load(BELOW + lat, mask=lmask, other=0) != 0
                    m = rmask[:, None] & (lmask & below)[None, :]
                    off = rows[:, None] * L + lat[None, :]
                    kl = tl.load(KLBL + off, mask=m, other=0.0)
                    adj += tl.where(m, free_bits - kl, 0.0)
                    zero = tl.zeros([BLOCK_B, BLOCK_L], dtype=tl.float32)
                    if (grad_flags & 16) != 0:
                        tl.store(GMU + off, zero.to(GMU.dtype.element_ty), mask=m)
                    if (grad_flags & 32) != 0:
                        tl.store(GLV + off, zero.to(GLV.dtype.element_ty), mask=m)
                    if (grad_flags & 64) != 0:
                        tl.store(GZ + off, zero.to(GZ.dtype.element_ty), mask=m)
                v = tl.load(ROWV + rows, mask=rmask, other=0.0) - beta * tl.sum(adj, axis=1)
                if (flags & 2) != 0:
                    total += tl.where(rmask, v, 0.0)
                else:
                    tl.store(OUT + rows, (v * c).to(OUT.dtype.element_ty), mask=rmask)
            if (flags & 2) != 0:
                tl.store(OUT, (tl.sum(total, axis=0) * c).to(OUT.dtype.element_ty))
        else:
            # The plain batch sum: wide 1-D blocks (many loads in flight per step), so a
            # large B takes few dependent steps in this one program.
            wide = tl.zeros([BLOCK_SUM], dtype=tl.float32)
            for b0 in range(0, B, BLOCK_SUM):
                rows = b0 + tl.arange(0, BLOCK_SUM).to(tl.int64)
                wide += tl.load(ROWV + rows, mask=rows < B, other=0.0)
            tl.store(OUT, (tl.sum(wide, axis=0) * c).to(OUT.dtype.element_ty))
    else:
        # Column sums of the per-program partial d/dobs_logvar, in program order.
        cols = (pid - 1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
        cmask = cols < D
        gacc = tl.zeros([BLOCK_B, BLOCK_D], dtype=tl.float32)
        for p0 in range(0, NPART, BLOCK_B):
            parts = p0 + tl.arange(0, BLOCK_B).to(tl.int64)
            m = (parts < NPART)[:, None] & cmask[None, :]
            gacc += tl.load(GOBS_PART + parts[:, None] * D + cols[None, :], mask=m, other=0.0)
        tl.store(GOBS + cols, tl.sum(gacc, axis=0).to(GOBS.dtype.element_ty), mask=cmask)
