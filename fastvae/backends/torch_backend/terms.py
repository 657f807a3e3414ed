"""The per-element math of the "torch" backend: every likelihood and KL term with its
partial derivatives, in torch ops. Each function returns the value and the gradients
together, so one pass serves the forward and the saved backward.

Exponentials are never multiplied into a product that can overflow where the result
does not: ``(x * exp(-s/2))^2``, not ``x^2 * exp(-s)``; ``exp(lv - log 2)``, not
``0.5 * exp(lv)`` (float32 at log-variance +-89 stays finite where float64 is). The
standardizing factor ``exp(-s/2)`` is held at the largest float where it overflows
(:func:`inv_sd`), so a difference of exactly 0 stays 0 there.
"""
from __future__ import annotations

import math

import torch

from ..._cb import CB_SERIES_BELOW, dlogc_coeffs

LOG_2 = math.log(2.0)
LOG_2PI = math.log(2.0 * math.pi)


def bernoulli(x, logits):
    """(value per row, d/dlogits): ``sum_d x*l - softplus(l)``, ``x - sigmoid(l)``."""
    e = torch.exp(-logits.abs())
    softplus = logits.clamp(min=0) + torch.log1p(e)
    sig = torch.where(logits >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return (x * logits - softplus).sum(-1), x - sig


def cb_log_norm(logits):
    """log C(l) = log(l / tanh(l/2)) and its derivative 1/l - 1/sinh l (``fastvae._cb``).

    The value as ``log(2 + E) - log(E / -|l|)``, ``E = expm1(-|l|)``: ``1 + e^-|l|`` in
    (1, 2] and ``(1 - e^-|l|) / |l|`` in (0, 1], each within ~1 ulp, so no branch and no
    cancellation (``log|l| - log tanh(|l|/2)`` loses ~eps |log|l||); at l = 0 the ratio's
    0/0 is read as its limit 1. The derivative: below |l| = 1 the polynomial fit
    ``l P(l^2)``, above the difference itself (within 0.7 eps there).
    """
    a = logits.abs()
    neg_a = a.neg()
    e = torch.expm1(neg_a)
    ratio = torch.div(e, neg_a).nan_to_num_(nan=1.0)
    value = torch.log(e + 2).sub_(torch.log(ratio))
    p = dlogc_coeffs(logits.dtype == torch.float64)
    s = logits * logits
    poly = s * p[-1]
    for c in reversed(p[1:-1]):
        poly.add_(c).mul_(s)
    poly.add_(p[0]).mul_(logits)
    closed = torch.reciprocal(logits).sub_(torch.sinh(logits).reciprocal_())
    return value, torch.where(a < CB_SERIES_BELOW, poly, closed)


def inv_sd(logvar, dtype: torch.dtype | None = None):
    """``exp(-logvar/2)`` (a tensor, or a float for the ``dtype`` tensor it multiplies)
    held at the largest finite value where it overflows (float32: logvar < -177.4). A
    difference of exactly 0, data equal to the mean or a sample to its mean, then
    standardizes to 0 with a gradient of 0, the exact values, not inf * 0 = NaN; a nonzero
    one still squares to the inf the exact square rounds to, unless it is below ~5e-20
    (float32). NaN stays NaN."""
    if isinstance(logvar, torch.Tensor):
        out = torch.exp(-0.5 * logvar)
        return out.clamp_(max=torch.finfo(out.dtype).max)
    return min(math.exp(min(-0.5 * logvar, 709.0)), torch.finfo(dtype).max)


def gaussian(x, mean, logvar):
    """(value per row, d/dmean, d/dlogvar per element) of ``log N(x; mean, exp(logvar))``."""
    d = x - mean
    inv = inv_sd(logvar, d.dtype)
    t = d * inv
    sq = t * t
    value = -0.5 * (sq + logvar + LOG_2PI)
    return value.sum(-1), t * inv, 0.5 * (sq - 1)


def log_likelihood(x, recon, likelihood, obs_logvar):
    """(value per row, d/drecon, d/dobs_logvar or None)."""
    if likelihood == "gaussian":
        return gaussian(x, recon, obs_logvar)
    value, grad = bernoulli(x, recon)
    if likelihood == "continuous_bernoulli":
        log_c, d_log_c = cb_log_norm(recon)
        value, grad = value + log_c.sum(-1), grad + d_log_c
    return value, grad, None


def kl_terms(mu, logvar, z, kl):
    """Per-latent KL (.., L) and its partials w.r.t. mu, logvar, z (z's is None for analytic).

    analytic: ``0.5 * (mu^2 + exp(lv) - 1 - lv)``; "mc": ``log q(z) - log p(z) =
    -0.5 * ((z - mu)^2 exp(-lv) + lv) + 0.5 * z^2``, its ``z^2 - t^2`` taken as
    ``(z - t)(z + t)`` (see ``reference.mc_kl_per_dim``).
    """
    if kl == "analytic":
        half_var = torch.exp(logvar - LOG_2)
        return 0.5 * (mu * mu - 1 - logvar) + half_var, mu, half_var - 0.5, None
    inv = inv_sd(logvar)
    t = (z - mu) * inv          # the standardized sample: moderate even where 1/var overflows
    d_mu = t * inv
    sq = t * t
    value = 0.5 * ((z - t) * (z + t) - logvar)
    return value, d_mu, 0.5 * (sq - 1), z - d_mu


def analytic_kl_rows(mu, logvar, kc: float, need_mu: bool, need_lv: bool):
    """Per-row analytic KL and its gradients times kc, in five B x L passes instead of a
    dozen: at small B these small ops are a visible part of the whole call."""
    half_var = torch.exp(logvar - LOG_2)
    g_lv = torch.sub(half_var, 0.5).mul_(kc) if need_lv else None
    g_mu = torch.mul(mu, kc) if need_mu else None
    # sum_l 0.5 * (mu^2 - 1 - logvar) + half_var, reusing half_var's buffer
    rows = half_var.addcmul_(mu, mu, value=0.5).sub_(logvar, alpha=0.5).sum(-1)
    return rows.sub_(0.5 * mu.shape[-1]), g_mu, g_lv


def kl_prior_terms(mu, logvar, z, prior_mu, prior_logvar, kl):
    """:func:`kl_terms` to the prior N(prior_mu, exp(prior_logvar)) (each None, or a tensor
    broadcastable to mu; None is 0): per-latent KL and its partials w.r.t. mu, logvar, z
    (None for analytic), prior_mu and prior_logvar.

    analytic, ``u = (mu - pm) * exp(-plv/2)``, ``r = exp(lv - plv)``:
    ``0.5 * (plv - lv + r + u^2 - 1)``; "mc", ``t = (z - mu) exp(-lv/2)``,
    ``tp = (z - pm) exp(-plv/2)``: ``0.5 * (tp^2 + plv - t^2 - lv)``.
    """
    pm = 0.0 if prior_mu is None else prior_mu
    plv = 0.0 if prior_logvar is None else prior_logvar
    inv_sdp = 1.0 if prior_logvar is None else inv_sd(plv)
    if kl == "analytic":
        u = (mu - pm) * inv_sdp
        # 0.5 r as one exponential of the difference, less log 2: exp(lv) * exp(-plv)
        # overflows first, and e^89 / 2 fits float32 where e^89 does not
        half_r = torch.exp(logvar - plv - LOG_2)
        sq = u * u
        value = 0.5 * (plv - logvar + sq - 1) + half_r
        d_mu = u * inv_sdp
        return value, d_mu, half_r - 0.5, None, -d_mu, 0.5 * (1 - sq) - half_r
    inv = inv_sd(logvar)
    t = (z - mu) * inv
    tp = (z - pm) * inv_sdp
    sq, sqp = t * t, tp * tp
    d_mu, d_p = t * inv, tp * inv_sdp
    value = 0.5 * ((tp - t) * (tp + t) + plv - logvar)
    return value, d_mu, 0.5 * (sq - 1), d_p - d_mu, -d_p, 0.5 * (1 - sqp)


def logistic_bin(y, mean, log_scale, bottom, top, half_width: float):
    """The discretized logistic's log mass of the bin at ``y`` (width ``2h``, h =
    ``half_width``) and its partials w.r.t. the mean and the log-scale s, per element.

    With ``a = (y - mean + h) e^-s``, ``b = (y - mean - h) e^-s``: the bottom bin is
    ``log sigmoid(a)``, the top ``log sigmoid(-b)``, an interior one
    ``log(sigmoid(a) - sigmoid(b)) = log sigmoid(a) + log sigmoid(-b) + log(1 - e^-w)``,
    ``w = a - b = 2h e^-s``, taken as ``log w + log((1 - e^-w) / w)`` so that it stays
    exact where w underflows. Derivatives: d/dmean ``= -e^-s ([!top] sigmoid(-a) -
    [!bottom] sigmoid(b))`` (the 1/expm1(w) terms of a and b cancel), d/ds ``=
    -([!top] a sigmoid(-a) - [!bottom] b sigmoid(b) + [interior] w / expm1(w))``.
    ``bottom``/``top``: bool masks of the edge bins.
    """
    inv_s = torch.exp(-log_scale)
    centered = y - mean
    a = (centered + half_width) * inv_s
    b = (centered - half_width) * inv_s
    log_w = math.log(2.0 * half_width) - log_scale
    w = torch.exp(log_w)
    safe = torch.where(w > 0, w, 1.0)
    gap_ratio = torch.where(w > 0, -torch.expm1(-safe) / safe, 1.0)  # (1 - e^-w) / w
    interior = ~(bottom | top)
    lsa, lsb = torch.nn.functional.logsigmoid(a), torch.nn.functional.logsigmoid(-b)
    sig_na, sig_b = torch.sigmoid(-a), torch.sigmoid(b)
    zero = torch.zeros((), dtype=a.dtype, device=a.device)
    use_a, use_b = ~top, ~bottom
    value = (torch.where(use_a, lsa, zero) + torch.where(use_b, lsb, zero)
             + torch.where(interior, log_w + torch.log(gap_ratio), zero))
    pa, pb = torch.where(use_a, sig_na, zero), torch.where(use_b, sig_b, zero)
    d_mean = (pb - pa) * inv_s
    # a sigmoid(-a) is 0 where sigmoid(-a) is, also where a overflowed (a pixel at an edge
    # bin held with certainty by a mean ~1e36 beyond it): not inf * 0 = NaN
    d_log_scale = (torch.where(pb == 0, zero, b * pb) - torch.where(pa == 0, zero, a * pa)
                   - torch.where(interior, torch.exp(-w) / gap_ratio, zero))
    return value, d_mean, d_log_scale
