"""kl_standard_normal on the "torch" backend: per-row analytic KL and its gradients."""
from __future__ import annotations

from ..._dtypes import result_dtype, upcast
from . import terms
from .rows import grad_out


def kl_standard_normal_fwd(mu, logvar, needs):
    """(KL per row, d/dmu, d/dlogvar)."""
    dtype = result_dtype(mu, logvar)
    kl_bl, d_mu, d_lv, _ = terms.kl_terms(upcast(mu, dtype), upcast(logvar, dtype), None, "analytic")
    # d_mu is mu itself: clone it, a custom op's output may not alias its input.
    return kl_bl.sum(-1), grad_out(d_mu.clone(), mu, needs[0]), grad_out(d_lv, logvar, needs[1])
