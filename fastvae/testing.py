"""Comparing fastvae's outputs with a reference, as ``torch.testing`` does for torch.

Rule: ``got`` matches ``want`` when both have the same shape, both are finite, and
``|got - want| <= rtol * |want| + atol * max|want|`` elementwise, (rtol, atol) = ``TOLERANCES[dtype]``.

The absolute part scales with the reference's largest magnitude, so one rule serves a
summed loss (hundreds of nats) and its per-element gradients alike. The benchmarks
check every variant with it before timing one (eager, ``torch.compile`` and fastvae's
alike, so the tolerances are those of a low-precision eager computation).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ._dtypes import in_float64

__all__ = ["TOLERANCES", "tolerance", "assert_close"]

# (rtol, atol as a fraction of the reference's largest magnitude), by the dtype the
# compared implementation computed in.
TOLERANCES = {
    torch.float64: (1e-7, 1e-9),
    torch.float32: (1e-3, 1e-4),
    torch.bfloat16: (3e-2, 2e-2),
    torch.float16: (1e-2, 5e-3),
}


def tolerance(dtype: torch.dtype) -> Tuple[float, float]:
    """``(rtol, atol_fraction)`` for ``dtype``; float32's for dtypes not in the table."""
    return TOLERANCES.get(dtype, TOLERANCES[torch.float32])


def assert_close(what: str, got: Optional[torch.Tensor], want: Optional[torch.Tensor],
                 dtype: torch.dtype) -> None:
    """Raise ``AssertionError`` (its message starting with ``what``) unless ``got``
    matches ``want`` by the module's rule at ``dtype``'s tolerance. Compared in float64 (on
    the CPU for a device without it); ``None`` (e.g. a gradient that was not computed)
    matches only ``None``."""
    if got is None or want is None:
        if got is not want:
            raise AssertionError(f"{what}: one side has no value (got {got!r}, want {want!r})")
        return
    if tuple(got.shape) != tuple(want.shape):
        raise AssertionError(f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    rtol, atol_frac = tolerance(dtype)
    g, w = in_float64(got), in_float64(want)
    scale = w.abs().max().item() if w.numel() else 0.0
    atol = atol_frac * max(scale, 1e-30)
    if not torch.isfinite(g).all():
        raise AssertionError(f"{what}: non-finite values")
    # a non-finite reference makes the tolerance NaN or inf, which every value would pass
    off = int((~torch.isfinite(w)).sum())
    if off:
        raise AssertionError(f"{what}: the reference has {off} non-finite of {w.numel()} values")
    err = (g - w).abs()
    allowed = atol + rtol * w.abs()
    bad = err > allowed
    if bool(bad.any()):
        i = int(torch.argmax((err - allowed).flatten()))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {w.numel()} values differ beyond rtol={rtol}, "
            f"atol={atol:.3g}; worst at flat index {i}: {g.flatten()[i].item():.6g} vs "
            f"{w.flatten()[i].item():.6g}")
