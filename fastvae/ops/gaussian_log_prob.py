"""``fastvae::gaussian_log_prob``: per-row Gaussian log density as a custom op."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from .. import backends, reference
from .._dtypes import result_dtype
from . import _autograd as A


def _gaussian_log_prob_fwd(x: Tensor, mean: Tensor, logvar: Optional[Tensor],
                           logvar_scalar: float, needs: List[bool], backend: str
                           ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return A.filled(_gaussian_log_prob_value(x, mean, logvar, logvar_scalar, needs, backend), x)


def _gaussian_log_prob_value(x, mean, logvar, logvar_scalar, needs, backend):
    """The backend's (log-density, *gradients), None for a gradient not needed."""
    return backends.computing(backend).gaussian_log_prob_fwd(x, mean, logvar, logvar_scalar,
                                                             needs)


_op = torch.library.custom_op("fastvae::gaussian_log_prob", mutates_args=())(
    _gaussian_log_prob_fwd)


@_op.register_fake
def _(x, mean, logvar, logvar_scalar, needs, backend):
    return (x.new_empty(x.shape[:1], dtype=result_dtype(x, mean, logvar)),
            A.grad_like(x, needs[0], x), A.grad_like(mean, needs[1], x),
            A.grad_like(logvar, needs[2], x, x.shape))


def _setup(ctx, inputs, output):
    A.save_grads(ctx, output[1:], needs_=inputs[4], backend=inputs[5], inputs=inputs[:4])
    ctx.like = (A.cast_like(inputs[0]), A.cast_like(inputs[1]), A.input_like(inputs[2]))


def _backward(ctx, grad_out, *_):
    return (*A.weigh_rows(ctx, grad_out, ctx.like), None, None, None)


def _higher_order(ctx, grad_out, *_):
    x, mean, logvar, logvar_scalar = A.kept_inputs(ctx)
    value = reference.gaussian_log_prob(x, mean, logvar_scalar if logvar is None else logvar)
    return (*A.recompute_grads(value, (x, mean, logvar), ctx.needs, grad_out), None, None, None)


_gaussian_log_prob = A.Fused(_op, _gaussian_log_prob_fwd, _setup,
                             A.with_higher_order(_backward, _higher_order), tensor_args=3,
                             value_forward=_gaussian_log_prob_value)


def gaussian_log_prob(x, mean, logvar, *, backend):
    lv, lv_scalar = (logvar, 0.0) if isinstance(logvar, Tensor) else (None, logvar)
    return _gaussian_log_prob.value(x, mean, lv, float(lv_scalar), A.needs(x, mean, lv), backend)
