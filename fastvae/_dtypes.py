"""The dtype rules every backend shares: what a result is computed and returned in."""
from __future__ import annotations

import torch


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
