"""The value checks of validation: NaN or inf in any input, x in [0, 1] for the Bernoulli
likelihoods, x on the discretized mixture's grid. They cost a pass over the data, so they
run only with validation on.

Eagerly they run in place. Under torch.compile they run as one custom op,
``fastvae::check_values``, that the compiled graph calls and that raises the same
ValueError at run time: a Python branch on the data cannot be traced (it breaks the
graph, and ``fullgraph=True`` refuses it), and an op that returns nothing is dead code
to the compiler unless it is registered as having an effect.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from ._compiler import tracing_here
from ._dtypes import to_widest

_BERNOULLI = ("bernoulli", "continuous_bernoulli")


def check_values(validate: bool, *, likelihood=None, x=None, **tensors) -> None:
    """The per-element checks: finiteness of every input, x in [0, 1] where required. x
    first: the data is what a model's outputs are computed from, so a NaN there is named
    as such, not as the NaN it makes of recon or mu. Meta tensors have no values to check
    (shape inference). Callers pass each input as it was given, not broadcast (a number,
    checked where it was read, is skipped): an error counts the caller's values, not their
    copies over the batch or the columns."""
    if validate:
        _check(dict(x=x, **tensors), likelihood or "", 0)


def check_dmol_values(validate: bool, x, bits: int, **tensors) -> None:
    """With validation on: finite parameters, x in [0, 1] on the grid ``k / (2^bits - 1)``
    to within the rounding of x's dtype (up to half a bin for bfloat16 at 8 bits, so there
    in effect only the range is checked)."""
    if validate:
        _check(dict(tensors, x=x), "", bits)


def _check(named: dict, likelihood: str, bits: int) -> None:
    if torch.compiler.is_compiling() and tracing_here() and _traceable:
        names = [n for n, t in named.items() if isinstance(t, Tensor)]
        _op([named[n].detach() for n in names], ",".join(names), likelihood, bits)
    else:
        _check_now(named, likelihood, bits)


def _check_now(named: dict, likelihood: str, bits: int) -> None:
    """``bits`` > 0: x is a discretized mixture's data (its range and grid checked)."""
    for name, t in named.items():
        t = _values(t)
        if not isinstance(t, Tensor) or not t.numel() or t.is_meta:
            continue
        if t.is_cuda and torch.cuda.is_current_stream_capturing():
            # the read-back below would fail the capture with a CUDA error that names no cause
            raise RuntimeError(
                "validate=True cannot run inside a CUDA graph capture: the value checks read "
                "the result back to the host. Capture the step with validate=False (or "
                "fastvae.set_validation(False)) and check the inputs before capturing")
        if not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{name} has {bad} non-finite value(s) (NaN or inf)")
        if name != "x":
            continue
        if bits:
            _check_grid(t, bits)
        elif likelihood in _BERNOULLI:
            lo, hi = float(t.min()), float(t.max())
            if lo < 0.0 or hi > 1.0:
                raise ValueError(
                    f"likelihood={likelihood!r} needs x in [0, 1], got values in [{lo}, {hi}]"
                )


def _check_grid(x: Tensor, bits: int) -> None:
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"the discretized logistic mixture needs x in [0, 1], got values in "
                         f"[{lo}, {hi}]")
    n = 2 ** bits - 1
    scaled = to_widest(x) * n
    off = float((scaled - torch.floor(scaled + 0.5)).abs().max())
    tol = min(0.5, max(1e-3, torch.finfo(x.dtype).eps * n))
    if off > tol:
        raise ValueError(f"x must lie on the {bits}-bit grid k / {n}: a value is {off:.3g} of a "
                         f"bin off it (tolerance {tol:.3g}); quantize the data first, e.g. "
                         f"torch.round(x * {n}) / {n}")


def _values(t):
    """``t``'s values to check: under vmap and grad transforms, the tensor their wrappers
    hold (a vmap's holds every sample's; ``bool()`` of a batched tensor is an error). Not
    a functionalize wrapper's, whose inner tensor may lack its pending mutations (bool()
    reads it right)."""
    while isinstance(t, Tensor) and any(w(t) for w in _WRAPPERS):
        t = torch._C._functorch.get_unwrapped(t)
    return t


_WRAPPERS = tuple(getattr(torch._C._functorch, name) for name in
                  ("is_batchedtensor", "is_gradtrackingtensor")
                  if hasattr(torch._C._functorch, name))


@torch.library.custom_op("fastvae::check_values", mutates_args=())
def _op(tensors: List[Optional[Tensor]], names: str, likelihood: str, bits: int) -> None:
    _check_now(dict(zip(names.split(","), tensors)), likelihood, bits)


@_op.register_fake
def _(tensors, names, likelihood, bits) -> None:
    return None


# A compiled vmap hands the op batched tensors: it checks every sample's values at once
# (eagerly, _values unwraps them). Its inputs are detached, so a grad transform has no
# autograd formula to ask for. register_vmap is torch >= 2.5: without it the op is not
# traced (a compiled vmap would reach it with no rule), the checks graph-break as eager code.
_vmap = getattr(_op, "register_vmap", None)
if _vmap is not None:
    _vmap(lambda info, in_dims, tensors, *options: (_op(tensors, *options), None))


def _register_effect() -> bool:
    """Mark the op as ordered-effectful, so no compiler drops it; False where this torch
    lacks the (private) registration, where the check graph-breaks as eager code."""
    try:
        from torch._higher_order_ops import effects
        effects._register_effectful_op(torch.ops.fastvae.check_values.default,
                                       effects._EffectType.ORDERED)
    except (ImportError, AttributeError, TypeError, RuntimeError, AssertionError):
        return False
    return True


_traceable = _vmap is not None and _register_effect()
