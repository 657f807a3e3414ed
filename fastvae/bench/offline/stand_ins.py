"""Stand-in inputs for the catalog's calls (``torch.empty``: nothing reads them), the
dtype pairs it uses, and backward as training runs it."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
# (x, network outputs) dtypes: pure, and autocast's (data stays fp32).
DTYPES = {"fp32": (F32, F32), "bf16": (BF16, BF16), "fp16": (F16, F16),
          "amp-bf16": (F32, BF16), "amp-fp16": (F32, F16)}
ALL_DTYPES = tuple(DTYPES)
PURE = ("fp32", "bf16", "fp16")


def empty(shape, dtype, grad=False):
    return torch.empty(shape, dtype=dtype).requires_grad_(grad)


def stand_in_obs(layout: str, learned: bool, b: int, d: int):
    shape = {"0d": (), "D": (d,), "1D": (1, d), "B1": (b, 1), "BD": (b, d)}.get(layout)
    if shape is None:
        return 1.3 if layout == "float" else 0.0
    return empty(shape, F32, learned)  # a learned obs_logvar is an fp32 parameter


def stand_in_prior(kind, b: int, l: int, dt, grad: bool):
    """A learned prior's (mu, logvar): None (N(0, I)), "L" (one (L,) row, shared by the
    batch), "BL" (one row per sample) or "number" (two floats)."""
    if kind is None:
        return None, None
    if kind == "number":
        return 0.3, -0.2
    shape = (b, l) if kind == "BL" else (l,)
    return empty(shape, dt, grad), empty(shape, dt, grad)


@contextlib.contextmanager
def int32_limit_lowered(lowered: bool = True):
    """The host's int32 limit lowered for a call, so its kernels take their INT64 switch at
    a small shape (a real K*B*D > 2^31 would need tens of GB of stand-ins); nothing
    changes where ``lowered`` is False."""
    from fastvae.backends.triton_backend import configs

    saved = configs.INT32_LIMIT
    if lowered:
        configs.INT32_LIMIT = 100   # below B x L at B = 64, L = 3
    try:
        yield
    finally:
        configs.INT32_LIMIT = saved


def stand_in_latents(b, l, dt, grad, chunked):
    """mu, logvar: separate tensors, or the two halves of one (B, 2L) encoder output."""
    if chunked:
        h = empty((b, 2 * l), dt, grad)
        return h[:, :l], h[:, l:]
    return empty((b, l), dt, grad), empty((b, l), dt, grad)


def finish(value, mode: str, big: bool) -> None:
    """Backward as training does it (a loss is a scalar; "none" is summed by the
    caller). ``autograd.grad``, not ``backward``: the same launches, without copying
    each gradient into a ``.grad``."""
    if mode == "eval" or value.grad_fn is None or (value.dim() and big):
        return
    leaves = [t for t in _leaves(value.grad_fn)]
    torch.autograd.grad(value if value.dim() == 0 else value.sum(), leaves, allow_unused=True)


def _leaves(fn, seen=None):
    """The leaf tensors a graph reaches (what ``backward`` would fill ``.grad`` of)."""
    seen = set() if seen is None else seen
    for nxt, _ in fn.next_functions:
        if nxt is None or nxt in seen:
            continue
        seen.add(nxt)
        if hasattr(nxt, "variable"):
            yield nxt.variable
        else:
            yield from _leaves(nxt, seen)


def run_in_mode(mode: str, fn: Callable) -> None:
    if mode == "eval":
        with torch.no_grad():
            fn()
    else:
        fn()
