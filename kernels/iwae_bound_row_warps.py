"""The importance-weighted bound with one warp per row, all K samples of the row in that
warp: the pair kernel's contract (``iwae_bound_pairs.py``) for the Bernoulli likelihood
and a 16-bit d/drecon_k (the host's: bf16 training, K 2-8, L <= 32, 512-784 columns
with at most 64 past whole chunks: ``iwae_configs.iwae_row_warps_config``).

``iwae_bound_row_warps_kernel`` — grid ``cdiv(B, BLOCK_R)``, ``BLOCK_R`` = num_warps;
warp ``r`` of a program owns row ``pid * BLOCK_R + r``. Each tile is ``(BLOCK_R, 32 V)``
(``V`` = 8: 16 bytes of 16-bit elements a lane): the compiler's layout gives a thread one
16-byte vector of a row and a warp one row, so every sum over a row's columns is in-thread
adds and one warp reduction, and the logsumexp and softmax over the K samples, and the
sums of the latent gradients over k, are in-thread (no shared memory, no barrier). A
row's D columns are NC whole chunks of ``32 V`` (read unmasked from row ``min(row, B -
1)``: a padded row reads the last one, and nothing of it is stored) and a tail of the
``D - NC 32 V`` columns left, padded to TAIL, whose K samples share one (BLOCK_R, 32 TV)
tile (lane element ``c``: sample ``c // TAIL``, column ``c % TAIL``), so the tail is not
padded to a chunk per sample.
x is read and unpacked once per row, shared by the K samples. Compiled, bf16 chunks (x,
recon_k, the held d/dl) unpack by an ``mma`` with B = the identity, four elements a thread
an instruction (``_unpack_mma``). The latent tiles are at least 32 wide, so a row's latents
stay in its warp too.

Per element, with ``e = 2^(-|l| log2 e)``: value ``x*l - max(l, 0) - ln(1 + e)``, d/dl
``x - (l >= 0 ? 1 : e) / (1 + e)``; the logs as one lg2 of each lane's product of its
(1 + e) factors (NC V of them, each in (1, 2]: at most 2^(NC V), 2^24 at D = 768-784)
and one of its TV tail factors, as the pair kernel's (its docstring bounds that error).

Accuracy: d/dl stays live across the softmax (K NC V values a thread, 120 at K = 5, D =
784), held in d/drecon_k's dtype (GR's): rounded once there, then multiplied by the row's
weight ``softmax * c`` in fp32 and rounded again at the store. In bf16 d/drecon_k is thus
off by a relative ``2u + u^2`` at most (u = 2^-8) against the pair kernel's ``u``, plus
what both share (the fp32 weights' error). A backward at grad_output != 1 weighs the
saved gradient and rounds it once more (about 3u; the pair kernel's u becomes 2u).
Everything else (the bound, d/dmu, d/dlogvar, d/dz_k, the prior's) is formed in fp32 and
rounded once, as the pair kernel's.

Rows whose log-weights are all -inf weigh 0 (bound -inf, gradients 0); a NaN log-weight
makes its row's bound and gradients NaN. Offsets are int32 (the host falls back to the
pair kernel where they would not fit).
"""
import triton
import triton.language as tl

from ._math import (FAST_MATH, LIK_BERNOULLI, LOG2_E, LOG_2, MASKED_LOGIT, exp_,
                    latent_kl_tile, load_f32, load_prior, log2_, log_, lse_shift, mul, rcp_,
                    store_as, to_f32, weigh)


@triton.jit
def _hold(g, HOLD: tl.constexpr):
    """fp32 ``g`` rounded to ``HOLD``; compiled, bf16 as one ``cvt.rn.bf16x2.f32`` for two
    elements (``.to`` converts them one at a time, each to a 32-bit register of its own:
    twice the registers and the instructions)."""
    if FAST_MATH and HOLD == tl.bfloat16:
        out = tl.inline_asm_elementwise("cvt.rn.bf16x2.f32 $0, $2, $1;", "=r,r,r", [g],
                                        dtype=tl.bfloat16, is_pure=True, pack=2)
    else:
        out = g.to(HOLD)
    return out


@triton.jit
def _lane_mask(RW: tl.constexpr):
    """(RW, 1) int32: which halves of a packed bf16 pair this lane puts into an 8 x 8
    diagonal as ``mma``'s B fragment (rows 2t, 2t + 1 of column g, lane = 4g + t): the low
    half where g = 2t, the high half where g = 2t + 1. Compiled only."""
    lane = tl.inline_asm_elementwise("mov.u32 $0, %laneid;", "=r,r",
                                     [tl.zeros([RW, 1], tl.int32)], dtype=tl.int32,
                                     is_pure=True, pack=1)
    g = lane >> 2
    t2 = (lane & 3) * 2
    return tl.where(g == t2, 0xFFFF, 0) | tl.where(g == t2 + 1, -65536, 0)


@triton.jit
def _unpack_mma(v, eye):
    """A bf16 tile to fp32, four elements a thread by one ``mma`` (m16n8k8) with B = the
    identity (``eye``: ``_lane_mask`` & two bf16 ones): D[g][2t + i] = A[g][2t + i], a
    thread's own elements back, exact, in a quarter of an instruction an element (the
    shift or mask of ``to_f32`` is one)."""
    if FAST_MATH and v.dtype == tl.bfloat16:
        out = tl.inline_asm_elementwise(
            "{ .reg .f32 z; mov.f32 z, 0f00000000;\n"
            "mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {$0, $1, $2, $3}, {$4, $5}, "
            "{$6}, {z, z, z, z}; }",
            "=r,=r,=r,=r,r,r,r,r,r,r", [v, eye], dtype=tl.float32, is_pure=True, pack=4)
    else:
        out = to_f32(v)
    return out


@triton.jit
def _elements(x, l):
    """Per element: (x*l - max(l, 0), 1 + e, d/dl) in fp32."""
    e = tl.exp2(tl.abs(l) * -LOG2_E)
    q = 1.0 + e
    g = x - tl.where(l >= 0.0, 1.0, e) * rcp_(q)
    return x * l - tl.maximum(l, 0.0), q, g


@triton.jit(do_not_specialize=["obs_scalar", "c", "row_scale", "log_k"])
def iwae_bound_row_warps_kernel(
    X, R, OBS, MU, LV, Z,                     # inputs (OBS: unused, the Bernoulli has none)
    PM, PLV,                                  # PRIOR: the prior's mean and log-variance
    ROW_VALUES, WEIGHTS,                      # (B,) fp32 rows; (K, B) fp32 (STORE_WEIGHTS)
    GR, GMU, GLV, GZ, GPM, GPLV,              # gradients, per the NEED_* switches
    B, D, L,
    stride_x, stride_rk, stride_rb, stride_obs, stride_mu, stride_lv, stride_zk, stride_zb,
    stride_pm, stride_plv,                    # 0 for one prior row shared by every row
    obs_scalar, c, row_scale, log_k,
    LIK: tl.constexpr, NEED_GR: tl.constexpr, NEED_GMU: tl.constexpr,
    NEED_GLV: tl.constexpr, NEED_GZ: tl.constexpr, PRIOR: tl.constexpr,
    NEED_GPM: tl.constexpr, NEED_GPLV: tl.constexpr, STORE_WEIGHTS: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr,
    BLOCK_V: tl.constexpr, BLOCK_NC: tl.constexpr, BLOCK_TAIL: tl.constexpr,
    BLOCK_TV: tl.constexpr,
):
    """Needs K = BLOCK_K, NC 32 V <= D <= NC 32 V + TAIL (TAIL a power of two, or 0
    where D = NC 32 V), K TAIL <= 32 TV, L <= BLOCK_L, 32 <= BLOCK_L, BLOCK_R = num_warps,
    16-bit recon_k, contiguous gradients, offsets within int32 (each ``BLOCK_`` + its
    name; the host checks). d/drecon_k is always written: the held d/dl is for it."""
    tl.static_assert(LIK == LIK_BERNOULLI)
    tl.static_assert(NEED_GR)
    tl.static_assert(BLOCK_L >= 32)
    K: tl.constexpr = BLOCK_K
    NC: tl.constexpr = BLOCK_NC
    V: tl.constexpr = BLOCK_V
    TAIL: tl.constexpr = BLOCK_TAIL
    TV: tl.constexpr = BLOCK_TV
    RW: tl.constexpr = BLOCK_R
    HOLD: tl.constexpr = GR.dtype.element_ty
    c = tl.cast(c, tl.float32)
    row_scale = tl.cast(row_scale, tl.float32)
    log_k = tl.cast(log_k, tl.float32)
    pid = tl.program_id(0)
    rows = pid * RW + tl.arange(0, RW)
    rmask = rows < B
    r2 = tl.minimum(rows, B - 1)[:, None]
    W: tl.constexpr = 32 * V
    col = tl.arange(0, W)[None, :]                               # (1, W) in a chunk

    # ---- x: once per row ---------------------------------------------------------------
    if FAST_MATH:
        eye = _lane_mask(RW) & 0x3F803F80
    else:
        eye = 0
    xs = ()
    for n in tl.static_range(NC):
        xs = xs + (_unpack_mma(tl.load(X + r2 * stride_x + n * W + col), eye),)
    if TAIL > 0:
        # lane element c: sample c // TAIL, column c % TAIL; a thread's TV elements are
        # consecutive, so all of one sample
        tc = tl.arange(0, 32 * TV)[None, :]
        tk = tc // TAIL
        tcol = NC * W + tc % TAIL
        tm = (tk < K) & (tcol < D) & rmask[:, None]
        x_t = load_f32(X, r2 * stride_x + tcol, tm)
        l_t = to_f32(tl.load(R + tk * stride_rk + r2 * stride_rb + tcol, mask=tm,
                             other=MASKED_LOGIT))
        v_t, q_t, g_t = _elements(x_t, l_t)
        v_t = tl.sum(tl.reshape(v_t, [RW, 32, TV]), axis=2)     # in-thread: (RW, 32)
        q_t = tl.reduce(tl.reshape(q_t, [RW, 32, TV]), 2, mul)
        px_t = v_t - log2_(q_t) * LOG_2     # one lg2 for every sample's tail
        g_t = _hold(g_t, HOLD)
        k_lane = (tl.arange(0, 32) * TV) // TAIL                 # (32,)

    # ---- the only read of recon_k: each sample's log p(x | z_k), d/dl held ----------------
    lats = tl.arange(0, BLOCK_L)[None, :]
    ml = rmask[:, None] & (lats < L)
    mu = load_f32(MU, rows[:, None] * stride_mu + lats, ml)
    lv = load_f32(LV, rows[:, None] * stride_lv + lats, ml)
    pm, plv = load_prior(PM, PLV, rows[:, None] * stride_pm + lats,
                         rows[:, None] * stride_plv + lats, ml, PRIOR)
    held = ()
    log_ws = ()
    d_mus = ()
    d_lvs = ()
    d_zs = ()
    d_pms = ()
    d_plvs = ()
    for k in tl.static_range(K):
        if NC == 0:   # a row narrower than one chunk: the tail alone
            acc_v = tl.zeros([RW, W], dtype=tl.float32)
            acc_q = tl.full([RW, W], 1.0, dtype=tl.float32)
        for n in tl.static_range(NC):
            l = _unpack_mma(tl.load(R + k * stride_rk + r2 * stride_rb + n * W + col), eye)
            v, q, g = _elements(xs[n], l)
            held = held + (_hold(g, HOLD),)
            if n == 0:
                acc_v = v
                acc_q = q
            else:
                acc_v += v
                acc_q *= q
        # in-thread over a thread's V columns; the product of NC V factors
        s_v = tl.sum(tl.reshape(acc_v, [RW, 32, V]), axis=2)    # (RW, 32)
        p_q = tl.reduce(tl.reshape(acc_q, [RW, 32, V]), 2, mul)
        lane_px = s_v - log2_(p_q) * LOG_2
        if TAIL > 0:
            lane_px += tl.where((k_lane == k)[None, :], px_t, 0.0)
        z = load_f32(Z, k * stride_zk + rows[:, None] * stride_zb + lats, ml)
        kl, d_mu, d_lv, d_z, d_pm, d_plv = latent_kl_tile(mu, lv, z, pm, plv, True, PRIOR)
        kl = tl.where(ml, kl, 0.0)
        # a lane's latents are in-thread, so log w is one warp reduction
        lane_kl = tl.sum(tl.reshape(kl, [RW, 32, BLOCK_L // 32]), axis=2)
        log_ws = log_ws + (tl.sum(lane_px - lane_kl, axis=1),)
        d_mus = d_mus + (d_mu,)
        d_lvs = d_lvs + (d_lv,)
        d_zs = d_zs + (d_z,)
        d_pms = d_pms + (d_pm,)
        d_plvs = d_plvs + (d_plv,)

    # ---- logsumexp and softmax over the K samples: in-thread --------------------------------
    m = log_ws[0]
    for k in tl.static_range(1, K):
        m = tl.maximum(m, log_ws[k])
    m = lse_shift(m)
    es = ()
    total = tl.zeros_like(m)
    for k in tl.static_range(K):
        es = es + (exp_(log_ws[k] - m),)
        total += es[k]
    store_as(ROW_VALUES, rows, (m + log_(total) - log_k) * row_scale, rmask)
    # 0 on a row whose every log w is -inf (sum 0: not 0 * inf); a NaN sum stays NaN
    inv = rcp_(tl.where(total != 0.0, total, 1.0))

    # ---- gradients weighted by softmax * c, from the registers above ------------------------
    g_mu = tl.zeros([RW, BLOCK_L], dtype=tl.float32)
    g_lv = tl.zeros([RW, BLOCK_L], dtype=tl.float32)
    g_pm = tl.zeros([RW, BLOCK_L], dtype=tl.float32)
    g_plv = tl.zeros([RW, BLOCK_L], dtype=tl.float32)
    size_bd = B * D
    ws = ()
    for k in tl.static_range(K):
        w = es[k] * inv * c
        ws = ws + (w,)
        for n in tl.static_range(NC):
            tl.store(GR + k * size_bd + rows[:, None] * D + n * W + col,
                     _hold(_unpack_mma(held[k * NC + n], eye) * w[:, None], HOLD),
                     mask=rmask[:, None])
        w2 = w[:, None]
        if NEED_GZ:
            store_as(GZ, k * (B * L) + rows[:, None] * L + lats, -weigh(d_zs[k], w2, True), ml)
        if NEED_GMU:
            g_mu += weigh(d_mus[k], w2, True)
        if NEED_GLV:
            g_lv += weigh(d_lvs[k], w2, True)
        if NEED_GPM:
            g_pm += weigh(d_pms[k], w2, True)
        if NEED_GPLV:
            g_plv += weigh(d_plvs[k], w2, True)
    if TAIL > 0:
        # a lane's TV tail elements are of one sample: its weight chosen once a lane, then
        # spread over them (chosen per element, the choice took the tail's layout and
        # moved d/dl through shared memory and back)
        w_lane = tl.zeros([RW, 32], dtype=tl.float32)
        for k in tl.static_range(K):
            w_lane = tl.where((k_lane == k)[None, :], ws[k][:, None], w_lane)
        w_t = tl.reshape(tl.broadcast_to(w_lane[:, :, None], [RW, 32, TV]), [RW, 32 * TV])
        tl.store(GR + tk * size_bd + rows[:, None] * D + tcol,
                 _hold(to_f32(g_t) * w_t, HOLD), mask=tm)
    if STORE_WEIGHTS:  # softmax_k(log w_k), for DReG's hook on z_k; stored inside the
        # loop above, they took 254 registers at K = 8, D = 784 (Triton 3.6) against 197
        for k in tl.static_range(K):
            tl.store(WEIGHTS + k * B + rows, es[k] * inv, mask=rmask)
    out = rows[:, None] * L + lats
    if NEED_GMU:
        store_as(GMU, out, -g_mu, ml)
    if NEED_GLV:
        store_as(GLV, out, -g_lv, ml)
    if NEED_GPM:
        store_as(GPM, out, -g_pm, ml)
    if NEED_GPLV:
        store_as(GPLV, out, -g_plv, ml)
