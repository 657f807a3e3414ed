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
    z, mu, lv = d(z), d(mu), d(lv)
    return -0.5 * ((z - mu) ** 2 * torch.exp(-lv) + lv) + 0.5 * z * z


def kl_normal_dim(mu_q, lv_q, mu_p, lv_p):
    """KL(N(mu_q, e^lv_q) || N(mu_p, e^lv_p)) per element, the textbook form
    0.5 * (lv_p - lv_q + (e^lv_q + (mu_q - mu_p)^2) / e^lv_p - 1), in float64."""
    mu_q, lv_q, mu_p, lv_p = d(mu_q), d(lv_q), d(mu_p), d(lv_p)
    exp = torch.exp if isinstance(lv_p, torch.Tensor) else math.exp
    return 0.5 * (lv_p - lv_q + (torch.exp(lv_q) + (mu_q - mu_p) ** 2) / exp(lv_p) - 1)


def kl_mc_prior_dim(z, mu, lv, mu_p, lv_p):
    """log q(z|x) - log p(z) per latent dim with p = N(mu_p, e^lv_p)."""
    z, mu, lv, mu_p, lv_p = d(z), d(mu), d(lv), d(mu_p), d(lv_p)
    exp = torch.exp if isinstance(lv_p, torch.Tensor) else math.exp
    return -0.5 * ((z - mu) ** 2 * torch.exp(-lv) + lv) + 0.5 * ((z - mu_p) ** 2 / exp(lv_p) + lv_p)


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
