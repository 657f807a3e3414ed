"""gaussian_log_prob on the "torch" backend: per-row log density and its gradients."""
from __future__ import annotations

from ..._dtypes import result_dtype, upcast
from . import terms
from .rows import grad_out


def gaussian_log_prob_fwd(x, mean, logvar, logvar_scalar, needs):
    """(value per row, d/dx, d/dmean, d/dlogvar per element)."""
    dtype = result_dtype(x, mean, logvar)
    lv = logvar_scalar if logvar is None else upcast(logvar, dtype)
    value, g_mean, g_lv = terms.gaussian(upcast(x, dtype), upcast(mean, dtype), lv)
    return (value, grad_out(-g_mean, x, needs[0]), grad_out(g_mean, mean, needs[1]),
            grad_out(g_lv, logvar if logvar is not None else x, needs[2], x.shape))
