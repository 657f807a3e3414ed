"""The importance-weighted bound for many samples in one read of recon_k: one program per
row, one warp per sample. The pair kernel's contract (``iwae_bound_pairs.py``) for the
Bernoulli likelihood in training (the host's: d/drecon_k needed, no d/dx, K past the
pair kernel's 16, the row's columns in whole chunks and a short tail:
``iwae_configs.iwae_sample_warps_config``).

``iwae_bound_sample_warps_kernel`` — grid ``(B,)``, ``BLOCK_S`` = num_warps. Program
``b`` walks row b's K samples S at a time, warp ``s`` taking sample ``k0 + s`` (K padded
to a multiple of S). Its main tiles are ``(S, 32 V)``
(``V``: 16 bytes of recon_k a lane), so a sample's row of NC whole chunks is in one warp:
its log-likelihood is in-thread adds across the chunks and one warp reduction, and x,
read and unpacked once per row, stays in registers for every sample. The ``D - NC 32 V``
columns left (the tail, padded to TAIL) of all K samples are one ``(BLOCK_K, TAIL)`` tile,
as are the latents (``(BLOCK_K, BLOCK_L)``), each read once before the samples' loop.

Per element, with ``e = 2^(-|l| log2 e)``: value ``x*l - max(l, 0) - ln(1 + e)``, d/dl
``x - sigmoid(l)``: one ex2, and in the whole chunks one rcp a pair of elements
(``_chunk``; the tail: one an element, ``_elements``); the logs as one lg2 of each lane's
product of its NC V factors (1 + e), each in (1, 2] (the pair kernel's docstring bounds
that error; at most 2^24 at D <= 784, no overflow).

The softmax weights need every sample's log-weight, which is known only at the row's end.
So d/dl is written unweighted as each sample is read (rounded to d/drecon_k's dtype), and
after the loop the row's log-weights (per-row scratch ``LOG_W``, ``(B, BLOCK_K)`` fp32,
then each weight ``softmax * c`` in place) weigh them in a sweep that reads back what the
same thread wrote (load, multiply, store; bf16 by packed pairs, ``_weigh_held``): one
rounding more than a kernel that holds d/dl in fp32. In bf16 d/drecon_k is off by a
relative ``(1 + u)^2 (1 + 2u^2) - 1`` at most (u = 2^-8; the row-warp kernel's two
roundings, ``2u + u^2``, and the split weight's ``2u^2``), plus the fp32 weights' error;
in fp32 (fp16 and fp32 inputs) by two fp32 roundings. A row's K x D gradient (78 KB at K =
50, D = 784, bf16) is read back one row's loop after it was written: what a GPU writes in
between is the other resident programs' rows (RESULTS.md, "one read of recon_k at K = 50",
sizes it against L2; the speed proxy counts the sweep's instructions, not its bytes).

Rows whose log-weights are all -inf weigh 0 (bound -inf, gradients 0); a NaN log-weight
makes its row's bound and gradients NaN. Offsets are int32 (the host falls back to the
two-pass kernel where they would not fit).
"""
import triton
import triton.language as tl

from ._math import (FAST_MATH, LIK_BERNOULLI, LOG2_E, LOG_2, MASKED_LOGIT, exp_, latent_kl_tile,
                    load_f32, load_prior, log2_, log_, lse_shift, mul, rcp_, store_as, to_f32,
                    weigh)
from .iwae_bound_row_warps import _elements, _hold, _lane_mask, _unpack_mma


@triton.jit
def _copysign(bits, l):
    """The float of ``bits`` (a float's, sign bit clear) with the sign bit of ``l``: one
    ``lop3`` compiled."""
    return (bits | (l.to(tl.int32, bitcast=True) & -2147483648)).to(tl.float32, bitcast=True)


@triton.jit
def _weigh_held(g, w):
    """A held d/dl ``g`` (its dtype) times a row's or sample's weight ``w`` (fp32,
    broadcast to g's shape), rounded to g's dtype. Compiled, bf16 multiplies packed pairs
    without unpacking: ``w`` split into bf16 ``hi + lo`` (lo = w - hi rounded, within
    u^2 |w| of w's rest), then ``fma.rn.bf16x2(g, hi, g lo)`` with ``g lo`` rounded to
    bf16 (compiled: an ``HMUL2`` and an ``HFMA2`` with the weight's halves broadcast):
    two instructions a pair of elements where unpack, multiply and pack took three and a
    half, and one rounding of the product as before plus at most ``2u^2`` relative (u =
    2^-8). Elsewhere in fp32; under the interpreter the same split in fp32 arithmetic."""
    if g.dtype == tl.bfloat16:
        hi = w.to(tl.bfloat16)
        lo = (w - hi.to(tl.float32)).to(tl.bfloat16)
        hi = tl.broadcast_to(hi, g.shape)
        lo = tl.broadcast_to(lo, g.shape)
        if FAST_MATH:
            out = tl.inline_asm_elementwise(
                "{ .reg .b32 t, nz; mov.b32 nz, 0x80008000;\n"
                "fma.rn.bf16x2 t, $1, $3, nz;\n"
                "fma.rn.bf16x2 $0, $1, $2, t; }",
                "=r,r,r,r", [g, hi, lo], dtype=tl.bfloat16, is_pure=True, pack=2)
        else:
            g = g.to(tl.float32)
            t = (g * lo.to(tl.float32)).to(tl.bfloat16).to(tl.float32)
            out = (g * hi.to(tl.float32) + t).to(tl.bfloat16)
    else:
        out = (to_f32(g) * w).to(g.dtype)
    return out


@triton.jit
def _chunk(xh, l, S: tl.constexpr, W: tl.constexpr):
    """One (S, W) chunk: (x*l - max(l, 0), the (1 + e) factors multiplied in pairs (S,
    W / 2), d/dl) in fp32, with xh = x - 1/2. With ``xs = x - [l >= 0]`` (xh - 1/2 or
    xh + 1/2 by l's sign bit): value ``l xs``, d/dl ``xs + sign(l) e / (1 + e)`` (l >= 0:
    x - 1 + e/(1 + e) = x - sigmoid(l); l < 0: x - e/(1 + e)), the terms that cancel taken
    first as in ``_elements``. The two reciprocals of a thread's neighbouring pair of
    elements are one ``rcp`` of their product times the other factor (each factor in (1,
    2], the product in (1, 4]): three multiplies for one MUFU operation, and the product
    is also that pair's factor of the row's log. The rounding of ``xh`` itself: exact for
    16-bit x (8 and 11 bits) at least 2^-17, else within 2^-25 absolute."""
    e = tl.exp2(tl.abs(l) * -LOG2_E)
    ea, eb = tl.split(tl.reshape(e, [S, W // 2, 2]))
    qb = 1.0 + eb
    pq = ea * qb + qb                  # (1 + ea)(1 + eb), and 1 / (1 + ea) = qb / pq,
    rp = rcp_(pq)                      # 1 / (1 + eb) = (1 + ea) / pq: no 1 + ea formed
    r = tl.reshape(tl.join(qb * rp, ea * rp + rp), [S, W])
    xs = xh - _copysign(0x3F000000, l)   # 0.5
    return l * xs, pq, xs + _copysign(e.to(tl.int32, bitcast=True), l) * r


@triton.jit(do_not_specialize=["obs_scalar", "c", "row_scale", "log_k"])
def iwae_bound_sample_warps_kernel(
    X, R, OBS, MU, LV, Z,                     # inputs (OBS: unused, the Bernoulli has none)
    PM, PLV,                                  # PRIOR: the prior's mean and log-variance
    LOG_W, ROW_VALUES, WEIGHTS,               # (B, BLOCK_K), (B,), (K, B) fp32
    GR, GMU, GLV, GZ, GPM, GPLV,              # gradients, per the NEED_* switches
    K, B, D, L,
    stride_x, stride_rk, stride_rb, stride_obs, stride_mu, stride_lv, stride_zk, stride_zb,
    stride_pm, stride_plv,                    # 0 for one prior row shared by every row
    obs_scalar, c, row_scale, log_k,
    LIK: tl.constexpr, NEED_GR: tl.constexpr, NEED_GMU: tl.constexpr,
    NEED_GLV: tl.constexpr, NEED_GZ: tl.constexpr, PRIOR: tl.constexpr,
    NEED_GPM: tl.constexpr, NEED_GPLV: tl.constexpr, STORE_WEIGHTS: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_L: tl.constexpr,
    BLOCK_V: tl.constexpr, BLOCK_NC: tl.constexpr, BLOCK_TAIL: tl.constexpr,
):
    """Needs K <= BLOCK_K, 1 <= NC, NC 32 V <= D <= NC 32 V + TAIL (TAIL a power of two,
    or 0 where D = NC 32 V), L <= BLOCK_L, BLOCK_S = num_warps, contiguous gradients,
    offsets within int32 (each ``BLOCK_`` + its name; the host checks). d/drecon_k is
    always written: the sweep weighs it in place."""
    tl.static_assert(LIK == LIK_BERNOULLI)
    tl.static_assert(NEED_GR)
    tl.static_assert(BLOCK_NC >= 1)
    S: tl.constexpr = BLOCK_S
    NC: tl.constexpr = BLOCK_NC
    V: tl.constexpr = BLOCK_V
    TAIL: tl.constexpr = BLOCK_TAIL
    W: tl.constexpr = 32 * V
    HOLD: tl.constexpr = GR.dtype.element_ty
    c = tl.cast(c, tl.float32)
    row_scale = tl.cast(row_scale, tl.float32)
    log_k = tl.cast(log_k, tl.float32)
    row = tl.program_id(0)
    size_bd = B * D
    r_row = row * stride_rb
    g_row = row * D
    lw_row = LOG_W + row * BLOCK_K
    s_idx = tl.arange(0, S)
    col = tl.arange(0, W)[None, :] + s_idx[:, None] * 0          # (S, W): a warp a sample
    if FAST_MATH and R.dtype.element_ty == tl.bfloat16:
        eye = _lane_mask(S) & 0x3F803F80
    else:
        eye = 0

    # ---- x: once per row, the same row in every warp ---------------------------------
    xhs = ()   # x - 1/2 (_chunk's d/dl and value need no other x)
    for n in tl.static_range(NC):
        xhs = xhs + (_unpack_mma(tl.load(X + row * stride_x + n * W + col), eye) - 0.5,)

    # ---- every sample's tail columns and latents: one tile each, before the loop -------
    ks = tl.arange(0, BLOCK_K)
    kv = ks < K
    k2 = ks[:, None]
    lats = tl.arange(0, BLOCK_L)[None, :]
    lm = lats < L
    zm = (k2 < K) & lm
    mu = load_f32(MU, row * stride_mu + lats, lm)
    lv = load_f32(LV, row * stride_lv + lats, lm)
    pm, plv = load_prior(PM, PLV, row * stride_pm + lats, row * stride_plv + lats, lm, PRIOR)
    z = load_f32(Z, k2 * stride_zk + row * stride_zb + lats, zm)
    kl, d_mu, d_lv, d_z, d_pm, d_plv = latent_kl_tile(mu, lv, z, pm, plv, True, PRIOR)
    pre = -tl.sum(tl.where(zm, kl, 0.0), axis=1)                # (BLOCK_K,)
    if TAIL > 0:
        tcol = NC * W + tl.arange(0, TAIL)[None, :]
        tm = (k2 < K) & (tcol < D)
        x_t = load_f32(X, row * stride_x + tcol, tcol < D)
        l_t = to_f32(tl.load(R + k2 * stride_rk + r_row + tcol, mask=tm, other=MASKED_LOGIT))
        v_t, q_t, g_t = _elements(x_t, l_t)
        tl.store(GR + k2 * size_bd + g_row + tcol, _hold(g_t, HOLD), mask=tm)
        pre += tl.sum(v_t, axis=1) - log2_(tl.reduce(q_t, 1, mul)) * LOG_2

    # ---- the only read of recon_k's whole chunks: log p(x | z_k), d/dl unweighted --------
    for k0 in range(0, K, S):
        kk = k0 + s_idx
        kmask = (kk < K)[:, None]
        r_off = tl.minimum(kk, K - 1)[:, None] * stride_rk + r_row + col   # padded: K - 1
        g_off = kk[:, None] * size_bd + g_row + col
        for n in tl.static_range(NC):
            l = _unpack_mma(tl.load(R + r_off + n * W), eye)
            v, p, g = _chunk(xhs[n], l, S, W)
            tl.store(GR + g_off + n * W, _hold(g, HOLD), mask=kmask)
            if n == 0:
                acc_v = v
                acc_p = p
            else:
                acc_v += v
                acc_p *= p
        # in-thread over a thread's V columns; the product of NC V factors
        s_v = tl.sum(tl.reshape(acc_v, [S, 32, V]), axis=2)     # (S, 32)
        p_q = tl.reduce(tl.reshape(acc_p, [S, 32, V // 2]), 2, mul)
        # stored by lane 0 from the (S, 32) tile of the warp's sum, its address run along
        # the lanes (+ lane, masked) so that the store keeps that tile's layout: a (S,)
        # store took a layout conversion through shared memory (two barriers a step)
        lw_k = tl.broadcast_to(tl.sum(s_v - log2_(p_q) * LOG_2, axis=1, keep_dims=True),
                               [S, 32])
        lane = tl.arange(0, 32)[None, :]
        tl.store(lw_row + kk[:, None] + lane, lw_k, mask=kmask & (lane == 0))

    # ---- logsumexp and softmax over the K samples ---------------------------------------
    tl.debug_barrier()   # the samples' stores above, read by other threads
    lw = tl.where(kv, tl.load(lw_row + ks, mask=kv, other=0.0) + pre, float("-inf"))
    m = lse_shift(tl.max(lw, axis=0))
    es = exp_(lw - m)
    total = tl.sum(es, axis=0)
    tl.store(ROW_VALUES + row, (m + log_(total) - log_k) * row_scale)
    # 0 on a row whose every log w is -inf (sum 0: not 0 * inf); a NaN sum stays NaN
    p = es * rcp_(tl.where(total != 0.0, total, 1.0))
    w = p * c
    if STORE_WEIGHTS:  # softmax_k(log w_k), for DReG's hook on z_k
        tl.store(WEIGHTS + ks * B + row, p, mask=kv)
    tl.debug_barrier()   # every thread's read of the log-weights, before they become weights
    tl.store(lw_row + ks, w, mask=kv)
    tl.debug_barrier()

    # ---- the sweep: each d/dl times its sample's weight, read back by the thread that
    # wrote it ------------------------------------------------------------------------------
    for k0 in range(0, K, S):
        kk = k0 + s_idx
        kmask = (kk < K)[:, None]
        wk = tl.load(lw_row + kk, mask=kk < K, other=0.0)[:, None]
        # a padded sample reads sample K - 1's (discarded: its store is masked; a masked
        # load would zero its registers first, two instructions a step more)
        g_in = tl.minimum(kk, K - 1)[:, None] * size_bd + g_row + col
        g_off = kk[:, None] * size_bd + g_row + col
        for n in tl.static_range(NC):
            tl.store(GR + g_off + n * W, _weigh_held(tl.load(GR + g_in + n * W), wk),
                     mask=kmask)
    w2 = w[:, None]
    if TAIL > 0:
        t_off = GR + k2 * size_bd + g_row + tcol
        tl.store(t_off, _weigh_held(tl.load(t_off, mask=tm, other=0.0), w2), mask=tm)

    # ---- the latents' gradients, weighted and summed over k: z_k read again (K L elements,
    # just read), not held across the samples' loop ------------------------------------------
    z = load_f32(Z, k2 * stride_zk + row * stride_zb + lats, zm)
    kl, d_mu, d_lv, d_z, d_pm, d_plv = latent_kl_tile(mu, lv, z, pm, plv, True, PRIOR)
    if NEED_GZ:
        store_as(GZ, k2 * (B * L) + row * L + lats, -weigh(d_z, w2, True), zm)
    out = row * L + lats
    if NEED_GMU:
        store_as(GMU, out, -tl.sum(weigh(d_mu, w2, True), axis=0)[None, :], lm)
    if NEED_GLV:
        store_as(GLV, out, -tl.sum(weigh(d_lv, w2, True), axis=0)[None, :], lm)
    if NEED_GPM:
        store_as(GPM, out, -tl.sum(weigh(d_pm, w2, True), axis=0)[None, :], lm)
    if NEED_GPLV:
        store_as(GPLV, out, -tl.sum(weigh(d_plv, w2, True), axis=0)[None, :], lm)
