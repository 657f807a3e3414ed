"""The dtype rules every backend shares: what a result is computed and returned in."""
from __future__ import annotations

import torch

# The floating-point dtypes narrower than float32: what is widened before a sum.
SIXTEEN_BIT = (torch.float16, torch.bfloat16)
# What the ops take: torch's float8 dtypes are floating point too, but neither its random
# numbers nor its type promotion work in them.
FLOATS = frozenset((*SIXTEEN_BIT, torch.float32, torch.float64))


def result_dtype(*ts) -> torch.dtype:
    """float64 when any tensor among ``ts`` is float64, else float32 (also for half inputs,
    whose sums over a batch would overflow). Traced as it stands (dtypes are static under
    torch.compile): taken as a constant result, dynamo would run it on real values, which
    it has none of inside a checkpointed block, nor for a float it made symbolic."""
    if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in ts):
        return torch.float64
    return torch.float32


def same_shape(a, b) -> bool:
    """``a == b`` for two shapes (torch.Size or tuples), lengths first: shapes compare
    element by element, and under torch.compile or torch.export a (B, L) against an (L,)
    would compare B with L, a guard B != L (a batch of L rows would recompile; an export
    of a dynamic batch fails)."""
    return len(a) == len(b) and a == b


def widest(device: torch.device) -> torch.dtype:
    """The dtype a sum that must not drift is carried in on ``device``: float64, float32 on
    MPS (which has no float64)."""
    return torch.float32 if device.type == "mps" else torch.float64


def to_widest(t: torch.Tensor) -> torch.Tensor:
    """t in :func:`widest` of its device: what a sum that must not drift starts from."""
    return t.to(widest(t.device))


def float64_device(device: torch.device) -> torch.device:
    """Where a float64 comparison of ``device``'s tensors runs: there, or on the CPU where
    the device has no float64 (MPS); the agreement checks are not timed, and float32 would
    round below float64's tolerances."""
    return device if widest(device) == torch.float64 else torch.device("cpu")


def in_float64(t: torch.Tensor) -> torch.Tensor:
    """t detached, in float64 on :func:`float64_device` (moved there first, then widened:
    a cast on the device would need the float64 it lacks)."""
    return t.detach().to(float64_device(t.device)).double()


def upcast(t, dtype):
    """t in ``dtype`` (floats and None pass through)."""
    return t.to(dtype) if isinstance(t, torch.Tensor) else t


def reduce_scale(batch: int, reduction: str) -> float:
    """The factor a per-sample term gets in the reduced value: 1/B for "mean" (an empty
    batch gives 0, not NaN), else 1."""
    return 1.0 / max(batch, 1) if reduction == "mean" else 1.0


def saved_grad_dtype(t, shape=None) -> torch.dtype:
    """The dtype a fused op saves t's gradient in, until backward weighs it by grad_output
    and rounds it to t's dtype (``fastvae.ops``): t's own, with two exceptions.

    - float16: float32. The gradient is saved before it is weighed, and float16 flushes a
      saved value below 6e-8 to 0 and turns one past 65504 into inf where the weighed one
      fits: under a GradScaler (loss scale 2^16, applied in backward) a mean ELBO's
      gradients at B = 128 came back 0 for a fifth of the pixels, and inside the posteriors
      a hierarchical VAE allows dKL/dlogvar_q reaches 2e8. bfloat16 has float32's range,
      and keeps its bytes (what a bf16 step moves).
    - t shared by every row, its gradient written per row in ``shape`` (to be summed over
      rows): float32 at least. Per-row terms rounded to a 16-bit dtype first would put one
      rounding per row into the sum (bf16: errors of tens of percent over a few hundred
      rows).
    """
    if t.dtype == torch.float16:
        return torch.float32
    if shape is None or same_shape(tuple(shape), t.shape):
        return t.dtype
    return torch.promote_types(t.dtype, torch.float32)


def kl_mean_grad_dtype(mu, prior_mu, need_prior_mean: bool) -> torch.dtype:
    """The dtype of ``sample_with_kl``'s and ``kl_normal``'s one saved dKL/dmu_q, which is
    also -dKL/dmu_p: mu's :func:`saved_grad_dtype`, widened to the prior mean's where that
    gradient is wanted (a wider or a shared prior beside a 16-bit posterior)."""
    if not need_prior_mean or prior_mu is None:
        return saved_grad_dtype(mu)
    return torch.promote_types(saved_grad_dtype(mu), saved_grad_dtype(prior_mu, mu.shape))


def kl_saved_needs(needs) -> tuple:
    """Which of the three saved KL gradients (dKL/dmu_q, dKL/dlogvar_q, dKL/dlogvar_p) a
    call with ``needs`` = (mu_q, logvar_q, mu_p, logvar_p) keeps: dKL/dmu_q serves both
    means (:func:`kl_bwd_sources`)."""
    return needs[0] or needs[2], needs[1], needs[3]


def kl_bwd_sources(g_mu, g_lv, g_plv) -> tuple:
    """The saved gradient each of ``sample_with_kl``'s and ``kl_normal``'s backward outputs
    (dmu_q, dlogvar_q, dmu_p, dlogvar_p) is made from, and so is written in the dtype of
    (``fastvae.ops`` rounds each to its input's dtype): the one saved dKL/dmu_q serves
    both means."""
    return g_mu, g_lv, g_mu, g_plv


def widened(t):
    """A 16-bit tensor in float32, anything else as is: for 16-bit math that runs wide and
    rounds once, and for a tensor about to be repeated over rows (``expand``), whose
    gradient autograd sums over the copies in the copies' dtype, so that the sum rounds to
    t's dtype once (as :func:`saved_grad_dtype`'s rule)."""
    if isinstance(t, torch.Tensor) and t.dtype in SIXTEEN_BIT:
        return t.float()
    return t


def grad_factor(g: torch.Tensor, grad_out: torch.Tensor, row_dim: int = 0) -> torch.Tensor:
    """grad_output as the factor of a saved gradient ``g``: laid along g's dim ``row_dim``
    where it is per row, in g's dims even when it is a scalar (a 0-dim tensor would not
    widen the product), float32 for a 16-bit g, so ``g * factor`` rounds once (grad_output
    rounded to bf16 first gave two roundings, up to 2 ulp off)."""
    shape = [-1 if i == row_dim and grad_out.dim() else 1 for i in range(g.dim())]
    return grad_out.reshape(shape).to(torch.float32 if g.dtype in SIXTEEN_BIT else g.dtype)
