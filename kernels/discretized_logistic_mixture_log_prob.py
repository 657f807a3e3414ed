"""Fused discretized mixture of logistics: the per-sample log-likelihood of images and its
gradient w.r.t. the mixture's parameters, in one pass.

``dmol_rows_kernel`` — grid ``B * cdiv(HW, BLOCK_P)`` (flattened: B may exceed the 65535
of a second grid axis); program ``pid`` owns ``BLOCK_P`` pixels of sample
``pid // n_blocks``. It loads the pixels' C data values and their ``S*M`` parameters
(a ``(BLOCK_M, BLOCK_P)`` tile per parameter slot, M padded to BLOCK_M, pixels
contiguous) once, forms each channel's log bin mass for every component, the mixture's
logsumexp over components, and from the same registers the gradient: responsibilities
``r_m`` times each channel's partials, ``r - softmax(logits)`` for the logits, written
once, already multiplied by ``c``. Each program writes the sum of its pixels' log p to
``PARTIALS[pid]`` (fp32); the host sums a sample's blocks (torch, fixed order: no
atomics). Bytes: read params and x once, write d/dparams once: ``(2 S M + C) s`` per
pixel for elements of ``s`` bytes (``S M`` = 10M for RGB, 3M for grayscale).

The math (``fastvae.backends.torch_backend.terms.logistic_bin``): with
``a, b = (y - m +- h) e^-s`` and ``w = 2h e^-s``, a bin's log mass is ``log sigmoid(a)``
(bottom), ``log sigmoid(-b)`` (top) or ``log sigmoid(a) + log sigmoid(-b) + log(1 -
e^-w)`` (interior), the last as ``log w + log((1 - e^-w)/w)``, exact where w underflows.
``1 - e^-w`` and tanh use Kahan's ``expm1(x) = (e^x - 1) x / log(e^x)``: exp and log
only, so the interpreter runs the same code.

Fast math (``kernels/_math.py``): compiled, exponentials are ``ex2.approx`` (relative
2^-22), divisions ``div.approx`` (2 ulp), and the logs whose argument is a sum of
exponentials (``log(1 + e^-|a|)``, the log-softmax's and the logsumexp's ``log sum`` in
[0, ln M], the bin-gap ratio's ``log`` in [-8, 0]) are ``lg2.approx`` (2^-22 in log2,
absolute on [0.5, 2], relative beyond). Against the same formulas with exact logs and
divisions that adds at most ``FAST_MATH_BOUND`` = 1e-5 nat to a pixel's log p, the
fp32 rounding of a typical per-pixel value (tests/test_dmol_log_prob_fast_math.py
runs the formulas at the approximations' worst errors, every sign). Exact
where an error would be amplified: Kahan's ``log(e^x)`` (its quotient needs a log
accurate *relative* to ``e^x - 1`` near 1) and tanh's divisions (a coefficient off by 2
ulp moves a component's mean by 2 ulp of ``e^7`` at the sharpest scale).
"""
import triton
import triton.language as tl

from ._math import div_, exp_, load_f32, log_, lse_shift, rcp_, store_as

LOG_SCALE_MIN = tl.constexpr(-7.0)
FAST_MATH_BOUND = 1e-5  # nat per pixel, see above


@triton.jit
def gap_ratio(w):
    """``((1 - e^-w) / w, e^-w)`` for w >= 0: 1 at w = 0; Kahan's expm1 below w = 1, where
    ``1 - e^-w`` would cancel; the plain difference above, where ``log(e^-w)`` may be
    ``-inf``."""
    u = exp_(-w)
    skip = (u == 1.0) | (u == 0.0)  # where the other branch is taken: no 0/0, no log 0
    kahan = tl.where(skip, 1.0, div_(1.0 - u, -tl.log(tl.where(skip, 0.5, u))))
    return tl.where(w > 1.0, div_(1.0 - u, tl.maximum(w, 1.0)), kahan), u


@triton.jit
def tanh(v):
    """tanh from ``expm1(-2|v|)`` (Kahan below |v| = 0.5, where ``e^-2|v| - 1`` cancels)."""
    a = tl.abs(v)
    u = exp_(-2.0 * a)
    skip = (u == 1.0) | (u == 0.0)  # where the other branch is taken: no 0/0, no log 0
    # exact divisions: a tanh off by 2 ulp moves a sharp component's mean (see above)
    em = tl.where(skip, -2.0 * a, (u - 1.0) * (-2.0 * a) / tl.log(tl.where(skip, 0.5, u)))
    em = tl.where(a > 0.5, u - 1.0, em)
    t = -em / (2.0 + em)
    return tl.where(v < 0.0, -t, t)


@triton.jit
def logistic_bin_tile(y, mean, log_scale, bottom, top, half_width, log_2h):
    """One channel's (log bin mass, d/dmean, d/dlog_scale) per element; ``log_scale`` is
    already clamped, ``bottom``/``top`` mark the edge bins."""
    inv_s = exp_(-log_scale)
    centered = y - mean
    a = (centered + half_width) * inv_s
    b = (centered - half_width) * inv_s
    log_w = log_2h - log_scale
    ratio, e_w = gap_ratio(exp_(log_w))
    ea = exp_(-tl.abs(a))
    eb = exp_(-tl.abs(b))
    lsa = tl.minimum(a, 0.0) - log_(1.0 + ea)      # log sigmoid(a)
    lsb = tl.minimum(-b, 0.0) - log_(1.0 + eb)     # log sigmoid(-b)
    sig_na = div_(tl.where(a >= 0.0, ea, 1.0), 1.0 + ea)   # sigmoid(-a)
    sig_b = div_(tl.where(b >= 0.0, 1.0, eb), 1.0 + eb)    # sigmoid(b)
    interior = (bottom == 0) & (top == 0)
    pa = tl.where(top, 0.0, sig_na)
    pb = tl.where(bottom, 0.0, sig_b)
    value = (tl.where(top, 0.0, lsa) + tl.where(bottom, 0.0, lsb)
             + tl.where(interior, log_w + log_(ratio), 0.0))
    d_mean = (pb - pa) * inv_s
    # 0 where the sigmoid is, not inf * 0: an edge bin held with certainty by a mean
    # ~1e36 beyond it overflows a or b
    d_log_scale = (tl.where(pb == 0.0, 0.0, b * pb) - tl.where(pa == 0.0, 0.0, a * pa)
                   - tl.where(interior, div_(e_w, ratio), 0.0))
    return value, d_mean, d_log_scale


@triton.jit
def _grid(XB, offs, pmask, levels):
    """A channel's data on the grid: (y on [-1, 1] as a (1, BLOCK_P) row, bottom-bin and
    top-bin masks), from the integer bin ``round(x (2^bits - 1))``."""
    k = tl.floor(load_f32(XB, offs, pmask) * levels + 0.5)
    # a NaN x stays NaN (max.NaN, no more instructions): dropped, it would be bin 0 and
    # give a finite log p where the other backends give NaN
    y = tl.minimum(tl.maximum(k, 0.0, propagate_nan=tl.PropagateNan.ALL), levels,
                   propagate_nan=tl.PropagateNan.ALL) * (2.0 / levels) - 1.0
    return y[None, :], (k <= 0.0)[None, :], (k >= levels)[None, :]


@triton.jit
def _channel(PB, slot_mean, slot_ls, poff, mask, y, bottom, top, shift, half_width, log_2h):
    """One channel at every (component, pixel) of the tile, its parameters loaded here:
    (log bin mass, d/dmean, d/dlog_scale, whether the log-scale is above the clamp), the
    mean being the slot's plus ``shift`` (the autoregressive part)."""
    raw_ls = load_f32(PB, slot_ls + poff, mask)
    mean = load_f32(PB, slot_mean + poff, mask) + shift
    clamped = tl.maximum(raw_ls, LOG_SCALE_MIN, propagate_nan=tl.PropagateNan.ALL)
    value, d_mean, d_ls = logistic_bin_tile(y, mean, clamped,
                                            bottom, top, half_width, log_2h)
    return value, d_mean, d_ls, raw_ls >= LOG_SCALE_MIN


@triton.jit
def _store_channel_grads(PB, GB, slot_mean, slot_ls, poff, mask, y, bottom, top, shift,
                         half_width, log_2h, w, live):
    """Store one channel's weighted mean and log-scale gradients; return the mean's (the
    coupling coefficients' gradients are multiples of it). A component of responsibility 0
    adds 0, not 0 * its partials (inf or NaN where its mean is ~1e35 away)."""
    _v, dm, ds, keep = _channel(PB, slot_mean, slot_ls, poff, mask, y, bottom, top, shift,
                                half_width, log_2h)
    g = tl.where(live, w * dm, 0.0)
    store_as(GB, slot_mean + poff, g, mask)
    store_as(GB, slot_ls + poff, tl.where(keep & live, w * ds, 0.0), mask)
    return g


@triton.jit(do_not_specialize=["c", "levels"])
def dmol_rows_kernel(
    X, P,                            # inputs: x (B, C, HW), params (B, S*M, HW), contiguous pixels
    PARTIALS, G,                     # (B * n_blocks,) fp32 sums; d/dparams, contiguous (NEED_GRAD)
    n_pix, n_mix, n_blocks,
    levels,                          # 2^bits - 1, as a float
    stride_xb, stride_pb, stride_gb,
    c,
    C: tl.constexpr, NEED_GRAD: tl.constexpr, INT64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Two phases over the same tile. Values: every channel's log mass, the mixture's
    logsumexp. Gradients: each channel's parameters loaded again (after a store, so the
    compiler cannot keep the first phase's registers alive instead: one channel's
    partials live at a time, not all of them across the logsumexp) and its gradients
    stored at once."""
    c = tl.cast(c, tl.float32)  # scalars from inductor arrive as fp64
    lv = tl.cast(levels, tl.float32)
    pid = tl.program_id(0)
    row = pid // n_blocks
    if INT64:  # the host's choice: a row's base (row x stride) passes 2^31; offsets within
        row = row.to(tl.int64)   # a row fit int32 (the host's check), so the tile's do
    pix = (pid % n_blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = pix < n_pix
    comp = tl.arange(0, BLOCK_M)
    cmask = comp < n_mix
    mask = cmask[:, None] & pmask[None, :]
    poff = comp[:, None] * n_pix + pix[None, :]         # M x H x W
    slot = n_mix * n_pix                                # one parameter slot
    PB = P + row * stride_pb
    GB = G + row * stride_gb
    XB = X + row * stride_xb
    half_width = 1.0 / lv
    log_2h = tl.log(2.0 * half_width)  # once per program: exact

    # ---- values -------------------------------------------------------------------
    logits = tl.where(cmask[:, None], load_f32(PB, poff, mask), float("-inf"))
    # log_softmax as (l - max) - log sum: l - (max + log sum) would round the sum to the
    # logits' magnitude, so a shift of every logit by c would move log p by ~ulp(c)
    shifted = logits - tl.max(logits, axis=0)[None, :]
    log_pi = shifted - log_(tl.sum(exp_(shifted), axis=0))[None, :]
    y0, bot0, top0 = _grid(XB, pix, pmask, lv)
    if C == 3:
        y1, bot1, top1 = _grid(XB, n_pix + pix, pmask, lv)
        y2, bot2, top2 = _grid(XB, 2 * n_pix + pix, pmask, lv)
        t0 = tanh(load_f32(PB, 3 * slot + poff, mask))
        t1 = tanh(load_f32(PB, 6 * slot + poff, mask))
        t2 = tanh(load_f32(PB, 9 * slot + poff, mask))
        v0, _, _, _ = _channel(PB, slot, 2 * slot, poff, mask, y0, bot0, top0, 0.0,
                               half_width, log_2h)
        v1, _, _, _ = _channel(PB, 4 * slot, 5 * slot, poff, mask, y1, bot1, top1, t0 * y0,
                               half_width, log_2h)
        v2, _, _, _ = _channel(PB, 7 * slot, 8 * slot, poff, mask, y2, bot2, top2,
                               t1 * y0 + t2 * y1, half_width, log_2h)
        lp = log_pi + (v0 + v1 + v2)
    else:
        v0, _, _, _ = _channel(PB, slot, 2 * slot, poff, mask, y0, bot0, top0, 0.0,
                               half_width, log_2h)
        lp = log_pi + v0
    # (a pixel whose every component's mass is below float32, lp_max -inf, shifts by 0:
    # its sum is 0 and its log p -inf, not NaN)
    lp_max = lse_shift(tl.max(lp, axis=0))
    e = exp_(lp - lp_max[None, :])                       # 0 on padded components
    total = tl.sum(e, axis=0)                            # in [1, M] (or 0, above)
    lse = lp_max + log_(total)
    tl.store(PARTIALS + pid, tl.sum(tl.where(pmask, lse, 0.0), axis=0))

    # ---- gradients: c * responsibilities times each channel's partials ----------------
    if NEED_GRAD:
        # e / total, not exp(lp - lse): the rounded lse would scale every responsibility
        # by exp(its rounding error), ulp(|lp|) (5e-4 at lp ~ -6600 in fp32)
        w = e * (c * rcp_(total))[None, :]
        store_as(GB, poff, w - exp_(log_pi) * c, mask)
        live = w != 0.0
        _store_channel_grads(PB, GB, slot, 2 * slot, poff, mask, y0, bot0, top0, 0.0,
                             half_width, log_2h, w, live)
        if C == 3:
            # through m1 = mean1 + tanh(c0) y0 and m2 = mean2 + tanh(c1) y0 + tanh(c2) y1
            t0 = tanh(load_f32(PB, 3 * slot + poff, mask))
            g = _store_channel_grads(PB, GB, 4 * slot, 5 * slot, poff, mask, y1, bot1, top1,
                                     t0 * y0, half_width, log_2h, w, live)
            store_as(GB, 3 * slot + poff, g * y0 * (1.0 - t0 * t0), mask)
            t1 = tanh(load_f32(PB, 6 * slot + poff, mask))
            t2 = tanh(load_f32(PB, 9 * slot + poff, mask))
            g = _store_channel_grads(PB, GB, 7 * slot, 8 * slot, poff, mask, y2, bot2, top2,
                                     t1 * y0 + t2 * y1, half_width, log_2h, w, live)
            store_as(GB, 6 * slot + poff, g * y0 * (1.0 - t1 * t1), mask)
            store_as(GB, 9 * slot + poff, g * y1 * (1.0 - t2 * t2), mask)
