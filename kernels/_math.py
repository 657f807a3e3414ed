"""Shared ``@triton.jit`` math and memory helpers for the fastvae kernels: one tile of a
likelihood, one tile of a KL term, each returning its value *and* its partial
derivatives, plus the load/store idioms every kernel repeats.

All arithmetic is on fp32 tiles (``load_f32`` upcasts at once; the interpreter gets bf16
arithmetic wrong, and real kernels should not do it either); every formula is the
stable form that ``fastvae.backends.torch_backend.terms`` uses, so the two backends
agree to fp32 rounding. Only ``tl.exp``/``tl.log`` and elementary arithmetic are used,
so the same code runs compiled and under ``TRITON_INTERPRET=1``. No exponential is
multiplied into a product that can overflow where the result does not:
``(d * exp(-s/2))^2``, never ``d^2 * exp(-s)``.
"""
import triton
import triton.language as tl

# The LIK constexpr of the row kernels.
LIK_BERNOULLI = tl.constexpr(0)
LIK_CONTINUOUS_BERNOULLI = tl.constexpr(1)
LIK_GAUSSIAN_SCALAR = tl.constexpr(2)   # obs_logvar a float
LIK_GAUSSIAN_TENSOR = tl.constexpr(3)   # obs_logvar a (D,) or (B, D) tensor

# Bits of the runtime ``flags`` argument of the row kernels: which outputs to write.
NEED_GX = tl.constexpr(1)
NEED_GR = tl.constexpr(2)
NEED_GOBS_ROWS = tl.constexpr(4)       # d/dobs per element, (B, D)
NEED_GOBS_PARTIAL = tl.constexpr(8)    # d/dobs summed over each program's rows, (programs, D)
NEED_GMU = tl.constexpr(16)
NEED_GLV = tl.constexpr(32)
NEED_GZ = tl.constexpr(64)
KL_MC = tl.constexpr(128)              # the single-sample KL from z, else the analytic one
STORE_KL = tl.constexpr(256)           # save the per-latent KL (B, L) for free bits
PRIOR = tl.constexpr(512)              # a learned prior N(prior_mu, exp(prior_logvar)), else N(0, I)
NEED_GPM = tl.constexpr(1024)          # d/dprior_mu per latent, (B, L)
NEED_GPLV = tl.constexpr(2048)         # d/dprior_logvar per latent, (B, L)
NEED_DATA_GRADS = tl.constexpr(1 | 2 | 4 | 8)
NEED_LATENT_GRADS = tl.constexpr(16 | 32 | 64 | 1024 | 2048)

LOG_2 = tl.constexpr(0.6931471805599453)
LOG_2PI = tl.constexpr(1.8378770664093453)
# Below |u| = 0.25 the four-term series of log(u / tanh u) is exact to ~1e-9; above it
# the closed form has no cancellation worth the name (tanh(0.25) is 0.245).
CB_SERIES_BELOW = tl.constexpr(0.25)


@triton.jit
def load_f32(ptr, offsets, mask):
    """A masked tile load, upcast to fp32 at once (masked lanes read 0)."""
    return tl.load(ptr + offsets, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def store_as(ptr, offsets, value, mask):
    """A masked tile store in the pointer's own element type."""
    tl.store(ptr + offsets, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def program_rows(B, BLOCK_B: tl.constexpr):
    """This program's row indices (int64: row offsets overflow int32 on large batches),
    the program id (int64) and the in-range mask."""
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    return pid, rows, rows < B


@triton.jit
def load_data(X, R, OBS, x_off, r_off, obs_off, mask, obs_scalar, LIK: tl.constexpr):
    """(x, recon, obs_logvar) of one tile, fp32; obs_logvar is the scalar unless LIK says
    it is a tensor."""
    x = load_f32(X, x_off, mask)
    r = load_f32(R, r_off, mask)
    if LIK == LIK_GAUSSIAN_TENSOR:
        s = load_f32(OBS, obs_off, mask)
    else:
        s = obs_scalar
    return x, r, s


@triton.jit
def log1p_small(e):
    """log(1 + e) for e in [0, 1], accurate where e << 1 (Goldberg's trick, no libdevice)."""
    w = 1.0 + e
    d = w - 1.0
    return tl.where(d == 0.0, e, tl.log(w) * (e / tl.where(d == 0.0, 1.0, d)))


@triton.jit
def bernoulli_tile(x, l):
    """Per element: value ``x*l - softplus(l)``, d/dl ``x - sigmoid(l)``."""
    e = tl.exp(-tl.abs(l))
    softplus = tl.maximum(l, 0.0) + log1p_small(e)
    inv = 1.0 / (1.0 + e)
    sig = tl.where(l >= 0.0, inv, e * inv)
    return x * l - softplus, x - sig


@triton.jit
def cb_log_norm_tile(l):
    """log C(l) = log 2 + log(u / tanh u), u = l/2, and its derivative in l.

    tanh from one exp (|u| >= CB_SERIES_BELOW only, so 1 - exp(-2|u|) does not cancel);
    the series u^2/3 - 7u^4/90 + 62u^6/2835 - 127u^8/18900 below that.
    """
    u = 0.5 * l
    a = tl.abs(u)
    small = a < CB_SERIES_BELOW
    a_safe = tl.where(small, 1.0, a)
    em = tl.exp(-2.0 * a_safe)
    t = (1.0 - em) / (1.0 + em)
    exact = tl.log(a_safe) - tl.log(t)
    u2 = u * u
    series = u2 * (1.0 / 3.0 + u2 * (-7.0 / 90.0 + u2 * (62.0 / 2835.0 + u2 * (-127.0 / 18900.0))))
    value = tl.where(small, series, exact) + LOG_2
    sgn = tl.where(u >= 0.0, 1.0, -1.0)
    d_exact = sgn * (1.0 / a_safe - 1.0 / t + t)
    d_series = u * (2.0 / 3.0 + u2 * (-14.0 / 45.0 + u2 * (124.0 / 945.0 + u2 * (-254.0 / 4725.0))))
    return value, 0.5 * tl.where(small, d_series, d_exact)


@triton.jit
def likelihood_tile(x, r, s, LIK: tl.constexpr):
    """One tile of log p(x|z): (value, d/drecon, d/dx, d/dobs_logvar) per element.

    ``s`` is the observation log-variance (a scalar or a tile; ignored unless Gaussian).
    """
    if LIK >= LIK_GAUSSIAN_SCALAR:
        inv_sd = tl.exp(-0.5 * s)
        t = (x - r) * inv_sd
        g_r = t * inv_sd
        sq = t * t
        value = -0.5 * (sq + s + LOG_2PI)
        g_s = 0.5 * (sq - 1.0)
        g_x = -g_r
    else:
        value, g_r = bernoulli_tile(x, r)
        if LIK == LIK_CONTINUOUS_BERNOULLI:
            log_c, d_log_c = cb_log_norm_tile(r)
            value += log_c
            g_r += d_log_c
        g_x = r
        g_s = r * 0.0
    return value, g_r, g_x, g_s


@triton.jit
def kl_tile(mu, lv, z, is_mc):
    """Per latent: (KL term, d/dmu, d/dlogvar, d/dz) of the analytic KL to N(0, I)
    or, when ``is_mc``, of the single-sample ``log q(z|x) - log p(z)``."""
    if is_mc:
        inv_sd = tl.exp(-0.5 * lv)
        t = (z - mu) * inv_sd   # the standardized sample: moderate even where 1/var overflows
        d_mu = t * inv_sd
        sq = t * t
        value = 0.5 * (z * z - sq - lv)
        d_lv = 0.5 * (sq - 1.0)
        d_z = z - d_mu
    else:
        half_var = tl.exp(lv - LOG_2)
        value = 0.5 * (mu * mu - 1.0 - lv) + half_var
        d_mu = mu
        d_lv = half_var - 0.5
        d_z = z * 0.0
    return value, d_mu, d_lv, d_z


@triton.jit
def load_prior(PM, PLV, pm_off, plv_off, mask, has_prior):
    """The prior's (mean, log-variance) tile in fp32, or zeros (N(0, I)) without one."""
    if has_prior:
        pm = load_f32(PM, pm_off, mask)
        plv = load_f32(PLV, plv_off, mask)
    else:
        pm = tl.zeros_like(pm_off).to(tl.float32)
        plv = pm
    return pm, plv


@triton.jit
def kl_prior_tile(mu, lv, z, pm, plv, is_mc):
    """Per latent, to the prior N(pm, exp(plv)): (KL term, d/dmu, d/dlogvar, d/dz,
    d/dprior_mu, d/dprior_logvar).

    Analytic: with ``d = mu - pm``, ``u = d * exp(-plv/2)``, ``r = exp(lv - plv)``:
    ``0.5 * (plv - lv + r + u^2 - 1)``; d/dmu ``u * exp(-plv/2)`` (= -d/dpm), d/dlv
    ``0.5 * (r - 1)``, d/dplv ``0.5 * (1 - r - u^2)``. "mc" (``is_mc``): the
    single-sample ``log q(z|x) - log p(z) = 0.5 * (tp^2 + plv - t^2 - lv)`` with the
    standardized ``t = (z - mu) * exp(-lv/2)`` and ``tp = (z - pm) * exp(-plv/2)``.
    With ``pm = plv = 0`` both are :func:`kl_tile`'s.
    """
    inv_sdp = tl.exp(-0.5 * plv)
    if is_mc:
        inv_sd = tl.exp(-0.5 * lv)
        t = (z - mu) * inv_sd
        tp = (z - pm) * inv_sdp
        d_mu = t * inv_sd
        d_pm = -(tp * inv_sdp)
        sq = t * t
        sqp = tp * tp
        value = 0.5 * (sqp + plv - sq - lv)
        d_lv = 0.5 * (sq - 1.0)
        d_plv = 0.5 * (1.0 - sqp)
        d_z = -d_pm - d_mu
    else:
        u = (mu - pm) * inv_sdp
        r = tl.exp(lv - plv)   # one exponential of the difference: exp(lv) * exp(-plv) overflows
        sq = u * u
        value = 0.5 * (plv - lv + r + sq - 1.0)
        d_mu = u * inv_sdp
        d_pm = -d_mu
        d_lv = 0.5 * (r - 1.0)
        d_plv = 0.5 * (1.0 - r - sq)
        d_z = z * 0.0
    return value, d_mu, d_lv, d_z, d_pm, d_plv


@triton.jit
def latent_kl_tile(mu, lv, z, pm, plv, is_mc, has_prior):
    """:func:`kl_prior_tile` when ``has_prior`` (a runtime flag, so no new specialization),
    else :func:`kl_tile` with zero prior gradients: the KL part of every row kernel."""
    if has_prior:
        value, d_mu, d_lv, d_z, d_pm, d_plv = kl_prior_tile(mu, lv, z, pm, plv, is_mc)
    else:
        value, d_mu, d_lv, d_z = kl_tile(mu, lv, z, is_mc)
        d_pm = d_mu * 0.0
        d_plv = d_pm
    return value, d_mu, d_lv, d_z, d_pm, d_plv
