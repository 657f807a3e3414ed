"""Backward's weighing of a 16-bit saved gradient by a per-row grad_output (reduction
'none', IWAE's per-image bound) forms the product in float32 and rounds it once; the
float32 product is the one temporary of the gradient's size in float32. A float32 select
of it as well took 10 bytes a bfloat16 element at the peak, where 6 do."""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastvae.ops import _autograd as A


class _Float32Outputs(TorchDispatchMode):
    def __init__(self, numel):
        super().__init__()
        self.numel, self.ops = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.numel() == self.numel:
                self.ops.append(str(func))
        return out


def test_one_float32_temporary_and_the_same_values():
    g = torch.randn(6, 5, dtype=torch.bfloat16)
    g[2, 1] = float("inf")
    grad_out = torch.tensor([0.5, 1.0, 0.0, -3.0, 1e-3, 7.0])
    with _Float32Outputs(g.numel()) as seen:
        got = A.weigh(g, grad_out, 0)
    assert len(seen.ops) == 1, seen.ops
    want = torch.where(grad_out[:, None] == 0, 0.0, g.float() * grad_out[:, None])
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, want.to(torch.bfloat16), rtol=0, atol=0)
    assert (got[2] == 0).all()   # the zero row: no 0 * inf = NaN
    nan_row = A.weigh(g, torch.tensor([float("nan")] * 6), 0)
    assert nan_row.isnan().all()
    scalar = A.weigh(g, torch.tensor(0.25), 0)
    torch.testing.assert_close(scalar, (g.float() * 0.25).to(torch.bfloat16), rtol=0, atol=0)
