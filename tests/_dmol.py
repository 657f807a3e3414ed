"""Inputs shared by the discretized mixture of logistics' test modules: on-grid x with
its edge bins, mixture parameters wide and within the float64 formula's reach, every
value of one pixel, and one pixel's extreme parameters; and the check of a backend's
value and d/dparams against the float64 formula."""
from __future__ import annotations

import torch

import fastvae
import _formulas as F
from _compare import assert_close, grads, leaf

F64 = torch.float64
DMOL = "discretized_logistic_mixture"
OP = fastvae.discretized_logistic_mixture_log_prob


def slots(c):
    return 10 if c == 3 else 3


def make(b, c, h, w, m, dtype=F64, bits=8):
    """On-grid x with both edge bins and their neighbours present; logits ~ N(0, 4),
    means in [-1, 1], log-scales s ~ N(-2, 4), coefficients ~ N(0, 1): wide, and within
    the float64 formula's reach (larger scales: the mpmath and normalization tests).
    s lies in [-9, 3] in float64 (some below the clamp at -7), in [-5, 3] in lower
    precisions, whose gradient error grows as e^-s (the rounding of ``y - mean``, times
    e^-s): 1e-4 relative at the clamp, past the comparisons' tolerance."""
    n = 2 ** bits - 1
    x = torch.randint(0, n + 1, (b, c, h, w)).to(F64)
    flat = x.view(-1)
    for i, v in enumerate((0, n, 1, n - 1)):
        flat[i::7] = v
    p = torch.randn(b, slots(c) * m, h, w, dtype=F64)
    p[:, :m] *= 2
    per = 3 if c == 3 else 2
    for ch in range(c):
        base = m + per * m * ch
        p[:, base:base + m] = torch.rand(b, m, h, w, dtype=F64) * 2 - 1
        p[:, base + m:base + 2 * m] = (p[:, base + m:base + 2 * m] * 2 - 2).clamp(-9 if dtype == F64 else -5, 3)
    return (x / n).to(dtype), p.to(dtype)



def all_values(c, bits, dtype):
    """Every value of one pixel, one per sample: (2^bits, 1, 1, 1) or (2^(3 bits), 3, 1, 1)."""
    n = 2 ** bits - 1
    levels = torch.arange(n + 1, dtype=F64) / n
    if c == 1:
        return levels.view(-1, 1, 1, 1).to(dtype)
    return torch.cartesian_prod(levels, levels, levels).view(-1, 3, 1, 1).to(dtype)


def extreme_params(c, m, g, dtype):
    """One pixel's parameters: random logits and means, log-scales from below the clamp
    to where the logistic is far wider than [-1, 1], large coefficients. Drawn on the CPU
    (``g`` is a CPU generator; compiled Triton tests make CUDA the default device), then
    moved to the default device: every backend gets the same numbers."""
    p = torch.randn(1, slots(c) * m, 1, 1, generator=g, dtype=F64, device="cpu") * 3
    per = 3 if c == 3 else 2
    scales = torch.tensor([-9.0, -7.0, -4.0, 0.0, 2.5, 9.0, 40.0], dtype=F64, device="cpu")
    for ch in range(c):
        base = m + per * m * ch
        p[0, base:base + m, 0, 0] = torch.rand(m, generator=g, dtype=F64, device="cpu") * 3 - 1.5
        order = torch.randperm(len(scales), generator=g, device="cpu")
        p[0, base + m:base + 2 * m, 0, 0] = scales[order[:m]]
    return p.to(torch.get_default_device(), dtype)


def check(x, params, backend, bits=8, rtol=None):
    dt = params.dtype
    p = leaf(params)
    got = OP(x, p, bits=bits, backend=backend)
    assert fastvae.last_backend() == backend
    assert got.shape == (x.shape[0],) and got.dtype == (F64 if dt == F64 else torch.float32)
    want = F.dmol_log_prob(x, p, bits)
    # summed terms: log p per pixel is of the order of C * |log bin mass|
    assert_close("log p", got, want, dt, rtol=rtol, scale=want.abs().max() + 1)
    w = torch.rand(got.shape, dtype=F64) + 0.5
    (g,), (e,) = grads(got, [p], w), grads(want, [p], w)
    assert g.dtype == dt and g.shape == p.shape
    assert_close("d log p / d params", g, e, dt, rtol=rtol, scale=e.abs().max() + 1e-3)
