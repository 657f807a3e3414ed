"""Shared ``@triton.jit`` math for the fastvae kernels: one tile of a likelihood, one
tile of a KL term, each returning its value *and* its partial derivatives.

All arguments are fp32 tiles (loads upcast at once, see the kernels); every formula
is the stable form that ``fastvae.backends.closed_form`` uses, so the two backends
agree to fp32 rounding. Only ``tl.exp``/``tl.log`` and elementary arithmetic are
used, so the same code runs compiled (PTX) and under ``TRITON_INTERPRET=1``.

Likelihood codes (the ``LIK`` constexpr of the row kernels):
    0 Bernoulli (logits), 1 continuous Bernoulli (logits),
    2 Gaussian with a scalar observation log-variance, 3 Gaussian with a tensor one.
"""
import triton
import triton.language as tl

LIK_BERNOULLI = 0
LIK_CONTINUOUS_BERNOULLI = 1
LIK_GAUSSIAN_SCALAR = 2
LIK_GAUSSIAN_TENSOR = 3

LOG_2 = 0.6931471805599453
LOG_2PI = 1.8378770664093453
# Below |u| = 0.25 the four-term series of log(u / tanh u) is exact to ~1e-9; above it
# the closed form has no cancellation worth the name (tanh(0.25) is 0.245).
CB_SERIES_BELOW = 0.25


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

    tanh from one exp (|u| >= 0.25 only, so 1 - exp(-2|u|) does not cancel); the
    series u^2/3 - 7u^4/90 + 62u^6/2835 - 127u^8/18900 below that.
    """
    u = 0.5 * l
    a = tl.abs(u)
    small = a < 0.25
    a_safe = tl.where(small, 1.0, a)
    em = tl.exp(-2.0 * a_safe)
    t = (1.0 - em) / (1.0 + em)
    exact = tl.log(a_safe) - tl.log(t)
    u2 = u * u
    series = u2 * (1.0 / 3.0 + u2 * (-7.0 / 90.0 + u2 * (62.0 / 2835.0 + u2 * (-127.0 / 18900.0))))
    value = tl.where(small, series, exact) + 0.6931471805599453
    sgn = tl.where(u >= 0.0, 1.0, -1.0)
    d_exact = sgn * (1.0 / a_safe - 1.0 / t + t)
    d_series = u * (2.0 / 3.0 + u2 * (-14.0 / 45.0 + u2 * (124.0 / 945.0 + u2 * (-254.0 / 4725.0))))
    return value, 0.5 * tl.where(small, d_series, d_exact)


@triton.jit
def likelihood_tile(x, r, s, LIK: tl.constexpr):
    """One tile of log p(x|z): (value, d/drecon, d/dx, d/dobs_logvar) per element.

    ``s`` is the observation log-variance (a scalar or a tile; ignored unless Gaussian).
    """
    if LIK >= 2:
        inv_var = tl.exp(-s)
        diff = x - r
        g_r = diff * inv_var
        sq = diff * g_r
        value = -0.5 * (sq + s + 1.8378770664093453)
        g_s = 0.5 * (sq - 1.0)
        g_x = -g_r
    else:
        value, g_r = bernoulli_tile(x, r)
        if LIK == 1:
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
        inv_var = tl.exp(-lv)
        diff = z - mu
        d_mu = diff * inv_var
        sq = diff * d_mu
        value = 0.5 * (z * z - sq - lv)
        d_lv = 0.5 * (sq - 1.0)
        d_z = z - d_mu
    else:
        var = tl.exp(lv)
        value = 0.5 * (mu * mu + var - 1.0 - lv)
        d_mu = mu
        d_lv = 0.5 * (var - 1.0)
        d_z = z * 0.0
    return value, d_mu, d_lv, d_z
