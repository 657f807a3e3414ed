"""The ELBO on the "torch" backend: the value and every gradient in one pass."""
from __future__ import annotations

import torch

from ..._dtypes import reduce_scale, result_dtype, upcast
from . import terms
from .rows import grad_buffer, grad_out, log_px_rows


def elbo_fwd(x, recon, mu, logvar, z, obs, prior_mu, prior_logvar, obs_scalar, likelihood, kl,
             beta, free_bits, reduction, scale, needs):
    """``scale * ELBO`` and its gradients w.r.t. (x, recon, mu, logvar, z, obs, prior_mu,
    prior_logvar).

    The gradients are of the returned value: for "mean"/"sum" of the reduced value,
    for "none" of each row's own value (backward weighs rows by grad_output). A prior's
    gradients are per row, (B, L), whatever its own shape.
    """
    dtype = result_dtype(x, recon, mu, logvar, z, obs, prior_mu, prior_logvar)
    batch = x.shape[0]
    c = scale * reduce_scale(batch, reduction)
    g_x, g_r = grad_buffer(x, needs[0]), grad_buffer(recon, needs[1])
    g_obs = None
    if needs[5] and obs is not None and likelihood == "gaussian":
        g_obs = grad_buffer(obs, True, x.shape if reduction == "none" else obs.shape)
    log_px = log_px_rows(x, recon, likelihood, obs_scalar if obs is None else obs, c, dtype,
                         g_x, g_r, g_obs)
    kc = -beta * c
    mu_c, lv_c, z_c = upcast(mu, dtype), upcast(logvar, dtype), upcast(z, dtype)
    prior = prior_mu is not None or prior_logvar is not None
    g_pm = g_plv = None
    if kl == "analytic" and free_bits <= 0 and not prior:
        kl_rows, g_mu, g_lv = terms.analytic_kl_rows(mu_c, lv_c, kc, needs[2], needs[3])
        g_z = None
    else:
        if prior:
            kl_bl, d_mu, d_lv, d_z, d_pm, d_plv = terms.kl_prior_terms(
                mu_c, lv_c, z_c, upcast(prior_mu, dtype), upcast(prior_logvar, dtype), kl)
        else:
            kl_bl, d_mu, d_lv, d_z = terms.kl_terms(mu_c, lv_c, z_c, kl)
            d_pm = d_plv = None
        if free_bits > 0 and kl_bl.shape[0] > 0:
            below = kl_bl.mean(0, keepdim=True) < free_bits
            kl_bl = torch.where(below, torch.full_like(kl_bl, free_bits), kl_bl)
            # a clamped latent passes no gradient: 0, not 0 * inf where its partial overflowed
            d_mu, d_lv, d_z, d_pm, d_plv = (None if d is None else torch.where(below, 0.0, d)
                                            for d in (d_mu, d_lv, d_z, d_pm, d_plv))
        kl_rows, g_mu, g_lv = kl_bl.sum(-1), d_mu * kc, d_lv * kc
        g_z = None if d_z is None else d_z * kc
        g_pm = d_pm * kc if needs[6] else None   # (B, L): every term has mu's shape
        g_plv = d_plv * kc if needs[7] else None
    if beta == 0:   # no KL term (a warm-up from 0): its gradients are 0, also where a
        # partial overflowed (0 * inf)
        for g in (g_mu, g_lv, g_z, g_pm, g_plv):
            if g is not None:
                g.zero_()
    per_sample = log_px.sub_(kl_rows, alpha=beta) if beta != 0 else log_px
    value = per_sample.mul_(c) if reduction == "none" else per_sample.sum() * c
    return (
        value.to(dtype),
        g_x,
        g_r,
        grad_out(g_mu, mu, needs[2]),
        grad_out(g_lv, logvar, needs[3]),
        grad_out(g_z, z if z is not None else mu, needs[4]),
        g_obs,
        grad_out(g_pm, mu if prior_mu is None else prior_mu, needs[6], mu.shape),
        grad_out(g_plv, mu if prior_logvar is None else prior_logvar, needs[7], mu.shape),
    )
