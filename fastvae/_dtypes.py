"""The dtype rules every backend shares: what a result is computed and returned in."""
from __future__ import annotations

import torch

# The floating-point dtypes narrower than float32: what is widened before a sum.
SIXTEEN_BIT = (torch.float16, torch.bfloat16)


@torch.compiler.assume_constant_result
def result_dtype(*ts) -> torch.dtype:
    """float64 when any tensor among ``ts`` is float64, else float32 (also for half inputs,
    whose sums over a batch would overflow)."""
    if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in ts):
        return torch.float64
    return torch.float32


def upcast(t, dtype):
    """t in ``dtype`` (floats and None pass through)."""
    return t.to(dtype) if isinstance(t, torch.Tensor) else t


def reduce_scale(batch: int, reduction: str) -> float:
    """The factor a per-sample term gets in the reduced value: 1/B for "mean" (an empty
    batch gives 0, not NaN), else 1."""
    return 1.0 / max(batch, 1) if reduction == "mean" else 1.0


def row_grad_dtype(t, shape) -> torch.dtype:
    """The dtype a backend writes t's gradient in, given the gradient's ``shape``: t's own
    where that is t's shape; float32 at least where t is shared by every row and its
    gradient is written per row, to be summed over rows by ``fastvae.ops`` (then cast to
    t's dtype). Per-row terms rounded to a 16-bit t's dtype first would put one rounding
    per row into the sum (bf16: errors of tens of percent over a few hundred rows)."""
    if shape is None or tuple(shape) == tuple(t.shape):
        return t.dtype
    return torch.promote_types(t.dtype, torch.float32)


def kl_grad_dtype(t, shape) -> torch.dtype:
    """The dtype ``kl_normal`` and ``sample_with_kl`` save t's KL gradient in, per row in
    ``shape`` (mu_q's): :func:`row_grad_dtype`, but float32 for float16. It is saved before
    backward weighs it by its row's grad_output, and inside the posteriors a hierarchical
    VAE allows (means in (-5, 5), log-variances in (-10, 10)) dKL/dmu_q = (mu_q - mu_p)
    e^-logvar_p reaches 2e5 and dKL/dlogvar_q = 0.5 (e^(logvar_q - logvar_p) - 1) 2e8:
    past float16's 65504 where the weighted gradient (a batch mean, or under a loss scale)
    fits, and a GradScaler's lower scale would not bring it back. bfloat16 has float32's
    range, and stays (its bytes are what a bf16 step moves)."""
    dtype = row_grad_dtype(t, shape)
    return torch.float32 if dtype == torch.float16 else dtype


def kl_mean_grad_dtype(mu, prior_mu, need_prior_mean: bool) -> torch.dtype:
    """The dtype of ``sample_with_kl``'s one saved dKL/dmu_q, which is also -dKL/dmu_p:
    :func:`kl_grad_dtype`, widened to the prior mean's gradient dtype (:func:`row_grad_dtype`)
    where that gradient is wanted (a wider or a shared prior beside a 16-bit posterior)."""
    if not need_prior_mean or prior_mu is None:
        return kl_grad_dtype(mu, mu.shape)
    return torch.promote_types(kl_grad_dtype(mu, mu.shape), row_grad_dtype(prior_mu, mu.shape))


def kl_bwd_sources(g_mu, g_lv, g_plv) -> tuple:
    """The saved gradient each of ``sample_with_kl``'s backward outputs (dmu_q, dlogvar_q,
    dmu_p, dlogvar_p) is made from, and so is written in the dtype of (``fastvae.ops``
    rounds each to its input's dtype): the one saved dKL/dmu_q serves both means."""
    return g_mu, g_lv, g_mu, g_plv


def widened(t):
    """A 16-bit tensor in float32, anything else as is: for a tensor about to be repeated
    over rows (``expand``), whose gradient autograd sums over the copies in the copies'
    dtype, so that the sum rounds to t's dtype once (as :func:`row_grad_dtype`'s rule)."""
    if isinstance(t, torch.Tensor) and t.dtype in SIXTEEN_BIT:
        return t.float()
    return t
