"""Shared ``@triton.jit`` math and memory helpers for the fastvae kernels: one tile of a
likelihood, one tile of a KL term, each returning its value *and* its partial
derivatives, plus the load/store idioms every kernel repeats.

All arithmetic is on fp32 tiles (``load_f32`` upcasts at once; the interpreter gets bf16
arithmetic wrong, and real kernels should not do it either); every formula is the
stable form that ``fastvae.backends.torch_backend.terms`` uses. No exponential is
multiplied into a product that can overflow where the result does not:
``(d * exp(-s/2))^2``, never ``d^2 * exp(-s)``; and :func:`inv_sd_` holds that factor at
the largest float, so a difference of exactly 0 stays 0 where ``exp(-s/2)`` overflows.

Fast math: compiled, ``exp2``/``log2`` are the hardware's ``ex2.approx``/``lg2.approx``
(one MUFU instruction each; ``tl.log`` would be a ~25-instruction polynomial) and no
formula divides. Their error (PTX ISA: ``ex2.approx`` relative 2^-22, ``lg2.approx``
absolute 2^-22 on [0.5, 2], which is where every log2 here lands) bounds every value:
the Bernoulli term's softplus and sigmoid are within 5e-7 absolute of the exact ones,
below fp32 rounding of a typical row sum; tests/test_elbo_numerics_extremes.py checks the
bound against float64 over the whole logit range. Under ``TRITON_INTERPRET=1`` (which has
no libdevice) the same formulas run with exact ``log2``.
"""
import os

import triton
import triton.language as tl

try:  # the hardware approximations, compiled only (the interpreter has no libdevice)
    from triton.language.extra import libdevice
except ImportError:  # older Triton: exact math everywhere
    libdevice = None

FAST_MATH = tl.constexpr(libdevice is not None
                         and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"))

# The LIK constexpr of the row kernels.
LIK_BERNOULLI = tl.constexpr(0)
LIK_CONTINUOUS_BERNOULLI = tl.constexpr(1)
LIK_GAUSSIAN_SCALAR = tl.constexpr(2)   # obs_logvar a float
LIK_GAUSSIAN_TENSOR = tl.constexpr(3)   # obs_logvar a (D,) or (B, D) tensor
LIK_GAUSSIAN_SAMPLES = tl.constexpr(4)  # obs_logvar (K, B, D), one per sample (IWAE rows kernel)

# What a row kernel does with d/dobs_logvar (its GOBS constexpr).
GOBS_NONE = tl.constexpr(0)
GOBS_ROWS = tl.constexpr(1)       # per element, (B, D)
GOBS_PARTIAL = tl.constexpr(2)    # summed over each program's rows, (programs, D)
GOBS_SAMPLES = tl.constexpr(3)    # per sample and element, (K, B, D)

LOG_2 = tl.constexpr(0.6931471805599453)
LOG2_E = tl.constexpr(1.4426950408889634)
LOG_2PI = tl.constexpr(1.8378770664093453)
# What a masked Bernoulli lane reads as its logit where a row's loss is summed from a
# product of (1 + e) factors: e = 2^(-1e4 log2 e) = 0, so its factor is 1, its value
# x*l - max(l, 0) = 0 (x reads 0) and its gradient 0; representable in fp16 too.
MASKED_LOGIT = tl.constexpr(-1.0e4)
FLT_MAX = tl.constexpr(3.4028234663852886e38)
# Below |l| = 1 the continuous Bernoulli's log-partition is a series (truncation 2e-9, its
# derivative's 2e-8 at |l| = 1); above it the closed form's terms are all positive.
CB_SERIES_BELOW = tl.constexpr(1.0)


@triton.jit
def mul(a, b):
    """``tl.reduce``'s product."""
    return a * b


@triton.jit
def to_f32(v):
    """``v.to(tl.float32)``; compiled, a bf16 tile unpacks two elements a 32-bit register
    with one shift and one mask (``cvt.f32.bf16`` costs ptxas a third instruction for
    the upper half). The same bits either way: bf16 is fp32's upper half."""
    if FAST_MATH and v.dtype == tl.bfloat16:
        out = tl.inline_asm_elementwise("{ shl.b32 $0, $2, 16; and.b32 $1, $2, 0xffff0000; }",
                                        "=r,=r,r", [v], dtype=tl.float32, is_pure=True, pack=2)
    else:
        out = v.to(tl.float32)
    return out


@triton.jit
def load_f32(ptr, offsets, mask):
    """A masked tile load, upcast to fp32 at once (masked lanes read 0)."""
    return to_f32(tl.load(ptr + offsets, mask=mask, other=0.0))


@triton.jit
def store_as(ptr, offsets, value, mask):
    """A masked tile store in the pointer's own element type."""
    tl.store(ptr + offsets, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def weigh(d, w, GUARD: tl.constexpr):
    """A sample's partial times its weight ``w`` (softmax * c). ``GUARD``: 0 where the
    weight is 0, for partials that can overflow (a standardized difference squared, or
    divided by a vanishing variance): such a sample has log w ~ -t^2/2, so weight
    exactly 0, and 0 * inf would be NaN."""
    out = d * w
    if GUARD:
        out = tl.where(w == 0.0, 0.0, out)   # a NaN weight stays NaN
    return out


@triton.jit
def exp_(x):
    """e^x as one ``ex2.approx`` (what ``tl.exp`` compiles to as well, spelled out)."""
    return tl.exp2(x * LOG2_E)


@triton.jit
def inv_sd_(s):
    """exp(-s/2), the factor that standardizes a difference d to ``t = d * exp(-s/2)``,
    with its overflow (s < -177.4) held at the largest float: a d of exactly 0, as when
    data equal the mean or a sample its mean, then gives t = 0 and a gradient of 0, the
    exact values, where inf * 0 would be NaN. A nonzero d still squares to the inf the exact
    t^2 rounds to, unless |d| < 5e-20 (then t^2 comes out finite and too small). NaN stays
    NaN."""
    return tl.minimum(exp_(-0.5 * s), FLT_MAX, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def log_(x):
    """ln x as one ``lg2.approx`` compiled (``tl.log`` is a polynomial); exact interpreted."""
    return log2_(x) * LOG_2


@triton.jit
def log2_(x):
    """log2 x as one ``lg2.approx`` compiled; exact interpreted."""
    if FAST_MATH:
        y = libdevice.fast_log2f(x)
    else:
        y = tl.log2(x)
    return y


@triton.jit
def cos_sin_(theta):
    """(cos, sin) of theta in [-pi, pi) as ``cos.approx``/``sin.approx`` compiled (2^-20.9
    absolute there; libdevice's would reduce the range again, dozens of instructions)."""
    if FAST_MATH:
        c = libdevice.fast_cosf(theta)
        s = libdevice.fast_sinf(theta)
    else:
        c = tl.cos(theta)
        s = tl.sin(theta)
    return c, s


@triton.jit
def div_(a, b):
    """a / b as ``div.approx`` compiled (2 ulp; ``/`` is a ~10-instruction ``div.full``)."""
    if FAST_MATH:
        q = libdevice.fast_dividef(a, b)
    else:
        q = a / b
    return q


@triton.jit
def rcp_(x):
    """1 / x as one ``rcp.approx.ftz`` compiled (relative error 2^-23 on normal values, 0
    at +-inf; ``div_(1.0, x)`` adds a multiply), exact interpreted."""
    if FAST_MATH:
        y = tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [x],
                                      dtype=tl.float32, is_pure=True, pack=1)
    else:
        y = 1.0 / x
    return y


@triton.jit
def computed_here(x):
    """fp32 ``x``, computed where this call stands. Compiled, an opaque register move
    that the compiler cannot sink towards ``x``'s use: a gradient tile formed before a
    reduction and stored after it would otherwise be formed after it, keeping its inputs
    live across the reduction instead (three registers an element, not one). ``x`` itself
    interpreted."""
    tl.static_assert(x.dtype == tl.float32)
    if FAST_MATH:
        x = tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                      is_pure=False, pack=1)
    return x


@triton.jit
def lse_shift(m):
    """A logsumexp's shift: the max ``m``, 0 where it is infinite. A row whose every term
    is -inf would give -inf - -inf = NaN; shifted by 0 its sum is 0 and the result -inf.
    A +inf term (a log q past float32, e.g. logvar = -100 with z != mu) would give
    inf - inf = NaN; shifted by 0 the sum is inf and the result +inf, as the reference's."""
    return tl.where(tl.abs(m) < float("inf"), m, 0.0)


@triton.jit
def program_rows(B, BLOCK_B: tl.constexpr):
    """This program's row indices (int64: row offsets overflow int32 on large batches),
    the program id (int64) and the in-range mask."""
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    return pid, rows, rows < B


@triton.jit
def row_block(B, BLOCK_B: tl.constexpr, INT64: tl.constexpr):
    """(program id, its BLOCK_B rows, row mask): int64 only where offsets can pass 2^31
    (``INT64``, decided on the host), int32 arithmetic otherwise."""
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    return pid, rows, rows < B


@triton.jit
def load_data(X, R, OBS, x_off, r_off, obs_off, mask, obs_scalar, LIK: tl.constexpr):
    """(x, recon, obs_logvar) of one tile, fp32; obs_logvar is the scalar unless LIK says
    it is a tensor."""
    x = load_f32(X, x_off, mask)
    r = load_f32(R, r_off, mask)
    if LIK >= LIK_GAUSSIAN_TENSOR:
        s = load_f32(OBS, obs_off, mask)
    else:
        s = obs_scalar
    return x, r, s


@triton.jit
def bernoulli_tile(x, l):
    """Per element: value ``x*l - softplus(l)``, d/dl ``x - sigmoid(l)``.

    ``softplus(l) = max(l, 0) + log(1 + e)`` with ``e = exp(-|l|)`` in (0, 1], so the log's
    argument lies in (1, 2]; ``sigmoid(l) = exp(l - softplus(l)) = exp(min(l, 0) - log(1 +
    e))`` (written without the cancellation of l - softplus(l)): three MUFU operations, no
    division, exact in the tails (large |l| gives e = 0 and sigmoid 0 or 1).
    """
    e = tl.exp2(tl.abs(l) * -LOG2_E)
    # log2(1 + e), kept in bits: scaled into the softplus' fma and subtracted from the
    # sigmoid's exponent in bits (min(l, 0) * log2(e) - log2(1 + e), one fma rounding)
    lg = log2_(1.0 + e)
    # (x*l - max(l, 0)) first: it is exact where x*l and max(l, 0) cancel (x = 1, l > 0),
    # and the small log term is then not rounded away against l
    return (x * l - tl.maximum(l, 0.0)) - lg * LOG_2, x - tl.exp2(tl.minimum(l, 0.0) * LOG2_E - lg)


@triton.jit
def continuous_bernoulli_tile(x, l):
    """Per element: value ``x*l - A(l)``, d/dl ``x - A'(l)`` of the continuous Bernoulli with
    logits l, whose log-partition is ``A(l) = log((e^l - 1) / l)``: its log C(lambda) minus
    the Bernoulli's softplus(l), in which the two log(1 + e^-|l|) cancel.

    For |l| >= CB_SERIES_BELOW, with ``e = exp(-|l|)`` and ``rr = 1 / (|l| (1 - e))``:
    ``A(l) = max(l, 0) + log((1 - e)^2 rr)`` and, with ``c = rr (1 - e (1 + |l|)) =
    A'(-|l|)`` (1 - e (1 + |l|) >= 0.26, 1 - e >= 0.63: no cancellation), ``A'(l) = 1 - c``
    for l >= 0 and ``c`` below: one ex2, one rcp, one lg2. ``x*l - max(l, 0)`` and ``x - 1``
    come first, exact where they cancel (x = 1, large l), so that the small rest, ``-log |l|``
    in the value and ``c ~ 1/|l|`` in the gradient, is not rounded away against l or 1.
    Below, the series ``l/2 + l^2/24 - l^4/2880 + l^6/181440 - l^8/9676800`` and its
    derivative.
    """
    a = tl.abs(l)
    small = a < CB_SERIES_BELOW
    a_safe = tl.where(small, 1.0, a)
    e = tl.exp2(a_safe * -LOG2_E)
    one_m_e = 1.0 - e
    rr = rcp_(a_safe * one_m_e)
    pos = l >= 0.0
    c = rr * (1.0 - e * (1.0 + a_safe))
    m = tl.maximum(l, 0.0)
    log_big = log2_(one_m_e * one_m_e * rr) * LOG_2
    g_big = (x - tl.where(pos, 1.0, 0.0)) + tl.where(pos, c, -c)
    l2 = l * l
    a_series = l * 0.5 + l2 * (1.0 / 24.0 + l2 * (-1.0 / 2880.0 + l2 * (
        1.0 / 181440.0 + l2 * (-1.0 / 9676800.0))))
    d_series = 0.5 + l * (1.0 / 12.0 + l2 * (-1.0 / 720.0 + l2 * (
        1.0 / 30240.0 + l2 * (-1.0 / 1209600.0))))
    return ((x * l - m) - tl.where(small, a_series - m, log_big),
            tl.where(small, x - d_series, g_big))


@triton.jit
def likelihood_tile(x, r, s, LIK: tl.constexpr):
    """One tile of log p(x|z): (value, d/drecon, d/dx, d/dobs_logvar) per element.

    ``s`` is the observation log-variance (a scalar or a tile; Gaussian only). The
    Bernoulli likelihoods have no d/dobs_logvar: theirs is a 0.0 the callers never store.
    """
    if LIK >= LIK_GAUSSIAN_SCALAR:
        inv_sd = inv_sd_(s)
        t = (x - r) * inv_sd
        g_r = t * inv_sd
        sq = t * t
        value = -0.5 * (sq + s + LOG_2PI)
        g_s = 0.5 * (sq - 1.0)
        g_x = -g_r
    else:
        if LIK == LIK_CONTINUOUS_BERNOULLI:
            value, g_r = continuous_bernoulli_tile(x, r)
        else:
            value, g_r = bernoulli_tile(x, r)
        g_x = r
        g_s = 0.0
    return value, g_r, g_x, g_s


@triton.jit
def kl_tile(mu, lv, z, KL_MC: tl.constexpr):
    """Per latent: (KL term, d/dmu, d/dlogvar, d/dz) of the analytic KL to N(0, I)
    or, with ``KL_MC``, of the single-sample ``log q(z|x) - log p(z)`` (the analytic KL
    has no d/dz: a 0.0 the callers never store)."""
    if KL_MC:
        inv_sd = inv_sd_(lv)
        t = (z - mu) * inv_sd   # the standardized sample: moderate even where 1/var overflows
        d_mu = t * inv_sd
        sq = t * t
        # z^2 - t^2 as a product: far from both means (|z| ~ 1e20) the squares overflow
        # to inf - inf, while their difference is moderate
        value = 0.5 * ((z - t) * (z + t) - lv)
        d_lv = 0.5 * (sq - 1.0)
        d_z = z - d_mu
    else:
        half_var = exp_(lv - LOG_2)
        value = 0.5 * (mu * mu - 1.0 - lv) + half_var
        d_mu = mu
        d_lv = half_var - 0.5
        d_z = 0.0
    return value, d_mu, d_lv, d_z


@triton.jit
def load_prior(PM, PLV, pm_off, plv_off, mask, PRIOR: tl.constexpr):
    """The prior's (mean, log-variance) tile in fp32 with ``PRIOR``; else the scalars 0.0
    (N(0, I): nothing is read, and :func:`latent_kl_tile` never uses them)."""
    if PRIOR:
        pm = load_f32(PM, pm_off, mask)
        plv = load_f32(PLV, plv_off, mask)
    else:
        pm = 0.0
        plv = 0.0
    return pm, plv


@triton.jit
def kl_prior_tile(mu, lv, z, pm, plv, KL_MC: tl.constexpr):
    """Per latent, to the prior N(pm, exp(plv)): (KL term, d/dmu, d/dlogvar, d/dz,
    d/dprior_mu, d/dprior_logvar).

    Analytic: with ``u = (mu - pm) * exp(-plv/2)``, ``r = exp(lv - plv)``:
    ``0.5 * (plv - lv + r + u^2 - 1)``; d/dmu ``u * exp(-plv/2)`` (= -d/dpm), d/dlv
    ``0.5 * (r - 1)``, d/dplv ``0.5 * (1 - r - u^2)``. ``KL_MC``: the single-sample
    ``log q(z|x) - log p(z) = 0.5 * (tp^2 + plv - t^2 - lv)`` with the standardized
    ``t = (z - mu) * exp(-lv/2)`` and ``tp = (z - pm) * exp(-plv/2)``. With
    ``pm = plv = 0`` both are :func:`kl_tile`'s.
    """
    inv_sdp = inv_sd_(plv)
    if KL_MC:
        inv_sd = inv_sd_(lv)
        t = (z - mu) * inv_sd
        tp = (z - pm) * inv_sdp
        d_mu = t * inv_sd
        d_pm = -(tp * inv_sdp)
        sq = t * t
        sqp = tp * tp
        value = 0.5 * ((tp - t) * (tp + t) + plv - lv)
        d_lv = 0.5 * (sq - 1.0)
        d_plv = 0.5 * (1.0 - sqp)
        d_z = -d_pm - d_mu
    else:
        u = (mu - pm) * inv_sdp
        # 0.5 r as one exponential of the difference, less log 2: exp(lv) * exp(-plv)
        # overflows first, and e^89 / 2 fits float32 where e^89 does not
        half_r = exp_(lv - plv - LOG_2)
        sq = u * u
        value = 0.5 * (plv - lv + sq - 1.0) + half_r
        d_mu = u * inv_sdp
        d_pm = -d_mu
        d_lv = half_r - 0.5
        d_plv = 0.5 * (1.0 - sq) - half_r
        d_z = 0.0
    return value, d_mu, d_lv, d_z, d_pm, d_plv


@triton.jit
def latent_kl_tile(mu, lv, z, pm, plv, KL_MC: tl.constexpr, PRIOR: tl.constexpr):
    """:func:`kl_prior_tile` with ``PRIOR``, else :func:`kl_tile` (no prior gradients:
    0.0s the callers never store): the KL part of every row kernel."""
    if PRIOR:
        value, d_mu, d_lv, d_z, d_pm, d_plv = kl_prior_tile(mu, lv, z, pm, plv, KL_MC)
    else:
        value, d_mu, d_lv, d_z = kl_tile(mu, lv, z, KL_MC)
        d_pm = 0.0
        d_plv = 0.0
    return value, d_mu, d_lv, d_z, d_pm, d_plv


@triton.jit
def log_px_value(x, r, s, LIK: tl.constexpr):
    """log p(x|z) per element, the value alone (the IWAE kernels' log-weights).
    Bernoulli: ``x*l - max(l, 0) - log(1 + exp(-|l|))``, one ex2 and one lg2
    (``bernoulli_tile``'s value without its gradient's work); the other likelihoods:
    ``likelihood_tile``'s value (the compiler drops the unused gradients)."""
    if LIK == LIK_BERNOULLI:
        value = x * r - tl.maximum(r, 0.0) - log_(1.0 + tl.exp2(tl.abs(r) * -LOG2_E))
    else:
        value, g_r, g_x, g_s = likelihood_tile(x, r, s, LIK)
    return value
