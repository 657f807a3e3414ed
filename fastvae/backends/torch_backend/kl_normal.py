"""kl_normal on the "torch" backend: per-row KL between diagonal Gaussians and its gradients."""
from __future__ import annotations

from ..._dtypes import result_dtype, upcast
from . import terms
from .rows import grad_out


def kl_normal_fwd(mu_q, logvar_q, mu_p, logvar_p, needs):
    """(KL per row, d/dmu_q, d/dlogvar_q, d/dmu_p, d/dlogvar_p); the prior's gradients are
    per row, (B, N), whatever its own shape (``fastvae.ops`` sums a shared prior's)."""
    dtype = result_dtype(mu_q, logvar_q, mu_p, logvar_p)
    kl_bn, d_mu, d_lv, _, d_pm, d_plv = terms.kl_prior_terms(
        upcast(mu_q, dtype), upcast(logvar_q, dtype), None, upcast(mu_p, dtype),
        upcast(logvar_p, dtype), "analytic")
    shape = mu_q.shape
    return (kl_bn.sum(-1), grad_out(d_mu, mu_q, needs[0], shape),
            grad_out(d_lv, logvar_q, needs[1], shape),
            grad_out(d_pm, mu_q if mu_p is None else mu_p, needs[2], shape),
            grad_out(d_plv, mu_q if logvar_p is None else logvar_p, needs[3], shape))
