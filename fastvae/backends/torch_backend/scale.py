"""Backward of the fused losses on the "torch" backend: saved gradients times grad_output."""
from __future__ import annotations


def scale_saved_(grads, grad_out):
    """The saved gradients times the scalar ``grad_out``, in place; untouched when it is
    exactly 1 (reading it is a host sync on a GPU, which the Triton backend avoids; this
    one is the CPU path)."""
    if bool(grad_out == 1):
        return grads
    return [None if g is None else g.mul_(grad_out) for g in grads]
