"""Fused importance-weighted bound (Burda et al. 2016) over K samples: two kernels, one
contract (same outputs, ``NEED_*`` constexpr switches, gradient scale ``c``, row values /
per-program obs_logvar partials for ``reduce.finish_kernel``; no atomics). The host
(``fastvae.backends.triton_backend.iwae_bound``) picks one per call.

Both weigh each sample's ``log p(z_k)`` under N(0, I), or with ``PRIOR`` under a learned
prior ``N(prior_mu, exp(prior_logvar))`` (``_math.kl_prior_tile``); ``NEED_GPM`` /
``NEED_GPLV`` write its gradients per row, weighted and summed over k like mu's.

``iwae_bound_onepass_kernel`` — where a row's K samples fit on chip (K <= 8, D <= 1024,
L <= 128; the continuous Bernoulli K <= 4 above D = 256: ``IWAE_ONEPASS_TILES``).
Grid ``cdiv(B, BLOCK_B)``; each program loads a (BLOCK_B, BLOCK_K, BLOCK_D) tile of
recon_k and a (BLOCK_B, BLOCK_K, BLOCK_L) tile of z_k once (K padded to the power of
two BLOCK_K, masked), forms every log-weight, the logsumexp and the softmax weights in
registers, and writes every gradient already weighted from the same registers. Bytes
per row, ``s`` per element: training ``(D + 2KD + 2KL + 4L) s`` (read x, recon_k,
z_k, mu, logvar; write d recon_k, d z_k, d mu, d logvar; d x and d obs_logvar add
``D s`` each where needed), forward only ``(D + KD + KL + 2L) s``: the floor, no scratch.

``iwae_bound_rows_kernel`` — every other shape (K = 50, D = 3072, ...): grid
``cdiv(B, BLOCK_B)``; each program owns ``BLOCK_B`` rows (the ELBO row kernel's tile:
``BLOCK_D`` columns a step, full blocks unmasked, one masked tail; int32 offsets unless
the host's ``INT64`` says they can pass 2^31). Pass 1 walks the K samples: each
sample's log-weight ``log w_k = log p(x|z_k) - (log q(z_k|x) - log p(z_k))`` from one
read of its ``recon_k`` and ``z_k`` rows (values only: the Bernoulli's is one ex2 and
one lg2 per element), kept in a (K, programs * BLOCK_B) fp32 scratch, with a running
max; the sum of ``exp(log w_k - max)`` is then read back from the scratch in blocks of
``K_BLOCK`` samples. The bound ``logsumexp_k - log K`` is written per row. Only when a
gradient is needed, each log-weight becomes ``softmax_k * c`` in the scratch and pass 2
walks the columns once, reading x once per block and each sample's recon_k block, and
writes every gradient already weighted: d/drecon_k and d/dz_k per sample, d/dx,
d/dobs_logvar, d/dmu, d/dlogvar summed over k in registers. Every sum over k runs in
blocks of ``K_BLOCK`` samples whose sums are then added (``K_BLOCK + K / K_BLOCK``
float32 additions in a row, not K: a running float32 sum's rounding grows with its
length). The softmax weights need every sample's log-weight, so no gradient can be written
before pass 1 ends: forward-only use (NLL estimation with large K) is one pass
(``(D + KD + KL + 2L) s`` plus 8K bytes of log-weights, written and read back), training
reads recon_k and z_k twice:
``(2D + 3KD + 3KL + 6L) s`` plus 16K bytes of scratch (a block's reads of the weights
hit the cache), ``D + KD + KL + 2L`` more than the one-pass kernel and its floor (a
program reads its rows back right after pass 1, so part of that may come from L2).
Mean/sum reductions and per-dimension obs_logvar sums go to ``reduce.finish_kernel`` (no
atomics). A per-sample obs_logvar (``LIK_GAUSSIAN_SAMPLES``, (K, B, D)) runs here only:
read with its sample's recon_k in both passes, its gradient written per sample
(``GOBS_SAMPLES``) as recon_k's.

Estimators (``fastvae.estimators``) add one switch: DReG's gradient hook on z_k needs
the softmax weights, which ``STORE_WEIGHTS`` writes to ``WEIGHTS`` (K, B) fp32 from the
gradient pass (4K bytes per row; the rows kernel where it forms each weight). STL and
DReG stop log q's parameters: the host drops the direct
mu/logvar gradients (and sets ``STORE_WEIGHTS`` for both: one compiled specialization).
"""
import triton
import triton.language as tl

from ._math import (GOBS_NONE, GOBS_PARTIAL, GOBS_ROWS, GOBS_SAMPLES, LIK_BERNOULLI,
                    LIK_GAUSSIAN_SAMPLES, LIK_GAUSSIAN_SCALAR, LIK_GAUSSIAN_TENSOR, LOG2_E,
                    LOG_2, exp_, latent_kl_tile, likelihood_tile, load_data, load_f32,
                    load_prior, log2_, log_, log_px_value, lse_shift, program_rows, rcp_,
                    row_block, store_as, to_f32, weigh)


@triton.jit
def _dlog_px(x, r, s, LIK: tl.constexpr):
    """(d/drecon, d/dx, d/dobs_logvar) of log p(x|z) per element (pass 2). Bernoulli:
    ``x - sigmoid(l)`` with ``sigmoid(l) = 1 / (1 + 2^(-l log2 e))``, one ex2 and one
    approximate reciprocal (relative error 2^-21: 1e-7 absolute on a value in [0, 1]; at
    l < -88 the power overflows to inf and the reciprocal is exactly 0, the sigmoid's
    limit); else ``likelihood_tile``'s."""
    if LIK == LIK_BERNOULLI:
        g_r = x - rcp_(1.0 + tl.exp2(r * -LOG2_E))
        g_x = r
        g_s = 0.0
    else:
        value, g_r, g_x, g_s = likelihood_tile(x, r, s, LIK)
    return g_r, g_x, g_s


@triton.jit
def _bernoulli_parts(x, l):
    """(x*l - max(l, 0), e) per element, e = 2^(-|l| log2 e) in (0, 1]: the Bernoulli term
    is the first minus ln(1 + e). With ``LOG_OF_PRODUCT`` pass 1 multiplies the factors
    ``1 + e`` over the full column blocks as ``prod + prod * e``, one fma a factor (the
    host sets it for at most 126 blocks: each factor is in (1, 2], the product at most
    2^126, no overflow) and takes one lg2 of the product. With n factors the fmas round
    the product by a relative error of at most n u (u = 2^-24; one rounding a factor, 1 + e
    is never rounded on its own) and ``ex2.approx``'s 2^-22 in e adds at most 2^-22 a
    factor, so ln of the product is off by at most ``n (2^-22 + u) + 2^-22`` (lg2.approx)
    absolute: 4e-6 at D = 784 (n = 12), 4e-5 at n = 126, against n per-element logs'
    2^-22 each and below fp32 rounding of a row sum of D terms. One MUFU per element
    instead of two."""
    return x * l - tl.maximum(l, 0.0), tl.exp2(tl.abs(l) * -LOG2_E)


@triton.jit
def _grad_block(X, R, OBS, W, GX, GR, GOBS, pid, rows, rows2, cols, m, zero, K, B, b_pad, D,
                stride_x, stride_rk, stride_rb, stride_obs, stride_obk, obs_scalar,
                LIK: tl.constexpr, NEED_GX: tl.constexpr, NEED_GR: tl.constexpr,
                OBS_GRAD: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
                K_BLOCK: tl.constexpr):
    """Pass 2 over one (BLOCK_B, BLOCK_D) block of columns: x read once, then each sample's
    recon_k block and weight ``W[k, rows]`` (softmax * c); d/drecon_k written per sample,
    d/dx and d/dobs_logvar summed over k in registers (a per-sample obs_logvar's read and
    its gradient written per sample, as recon_k's)."""
    SUM_GS: tl.constexpr = (OBS_GRAD == GOBS_ROWS) | (OBS_GRAD == GOBS_PARTIAL)
    cols2 = cols[None, :]
    x = load_f32(X, rows2 * stride_x + cols2, m)
    if LIK == LIK_GAUSSIAN_TENSOR:
        s = load_f32(OBS, rows2 * stride_obs + cols2, m)
    else:
        s = obs_scalar
    GUARD: tl.constexpr = LIK >= LIK_GAUSSIAN_SCALAR   # the Bernoulli's are bounded
    gx_acc = tl.zeros([BLOCK_B, BLOCK_D], dtype=tl.float32)
    gs_acc = tl.zeros([BLOCK_B, BLOCK_D], dtype=tl.float32)
    r_off = rows2 * stride_rb + cols2
    g_off = rows2 * D + cols2
    size_bd = (zero + B) * D
    # summed over k in blocks of K_BLOCK samples, the blocks' sums then added: a float32
    # sum's rounding grows with its length (K_BLOCK + K / K_BLOCK terms, not K)
    gx_blk = tl.zeros([BLOCK_B, BLOCK_D], dtype=tl.float32)
    gs_blk = tl.zeros([BLOCK_B, BLOCK_D], dtype=tl.float32)
    o_off = rows2 * stride_obs + cols2
    for k in range(0, K):
        w = tl.load(W + (zero + k) * b_pad + rows)[:, None]   # 0 on padded rows
        r = load_f32(R, r_off, m)
        if LIK == LIK_GAUSSIAN_SAMPLES:
            g_r, g_x, g_s = _dlog_px(x, r, load_f32(OBS, o_off, m), LIK)
            o_off += stride_obk
        else:
            g_r, g_x, g_s = _dlog_px(x, r, s, LIK)
        if NEED_GR:
            store_as(GR, g_off, weigh(g_r, w, GUARD), m)
        if OBS_GRAD == GOBS_SAMPLES:
            store_as(GOBS, g_off, weigh(g_s, w, GUARD), m)
        if NEED_GX:
            gx_blk += weigh(g_x, w, GUARD)
        if SUM_GS:
            gs_blk += weigh(g_s, w, GUARD)
        if (NEED_GX or SUM_GS) and (k + 1) % K_BLOCK == 0:
            gx_acc += gx_blk
            gs_acc += gs_blk
            gx_blk = tl.zeros([BLOCK_B, BLOCK_D], dtype=tl.float32)
            gs_blk = tl.zeros([BLOCK_B, BLOCK_D], dtype=tl.float32)
        r_off += stride_rk
        g_off += size_bd
    gx_acc += gx_blk
    gs_acc += gs_blk
    out = rows2 * D + cols2
    if NEED_GX:
        store_as(GX, out, gx_acc, m)
    if LIK >= LIK_GAUSSIAN_SCALAR:
        if OBS_GRAD == GOBS_ROWS:
            store_as(GOBS, out, gs_acc, m)
        if OBS_GRAD == GOBS_PARTIAL:
            store_as(GOBS, pid * D + cols, tl.sum(tl.where(m, gs_acc, 0.0), axis=0), cols < D)


@triton.jit(do_not_specialize=["obs_scalar", "c", "row_scale", "log_k"])
def iwae_bound_rows_kernel(
    X, R, OBS, MU, LV, Z,                     # inputs (OBS: LIK_GAUSSIAN_TENSOR, _SAMPLES)
    PM, PLV,                                  # PRIOR: the prior's mean and log-variance
    LOG_W, ROW_VALUES, WEIGHTS,               # (K, programs * BLOCK_B), (B,), (K, B) fp32
    GX, GR, GOBS, GMU, GLV, GZ,               # gradients, per the NEED_* switches
    GPM, GPLV,                                # the prior's, per row (NEED_GPM, NEED_GPLV)
    K, B, D, L,
    stride_x, stride_rk, stride_rb, stride_obs, stride_mu, stride_lv, stride_zk, stride_zb,
    stride_pm, stride_plv,                    # 0 for one prior row shared by every row
    stride_obk,                               # OBS's sample stride (LIK_GAUSSIAN_SAMPLES)
    obs_scalar, c, row_scale, log_k,
    LIK: tl.constexpr, NEED_GX: tl.constexpr, NEED_GR: tl.constexpr, OBS_GRAD: tl.constexpr,
    NEED_GMU: tl.constexpr, NEED_GLV: tl.constexpr, NEED_GZ: tl.constexpr,
    PRIOR: tl.constexpr, NEED_GPM: tl.constexpr, NEED_GPLV: tl.constexpr,
    STORE_WEIGHTS: tl.constexpr, INT64: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    LOG_OF_PRODUCT: tl.constexpr,             # Bernoulli: one lg2 of the (1 + e) factors
                                              # of all full column blocks (<= 126 of them)
    K_BLOCK: tl.constexpr,                    # samples a block of each sum over k
):
    obs_scalar = tl.cast(obs_scalar, tl.float32)
    c = tl.cast(c, tl.float32)
    row_scale = tl.cast(row_scale, tl.float32)
    log_k = tl.cast(log_k, tl.float32)
    pid, rows, rmask = row_block(B, BLOCK_B, INT64)
    rows2 = rows[:, None]
    rmask2 = rmask[:, None]
    rows_in2 = tl.minimum(rows, B - 1)[:, None]   # rows to read unmasked (padded: the last)
    zero = pid * 0                       # int64 with INT64, else int32
    b_pad = (zero + tl.num_programs(0)) * BLOCK_B   # LOG_W's row stride: padded rows too
    d_full = (D // BLOCK_D) * BLOCK_D    # full column blocks: no column mask (and the tail's
                                         # start visibly aligned: its loads stay vectorized)

    # ---- pass 1: log-weights and their max; then their logsumexp ----------------------
    run_max = tl.full([BLOCK_B], float("-inf"), dtype=tl.float32)
    r_base = zero
    z_base = zero
    o_base = zero
    for k in range(0, K):
        kacc = tl.zeros([BLOCK_B, BLOCK_L], dtype=tl.float32)
        for l0 in range(0, L, BLOCK_L):
            lat2 = (l0 + tl.arange(0, BLOCK_L))[None, :]
            m = rmask2 & (lat2 < L)
            mu = load_f32(MU, rows2 * stride_mu + lat2, m)
            lv = load_f32(LV, rows2 * stride_lv + lat2, m)
            z = load_f32(Z, z_base + rows2 * stride_zb + lat2, m)
            pm, plv = load_prior(PM, PLV, rows2 * stride_pm + lat2, rows2 * stride_plv + lat2,
                                 m, PRIOR)
            kl, d_mu, d_lv, d_z, d_pm, d_plv = latent_kl_tile(mu, lv, z, pm, plv, True, PRIOR)
            kacc += tl.where(m, kl, 0.0)
        # a padded row reads zeros: finite values, dropped with the row
        acc = tl.zeros([BLOCK_B, BLOCK_D], dtype=tl.float32)
        if LIK == LIK_BERNOULLI and LOG_OF_PRODUCT:
            # sum_d ln(1 + e_d) as ln of a running product per tile element, one lg2 per
            # element of the tile (_bernoulli_parts). Unmasked: a padded row reads the last
            # row (a masked load sets its masked lanes, an instruction per two elements);
            # nothing of that row reaches an output. The addresses advance a block a step
            # (not formed again from offsets; a 32-bit loop counter)
            prod = tl.full([BLOCK_B, BLOCK_D], 1.0, tl.float32)
            cols2 = tl.arange(0, BLOCK_D)[None, :]
            x_ptr = X + (rows_in2 * stride_x + cols2)
            r_ptr = R + (r_base + rows_in2 * stride_rb + cols2)
            for d0 in range(0, d_full, BLOCK_D):
                v, e = _bernoulli_parts(to_f32(tl.load(x_ptr)), to_f32(tl.load(r_ptr)))
                acc += v
                prod = prod * e + prod   # prod * (1 + e), one fma
                x_ptr += BLOCK_D
                r_ptr += BLOCK_D
            acc -= log2_(prod) * LOG_2
        else:
            for d0 in range(0, d_full, BLOCK_D):
                cols2 = (d0 + tl.arange(0, BLOCK_D))[None, :]
                x, r, s = load_data(X, R, OBS, rows2 * stride_x + cols2,
                                    r_base + rows2 * stride_rb + cols2,
                                    o_base + rows2 * stride_obs + cols2, rmask2, obs_scalar,
                                    LIK)
                acc += log_px_value(x, r, s, LIK)
        if d_full < D:
            cols2 = (d_full + tl.arange(0, BLOCK_D))[None, :]
            m = rmask2 & (cols2 < D)
            x, r, s = load_data(X, R, OBS, rows2 * stride_x + cols2,
                                r_base + rows2 * stride_rb + cols2,
                                o_base + rows2 * stride_obs + cols2, m, obs_scalar, LIK)
            acc += tl.where(m, log_px_value(x, r, s, LIK), 0.0)
        log_w = tl.sum(acc, axis=1) - tl.sum(kacc, axis=1)
        tl.store(LOG_W + (zero + k) * b_pad + rows, log_w)
        run_max = tl.maximum(run_max, log_w)
        r_base += stride_rk
        z_base += stride_zk
        if LIK == LIK_GAUSSIAN_SAMPLES:
            o_base += stride_obk
    # sum_k exp(log w_k - max) from the scratch, not online: a (K_BLOCK, BLOCK_B) tile a
    # step, each lane summing K / K_BLOCK terms, then a tree over the tile's K_BLOCK lanes
    # (an online sum, rescaled at each new max, is K terms one after another, and its
    # rounding is carried by every weight). Read back by other threads: the barrier.
    shift = lse_shift(run_max)   # every log w -inf, or one +inf: 0
    tl.debug_barrier()
    kb = tl.arange(0, K_BLOCK)
    sum_tile = tl.zeros([K_BLOCK, BLOCK_B], dtype=tl.float32)
    for k0 in range(0, K, K_BLOCK):
        ks2 = (zero + k0 + kb)[:, None]
        lw = tl.load(LOG_W + ks2 * b_pad + rows[None, :], mask=ks2 < K, other=float("-inf"))
        sum_tile += exp_(lw - shift[None, :])
    run_sum = tl.sum(sum_tile, axis=0)
    lse = shift + log_(run_sum)
    store_as(ROW_VALUES, rows, (lse - log_k) * row_scale, rmask)

    # ---- pass 2: gradients weighted by softmax_k(log w_k) * c -------------------------
    if (NEED_GX or NEED_GR or OBS_GRAD != GOBS_NONE or NEED_GMU or NEED_GLV
            or NEED_GZ or NEED_GPM or NEED_GPLV):
        # each log-weight becomes its weight times c in place (0 on padded rows), read
        # back by other threads below. exp(log w - max) / sum, not exp(log w - lse): at
        # |max| past ~2^24 lse = max + log(sum) rounds to max, and the weights summed to K.
        # a row whose every log w is -inf (sum 0) weighs 0, not 0 * inf = NaN (a NaN sum
        # stays NaN)
        inv_sum = tl.where(rmask & (run_sum != 0.0), rcp_(run_sum), 0.0)
        tl.debug_barrier()   # every thread's read of the log-weights above, before the stores
        for k in range(0, K):
            lw_off = (zero + k) * b_pad + rows
            w = exp_(tl.load(LOG_W + lw_off) - shift) * inv_sum
            if STORE_WEIGHTS:  # softmax_k(log w_k), for DReG's hook on z_k
                tl.store(WEIGHTS + (zero + k) * B + rows, w, mask=rmask)
            tl.store(LOG_W + lw_off, w * c)
        tl.debug_barrier()
        if NEED_GX or NEED_GR or OBS_GRAD != GOBS_NONE:
            # one loop, the column mask hoisted out of the samples' loop (_grad_block)
            for d0 in range(0, D, BLOCK_D):
                cols = d0 + tl.arange(0, BLOCK_D)
                _grad_block(X, R, OBS, LOG_W, GX, GR, GOBS, pid, rows, rows2, cols,
                            rmask2 & (cols[None, :] < D), zero, K, B, b_pad, D, stride_x,
                            stride_rk, stride_rb, stride_obs, stride_obk, obs_scalar, LIK,
                            NEED_GX, NEED_GR, OBS_GRAD, BLOCK_B, BLOCK_D, K_BLOCK)
        if NEED_GMU or NEED_GLV or NEED_GZ or NEED_GPM or NEED_GPLV:
            size_bl = (zero + B) * L
            for l0 in range(0, L, BLOCK_L):
                lat2 = (l0 + tl.arange(0, BLOCK_L))[None, :]
                m = rmask2 & (lat2 < L)
                mu = load_f32(MU, rows2 * stride_mu + lat2, m)
                lv = load_f32(LV, rows2 * stride_lv + lat2, m)
                pm, plv = load_prior(PM, PLV, rows2 * stride_pm + lat2,
                                     rows2 * stride_plv + lat2, m, PRIOR)
                gmu_acc = tl.zeros([BLOCK_B, BLOCK_L], dtype=tl.float32)
                glv_acc = tl.zeros([BLOCK_B, BLOCK_L], dtype=tl.float32)
                gpm_acc = tl.zeros([BLOCK_B, BLOCK_L], dtype=tl.float32)
                gplv_acc = tl.zeros([BLOCK_B, BLOCK_L], dtype=tl.float32)
                z_off = rows2 * stride_zb + lat2
                gz_off = rows2 * L + lat2
                gmu_blk = tl.zeros([BLOCK_B, BLOCK_L], dtype=tl.float32)
                glv_blk = tl.zeros([BLOCK_B, BLOCK_L], dtype=tl.float32)
                gpm_blk = tl.zeros([BLOCK_B, BLOCK_L], dtype=tl.float32)
                gplv_blk = tl.zeros([BLOCK_B, BLOCK_L], dtype=tl.float32)
                for k in range(0, K):
                    w = tl.load(LOG_W + (zero + k) * b_pad + rows)[:, None]
                    z = load_f32(Z, z_off, m)
                    kl, d_mu, d_lv, d_z, d_pm, d_plv = latent_kl_tile(mu, lv, z, pm, plv, True,
                                                                       PRIOR)
                    if NEED_GZ:
                        store_as(GZ, gz_off, -weigh(d_z, w, True), m)
                    gmu_blk += weigh(d_mu, w, True)
                    glv_blk += weigh(d_lv, w, True)
                    if NEED_GPM:
                        gpm_blk += weigh(d_pm, w, True)
                    if NEED_GPLV:
                        gplv_blk += weigh(d_plv, w, True)
                    if (k + 1) % K_BLOCK == 0:   # blocks of samples, as _grad_block's
                        gmu_acc += gmu_blk
                        glv_acc += glv_blk
                        gpm_acc += gpm_blk
                        gplv_acc += gplv_blk
                        gmu_blk = tl.zeros([BLOCK_B, BLOCK_L], dtype=tl.float32)
                        glv_blk = tl.zeros([BLOCK_B, BLOCK_L], dtype=tl.float32)
                        gpm_blk = tl.zeros([BLOCK_B, BLOCK_L], dtype=tl.float32)
                        gplv_blk = tl.zeros([BLOCK_B, BLOCK_L], dtype=tl.float32)
                    z_off += stride_zk
                    gz_off += size_bl
                gmu_acc += gmu_blk
                glv_acc += glv_blk
                gpm_acc += gpm_blk
                gplv_acc += gplv_blk
                out_off = rows2 * L + lat2
                if NEED_GMU:
                    store_as(GMU, out_off, -gmu_acc, m)
                if NEED_GLV:
                    store_as(GLV, out_off, -glv_acc, m)
                if NEED_GPM:
                    store_as(GPM, out_off, -gpm_acc, m)
                if NEED_GPLV:
                    store_as(GPLV, out_off, -gplv_acc, m)


@triton.jit(do_not_specialize=["obs_scalar", "c", "row_scale", "log_k"])
def iwae_bound_onepass_kernel(
    X, R, OBS, MU, LV, Z,                     # inputs (OBS: LIK_GAUSSIAN_TENSOR)
    PM, PLV,                                  # PRIOR: the prior's mean and log-variance
    ROW_VALUES, WEIGHTS,                      # (B,) fp32 rows; (K, B) fp32 (STORE_WEIGHTS)
    GX, GR, GOBS, GMU, GLV, GZ,               # gradients, per the NEED_* switches
    GPM, GPLV,                                # the prior's, per row (NEED_GPM, NEED_GPLV)
    K, B, D, L,
    stride_x, stride_rk, stride_rb, stride_obs, stride_mu, stride_lv, stride_zk, stride_zb,
    stride_pm, stride_plv,                    # 0 for one prior row shared by every row
    obs_scalar, c, row_scale, log_k,
    LIK: tl.constexpr, NEED_GX: tl.constexpr, NEED_GR: tl.constexpr, OBS_GRAD: tl.constexpr,
    NEED_GMU: tl.constexpr, NEED_GLV: tl.constexpr, NEED_GZ: tl.constexpr,
    PRIOR: tl.constexpr, NEED_GPM: tl.constexpr, NEED_GPLV: tl.constexpr,
    STORE_WEIGHTS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """One read of recon_k: needs K <= BLOCK_K, D <= BLOCK_D, L <= BLOCK_L (the host checks);
    obs_logvar shared by the K samples (a per-sample one runs the rows kernel).

    Tiles are (BLOCK_B rows, BLOCK_K samples, BLOCK_D columns) and (rows, samples,
    BLOCK_L latents); every log-weight, the logsumexp and the softmax weights stay in
    registers, and the gradients are written from the same tiles.
    """
    tl.static_assert(LIK != LIK_GAUSSIAN_SAMPLES)
    obs_scalar = tl.cast(obs_scalar, tl.float32)
    c = tl.cast(c, tl.float32)
    row_scale = tl.cast(row_scale, tl.float32)
    log_k = tl.cast(log_k, tl.float32)
    pid, rows, rmask = program_rows(B, BLOCK_B)
    zero_i64 = pid * 0
    ks = tl.arange(0, BLOCK_K)
    kmask = ks < K
    ks64 = zero_i64 + ks                                  # int64: k * (B*D) exceeds 2**31
    cols = tl.arange(0, BLOCK_D)
    lats = tl.arange(0, BLOCK_L)
    rows3 = rows[:, None, None]
    k3 = ks64[None, :, None]
    c3 = cols[None, None, :]
    l3 = lats[None, None, :]
    rk3 = rmask[:, None, None] & kmask[None, :, None]
    m_row = rmask[:, None, None] & (c3 < D)              # (BLOCK_B, 1, BLOCK_D)
    m_d = rk3 & (c3 < D)                                  # (BLOCK_B, BLOCK_K, BLOCK_D)
    ml_row = rmask[:, None, None] & (l3 < L)
    m_l = rk3 & (l3 < L)

    # ---- the only read: x, obs, recon_k rows; mu, logvar, z_k rows (fp32 at once) ---
    x = load_f32(X, rows3 * stride_x + c3, m_row)
    if LIK == LIK_GAUSSIAN_TENSOR:
        s = load_f32(OBS, rows3 * stride_obs + c3, m_row)
    else:
        s = obs_scalar
    r = load_f32(R, k3 * stride_rk + rows3 * stride_rb + c3, m_d)
    mu = load_f32(MU, rows3 * stride_mu + l3, ml_row)
    lv = load_f32(LV, rows3 * stride_lv + l3, ml_row)
    z = load_f32(Z, k3 * stride_zk + rows3 * stride_zb + l3, m_l)
    pm, plv = load_prior(PM, PLV, rows3 * stride_pm + l3, rows3 * stride_plv + l3, ml_row, PRIOR)

    # Only the values here; each gradient is computed again from the same registers in
    # the branch that stores it (CSE shares the exp/log work), so no gradient tile lives
    # across the reductions below: what stays live is recon_k, z_k and a few row tiles.
    value, g_r, g_x, g_s = likelihood_tile(x, r, s, LIK)
    kl, d_mu, d_lv, d_z, d_pm, d_plv = latent_kl_tile(mu, lv, z, pm, plv, True, PRIOR)
    log_w = tl.sum(tl.where(m_d, value, 0.0), axis=2) - tl.sum(tl.where(m_l, kl, 0.0), axis=2)
    rk = rmask[:, None] & kmask[None, :]                  # (BLOCK_B, BLOCK_K)
    log_w = tl.where(rk, log_w, float("-inf"))
    row_max = tl.where(rmask, lse_shift(tl.max(log_w, axis=1)), 0.0)
    p = exp_(log_w - row_max[:, None])                  # 0 for padded samples and rows
    p_sum = tl.sum(p, axis=1)
    lse = row_max + log_(tl.where(rmask, p_sum, 1.0))
    store_as(ROW_VALUES, rows, (lse - log_k) * row_scale, rmask)

    # ---- gradients weighted by softmax_k(log w_k) * c, from the tiles above ----------
    if (NEED_GX or NEED_GR or OBS_GRAD != GOBS_NONE or NEED_GMU or NEED_GLV
            or NEED_GZ or NEED_GPM or NEED_GPLV):
        # 0 on padded rows and samples, and on a row whose every log w is -inf (sum 0)
        p_den = tl.where(rmask & (p_sum != 0.0), p_sum, 1.0)   # a NaN sum stays NaN
        w = p * (c / p_den)[:, None]
        w3 = w[:, :, None]   # 0 on padded samples: weigh() gives 0 for their partials
        GUARD: tl.constexpr = LIK >= LIK_GAUSSIAN_SCALAR   # the Bernoulli's are bounded
        rows2 = rows[:, None]
        cols2 = cols[None, :]
        m2 = rmask[:, None] & (cols2 < D)
        if NEED_GR:
            size_bd = (zero_i64 + B) * D
            value, g_r, g_x, g_s = likelihood_tile(x, r, s, LIK)
            store_as(GR, k3 * size_bd + rows3 * D + c3, weigh(g_r, w3, GUARD), m_d)
        if NEED_GX:
            value, g_r, g_x, g_s = likelihood_tile(x, r, s, LIK)
            gx = tl.sum(weigh(g_x, w3, GUARD), axis=1)
            store_as(GX, rows2 * D + cols2, gx, m2)
        if OBS_GRAD != GOBS_NONE:
            value, g_r, g_x, g_s = likelihood_tile(x, r, s, LIK)
            gs = tl.sum(weigh(g_s, w3, GUARD), axis=1)
            if OBS_GRAD == GOBS_ROWS:
                store_as(GOBS, rows2 * D + cols2, gs, m2)
            if OBS_GRAD == GOBS_PARTIAL:
                part = tl.sum(tl.where(m2, gs, 0.0), axis=0)
                tl.store(GOBS + pid * D + cols, part, mask=cols < D)
        lats2 = lats[None, :]
        ml2 = rmask[:, None] & (lats2 < L)
        if NEED_GZ:
            size_bl = (zero_i64 + B) * L
            kl, d_mu, d_lv, d_z, d_pm, d_plv = latent_kl_tile(mu, lv, z, pm, plv, True, PRIOR)
            store_as(GZ, k3 * size_bl + rows3 * L + l3, -weigh(d_z, w3, True), m_l)
        if NEED_GMU:
            kl, d_mu, d_lv, d_z, d_pm, d_plv = latent_kl_tile(mu, lv, z, pm, plv, True, PRIOR)
            gmu = tl.sum(weigh(d_mu, w3, True), axis=1)
            store_as(GMU, rows2 * L + lats2, -gmu, ml2)
        if NEED_GLV:
            kl, d_mu, d_lv, d_z, d_pm, d_plv = latent_kl_tile(mu, lv, z, pm, plv, True, PRIOR)
            glv = tl.sum(weigh(d_lv, w3, True), axis=1)
            store_as(GLV, rows2 * L + lats2, -glv, ml2)
        if NEED_GPM:
            kl, d_mu, d_lv, d_z, d_pm, d_plv = latent_kl_tile(mu, lv, z, pm, plv, True, PRIOR)
            store_as(GPM, rows2 * L + lats2, -tl.sum(weigh(d_pm, w3, True), axis=1), ml2)
        if NEED_GPLV:
            kl, d_mu, d_lv, d_z, d_pm, d_plv = latent_kl_tile(mu, lv, z, pm, plv, True, PRIOR)
            store_as(GPLV, rows2 * L + lats2, -tl.sum(weigh(d_plv, w3, True), axis=1), ml2)
        if STORE_WEIGHTS:  # softmax_k(log w_k), for DReG's hook on z_k
            tl.store(WEIGHTS + ks64[None, :] * B + rows2,
                     p * (1.0 / p_den)[:, None], mask=rk)
