"""The tests' one comparison rule, and the autograd helpers every op suite uses.

Rule: ``got`` matches ``want`` when both have the same shape, ``got`` is finite and,
elementwise in float64,

    |got - want| <= rtol * max(|want|, scale) + 2 * max|eager - want|

``rtol``: by the dtype the compared implementation computed in (``TOL``), unless the
check passes its own. ``scale``: the magnitude of the terms summed into ``want`` (a sum
can cancel far below its terms' rounding); by default ``max|want|``, so one rule serves
a summed loss and its per-element gradients alike. ``eager``: the same quantity from
eager PyTorch in the same low precision; twice its error is allowed on top
(flash-attention's rule), for quantities whose rounding error any implementation in
that precision shares (e.g. softmax weights of log-weights of order 1e4).

``fastvae.testing.assert_close`` (the benchmarks' check of every variant before timing
it, and users') is looser on purpose (float32: rtol 1e-3): eager, ``torch.compile`` and
the distributions variants need only agree to what a benchmark compares. The suites
hold fastvae's own ops to this rule against float64 oracles.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Union

import torch

F64 = torch.float64
# (precision, min exponent) of the 16-bit dtypes, for :func:`ulp16`
BITS_16 = {torch.bfloat16: (8, -126), torch.float16: (11, -14)}


def ulp16(t, dtype):
    """The ulp of ``dtype`` (a 16-bit one) at each value of float64 ``t``, subnormals
    included: the unit the tests of one rounding to a 16-bit dtype count in."""
    p, emin = BITS_16[dtype]
    e = torch.floor(torch.log2(t.abs().clamp_min(1e-300))).clamp_min(emin)
    return torch.pow(2.0, e - (p - 1))

# rtol by compute dtype. float64: the formulas and the fused math agree to ~1e-13; 1e-10
# leaves room for sums of 1e3 terms. float32: ~100 ulp. Half types: a few of their ulps
# (the fused math runs in fp32 and rounds once, on store).
TOL = {
    torch.float64: 1e-10,
    torch.float32: 2e-5,
    torch.float16: 3e-3,
    torch.bfloat16: 2e-2,
}

Rtol = Union[None, float, Mapping[torch.dtype, float]]


def tolerance(dtype: torch.dtype, rtol: Rtol = None) -> float:
    """The rtol of a check at ``dtype``: ``TOL``'s, or the check's own (a float, or a
    ``{dtype: rtol}`` map for checks tighter or looser than the table at some dtypes,
    e.g. ``{torch.float64: 1e-13}``: a case that runs in float32 on the Triton backend
    keeps float32's tolerance)."""
    if isinstance(rtol, Mapping):
        return rtol.get(dtype, TOL[dtype])
    return TOL[dtype] if rtol is None else rtol


def assert_close(what: str, got: Optional[torch.Tensor], want: Optional[torch.Tensor],
                 dtype: torch.dtype = F64, *, rtol: Rtol = None, scale=None,
                 eager: Optional[torch.Tensor] = None) -> None:
    """Assert the module's rule; the message starts with ``what``. ``None`` (a gradient
    that was not computed) matches only ``None``."""
    if got is None or want is None:
        assert got is None and want is None, f"{what}: got {got!r}, want {want!r}"
        return
    assert isinstance(got, torch.Tensor), f"{what}: got {type(got).__name__}"
    assert tuple(got.shape) == tuple(want.shape), (
        f"{what}: shape {tuple(got.shape)} != expected {tuple(want.shape)}")
    if want.numel() == 0:
        return
    g, w = got.detach().double(), want.detach().double().to(got.device)
    assert bool(torch.isfinite(g).all()), f"{what}: non-finite values in {g}"
    tol = tolerance(dtype, rtol)
    s = w.abs().max() if scale is None else torch.as_tensor(scale, dtype=F64, device=g.device)
    bound = tol * torch.maximum(w.abs(), s.detach().double().expand_as(w)).clamp(min=1e-300)
    if eager is not None:
        bound = bound + 2 * (eager.detach().double().to(g.device) - w).abs().max()
    err = (g - w).abs()
    if not bool((err <= bound).all()):
        i = int((err - bound).flatten().argmax())
        raise AssertionError(
            f"{what}: {int((err > bound).sum())} of {w.numel()} values off; worst at flat "
            f"index {i}: got {g.flatten()[i].item()!r}, expected {w.flatten()[i].item()!r} "
            f"(|err| {err.flatten()[i].item():.3e} > allowed {bound.flatten()[i].item():.3e}, "
            f"rtol {tol:g})")


def assert_close_past_range(what: str, got: torch.Tensor, want: torch.Tensor,
                            dtype: torch.dtype, huge: float = 1e10) -> None:
    """Gradients of a far sample beside ordinary ones. Where ``want`` (float64) is past
    ``dtype``'s largest finite value, ``got`` must be the infinity of its sign (an honest
    overflow, not a NaN); where it is above ``huge``, each value is held to ``dtype``'s
    rtol of itself; the rest to :func:`assert_close` among themselves (a value of 1e20
    would otherwise set the scale of every other)."""
    g, w = got.detach().double(), want.detach().double().to(got.device)
    assert g.shape == w.shape, f"{what}: shape {tuple(g.shape)} != {tuple(w.shape)}"
    past = w.abs() > torch.finfo(dtype).max
    assert bool((g[past] == w[past].sign() * math.inf).all()), (
        f"{what}: {g[past]} where float64 has {w[past]}")
    large = ~past & (w.abs() > huge)
    assert_close(f"{what} (above {huge:g})", g[large], w[large], dtype, scale=0.0)
    assert_close(what, g[~past & ~large], w[~past & ~large], dtype)


# -- autograd helpers ------------------------------------------------------------------

def leaf(t, requires_grad: bool = True):
    """A fresh leaf with t's values (None and numbers pass through)."""
    if not isinstance(t, torch.Tensor):
        return t
    return t.detach().clone().requires_grad_(requires_grad)


def oracle(*ts):
    """float64 leaves of ``ts`` (same numbers, same requires_grad): the oracle's inputs."""
    return [t.detach().double().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor)
            else t for t in ts]


def grads(value, inputs, weight=None):
    """d sum(weight * value) / d inputs, in the inputs' order; None for an input that is
    not a tensor requiring grad. ``weight``: a fixed cotangent (default ones)."""
    if weight is not None:
        value = value * weight.to(value.device)
    need = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    got = iter(torch.autograd.grad(value.sum(), need, allow_unused=True, retain_graph=True))
    return [next(got) if isinstance(t, torch.Tensor) and t.requires_grad else None
            for t in inputs]


def check_no_noise_saved(backend: str, b: int = 16, n: int = 40, k: int = 4) -> None:
    """What autograd keeps for the samplers on ``backend``: logvar (the caller's), the
    one-element seed, and for sample_with_kl the KL's three gradients (dKL/dmu_p is
    -dKL/dmu_q, kept once) and its four inputs (the caller's); no (K, B, L) or (B, L) eps,
    no z. Backward runs from it."""
    import fastvae

    mu, lv, pm, plv = (leaf(torch.randn(b, n)) for _ in range(4))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        z = fastvae.reparameterize(mu, lv, n_samples=k, backend=backend)
    assert sorted(tuple(t.shape) for t in saved) == [(1,), (b, n)], [t.shape for t in saved]
    assert sum(t.numel() * t.element_size() for t in saved) == b * n * 4 + 8
    z.sum().backward()
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        z, kl = fastvae.sample_with_kl(mu, lv, pm, plv, backend=backend)
    assert sorted(tuple(t.shape) for t in saved) == [(1,)] + [(b, n)] * 7, [t.shape for t in saved]
    for t in (mu, lv, pm, plv):
        assert sum(s.data_ptr() == t.data_ptr() for s in saved) == 1
    assert not any(t.data_ptr() == z.data_ptr() for t in saved)
    (z.sum() + kl.sum()).backward()
