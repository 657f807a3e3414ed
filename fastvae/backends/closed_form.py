"""The "torch" backend: closed-form forward and gradient in one pass, for any device.

Each ``*_fwd`` computes an op's value and its analytic gradients together; the
autograd wiring that saves only those gradients lives once, in ``fastvae.ops``.
"""
from __future__ import annotations

import math

import torch

_LOG2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _compute_dtype(*ts) -> torch.dtype:
    if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in ts):
        return torch.float64
    return torch.float32


def _f(t, dtype):
    return t.to(dtype) if isinstance(t, torch.Tensor) else t


# -- likelihood terms: value per row and d/d(recon), d/d(obs_logvar) per element ----------

def _bernoulli(x, logits):
    e = torch.exp(-logits.abs())
    softplus = logits.clamp(min=0) + torch.log1p(e)
    sig = torch.where(logits >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return (x * logits - softplus).sum(-1), x - sig


def _cb_log_norm(logits):
    """log C(l) = log 2 + log(u / tanh u), u = l/2, and its derivative in l."""
    u = logits * 0.5
    a = u.abs()
    small = a < (1e-3 if logits.dtype == torch.float64 else 5e-2)
    a_safe = torch.where(small, torch.ones_like(a), a)
    t = torch.tanh(a_safe)
    exact = torch.log(a_safe) - torch.log(t)
    u2 = u * u
    value = torch.where(small, u2 / 3 - 7 * u2 * u2 / 90, exact) + _LOG2
    # d/du log(u/tanh u) = 1/u - 1/tanh u + tanh u (odd in u); times du/dl = 1/2.
    d_exact = torch.sign(u) * (1 / a_safe - 1 / t + t)
    d_small = 2 * u / 3 - 14 * u * u2 / 45
    return value, 0.5 * torch.where(small, d_small, d_exact)


def _gaussian(x, mean, logvar):
    inv_var = torch.exp(-logvar) if isinstance(logvar, torch.Tensor) else math.exp(-logvar)
    diff = x - mean
    sq = diff * diff * inv_var
    value = -0.5 * (sq + logvar + 2 * _HALF_LOG_2PI)
    return value.sum(-1), diff * inv_var, 0.5 * (sq - 1)


def _log_likelihood(x, recon, likelihood, obs_logvar):
    """(value per row, d/drecon, d/dobs_logvar or None)."""
    if likelihood == "gaussian":
        return _gaussian(x, recon, obs_logvar)
    value, grad = _bernoulli(x, recon)
    if likelihood == "continuous_bernoulli":
        log_c, d_log_c = _cb_log_norm(recon)
        value, grad = value + log_c.sum(-1), grad + d_log_c
    return value, grad, None


def _kl_terms(mu, logvar, z, kl):
    """Per-dim KL (B, L) and its partials w.r.t. mu, logvar, z (z's is None for analytic)."""
    if kl == "analytic":
        var = torch.exp(logvar)
        return 0.5 * (mu * mu + var - 1 - logvar), mu, 0.5 * (var - 1), None
    inv_var = torch.exp(-logvar)
    diff = z - mu
    sq = diff * diff * inv_var
    value = -0.5 * (sq + logvar) + 0.5 * z * z
    return value, diff * inv_var, 0.5 * (sq - 1), z - diff * inv_var


def _reduce_scale(batch: int, reduction: str) -> float:
    return 1.0 / max(batch, 1) if reduction == "mean" else 1.0


def _out(g, like, need: bool):
    """A gradient output in its input's dtype, or the empty placeholder ops.py expects."""
    if not need or g is None:
        return like.new_empty(0)
    return g.to(like.dtype)


def _obs(obs, obs_scalar):
    return obs_scalar if obs is None else obs


def elbo_fwd(x, recon, mu, logvar, z, obs, obs_scalar, likelihood, kl, beta, free_bits,
             reduction, scale, needs):
    """ELBO (times ``scale``) and its gradients w.r.t. (x, recon, mu, logvar, z, obs).

    The gradients are of the returned value: for "mean"/"sum" of the reduced value,
    for "none" of each row's own value (backward weighs rows by grad_output).
    """
    obs_t = obs
    dtype = _compute_dtype(x, recon, mu, logvar, z, obs)
    xf, rf, muf, lvf, zf = (_f(t, dtype) for t in (x, recon, mu, logvar, z))
    of = _f(_obs(obs, obs_scalar), dtype)
    log_px, g_recon, g_obs = _log_likelihood(xf, rf, likelihood, of)
    kl_bl, d_mu, d_lv, d_z = _kl_terms(muf, lvf, zf, kl)
    if free_bits > 0 and kl_bl.shape[0] > 0:
        below = kl_bl.mean(0, keepdim=True) < free_bits
        kl_bl = torch.where(below, torch.full_like(kl_bl, free_bits), kl_bl)
        keep = (~below).to(dtype)
        d_mu, d_lv = d_mu * keep, d_lv * keep
        d_z = None if d_z is None else d_z * keep
    per_sample = log_px - beta * kl_bl.sum(-1)
    c = scale * _reduce_scale(x.shape[0], reduction)
    g_x = None
    if needs[0]:  # d/dx: the logits (Bernoulli kinds), -(x - m) / var (Gaussian)
        g_x = (-g_recon if likelihood == "gaussian" else rf) * c
    if needs[5] and g_obs is not None and reduction != "none" and obs_t.shape != g_obs.shape:
        g_obs = g_obs.sum(0)
    value = per_sample * c if reduction == "none" else per_sample.sum() * c
    return (
        value.to(dtype),
        _out(g_x, x, needs[0]),
        _out(g_recon * c, recon, needs[1]),
        _out(d_mu * (-beta * c), mu, needs[2]),
        _out(d_lv * (-beta * c), logvar, needs[3]),
        _out(None if d_z is None else d_z * (-beta * c), z if z is not None else mu, needs[4]),
        _out(None if g_obs is None else g_obs * c, obs_t if obs_t is not None else x, needs[5]),
    )


def gaussian_log_prob_fwd(x, mean, logvar, logvar_scalar, needs):
    """Per-row log density and its per-row gradients w.r.t. (x, mean, logvar)."""
    dtype = _compute_dtype(x, mean, logvar)
    value, g_mean, g_lv = _gaussian(_f(x, dtype), _f(mean, dtype), _f(_obs(logvar, logvar_scalar), dtype))
    return (value, _out(-g_mean, x, needs[0]), _out(g_mean, mean, needs[1]),
            _out(g_lv, logvar if logvar is not None else x, needs[2]))


def kl_standard_normal_fwd(mu, logvar, needs):
    dtype = _compute_dtype(mu, logvar)
    kl_bl, d_mu, d_lv, _ = _kl_terms(_f(mu, dtype), _f(logvar, dtype), None, "analytic")
    # d_mu is mu itself: clone it, a custom op's output may not alias its input.
    return kl_bl.sum(-1), _out(d_mu.clone(), mu, needs[0]), _out(d_lv, logvar, needs[1])


def iwae_bound_fwd(x, recon_k, mu, logvar, z_k, obs, obs_scalar, likelihood, reduction, needs):
    """Per-row bound (reduced unless "none") and gradients w.r.t. (x, recon_k, mu, logvar, z_k, obs)."""
    dtype = _compute_dtype(x, recon_k, mu, logvar, z_k, obs)
    k, batch = recon_k.shape[0], recon_k.shape[1]
    xf, rf, of = _f(x, dtype), _f(recon_k, dtype), _f(_obs(obs, obs_scalar), dtype)
    log_px, g_recon, g_obs = _log_likelihood(xf.expand_as(rf), rf, likelihood, of)
    kl_kbl, d_mu, d_lv, d_z = _kl_terms(_f(mu, dtype).expand(k, -1, -1),
                                        _f(logvar, dtype).expand(k, -1, -1),
                                        _f(z_k, dtype), "mc")
    log_w = log_px - kl_kbl.sum(-1)                       # (K, B)
    bound = torch.logsumexp(log_w, dim=0) - math.log(k)   # (B,)
    c = _reduce_scale(batch, reduction)
    wc = (torch.softmax(log_w, dim=0) * c).unsqueeze(-1)  # d bound / d log_w, (K, B, 1)
    g_x = None
    if needs[0]:
        g_x = ((-g_recon if likelihood == "gaussian" else rf) * wc).sum(0)
    if needs[5] and g_obs is not None:
        g_obs = (g_obs * wc).sum(0)
        if reduction != "none" and obs.shape != g_obs.shape:
            g_obs = g_obs.sum(0)
    value = bound if reduction == "none" else bound.sum() * c
    return (
        value,
        _out(g_x, x, needs[0]),
        _out(g_recon * wc, recon_k, needs[1]),
        _out(-(d_mu * wc).sum(0), mu, needs[2]),
        _out(-(d_lv * wc).sum(0), logvar, needs[3]),
        _out(-d_z * wc, z_k, needs[4]),
        _out(g_obs, obs if obs is not None else x, needs[5]),
    )


class _Reparameterize(torch.autograd.Function):
    """Saves std * eps, the one tensor dlogvar needs (the Triton backend regenerates eps)."""

    @staticmethod
    def forward(ctx, mu, logvar, eps):
        std = torch.exp(0.5 * logvar)
        ctx.save_for_backward(std * eps if ctx.needs_input_grad[1] else None)
        ctx.sample_dims = eps.dim() - mu.dim()
        return torch.addcmul(mu, std, eps)

    @staticmethod
    def backward(ctx, dz):
        (std_eps,) = ctx.saved_tensors
        dims = tuple(range(ctx.sample_dims))
        dmu = dz.sum(dims) if dims else dz
        dlv = None
        if std_eps is not None:
            prod = dz * std_eps * 0.5
            dlv = prod.sum(dims) if dims else prod
        return dmu, dlv, None


def reparameterize(mu, logvar, n_samples, generator):
    shape = mu.shape if n_samples is None else (n_samples,) + tuple(mu.shape)
    eps = torch.randn(shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return _Reparameterize.apply(mu, logvar, eps)
