"""kl_normal on the "torch" backend: per-row KL between diagonal Gaussians and its gradients,
in one pass of the C kernel of ``gaussian_rows`` where it is available (float32; 16-bit on
upcast row chunks), else in aten ops (float64, ``FASTVAE_NATIVE=0``, no compiler)."""
from __future__ import annotations

import torch

from ..._dtypes import kl_bwd_sources, kl_mean_grad_dtype, result_dtype, upcast
from . import gaussian_rows, terms
from .rows import grad_buffer


def kl_normal_fwd(mu_q, logvar_q, mu_p, logvar_p, needs):
    """(KL per row, d/dmu_q, d/dlogvar_q, d/dlogvar_p), each gradient per row (B, N)
    whatever its input's shape (``fastvae.ops`` sums a shared prior's). d/dmu_q is there
    where mu_q or mu_p needs a gradient (d/dmu_p is its negative), in
    ``kl_mean_grad_dtype``."""
    dtype = result_dtype(mu_q, logvar_q, mu_p, logvar_p)
    shape = mu_q.shape
    kl = torch.empty(shape[0], dtype=dtype, device=mu_q.device)
    g_mu = (mu_q.new_empty(shape, dtype=kl_mean_grad_dtype(mu_q, mu_p, needs[2]))
            if needs[0] or needs[2] else None)
    outs = (g_mu, grad_buffer(logvar_q, needs[1], shape), grad_buffer(logvar_p, needs[3], shape))
    if gaussian_rows.kl_rows(mu_q, logvar_q, mu_p, logvar_p, None, None, kl, g_mu, None,
                             outs[1], outs[2]):
        return (kl, *outs)
    kl_bn, d_mu, d_lv, _, _, d_plv = terms.kl_prior_terms(
        upcast(mu_q, dtype), upcast(logvar_q, dtype), None, upcast(mu_p, dtype),
        upcast(logvar_p, dtype), "analytic")
    return (kl_bn.sum(-1), *[None if o is None else o.copy_(g.expand(shape))
                             for o, g in zip(outs, (d_mu, d_lv, d_plv))])


def kl_normal_bwd(grad_out, g_mu, g_lv, g_plv, needs):
    """The saved gradients times the KL's grad_output (B,), per row, in one pass of the C
    kernel: [d_mu, d_lv, d_pm, d_plv], None where not needed; d_pm = -grad_out g_mu.
    None where the C path cannot run (the caller weighs them in aten)."""
    if grad_out.dim() != 1 or not any(needs):
        return None
    outs = [torch.empty_like(g) if n else None
            for g, n in zip(kl_bwd_sources(g_mu, g_lv, g_plv), needs)]
    if not gaussian_rows.kl_bwd_rows(None, grad_out, None, None,
                                     g_mu if needs[0] or needs[2] else None,
                                     g_lv if needs[1] else None, g_plv if needs[3] else None,
                                     *outs):
        return None
    return outs
