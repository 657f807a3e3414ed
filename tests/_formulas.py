"""Independent float64 formulas for the op suites, written from the math of the design
notes (shared/DESIGN.md, "The math").

Nothing here imports fastvae: ``fastvae.reference`` is under test too, so every backend,
the reference included, is checked against these. Every function upcasts its tensor
arguments to float64 and keeps the autograd graph (so gradients of the formulas serve
as the expected gradients). Comparing with them: tests/_compare.py.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG2 = math.log(2.0)
LOG_2PI = math.log(2.0 * math.pi)


def d(t):
    """float64 view of a tensor (keeps autograd), floats unchanged."""
    return t.double() if isinstance(t, torch.Tensor) else float(t)


# -- per-element terms -------------------------------------------------------------

def softplus(l):
    """log(1 + e^l), stable, with the exact derivative sigmoid(l) everywhere (a
    clamp/abs form would give autograd's subgradient 1 instead of 0.5 at l = 0)."""
    l = d(l)
    return torch.logaddexp(torch.zeros_like(l), l)


def bernoulli_ll(x, l):
    """x*l - softplus(l), elementwise."""
    return d(x) * d(l) - softplus(l)


def log_tanh(a):
    """log(tanh a) for a > 0, without cancellation: log((1-e)/(1+e)), e = exp(-2a)."""
    e = torch.exp(-2 * a)
    return torch.log1p(-e) - torch.log1p(e)


def cb_log_norm(l):
    """log C(l) = log 2 + log(u / tanh u), u = l/2: a three-term series below |u| < 1e-2
    (next term ~ u^8, below 1e-16 there), the log-tanh form elsewhere."""
    u = d(l) / 2
    a = u.abs()
    small = a < 1e-2
    a_safe = torch.where(small, torch.ones_like(a), a)
    exact = torch.log(a_safe) - log_tanh(a_safe)
    u2 = u * u
    series = u2 / 3 - 7 * u2 * u2 / 90 + 62 * u2 * u2 * u2 / 2835
    return LOG2 + torch.where(small, series, exact)


def cb_log_norm_mpmath(l: float, dps: int | None = None) -> float:
    """High-precision log C(l) = log(2 artanh(1-2p) / (1-2p)), p = sigmoid(l) (the paper's form)."""
    import mpmath

    # 1 - 2p loses ~|l|/2.3 digits to cancellation: carry that many more
    with mpmath.workdps(dps or 40 + int(abs(l))):
        l = mpmath.mpf(l)
        if l == 0:
            return float(mpmath.log(2))
        p = 1 / (1 + mpmath.exp(-l))
        q = 1 - 2 * p
        return float(mpmath.log(2 * mpmath.atanh(q) / q))


def cb_log_norm_grad_mpmath(l: float, dps: int = 50) -> float:
    import mpmath

    with mpmath.workdps(dps):
        if l == 0:
            return 0.0
        u = mpmath.mpf(l) / 2
        return float(0.5 * (1 / u - 1 / mpmath.tanh(u) + mpmath.tanh(u)))


def _cb_decimal(l: float, grad: bool) -> float:
    """log C(l) = log(l / tanh(l/2)), or its derivative 1/l - 1/sinh l, in ``decimal``
    (no mpmath): ``l`` is taken exactly and carried with 60 digits plus those the
    derivative's two ~1/|l| terms cancel (2 per decade below 1); the one rounding is float()'s."""
    import decimal

    if l == 0:
        return 0.0 if grad else LOG2
    a = abs(l)
    ctx = decimal.Context(prec=60 + max(0, -2 * math.floor(math.log10(a))))
    x = decimal.Decimal(a)
    ex = ctx.exp(x)
    if grad:
        inv_sinh = ctx.divide(2, ctx.subtract(ex, ctx.divide(1, ex)))
        return math.copysign(float(ctx.subtract(ctx.divide(1, x), inv_sinh)), l)
    coth_half = ctx.divide(ctx.add(ex, 1), ctx.subtract(ex, 1))      # 1 / tanh(a/2)
    return float(ctx.ln(ctx.multiply(x, coth_half)))


def cb_log_norm_decimal(l: float) -> float:
    return _cb_decimal(l, grad=False)


def cb_log_norm_grad_decimal(l: float) -> float:
    return _cb_decimal(l, grad=True)


def gaussian_ll(x, m, s):
    """-0.5 * ((x-m)^2 * exp(-s) + s + log(2 pi)), elementwise; s a float or tensor."""
    s = d(s)
    inv = torch.exp(-s) if isinstance(s, torch.Tensor) else math.exp(-s)
    return -0.5 * ((d(x) - d(m)) ** 2 * inv + s + LOG_2PI)


def kl_analytic_dim(mu, lv):
    mu, lv = d(mu), d(lv)
    return 0.5 * (mu * mu + torch.exp(lv) - 1 - lv)


def kl_mc_dim(z, mu, lv):
    """log q(z|x) - log p(z) per latent dim (the log 2pi terms cancel)."""
    return kl_mc_prior_dim(z, mu, lv, 0.0, 0.0)


def kl_normal_dim(mu_q, lv_q, mu_p, lv_p):
    """KL(N(mu_q, e^lv_q) || N(mu_p, e^lv_p)) per element, the textbook form
    0.5 * (lv_p - lv_q + (e^lv_q + (mu_q - mu_p)^2) / e^lv_p - 1), in float64."""
    mu_q, lv_q, mu_p, lv_p = d(mu_q), d(lv_q), d(mu_p), d(lv_p)
    exp = torch.exp if isinstance(lv_p, torch.Tensor) else math.exp
    return 0.5 * (lv_p - lv_q + (torch.exp(lv_q) + (mu_q - mu_p) ** 2) / exp(lv_p) - 1)


def kl_mc_prior_dim(z, mu, lv, mu_p, lv_p):
    """log q(z|x) - log p(z) per latent dim with p = N(mu_p, e^lv_p):
    ``0.5 * (tp^2 - t^2 + lv_p - lv)``, the standardized samples ``t = (z - mu) / e^(lv/2)``
    and ``tp = (z - mu_p) / e^(lv_p/2)``. The squares' difference is valued as
    ``(tp - t)(tp + t)`` (for a sample 1e20 from both means each square rounds by ~1e24
    even in float64) and differentiated as the squares (the product's derivative cancels
    where one of |tp|, |t| is far below the other)."""
    z, mu, lv, mu_p, lv_p = d(z), d(mu), d(lv), d(mu_p), d(lv_p)
    exp = torch.exp if isinstance(lv_p, torch.Tensor) else math.exp
    t, tp = (z - mu) / torch.exp(lv / 2), (z - mu_p) / exp(lv_p / 2)
    squares = tp * tp - t * t
    value = ((tp - t) * (tp + t)).detach() + (squares - squares.detach())
    return 0.5 * (value + lv_p - lv)


# -- per-sample and reduced ----------------------------------------------------------

def log_likelihood(x, recon, likelihood, obs_logvar=0.0):
    """log p(x|z) per sample: x, recon (B, *) -> (B,) (or (K, B, *) -> (K, B))."""
    lead = recon.dim() - x.dim() + 1
    if likelihood == "bernoulli":
        e = bernoulli_ll(x, recon)
    elif likelihood == "continuous_bernoulli":
        e = bernoulli_ll(x, recon) + cb_log_norm(recon)
    elif likelihood == "gaussian":
        e = gaussian_ll(x, recon, obs_logvar)
    else:
        raise AssertionError(likelihood)
    if isinstance(e, torch.Tensor) and e.shape != recon.shape:
        e = e.expand(recon.shape)
    per_row = math.prod(recon.shape[lead:])
    return e.reshape(*recon.shape[:lead], per_row).sum(-1)


def reduce(per_sample, reduction):
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    return per_sample.sum() / max(per_sample.shape[0], 1)


def elbo(x, recon, mu, logvar, likelihood="bernoulli", kl="analytic", z=None, beta=1.0,
         free_bits=0.0, obs_logvar=0.0, reduction="mean", prior_mu=None, prior_logvar=None):
    log_px = log_likelihood(x, recon, likelihood, obs_logvar)
    if prior_mu is not None or prior_logvar is not None:
        pm = 0.0 if prior_mu is None else prior_mu
        plv = 0.0 if prior_logvar is None else prior_logvar
        kl_bl = (kl_normal_dim(mu, logvar, pm, plv) if kl == "analytic"
                 else kl_mc_prior_dim(z, mu, logvar, pm, plv))
    else:
        kl_bl = kl_analytic_dim(mu, logvar) if kl == "analytic" else kl_mc_dim(z, mu, logvar)
    if free_bits > 0 and kl_bl.shape[0] > 0:
        # Kingma et al. 2016: a dim whose batch-mean KL is below free_bits counts as the
        # constant free_bits for every sample (no gradient).
        below = kl_bl.detach().mean(0, keepdim=True) < free_bits
        kl_bl = torch.where(below, torch.full_like(kl_bl, free_bits), kl_bl)
    return reduce(log_px - beta * kl_bl.sum(-1), reduction)


def iwae(x, recon_k, mu, logvar, z_k, likelihood="bernoulli", obs_logvar=0.0, reduction="none",
         prior_mu=None, prior_logvar=None):
    """Brute-force float64 importance-weighted bound: logsumexp_k log w_k - log K."""
    k = recon_k.shape[0]
    log_w = log_likelihood(x, recon_k, likelihood, obs_logvar)
    if prior_mu is None and prior_logvar is None:
        log_w = log_w - kl_mc_dim(z_k, mu.unsqueeze(0), logvar.unsqueeze(0)).sum(-1)
    else:
        log_w = log_w - kl_mc_prior_dim(z_k, mu.unsqueeze(0), logvar.unsqueeze(0),
                                        0.0 if prior_mu is None else prior_mu,
                                        0.0 if prior_logvar is None else prior_logvar).sum(-1)
    m = log_w.detach().max(0).values
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    lse = m + torch.log(torch.exp(log_w - m).sum(0))
    return reduce(lse - math.log(k), reduction)


def examples_loss_function(recon_logits, x, mu, logvar):
    """pytorch/examples' VAE loss_function, BCE-with-logits form (verbatim)."""
    BCE = F.binary_cross_entropy_with_logits(recon_logits, x, reduction="sum")
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


# -- discretized mixture of logistics ------------------------------------------------

def dmol_split(params, channels: int):
    """(logits, [(means, log_scales, coeffs or None) per channel]) of NVAE's layout,
    float64: ``[logits | ch 0: means, log_scales, coeffs | ch 1: ...]`` (C = 1: no coeffs)."""
    p = d(params)
    per = 3 if channels == 3 else 2
    m = p.shape[1] // (1 + per * channels)
    chans = []
    for c in range(channels):
        base = m + per * m * c
        chans.append((p[:, base:base + m], p[:, base + m:base + 2 * m],
                      p[:, base + 2 * m:base + 3 * m] if per == 3 else None))
    return p[:, :m], chans


def _log1mexp(t):
    """log(1 - e^t) for t < 0 (Maechler's split at -log 2); t = 0 gives -inf."""
    return torch.where(t > -0.6931471805599453, torch.log(-torch.expm1(t)),
                       torch.log1p(-torch.exp(t)))


def _log_bin(a, b, top, bottom):
    """log of a logistic bin's mass, F(a) - F(b) (a > b), in log space from the side of
    the CDF where both are small; ``F(a)`` in the bottom bin, ``1 - F(b)`` in the top one.
    Every branch sees sanitized arguments, so the discarded ones take no NaN into the
    gradient."""
    logsig = torch.nn.functional.logsigmoid
    above = b > 0  # 1 - F(b) - (1 - F(a)): both terms small above the mean
    hi = torch.where(above, -b, a)
    lo = torch.where(above, -a, b)
    inner = ~(top | bottom)
    diff = torch.where(inner, logsig(lo) - logsig(hi), torch.full_like(hi, -1.0))
    between = logsig(hi) + _log1mexp(diff)
    return torch.where(bottom, logsig(a), torch.where(top, logsig(-b), between))


def dmol_log_prob(x, params, bits: int = 8):
    """Per-sample log p of on-grid x (B, C, H, W) under the DMoL ``params``, from bin
    masses in float64 log space: ``F(y+h) - F(y-h)``, ``F(y+h)`` in the bottom bin,
    ``1 - F(y-h)`` in the top one (F the logistic CDF, bins by integer), each inner bin
    as ``log F(hi) + log(1 - F(lo)/F(hi))`` from the side where both are small. Values
    and autograd gradients stay finite and exact to float64 rounding while a bin's
    relative width ``2 h e^-s`` is not far below 1e-13 (log-scales up to ~25); the
    clamp at -7 bounds the other side."""
    x = d(x).detach()
    n = 2 ** bits - 1
    k = torch.round(x * n)
    y = 2 * k / n - 1
    logits, chans = dmol_split(params, x.shape[1])
    t = [None if co is None else torch.tanh(co) for _, _, co in chans]
    total = 0.0
    for c, (mean, ls, _) in enumerate(chans):
        if c == 1:
            mean = mean + t[0] * y[:, :1]
        if c == 2:
            mean = mean + t[1] * y[:, :1] + t[2] * y[:, 1:2]
        inv_s = torch.exp(-ls.clamp(min=-7.0))
        yc, kc = y[:, c:c + 1], k[:, c:c + 1]
        a, b = (yc - mean + 1.0 / n) * inv_s, (yc - mean - 1.0 / n) * inv_s
        top, bottom = (kc == n).expand_as(a), (kc == 0).expand_as(a)
        total = total + _log_bin(a, b, top, bottom)
    return torch.logsumexp(torch.log_softmax(logits, 1) + total, 1).sum((1, 2))


def dmol_log_prob_mpmath(x, params, bits: int = 8, dps: int = 100) -> float:
    """log p of one pixel (x: C floats on the grid; params: S*M floats) in mpmath at
    ``dps`` digits, from the same bin probabilities (each taken from the side of the CDF
    where it is small): the oracle at extreme parameters. A bin of relative width w
    loses log10(1/w) digits to the difference: dps 100 serves log-scales up to ~130."""
    import mpmath
    with mpmath.workdps(dps):
        c_n = len(x)
        n = 2 ** bits - 1
        per = 3 if c_n == 3 else 2
        m = len(params) // (1 + per * c_n)
        p = [mpmath.mpf(float(v)) for v in params]
        k = [int(round(float(v) * n)) for v in x]
        y = [mpmath.mpf(2 * ki) / n - 1 for ki in k]

        def cdf(t):
            return 1 / (1 + mpmath.exp(-t))

        def between(a, b):  # F(a) - F(b), a > b, from the side where both are small
            return cdf(-b) - cdf(-a) if b > 0 else cdf(a) - cdf(b)

        terms = []
        for j in range(m):
            log_mass = p[j] - mpmath.log(mpmath.fsum(mpmath.exp(v) for v in p[:m]))
            for c in range(c_n):
                base = m + per * m * c
                mean, ls = p[base + j], max(p[base + m + j], mpmath.mpf(-7))
                if c == 1:
                    mean += mpmath.tanh(p[m + 2 * m + j]) * y[0]
                if c == 2:
                    mean += (mpmath.tanh(p[m + per * m + 2 * m + j]) * y[0]
                             + mpmath.tanh(p[m + 2 * per * m + 2 * m + j]) * y[1])
                inv_s = mpmath.exp(-ls)
                a = (y[c] - mean + mpmath.mpf(1) / n) * inv_s
                b = (y[c] - mean - mpmath.mpf(1) / n) * inv_s
                mass = cdf(a) if k[c] == 0 else (cdf(-b) if k[c] == n else between(a, b))
                log_mass += mpmath.log(mass)
            terms.append(log_mass)
        top = max(terms)
        return float(top + mpmath.log(mpmath.fsum(mpmath.exp(t - top) for t in terms)))
