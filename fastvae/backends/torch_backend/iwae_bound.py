"""The importance-weighted bound on the "torch" backend: value and gradients in one pass."""
from __future__ import annotations

import math

import torch

from ..._dtypes import reduce_scale, result_dtype, upcast, widest
from . import terms
from .rows import grad_out, log_px_rows


def iwae_bound_fwd(x, recon_k, mu, logvar, z_k, obs, prior_mu, prior_logvar, obs_scalar,
                   likelihood, reduction, scale, needs, weights=False):
    """``scale`` times the per-row bound (reduced unless "none") and its gradients w.r.t.
    (x, recon_k, mu, logvar, z_k, obs, prior_mu, prior_logvar) (a prior's are per row,
    (B, L)) and, with ``weights``, the softmax weights ``softmax_k(log w_k)`` (K, B) (else
    empty; never scaled: DReG's hook weighs by them).

    Each sample's log p(x|z_k) runs through the ELBO's row machinery, writing
    d log p / d recon_k straight into the returned gradient, which is then weighted in
    place by softmax_k(log w): no other (K, B, D) temporaries.
    """
    dtype = result_dtype(x, recon_k, mu, logvar, z_k, obs, prior_mu, prior_logvar)
    k, batch = recon_k.shape[0], recon_k.shape[1]
    ob = obs_scalar if obs is None else obs
    per_sample = obs is not None and obs.dim() == 3   # (K, B, D): sample i's is obs[i]
    gaussian = likelihood == "gaussian"
    # d/drecon is also what d/dx (Gaussian) and d/dobs are built from.
    want_r = needs[1] or (needs[0] and gaussian)
    g_r = None
    if want_r:  # low-precision recon: weigh in dtype, round once at the end
        g_r = torch.empty(recon_k.shape, dtype=dtype if recon_k.dtype != dtype else recon_k.dtype,
                          device=recon_k.device)
    need_obs = needs[5] and obs is not None and gaussian
    # each sample's d log p / d obs, (K, B, D), kept until the weights are known
    g_o_k = torch.empty((k, *x.shape), dtype=dtype, device=x.device) if need_obs else None
    log_px = torch.empty(k, batch, dtype=dtype, device=x.device)
    for i in range(k):
        log_px[i] = log_px_rows(x, recon_k[i], likelihood, ob[i] if per_sample else ob, 1.0,
                                dtype, None,
                                None if g_r is None else g_r[i],
                                None if g_o_k is None else g_o_k[i])
    mu_k, lv_k = upcast(mu, dtype).expand(k, -1, -1), upcast(logvar, dtype).expand(k, -1, -1)
    if prior_mu is None and prior_logvar is None:
        kl_kbl, d_mu, d_lv, d_z = terms.kl_terms(mu_k, lv_k, upcast(z_k, dtype), "mc")
        d_pm = d_plv = None
    else:
        kl_kbl, d_mu, d_lv, d_z, d_pm, d_plv = terms.kl_prior_terms(
            mu_k, lv_k, upcast(z_k, dtype), upcast(prior_mu, dtype), upcast(prior_logvar, dtype),
            "mc")
    log_w = log_px.sub_(kl_kbl.sum(-1))                   # (K, B)
    c = scale * reduce_scale(batch, reduction)
    # The bound and the softmax over K from one pass of exp: torch.softmax over dim 0
    # sums its K terms one after another in float32 (to 1 +- 3e-6 at K = 5000), e.sum(0)
    # pairwise. Shifted by 0 where a row's max is infinite, as the kernels' lse_shift
    # (inf - inf would make the row NaN): a +inf sample's weight is NaN, and the others'
    # 0 unless their exp overflows too. A row whose every log w is -inf has no defined
    # weight (0 / 0); it weighs 0, as the reference's, adding nothing to any gradient.
    top = log_w.amax(0)
    shift = torch.where(top.isfinite(), top, 0.0)
    e = torch.exp(log_w - shift)
    total = e.sum(0)
    bound = torch.log(total) + shift - math.log(k)        # (B,): logsumexp
    w = (e / total).masked_fill_(top.isneginf(), 0.0)
    wc = (w * c).unsqueeze(-1)  # d bound / d log_w, (K, B, 1)
    dropped = wc == 0   # not ~(wc > 0): a NaN weight stays NaN

    def weigh(d):
        # A partial times its sample's weight, 0 at a weight of 0: a sample far enough for
        # its partial to overflow (a standardized difference squared, or over a vanishing
        # variance) has log w ~ -t^2/2, hence weight exactly 0, and 0 * inf would be NaN.
        return torch.where(dropped, 0.0, d * wc)

    if g_r is not None:
        g_r.mul_(wc.to(g_r.dtype))
        if gaussian:   # (x - r) / var can overflow, at weight 0 (the Bernoulli's are bounded)
            g_r.masked_fill_(dropped, 0.0)
    g_x = None
    if needs[0]:
        g_x = -g_r.sum(0) if gaussian else (upcast(recon_k, dtype) * wc).sum(0)
    g_obs = None
    if need_obs and per_sample:
        g_obs = g_o_k.mul_(wc).masked_fill_(dropped, 0.0)   # (K, B, D), as recon_k's
    elif need_obs:
        # in sample order, in float64 where the device has it (as rows.py's (D,) sum): a
        # float32 running sum over K samples drifts with K
        g_obs = torch.zeros(x.shape, dtype=widest(x.device), device=x.device)
        for i in range(k):   # one (B, D) sample at a time: it stays in cache
            g_obs.add_(g_o_k[i].mul_(wc[i]).masked_fill_(dropped[i], 0.0))
        g_obs = g_obs.to(dtype)   # (B, D)
        if reduction != "none" and obs.shape != g_obs.shape:
            g_obs = g_obs.sum(0)
    value = bound * scale if reduction == "none" else bound.sum() * c
    return (
        value,
        grad_out(g_x, x, needs[0]),
        grad_out(g_r, recon_k, needs[1]),
        grad_out(-weigh(d_mu).sum(0) if needs[2] else None, mu, needs[2]),
        grad_out(-weigh(d_lv).sum(0) if needs[3] else None, logvar, needs[3]),
        grad_out(-weigh(d_z) if needs[4] else None, z_k, needs[4]),
        grad_out(g_obs, obs if obs is not None else x, needs[5],
                 None if g_obs is None else g_obs.shape),
        grad_out(None if d_pm is None else -weigh(d_pm).sum(0),
                 mu if prior_mu is None else prior_mu, needs[6], mu.shape),
        grad_out(None if d_plv is None else -weigh(d_plv).sum(0),
                 mu if prior_logvar is None else prior_logvar, needs[7], mu.shape),
        w if weights else None,
    )
