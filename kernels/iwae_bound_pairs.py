"""The importance-weighted bound in one pass over (row, sample) pairs: the one-pass
kernel's contract (``iwae_bound.py``) without its K padding.

``iwae_bound_pairs_kernel`` — grid ``cdiv(B, BLOCK_P // K)``; each program owns
``BLOCK_P // K`` whole rows, laid out as the rows of a (BLOCK_P, BLOCK_D) tile: pair
``p`` is sample ``p % K`` of row ``p // K`` (K = 5 fills 15 of 16 tile rows where the
(rows, BLOCK_K = 8, D) tile of ``iwae_bound_onepass_kernel`` fills 5 of 8). Each pair's
recon_k row and z_k row are read once; the log-weights are (BLOCK_P,) row sums, their
logsumexp and softmax over each row's pairs come from a (BLOCK_P, BLOCK_P) same-row
mask (a few hundred elements), and every gradient is written from the same registers,
already weighted by ``softmax * c``: d/drecon_k and d/dz_k per pair, d/dmu, d/dlogvar
and a learned prior's per row (summed over the row's pairs through a (rows, BLOCK_P,
BLOCK_L) selection). Bytes as the one-pass kernel's: the floor, no scratch.

The host runs it where nothing is summed over k per data column (no d/dx, no
d/dobs_logvar: those keep the 3-D one-pass kernel) and K x D fits; the Gaussian
likelihoods compile too, but the host sends only the Bernoulli here
(``configs.iwae_pairs_config``).
"""
import triton
import triton.language as tl

from ._math import (LIK_BERNOULLI, LIK_GAUSSIAN_TENSOR, LOG2_E, exp_, latent_kl_tile,
                    likelihood_tile, load_f32, load_prior, log_, log_px_value, rcp_, store_as)


@triton.jit
def _pair_grad(x, r, s, LIK: tl.constexpr):
    """d log p(x|z) / d recon per element (the Bernoulli's ``x - 1 / (1 + 2^(-l log2 e))``:
    one ex2 and one approximate reciprocal, 0 where the power overflows)."""
    if LIK == LIK_BERNOULLI:
        g_r = x - rcp_(1.0 + tl.exp2(r * -LOG2_E))
    else:
        value, g_r, g_x, g_s = likelihood_tile(x, r, s, LIK)
    return g_r


@triton.jit
def _to_rows(t, sel):
    """(BLOCK_R, BLOCK_L): each row's sum of the pair tile ``t`` (BLOCK_P, BLOCK_L) over
    its pairs, ``sel`` (BLOCK_R, BLOCK_P) saying which pair belongs to which row."""
    return tl.sum(tl.where(sel[:, :, None], t[None, :, :], 0.0), axis=1)


@triton.jit(do_not_specialize=["obs_scalar", "c", "row_scale", "log_k", "k_magic"])
def iwae_bound_pairs_kernel(
    X, R, OBS, MU, LV, Z,                     # inputs (OBS: LIK_GAUSSIAN_TENSOR)
    PM, PLV,                                  # PRIOR: the prior's mean and log-variance
    ROW_VALUES, WEIGHTS,                      # (B,) fp32 rows; (K, B) fp32 (STORE_WEIGHTS)
    GR, GMU, GLV, GZ, GPM, GPLV,              # gradients, per the NEED_* switches
    K, B, D, L,
    stride_x, stride_rk, stride_rb, stride_obs, stride_mu, stride_lv, stride_zk, stride_zb,
    stride_pm, stride_plv,                    # 0 for one prior row shared by every row
    obs_scalar, c, row_scale, log_k,
    k_magic,                                  # ceil(2^16 / K): p // K as a multiply
    LIK: tl.constexpr, NEED_GR: tl.constexpr, NEED_GMU: tl.constexpr,
    NEED_GLV: tl.constexpr, NEED_GZ: tl.constexpr, PRIOR: tl.constexpr,
    NEED_GPM: tl.constexpr, NEED_GPLV: tl.constexpr, STORE_WEIGHTS: tl.constexpr,
    INT64: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """Needs K <= BLOCK_P, D <= BLOCK_D, L <= BLOCK_L, BLOCK_P // K <= BLOCK_R (the host
    checks)."""
    obs_scalar = tl.cast(obs_scalar, tl.float32)
    c = tl.cast(c, tl.float32)
    row_scale = tl.cast(row_scale, tl.float32)
    log_k = tl.cast(log_k, tl.float32)
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    per = BLOCK_P // K                                    # whole rows a program
    p = tl.arange(0, BLOCK_P)
    local = (p * k_magic) >> 16                           # = p // K for p < 2^16 / K^2
    ks = p - local * K
    rows = pid * per + local
    pmask = (local < per) & (rows < B)
    rows2 = rows[:, None]
    k2 = (pid * 0 + ks)[:, None]                          # int64 with INT64
    pm2 = pmask[:, None]
    cols = tl.arange(0, BLOCK_D)[None, :]
    lats = tl.arange(0, BLOCK_L)[None, :]
    m = pm2 & (cols < D)
    ml = pm2 & (lats < L)

    # ---- the only read -----------------------------------------------------------------
    x = load_f32(X, rows2 * stride_x + cols, m)
    if LIK == LIK_GAUSSIAN_TENSOR:
        s = load_f32(OBS, rows2 * stride_obs + cols, m)
    else:
        s = obs_scalar
    r = load_f32(R, k2 * stride_rk + rows2 * stride_rb + cols, m)
    mu = load_f32(MU, rows2 * stride_mu + lats, ml)
    lv = load_f32(LV, rows2 * stride_lv + lats, ml)
    z = load_f32(Z, k2 * stride_zk + rows2 * stride_zb + lats, ml)
    pm, plv = load_prior(PM, PLV, rows2 * stride_pm + lats, rows2 * stride_plv + lats, ml,
                         PRIOR)

    kl, d_mu, d_lv, d_z, d_pm, d_plv = latent_kl_tile(mu, lv, z, pm, plv, True, PRIOR)
    log_w = (tl.sum(tl.where(m, log_px_value(x, r, s, LIK), 0.0), axis=1)
             - tl.sum(tl.where(ml, kl, 0.0), axis=1))
    log_w = tl.where(pmask, log_w, float("-inf"))
    # logsumexp over each row's pairs: the same-row mask gives every pair its row's max
    # and sum (padded pairs: -inf, weight 0; their own "row" gets max 0)
    same = local[:, None] == local[None, :]
    row_max = tl.max(tl.where(same, log_w[None, :], float("-inf")), axis=1)
    row_max = tl.where(pmask, row_max, 0.0)
    e = exp_(log_w - row_max)
    row_sum = tl.sum(tl.where(same, e[None, :], 0.0), axis=1)
    row_sum = tl.where(pmask, row_sum, 1.0)
    lse = row_max + log_(row_sum)
    store_as(ROW_VALUES, rows, (lse - log_k) * row_scale, pmask & (ks == 0))

    # ---- gradients weighted by softmax * c, from the registers above --------------------
    if NEED_GR or NEED_GMU or NEED_GLV or NEED_GZ or NEED_GPM or NEED_GPLV:
        soft = e * rcp_(row_sum)                          # 0 on padded pairs
        w2 = (soft * c)[:, None]
        if NEED_GR:
            size_bd = (pid * 0 + B) * D
            store_as(GR, k2 * size_bd + rows2 * D + cols, _pair_grad(x, r, s, LIK) * w2, m)
        if NEED_GZ:
            size_bl = (pid * 0 + B) * L
            store_as(GZ, k2 * size_bl + rows2 * L + lats, -d_z * w2, ml)
        if NEED_GMU or NEED_GLV or NEED_GPM or NEED_GPLV:
            rr = tl.arange(0, BLOCK_R)
            sel = rr[:, None] == local[None, :]           # (BLOCK_R, BLOCK_P)
            out_rows = pid * per + rr
            out = out_rows[:, None] * L + lats
            mo = ((rr < per) & (out_rows < B))[:, None] & (lats < L)
            if NEED_GMU:
                store_as(GMU, out, -_to_rows(d_mu * w2, sel), mo)
            if NEED_GLV:
                store_as(GLV, out, -_to_rows(d_lv * w2, sel), mo)
            if NEED_GPM:
                store_as(GPM, out, -_to_rows(d_pm * w2, sel), mo)
            if NEED_GPLV:
                store_as(GPLV, out, -_to_rows(d_plv * w2, sel), mo)
        if STORE_WEIGHTS:  # softmax_k(log w_k), for DReG's hook on z_k
            tl.store(WEIGHTS + (pid * 0 + ks) * B + rows, soft, mask=pmask)
