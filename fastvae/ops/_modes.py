"""Where a fused op's call runs: plain eager (the autograd.Function path), under a
``torch.func`` transform, forward-mode AD or ``torch.jit.trace`` (the reference's math),
or where the custom op must dispatch (torch.compile, dispatch modes, tensor subclasses)."""
from __future__ import annotations

import torch
from torch import Tensor

from .._compiler import constant_result, tracing_here
from ..validation import PLAIN_TENSORS


def plain_eager(args) -> bool:
    """Real tensors (``PLAIN_TENSORS``) with no lazy negation (``x.conj().imag``: the
    custom op's dispatch resolves it, the backends' kernels read the raw memory), no
    tracing, no dispatch mode watching: the autograd.Function path."""
    if (torch.compiler.is_compiling() and tracing_here()) or dispatch_modes():
        return False
    for a in args:  # a loop, not all(genexpr): this runs on every call
        if isinstance(a, Tensor) and (type(a) not in PLAIN_TENSORS or a.is_meta
                                      or a.is_neg()):
            return False
    return True


# how many dispatch modes are on the stack: torch's own function where it has one (no Python
# frame: every routed call asks), else one assumed
dispatch_modes = getattr(torch._C, "_len_torch_dispatch_stack", None) or (lambda: 1)


def transform_stacked() -> bool:
    """Whether a ``torch.func`` transform's interpreter is on the stack (also while
    torch.compile traces one)."""
    return _peek is not None and _peek() is not None


def functorch_active() -> bool:
    """Whether a ``torch.func`` transform (grad, vmap, jacrev, ...) is running: eagerly, or
    traced by torch.compile (``torch.compile(torch.func.grad(f))``), where the custom ops'
    autograd cannot run under the transform (torch refuses an ``autograd.Function``
    without ``setup_context`` there) and the reference's math can. Dynamo reads the
    interpreter object as an opaque value (never None), so the compiled check is
    :func:`_transform_traced`, run for real as dynamo traces."""
    if torch.compiler.is_compiling() and tracing_here():
        return _transform_traced()
    return transform_stacked()


_peek = getattr(torch._C._functorch, "peek_interpreter_stack", None)
_TRANSFORMS = {getattr(torch._C._functorch.TransformType, n, None) for n in ("Grad", "Jvp", "Vmap")}


@constant_result
def _transform_traced() -> bool:
    """Whether a user's grad, jvp or vmap is on the interpreter stack while torch.compile
    traces (a constant of the graph: dynamo guards compiled frames on the stack's shape).
    Not functionalization: that is compile's own machinery, not a transform of the math."""
    top = _peek() if _peek is not None else None
    return top is not None and top.key() in _TRANSFORMS


def forward_ad_active() -> bool:
    """Whether a forward-mode AD level is open (``torch.autograd.forward_ad.dual_level``):
    the fused ops' ``autograd.Function`` has no ``jvp``, the reference's math has, as under
    a ``torch.func`` transform. An open level sends every call there, dual inputs or not,
    in every thread (torch's levels are the process's), so a seeded sampler draws the
    reference's eps there."""
    return _fwad._current_level >= 0


_fwad = torch.autograd.forward_ad


def carries_tangent(grads) -> bool:
    """Whether a backward's grad_output is dual (a forward derivative of the backward, at
    an open level): the saved gradients and the kernels would drop its tangent."""
    if _fwad._current_level < 0:
        return False
    for g in grads:  # a loop, not any(genexpr): this runs on every backward at a level
        if g is not None and _fwad.unpack_dual(g).tangent is not None:
            return True
    return False


is_tracing = torch._C._is_tracing


def reference_only() -> bool:
    """Whether a call must run the reference's math, the fused ops being unusable there: a
    ``torch.func`` transform (:func:`functorch_active`), forward-mode AD
    (:func:`forward_ad_active`) or ``torch.jit.trace``, which records aten ops only (the C
    kernels' and Triton launches' pointer arithmetic would meet its tensor-valued sizes;
    not under torch.compile, which keeps the fused ops and cannot trace the check)."""
    return (functorch_active() or forward_ad_active()
            or (not (torch.compiler.is_compiling() and tracing_here()) and is_tracing()))
