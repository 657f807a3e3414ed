"""A design study (not wired into the backend): the importance-weighted bound with one
warp per row, all K samples of the row inside that warp, for the Bernoulli likelihood
and the N(0, I) prior.

``iwae_rows_warp_kernel`` — grid ``cdiv(B, num_warps)``; warp ``r`` of a program owns
row ``pid * num_warps + r``. Each tile is ``(num_warps, 32, V)``, ``V`` = 16 bytes of
elements (8 in 16 bits, 4 in fp32): the compiler's layout gives a thread one 16-byte
vector of a row, a warp one row, so every sum over a row's columns is in-thread adds and
one warp reduction, and the logsumexp/softmax over the K samples and the sums of d/dmu,
d/dlogvar over k are in-thread (no shared memory, no barrier). A row's D columns are NC
whole chunks of ``32 V`` (read unmasked from ``min(row, B - 1)``) and a tail of TAIL
columns whose K samples share one (num_warps, 32, TV) tile (lane element ``c``: sample
``c // TAIL_P``, column ``c % TAIL_P``), so the tail is not padded to a chunk per sample.
x is read and unpacked once per row, shared by the K samples.

Per element, with ``e = 2^(-|l| log2 e)``: value ``x*l - max(l, 0) - ln(1 + e)``, d/dl
``x - (l >= 0 ? 1 : e) / (1 + e)``; the logs as one lg2 of each lane's product of its
(1 + e) factors (NC V + TV of them, each in (1, 2]: at most 2^28 here).

d/dl must stay live across the softmax: K NC V values a thread (120 at K = 5, D = 784,
bf16). It is held in d/drecon_k's own dtype (``HOLD``: rounded once there), then
multiplied by the weight in fp32 and rounded again at the store: at most two roundings
of the output type, i.e. a relative error below ``2u + u^2`` (u = 2^-8 in bf16, 2^-11 in
fp16; fp32 holds exactly, as the pair kernel) against ``u`` for one rounding. ``MUL16``
(bf16): the weight multiply in bf16x2, a third rounding (below ``3u + 3u^2``), two
instructions an element fewer (see :func:`_weighted`).

Offline proxy (Triton 3.6, sm_90, B=4096 D=784 L=32, bf16; the pair kernel 81% at K=5,
74% at K=8): issue/memory 54% (MUL16=0) and 49% (MUL16=1) at K=5 and at K=8, no
spills; ``benchmarks/iwae_rows_warp_study.py`` measures it. Rows of D <= 300 are mostly
tail and cost more than the pair kernel's.
"""
import triton
import triton.language as tl

from ._math import (FAST_MATH, LOG2_E, LOG_2, exp_, kl_tile, log2_, log_, lse_shift, rcp_,
                    to_f32, weigh)

MASKED_LOGIT = tl.constexpr(-1.0e4)   # a masked tail lane: factor 1, value 0 (x reads 0)


@triton.jit
def _mul(a, b):
    return a * b


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
def _weighted(held, w, HOLD: tl.constexpr, MUL16: tl.constexpr):
    """The held d/dl times the per-row weight ``w`` (fp32, broadcast), in ``HOLD``.
    MUL16 = 0: in fp32 (unpack, multiply, pack: 2.5 instructions an element, two
    roundings of HOLD in all). MUL16 = 1 (bf16): w rounded to bf16, then one
    ``fma.rn.bf16x2`` with -0 for two elements (0.5 an element; ``mul.bf16x2`` needs
    sm_90): the exact product of two bf16 rounded once, so three roundings in all.
    Interpreted, the same roundings in fp32 (a product of two bf16 is exact in fp32)."""
    if HOLD == tl.bfloat16 and MUL16 == 1:
        w16 = tl.broadcast_to(w.to(tl.bfloat16), held.shape)
        if FAST_MATH:
            out = tl.inline_asm_elementwise(
                "{ .reg .b32 z; mov.b32 z, 0x80008000; fma.rn.bf16x2 $0, $1, $2, z; }",
                "=r,r,r", [held, w16], dtype=tl.bfloat16, is_pure=True, pack=2)
        else:
            out = (to_f32(held) * to_f32(w16)).to(tl.bfloat16)
    else:
        out = _hold(to_f32(held) * w, HOLD)
    return out


@triton.jit
def _elements(x, l):
    """Per element: (x*l - max(l, 0), 1 + e, d/dl) in fp32."""
    e = tl.exp2(tl.abs(l) * -LOG2_E)
    q = 1.0 + e
    g = x - tl.where(l >= 0.0, 1.0, e) * rcp_(q)
    return x * l - tl.maximum(l, 0.0), q, g


@triton.jit(do_not_specialize=["c", "row_scale", "log_k"])
def iwae_rows_warp_kernel(
    X, R, MU, LV, Z, ROW_VALUES, GR, GMU, GLV, GZ,
    B, D, L, stride_x, stride_rk, stride_rb, stride_mu, stride_lv, stride_zk, stride_zb,
    c, row_scale, log_k,
    K: tl.constexpr, NC: tl.constexpr, V: tl.constexpr, TAIL: tl.constexpr,
    TAIL_P: tl.constexpr, TV: tl.constexpr, BLOCK_L: tl.constexpr, RW: tl.constexpr,
    MUL16: tl.constexpr = 0,
):
    """Needs D = NC 32 V + TAIL, TAIL <= TAIL_P (a power of two or 0), K TAIL_P <= 32 TV,
    L <= BLOCK_L, 32 <= BLOCK_L (a narrower latent tile puts several rows in a warp), RW = num_warps. GR (K, B, D), GZ (K, B, L), GMU/GLV (B, L),
    contiguous."""
    c = tl.cast(c, tl.float32)
    row_scale = tl.cast(row_scale, tl.float32)
    log_k = tl.cast(log_k, tl.float32)
    pid = tl.program_id(0)
    rows = pid * RW + tl.arange(0, RW)
    rmask = rows < B
    r_in = tl.minimum(rows, B - 1)
    r2 = r_in[:, None]
    W: tl.constexpr = 32 * V
    col = tl.arange(0, W)[None, :]                               # (1, W) in a chunk
    HOLD: tl.constexpr = GR.dtype.element_ty

    # ---- x: once per row ---------------------------------------------------------------
    xs = ()
    for n in tl.static_range(NC):
        xs = xs + (to_f32(tl.load(X + r2 * stride_x + n * W + col)),)
    if TAIL > 0:
        # lane element c: sample c // TAIL_P, column c % TAIL_P; a thread's TV elements
        # are consecutive, so all of one sample
        tc = tl.arange(0, 32 * TV)[None, :]
        tk = tc // TAIL_P
        tcol = NC * W + tc % TAIL_P
        tm = (tk < K) & (tc % TAIL_P < TAIL) & rmask[:, None]
        x_t = to_f32(tl.load(X + r2 * stride_x + tcol, mask=tm, other=0.0))
        l_t = to_f32(tl.load(R + tk * stride_rk + r2 * stride_rb + tcol, mask=tm,
                             other=MASKED_LOGIT))
        v_t, q_t, g_t = _elements(x_t, l_t)
        v_t = tl.sum(tl.reshape(v_t, [RW, 32, TV]), axis=2)     # in-thread: (RW, 32)
        q_t = tl.reduce(tl.reshape(q_t, [RW, 32, TV]), 2, _mul)
        g_t = _hold(g_t, HOLD)
        k_lane = (tl.arange(0, 32) * TV) // TAIL_P               # (32,)

    # ---- the only read of recon_k: each sample's log p(x | z_k), d/dl held ----------------
    lats = tl.arange(0, BLOCK_L)[None, :]
    ml = rmask[:, None] & (lats < L)
    mu = to_f32(tl.load(MU + rows[:, None] * stride_mu + lats, mask=ml, other=0.0))
    lv = to_f32(tl.load(LV + rows[:, None] * stride_lv + lats, mask=ml, other=0.0))
    held = ()
    log_ws = ()
    d_mus = ()
    d_lvs = ()
    d_zs = ()
    for k in tl.static_range(K):
        if NC == 0:   # a row narrower than one chunk: the tail alone
            acc_v = tl.zeros([RW, W], dtype=tl.float32)
            acc_q = tl.full([RW, W], 1.0, dtype=tl.float32)
        for n in tl.static_range(NC):
            l = to_f32(tl.load(R + k * stride_rk + r2 * stride_rb + n * W + col))
            v, q, g = _elements(xs[n], l)
            held = held + (_hold(g, HOLD),)
            if n == 0:
                acc_v = v
                acc_q = q
            else:
                acc_v += v
                acc_q *= q
        # in-thread over a thread's V columns; the product of at most NC V + TV factors
        s_v = tl.sum(tl.reshape(acc_v, [RW, 32, V]), axis=2)    # (RW, 32)
        p_q = tl.reduce(tl.reshape(acc_q, [RW, 32, V]), 2, _mul)
        if TAIL > 0:
            here = (k_lane == k)[None, :]
            s_v += tl.where(here, v_t, 0.0)
            p_q *= tl.where(here, q_t, 1.0)
        lane_px = s_v - log2_(p_q) * LOG_2
        z = to_f32(tl.load(Z + k * stride_zk + rows[:, None] * stride_zb + lats, mask=ml,
                           other=0.0))
        kl, d_mu, d_lv, d_z = kl_tile(mu, lv, z, True)
        kl = tl.where(ml, kl, 0.0)
        # BLOCK_L >= 32: a lane's latents are in-thread, so log w is one warp reduction
        lane_kl = tl.sum(tl.reshape(kl, [RW, 32, BLOCK_L // 32]), axis=2)
        log_ws = log_ws + (tl.sum(lane_px - lane_kl, axis=1),)
        d_mus = d_mus + (d_mu,)
        d_lvs = d_lvs + (d_lv,)
        d_zs = d_zs + (d_z,)

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
    tl.store(ROW_VALUES + rows, (m + log_(total) - log_k) * row_scale, mask=rmask)
    inv = rcp_(tl.where(total != 0.0, total, 1.0)) * c

    # ---- gradients, weighted by softmax * c -----------------------------------------------
    g_mu = tl.zeros([RW, BLOCK_L], dtype=tl.float32)
    g_lv = tl.zeros([RW, BLOCK_L], dtype=tl.float32)
    size_bd = B * D
    for k in tl.static_range(K):
        w = es[k] * inv
        for n in tl.static_range(NC):
            tl.store(GR + k * size_bd + rows[:, None] * D + n * W + col,
                     _weighted(held[k * NC + n], w[:, None], HOLD, MUL16),
                     mask=rmask[:, None])
        w2 = w[:, None]
        tl.store(GZ + k * (B * L) + rows[:, None] * L + lats,
                 (-weigh(d_zs[k], w2, True)).to(GZ.dtype.element_ty), mask=ml)
        g_mu += weigh(d_mus[k], w2, True)
        g_lv += weigh(d_lvs[k], w2, True)
    if TAIL > 0:
        w_t = tl.zeros([RW, 32 * TV], dtype=tl.float32)
        for k in tl.static_range(K):
            w_t = tl.where(tk == k, (es[k] * inv)[:, None], w_t)
        tl.store(GR + tk * size_bd + rows[:, None] * D + tcol,
                 _weighted(g_t, w_t, HOLD, MUL16), mask=tm)
    tl.store(GMU + rows[:, None] * L + lats, (-g_mu).to(GMU.dtype.element_ty), mask=ml)
    tl.store(GLV + rows[:, None] * L + lats, (-g_lv).to(GLV.dtype.element_ty), mask=ml)
