"""``fastvae::kl_standard_normal``: per-row analytic KL to N(0, I) as a custom op."""
from __future__ import annotations

from typing import List

import torch
from torch import Tensor

from .. import backends, reference
from .._dtypes import result_dtype
from . import _autograd as A


def _kl_standard_normal_fwd(mu: Tensor, logvar: Tensor, needs: List[bool], backend: str
                            ) -> tuple[Tensor, Tensor, Tensor]:
    return A.filled(_kl_standard_normal_value(mu, logvar, needs, backend), mu)


def _kl_standard_normal_value(mu, logvar, needs, backend):
    """The backend's (KL, *gradients), None for a gradient not needed."""
    return backends.computing(backend).kl_standard_normal_fwd(mu, logvar, needs)


_op = torch.library.custom_op("fastvae::kl_standard_normal", mutates_args=())(
    _kl_standard_normal_fwd)


@_op.register_fake
def _(mu, logvar, needs, backend):
    return (mu.new_empty(mu.shape[:1], dtype=result_dtype(mu, logvar)),
            A.grad_like(mu, needs[0], mu), A.grad_like(logvar, needs[1], mu))


def _setup(ctx, inputs, output):
    A.save_grads(ctx, output[1:], needs_=inputs[2], backend=inputs[3], inputs=inputs[:2])
    ctx.like = [A.cast_like(t) for t in inputs[:2]]


def _backward(ctx, grad_out, *_):
    return (*A.weigh_rows(ctx, grad_out, ctx.like), None, None)


def _higher_order(ctx, grad_out, *_):
    mu, logvar = A.kept_inputs(ctx)
    value = reference.kl_standard_normal(mu, logvar)
    return (*A.recompute_grads(value, (mu, logvar), ctx.needs, grad_out), None, None)


_kl_standard_normal = A.Fused(_op, _kl_standard_normal_fwd, _setup,
                              A.with_higher_order(_backward, _higher_order), tensor_args=2,
                              value_forward=_kl_standard_normal_value)


def kl_standard_normal(mu, logvar, *, backend):
    return _kl_standard_normal.value(mu, logvar, A.needs(mu, logvar), backend)
