"""kl_normal on the "torch" backend: per-row KL between diagonal Gaussians and its gradients,
in one pass of the C kernel of ``gaussian_rows`` where it is available (float32; 16-bit on
upcast row chunks), else in aten ops (float64, ``FASTVAE_NATIVE=0``, no compiler)."""
from __future__ import annotations

import torch

from ..._dtypes import result_dtype, upcast
from . import gaussian_rows, terms
from .rows import grad_buffer


def kl_normal_fwd(mu_q, logvar_q, mu_p, logvar_p, needs):
    """(KL per row, d/dmu_q, d/dlogvar_q, d/dmu_p, d/dlogvar_p); the prior's gradients are
    per row, (B, N), whatever its own shape (``fastvae.ops`` sums a shared prior's)."""
    dtype = result_dtype(mu_q, logvar_q, mu_p, logvar_p)
    shape = mu_q.shape
    kl = torch.empty(shape[0], dtype=dtype, device=mu_q.device)
    outs = [grad_buffer(t, need, shape)
            for t, need in zip((mu_q, logvar_q, mu_p, logvar_p), needs)]
    g_mu, g_lv, g_pm, g_plv = outs
    if gaussian_rows.kl_rows(mu_q, logvar_q, mu_p, logvar_p, None, None, kl, g_mu, g_pm, g_lv,
                             g_plv):
        return (kl, *outs)
    kl_bn, d_mu, d_lv, _, d_pm, d_plv = terms.kl_prior_terms(
        upcast(mu_q, dtype), upcast(logvar_q, dtype), None, upcast(mu_p, dtype),
        upcast(logvar_p, dtype), "analytic")
    grads = (d_mu, d_lv, d_pm, d_plv)
    return (kl_bn.sum(-1), *[None if o is None else o.copy_(g.expand(shape))
                             for o, g in zip(outs, grads)])


def kl_normal_bwd(grad_out, g_mu, g_lv, g_pm, g_plv, needs):
    """The saved gradients times the KL's grad_output (B,), per row, in one pass of the C
    kernel: [d_mu, d_lv, d_pm, d_plv], None where not needed; d_pm from g_mu (one read
    less). None where the C path cannot run (the caller weighs them in aten)."""
    saved = (g_mu, g_lv, g_pm, g_plv)
    if grad_out.dim() != 1 or not any(needs):
        return None
    outs = [torch.empty_like(g) if n else None for g, n in zip(saved, needs)]
    if needs[0]:   # d_mu and d_pm = -d_mu both from g_mu
        first, first_out, pm_out = g_mu, outs[0], outs[2]
    else:          # d_pm alone: gk * g_pm through the same slot
        first, first_out, pm_out = (g_pm, outs[2], None) if needs[2] else (None, None, None)
    if not gaussian_rows.kl_bwd_rows(None, grad_out, None, None, first,
                                     g_lv if needs[1] else None, g_plv if needs[3] else None,
                                     first_out, outs[1], pm_out, outs[3]):
        return None
    return outs
