"""The importance-weighted bound in one pass over (row, sample) pairs: the one-pass
kernel's contract (``iwae_bound.py``) without its K padding, for the Bernoulli likelihood.

``iwae_bound_pairs_kernel`` — grid ``cdiv(B, BLOCK_P // K)``; each program owns
``BLOCK_P // K`` whole rows as BLOCK_P (row, sample) pairs: pair ``p`` is sample ``p % K``
of row ``p // K`` (K = 5 fills 15 of 16). Each pair's recon_k row is read once, in
pieces of whole ``W``-column chunks, ``W`` = 32 lanes x 16 bytes (128 fp32, 256 bf16), a
piece of N chunks being one (N * BLOCK_P, W) tile whose row ``n * BLOCK_P + p`` is chunk
n of pair p: the compiler's layout puts a pair's chunks in one warp, so a chunk row is one
vector load a lane and every sum over a pair's columns is in-thread adds across chunks
and one in-warp reduction. D = 784 in fp32 is pieces of 4 and 2 chunks and a 16-column
tail (``BLOCK_NA`` and ``BLOCK_NB`` chunks and ``BLOCK_TAIL`` columns, from the host): no
padded lanes. The log-weights are (BLOCK_P,) sums; their logsumexp and softmax over each row's
pairs come from a (BLOCK_P, BLOCK_P) same-row mask, and every gradient is written from
registers, already weighted by ``softmax * c``: d/drecon_k and d/dz_k per pair, d/dmu,
d/dlogvar and a learned prior's per row (summed over the row's pairs through a (rows,
BLOCK_P, BLOCK_L) selection). Bytes as the one-pass kernel's: the floor, no scratch.

Per element, with ``e = 2^(-|l| log2 e)`` in (0, 1]: value ``x*l - max(l, 0) - ln(1 +
e)``, d/dl ``x - (l >= 0 ? 1 : e) / (1 + e)``: one ex2 and one rcp. The logs are not
taken per element: ``sum_d ln(1 + e_d) = ln prod_d (1 + e_d)`` over the chunks of a
piece and across pieces (one lg2 per element of a (BLOCK_P, W) product tile; the tail's
per element). Each factor is in (1, 2], a product of n of them at most 2^n (n <= 6
here: no overflow), and the rounding of a product of n factors is a relative error of
at most ``n u`` (u = 2^-24) plus the factors' own ``u`` and ``ex2.approx``'s 2^-22
relative error of e (at most 2^-22 in 1 + e): the log is off by at most ``n (2^-22 + 2
u) + 2^-22`` absolute (lg2.approx: 2^-22 absolute over [1, 2], relative beyond), below
4e-6 for n = 6, against ``6 x`` the per-element logs' 2^-22 each; fp32 rounding of the
row sum (D terms) is larger. tests/test_iwae_bound_numerics.py checks it against float64 with
logits up to +-1e4.

The host runs it where nothing is summed over k per data column (no d/dx) and K x D
fits, and at 129-256 columns only where the one-pass tiles do worse
(``iwae_configs.iwae_pairs_config``), except where the row-warp kernel
(``iwae_bound_row_warps.py``) runs. A row narrower than one chunk is the tail alone.
"""
import triton
import triton.language as tl

from ._math import (LIK_BERNOULLI, LOG2_E, LOG_2, MASKED_LOGIT, computed_here, exp_,
                    latent_kl_tile, load_f32, load_prior, log2_, log_, lse_shift, mul, rcp_,
                    store_as, to_f32, weigh)


@triton.jit
def _rows_a_program(k_magic, BLOCK_P: tl.constexpr):
    return (BLOCK_P * k_magic) >> 16                      # = BLOCK_P // K: no division


@triton.jit
def _pairs(p, pid, K, B, k_magic, BLOCK_P: tl.constexpr):
    """For pair indices ``p`` (any vector, taken modulo BLOCK_P): (row, sample, in range)."""
    per = _rows_a_program(k_magic, BLOCK_P)
    p = p % BLOCK_P
    local = (p * k_magic) >> 16                           # = p // K for p < 2^16 / K^2
    ks = p - local * K
    rows = pid * per + local
    return rows, pid * 0 + ks, (local < per) & (rows < B)  # ks int64 with INT64


@triton.jit
def _piece_tile(pid, K, B, D, k_magic, col0, N: tl.constexpr, W: tl.constexpr,
                BLOCK_P: tl.constexpr, FULL: tl.constexpr):
    """(rows, samples, columns, mask) of a piece's (N * BLOCK_P, W) tile (see
    :func:`_piece`); ``FULL``: whole chunks, every column below D, masked by pair only."""
    j = tl.arange(0, N * BLOCK_P)
    rows, ks, pmask = _pairs(j, pid, K, B, k_magic, BLOCK_P)
    cols = col0 + ((j // BLOCK_P) * W)[:, None] + tl.arange(0, W)[None, :]
    m = pmask[:, None] if FULL else pmask[:, None] & (cols < D)
    return rows, ks, cols, m


@triton.jit
def _piece(X, R, pid, K, B, D, stride_x, stride_rk, stride_rb, k_magic, col0,
           N: tl.constexpr, W: tl.constexpr, BLOCK_P: tl.constexpr, FULL: tl.constexpr,
           NEED_G: tl.constexpr):
    """N chunks of W columns from ``col0`` of every pair as one (N * BLOCK_P, W) tile,
    tile row ``n * BLOCK_P + p`` chunk n of pair p (one warp's rows are one pair's
    chunks): (the sum of ``x*l - max(l, 0)`` and the product of ``1 + e`` over the N
    chunks, each (BLOCK_P, W): no reduction across lanes yet; d/dl where ``NEED_G``).

    ``FULL``: every column is below D (whole chunks), so only a padded pair is masked.
    With 16-bit inputs it reads row ``min(row, B - 1)`` instead, unmasked: a masked load
    sets its registers first (a zeroing move for every two of them). 32-bit inputs keep
    the mask: unmasked, ptxas (Triton 3.9, sm_90) held 132 registers at K = 8, D = 784,
    one program an SM where 112 let two in. Masked lanes are left as loaded (no ``other``).
    Nothing of a padded pair reaches an output: its log-weight becomes -inf before the
    softmax and its gradients are not stored. The tail sets its masked columns to values
    that add nothing (``MASKED_LOGIT``, x = 0)."""
    rows, ks, cols, m = _piece_tile(pid, K, B, D, k_magic, col0, N, W, BLOCK_P, FULL)
    r_in = rows
    m_in = m
    if FULL and R.dtype.element_ty.primitive_bitwidth < 32:
        r_in = tl.minimum(rows, B - 1)
        m_in = None
    x = to_f32(tl.load(X + (r_in * stride_x)[:, None] + cols, mask=m_in,
                       other=None if FULL else 0.0))
    l = to_f32(tl.load(R + (ks * stride_rk + r_in * stride_rb)[:, None] + cols, mask=m_in,
                       other=None if FULL else MASKED_LOGIT))
    e = tl.exp2(tl.abs(l) * -LOG2_E)
    q = 1.0 + e
    value = tl.sum(tl.reshape(x * l - tl.maximum(l, 0.0), [N, BLOCK_P, W]), axis=0)
    g = x   # returned unused where d/dl is not needed
    if NEED_G:  # formed now: only g stays live across the softmax, not x, e and 1 + e
        g = computed_here(x - tl.where(l >= 0.0, 1.0, e) * rcp_(q))
    return value, tl.reduce(tl.reshape(q, [N, BLOCK_P, W]), 0, mul), g


@triton.jit
def _store_piece(GR, g, w, pid, K, B, D, k_magic, col0, N: tl.constexpr, W: tl.constexpr,
                 BLOCK_P: tl.constexpr, FULL: tl.constexpr):
    """d/drecon_k of one :func:`_piece`'s tile: its d/dl ``g`` times the pairs' weights
    ``w`` (BLOCK_P,), at offsets formed here (not kept live across the softmax)."""
    rows, ks, cols, m = _piece_tile(pid, K, B, D, k_magic, col0, N, W, BLOCK_P, FULL)
    w_rows = tl.reshape(tl.broadcast_to(w[None, :], [N, BLOCK_P]), [N * BLOCK_P])
    store_as(GR, (ks * ((pid * 0 + B) * D) + rows * D)[:, None] + cols, g * w_rows[:, None], m)


@triton.jit
def _to_rows(t, sel):
    """(BLOCK_R, BLOCK_L): each row's sum of the pair tile ``t`` (BLOCK_P, BLOCK_L) over
    its pairs, ``sel`` (BLOCK_R, BLOCK_P) saying which pair belongs to which row."""
    return tl.sum(tl.where(sel[:, :, None], t[None, :, :], 0.0), axis=1)


@triton.jit(do_not_specialize=["obs_scalar", "c", "row_scale", "log_k", "k_magic"])
def iwae_bound_pairs_kernel(
    X, R, OBS, MU, LV, Z,                     # inputs (OBS: unused, the Bernoulli has none)
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
    BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr,
    BLOCK_W: tl.constexpr, BLOCK_NA: tl.constexpr, BLOCK_NB: tl.constexpr,
    BLOCK_TAIL: tl.constexpr,
):
    """Needs K <= BLOCK_P, (NA + NB) W <= D <= (NA + NB) W + TAIL (the whole chunks are
    read and written without a column mask; NA, NB, TAIL powers of two or 0, NB only
    with NA; each ``BLOCK_`` + its name), L <= BLOCK_L, BLOCK_P // K <= BLOCK_R (the host
    checks)."""
    tl.static_assert(LIK == LIK_BERNOULLI)
    c = tl.cast(c, tl.float32)
    row_scale = tl.cast(row_scale, tl.float32)
    log_k = tl.cast(log_k, tl.float32)
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    per = _rows_a_program(k_magic, BLOCK_P)
    p = tl.arange(0, BLOCK_P)
    local = (p * k_magic) >> 16
    rows, k1, pmask = _pairs(p, pid, K, B, k_magic, BLOCK_P)
    ks = k1
    lats = tl.arange(0, BLOCK_L)[None, :]
    ml = pmask[:, None] & (lats < L)

    # ---- the only read -----------------------------------------------------------------
    W: tl.constexpr = BLOCK_W
    if BLOCK_NA > 0:
        v_a, prod, g_a = _piece(X, R, pid, K, B, D, stride_x, stride_rk, stride_rb,
                                k_magic, 0, BLOCK_NA, W, BLOCK_P, True, NEED_GR)
        value = v_a
        if BLOCK_NB > 0:
            v_b, p_b, g_b = _piece(X, R, pid, K, B, D, stride_x, stride_rk, stride_rb,
                                   k_magic, BLOCK_NA * W, BLOCK_NB, W, BLOCK_P, True,
                                   NEED_GR)
            value += v_b
            prod *= p_b
        # one reduction across the lanes for the whole row (the tail's another)
        log_px = tl.sum(value - log2_(prod) * LOG_2, axis=1)
    else:   # a row narrower than one chunk: the tail alone
        log_px = tl.zeros([BLOCK_P], dtype=tl.float32)
    if BLOCK_TAIL > 0:
        v_t, p_t, g_t = _piece(X, R, pid, K, B, D, stride_x, stride_rk, stride_rb, k_magic,
                               (BLOCK_NA + BLOCK_NB) * W, 1, BLOCK_TAIL, BLOCK_P, False,
                               NEED_GR)
        log_px += tl.sum(v_t - log2_(p_t) * LOG_2, axis=1)
    mu = load_f32(MU, rows[:, None] * stride_mu + lats, ml)
    lv = load_f32(LV, rows[:, None] * stride_lv + lats, ml)
    z = load_f32(Z, (k1 * stride_zk + rows * stride_zb)[:, None] + lats, ml)
    pm, plv = load_prior(PM, PLV, rows[:, None] * stride_pm + lats,
                         rows[:, None] * stride_plv + lats, ml, PRIOR)

    kl, d_mu, d_lv, d_z, d_pm, d_plv = latent_kl_tile(mu, lv, z, pm, plv, True, PRIOR)
    log_w = log_px - tl.sum(tl.where(ml, kl, 0.0), axis=1)
    log_w = tl.where(pmask, log_w, float("-inf"))
    # logsumexp over each row's pairs: the same-row mask gives every pair its row's max
    # and sum (padded pairs: -inf, weight 0; their own "row" gets max 0)
    same = local[:, None] == local[None, :]
    row_max = tl.max(tl.where(same, log_w[None, :], float("-inf")), axis=1)
    row_max = tl.where(pmask, lse_shift(row_max), 0.0)
    e = exp_(log_w - row_max)
    row_sum = tl.sum(tl.where(same, e[None, :], 0.0), axis=1)
    row_sum = tl.where(pmask, row_sum, 1.0)
    lse = row_max + log_(row_sum)
    store_as(ROW_VALUES, rows, (lse - log_k) * row_scale, pmask & (ks == 0))

    # ---- gradients weighted by softmax * c, from the registers above --------------------
    if NEED_GR or NEED_GMU or NEED_GLV or NEED_GZ or NEED_GPM or NEED_GPLV:
        # 0 on padded pairs, and on a row whose every log w is -inf (sum 0: not 0 * inf);
        # a NaN sum stays NaN
        soft = e * rcp_(tl.where(row_sum != 0.0, row_sum, 1.0))
        w = soft * c
        if STORE_WEIGHTS:  # softmax_k(log w_k), for DReG's hook on z_k
            tl.store(WEIGHTS + k1 * B + rows, soft, mask=pmask)
        if NEED_GR:
            if BLOCK_NA > 0:
                _store_piece(GR, g_a, w, pid, K, B, D, k_magic, 0, BLOCK_NA, W, BLOCK_P,
                             True)
            if BLOCK_NB > 0:
                _store_piece(GR, g_b, w, pid, K, B, D, k_magic, BLOCK_NA * W, BLOCK_NB, W,
                             BLOCK_P, True)
            if BLOCK_TAIL > 0:
                _store_piece(GR, g_t, w, pid, K, B, D, k_magic, (BLOCK_NA + BLOCK_NB) * W, 1,
                             BLOCK_TAIL, BLOCK_P, False)
        w2 = w[:, None]
        if NEED_GZ:
            size_bl = (pid * 0 + B) * L
            store_as(GZ, (k1 * size_bl + rows * L)[:, None] + lats, -weigh(d_z, w2, True), ml)
        if NEED_GMU or NEED_GLV or NEED_GPM or NEED_GPLV:
            rr = tl.arange(0, BLOCK_R)
            sel = rr[:, None] == local[None, :]           # (BLOCK_R, BLOCK_P)
            out_rows = pid * per + rr
            out = out_rows[:, None] * L + lats
            mo = ((rr < per) & (out_rows < B))[:, None] & (lats < L)
            if NEED_GMU:
                store_as(GMU, out, -_to_rows(weigh(d_mu, w2, True), sel), mo)
            if NEED_GLV:
                store_as(GLV, out, -_to_rows(weigh(d_lv, w2, True), sel), mo)
            if NEED_GPM:
                store_as(GPM, out, -_to_rows(weigh(d_pm, w2, True), sel), mo)
            if NEED_GPLV:
                store_as(GPLV, out, -_to_rows(weigh(d_plv, w2, True), sel), mo)
