"""Which function computes an op (the backend's fused op or the reference), shared by the
public functions of ``fastvae.functional`` and ``fastvae.gaussians``."""
from __future__ import annotations

import functools

import torch

from . import backends, ops, reference
from ._compiler import tracing_here
from .validation import resolve_validate, type_name


def run(backend, device, op: str):
    """The function that computes ``op``: the reference for "reference", and under a
    ``torch.func`` transform (whose every order and batching rule autograd-built math
    has), forward-mode AD (the fused ops have no ``jvp``) or ``torch.jit.trace`` (which
    records aten ops only), else the fused op of the selected backend."""
    name = backends.select(backend, device)
    if ops.reference_only():
        name = "reference"
    if name == "reference":
        # a fused op marks its backend as it runs (backends.computing); the reference's
        # math, traced into a compiled graph, marks nothing: a mark while tracing would be
        # a side effect, which a checkpointed block refuses (last_backend() then keeps
        # naming an earlier call's backend, as the README says)
        if not (torch.compiler.is_compiling() and tracing_here()):
            backends.mark_used(name)
        return getattr(reference, op)
    # a lookup in the memo would be a guard on it, and a first call's fill a recompile
    if torch.compiler.is_compiling() and tracing_here():
        return functools.partial(getattr(ops, op), backend=name)
    fn = _fused.get((op, name))
    if fn is None:
        fn = _fused[(op, name)] = functools.partial(getattr(ops, op), backend=name)
    return fn


_fused: dict = {}   # (op, backend) -> the fused op bound to its backend


def route_taken(route, backend, validate, device) -> bool:
    """Whether this call of a signature with a route (``ops.Route``) takes it: validation
    off, a backend choice that still picks the route's backend (``FASTVAE_BACKEND`` is
    read per call), and nothing else that sends it elsewhere (``ops.Route.usable``).
    Marks the backend used. Real tensors need no test: a signature holds every tensor's
    device, and :func:`keep_route` keeps no route for meta ones (their calls go to the
    op's fake kernel)."""
    if resolve_validate(validate):
        return False
    if not route.usable() or backends.select(backend, device) != route.backend:
        return False
    backends.mark_used(route.backend)
    return True


def keep_route(memo, sig, seen, fn, device, build) -> None:
    """After a call that ran the fused op ``fn`` (``run``'s partial) on ``device``, what
    ``memo`` holds for ``sig`` (it held ``seen``). Nothing changes for meta tensors or
    where a call is not the plain eager one (a dispatch mode or a transform: the op's
    fake kernel or the reference ran). Else a signature's first call leaves its backend's
    name; the next call on that backend builds the route (``build()``, False where none
    can be); a call on another backend than the name or the route names
    (``FASTVAE_BACKEND`` changed) leaves its own name. So a route is built for a backend
    that ran the signature twice in a row, never once per call."""
    if device.type == "meta" or not ops.Route.eager():
        return
    name = fn.keywords["backend"]
    if seen == name:
        memo.add(sig, build() or False)
    elif seen is not False and not (type(seen) is ops.Route and seen.backend == name):
        memo.add(sig, name)


def devices_differ(a: torch.device, b: torch.device) -> bool:
    """Another device type, or another index where both name one (a generator on cuda:0
    beside tensors on cuda:1 would otherwise reach torch's own error)."""
    return a.type != b.type or (a.index is not None and b.index is not None and a.index != b.index)


def check_generator(generator, device) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type_name(generator)}")
    if generator is not None and devices_differ(generator.device, device):
        raise ValueError(f"generator is on {generator.device}, tensors on {device}")
