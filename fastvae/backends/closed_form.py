"""The "torch" backend: closed-form forward and gradient in one pass, for any device.

Each op is a custom autograd Function whose forward computes the value and the
analytic gradients together and saves only the gradients; backward returns them
as they are when grad_output is 1, else scales them.
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


def _needs(t) -> bool:
    return isinstance(t, torch.Tensor) and t.requires_grad


def _scale(g, grad_out, per_row: bool):
    """g * grad_output, where grad_output is () or (B,) matching g's rows; None passes."""
    if g is None:
        return None
    if per_row:
        shape = (-1,) + (1,) * (g.dim() - 1)
        return g * grad_out.reshape(shape).to(g.dtype)
    if grad_out.numel() == 1 and bool(grad_out == 1):
        return g
    return g * grad_out.to(g.dtype)


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


def _grad_for(t, g):
    """Gradient in t's dtype for an input t (None when t takes none). A (D,) obs_logvar
    keeps its (B, D) gradient here; backward sums it over rows after scaling."""
    if not _needs(t) or g is None:
        return None
    return g.to(t.dtype)


def _collect(g, shape):
    return g if g is None or g.shape == shape else g.sum(0).reshape(shape)


class _ELBO(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, recon, mu, logvar, z, obs, likelihood, kl, beta, free_bits, reduction):
        dtype = _compute_dtype(x, recon, mu, logvar, z, obs)
        xf, rf, muf, lvf, zf, of = (_f(t, dtype) for t in (x, recon, mu, logvar, z, obs))
        log_px, g_recon, g_obs = _log_likelihood(xf, rf, likelihood, of)
        g_x = None
        if _needs(x):  # d/dx: the logits (Bernoulli kinds), -(x - m) / var (Gaussian)
            g_x = -g_recon if likelihood == "gaussian" else rf
        kl_bl, d_mu, d_lv, d_z = _kl_terms(muf, lvf, zf, kl)
        if free_bits > 0 and kl_bl.shape[0] > 0:
            below = kl_bl.mean(0, keepdim=True) < free_bits
            kl_bl = torch.where(below, torch.full_like(kl_bl, free_bits), kl_bl)
            keep = (~below).to(dtype)
            d_mu, d_lv = d_mu * keep, d_lv * keep
            d_z = None if d_z is None else d_z * keep
        per_sample = log_px - beta * kl_bl.sum(-1)
        c = _reduce_scale(x.shape[0], reduction)
        if isinstance(obs, torch.Tensor) and g_obs is not None and g_obs.shape != obs.shape:
            g_obs = g_obs.expand(x.shape)  # a (D,) obs_logvar: per-row, summed in backward
        grads = (
            _grad_for(x, None if g_x is None else g_x * c),
            _grad_for(recon, g_recon * c),
            _grad_for(mu, d_mu * (-beta * c)),
            _grad_for(logvar, d_lv * (-beta * c)),
            _grad_for(z, None if d_z is None else d_z * (-beta * c)),
            _grad_for(obs, None if g_obs is None else g_obs * c),
        )
        ctx.save_for_backward(*grads)
        ctx.per_row = reduction == "none"
        ctx.obs_shape = obs.shape if isinstance(obs, torch.Tensor) else None
        out_dtype = dtype
        if reduction == "none":
            return per_sample.to(out_dtype)
        return (per_sample.sum() * c).to(out_dtype)

    @staticmethod
    def backward(ctx, grad_out):
        g_x, g_recon, g_mu, g_lv, g_z, g_obs = (
            _scale(g, grad_out, ctx.per_row) for g in ctx.saved_tensors)
        if g_obs is not None:
            g_obs = _collect(g_obs, ctx.obs_shape)
        return (g_x, g_recon, g_mu, g_lv, g_z, g_obs, None, None, None, None, None)


def elbo(x, recon, mu, logvar, z, obs_logvar, *, likelihood, kl, beta, free_bits, reduction):
    return _ELBO.apply(x, recon, mu, logvar, z, obs_logvar, likelihood, kl, beta, free_bits,
                       reduction)


class _GaussianLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mean, logvar):
        dtype = _compute_dtype(x, mean, logvar)
        value, g_mean, g_lv = _gaussian(_f(x, dtype), _f(mean, dtype), _f(logvar, dtype))
        if isinstance(logvar, torch.Tensor) and logvar.shape != x.shape:
            g_lv = g_lv.expand(x.shape)
        ctx.save_for_backward(_grad_for(x, None if g_mean is None else -g_mean),
                              _grad_for(mean, g_mean),
                              _grad_for(logvar, g_lv if isinstance(logvar, torch.Tensor) else None))
        ctx.lv_shape = logvar.shape if isinstance(logvar, torch.Tensor) else None
        return value

    @staticmethod
    def backward(ctx, grad_out):
        g_x, g_mean, g_lv = (_scale(g, grad_out, True) for g in ctx.saved_tensors)
        return g_x, g_mean, _collect(g_lv, ctx.lv_shape) if g_lv is not None else None


def gaussian_log_prob(x, mean, logvar):
    return _GaussianLogProb.apply(x, mean, logvar)


class _KL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mu, logvar):
        dtype = _compute_dtype(mu, logvar)
        kl_bl, d_mu, d_lv, _ = _kl_terms(_f(mu, dtype), _f(logvar, dtype), None, "analytic")
        ctx.save_for_backward(_grad_for(mu, d_mu), _grad_for(logvar, d_lv))
        return kl_bl.sum(-1)

    @staticmethod
    def backward(ctx, grad_out):
        return tuple(_scale(g, grad_out, True) for g in ctx.saved_tensors)


def kl_standard_normal(mu, logvar):
    return _KL.apply(mu, logvar)


class _IWAE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, recon_k, mu, logvar, z_k, obs, likelihood, reduction):
        dtype = _compute_dtype(x, recon_k, mu, logvar, z_k, obs)
        k, batch = recon_k.shape[0], recon_k.shape[1]
        xf, rf, of = _f(x, dtype), _f(recon_k, dtype), _f(obs, dtype)
        log_px, g_recon, g_obs = _log_likelihood(xf.expand_as(rf), rf, likelihood, of)
        kl_kbl, d_mu, d_lv, d_z = _kl_terms(_f(mu, dtype).expand(k, -1, -1),
                                            _f(logvar, dtype).expand(k, -1, -1),
                                            _f(z_k, dtype), "mc")
        log_w = log_px - kl_kbl.sum(-1)                       # (K, B)
        bound = torch.logsumexp(log_w, dim=0) - math.log(k)   # (B,)
        w = torch.softmax(log_w, dim=0) if k else log_w        # d bound / d log_w
        c = _reduce_scale(batch, reduction)
        wc = (w * c).unsqueeze(-1)                             # (K, B, 1)
        g_x = None
        if _needs(x):
            g_x = ((-g_recon if likelihood == "gaussian" else rf) * wc).sum(0)
        if g_obs is not None and isinstance(obs, torch.Tensor):
            g_obs = (g_obs * wc).sum(0)                       # (B, D), collected in backward
        ctx.save_for_backward(
            _grad_for(x, g_x),
            _grad_for(recon_k, g_recon * wc),
            _grad_for(mu, -(d_mu * wc).sum(0)),
            _grad_for(logvar, -(d_lv * wc).sum(0)),
            _grad_for(z_k, -d_z * wc),
            _grad_for(obs, g_obs),
        )
        ctx.per_row = reduction == "none"
        ctx.obs_shape = obs.shape if isinstance(obs, torch.Tensor) else None
        if reduction == "none":
            return bound
        return bound.sum() * c

    @staticmethod
    def backward(ctx, grad_out):
        g_x, g_r, g_mu, g_lv, g_z, g_obs = ctx.saved_tensors
        if ctx.per_row:
            rows = lambda g: None if g is None else g * grad_out.reshape(-1, *(1,) * (g.dim() - 1)).to(g.dtype)
            krows = lambda g: None if g is None else g * grad_out.reshape(1, -1, 1).to(g.dtype)
            g_x, g_mu, g_lv, g_obs = rows(g_x), rows(g_mu), rows(g_lv), rows(g_obs)
            g_r, g_z = krows(g_r), krows(g_z)
        else:
            g_x, g_r, g_mu, g_lv, g_z, g_obs = (_scale(g, grad_out, False)
                                                for g in (g_x, g_r, g_mu, g_lv, g_z, g_obs))
        if g_obs is not None:
            g_obs = _collect(g_obs, ctx.obs_shape)
        return g_x, g_r, g_mu, g_lv, g_z, g_obs, None, None


def iwae_bound(x, recon_k, mu, logvar, z_k, obs_logvar, *, likelihood, reduction):
    return _IWAE.apply(x, recon_k, mu, logvar, z_k, obs_logvar, likelihood, reduction)


class _Reparameterize(torch.autograd.Function):
    """Saves eps (needed for dlogvar); the Triton backend regenerates it instead."""

    @staticmethod
    def forward(ctx, mu, logvar, eps):
        std = torch.exp(0.5 * logvar)
        ctx.save_for_backward(std * eps if logvar.requires_grad else None)
        return torch.addcmul(mu, std, eps)

    @staticmethod
    def backward(ctx, dz):
        (std_eps,) = ctx.saved_tensors
        k_dims = dz.dim() - 2
        dmu = dz.sum(dim=tuple(range(k_dims))) if k_dims else dz
        dlv = None
        if std_eps is not None:
            prod = dz * std_eps * 0.5
            dlv = prod.sum(dim=tuple(range(k_dims))) if k_dims else prod
        return dmu, dlv, None


def reparameterize(mu, logvar, n_samples, generator):
    shape = mu.shape if n_samples is None else (n_samples,) + tuple(mu.shape)
    eps = torch.randn(shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return _Reparameterize.apply(mu, logvar, eps)
