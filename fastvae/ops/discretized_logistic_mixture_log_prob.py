"""``fastvae::discretized_logistic_mixture_log_prob``: the DMoL log-likelihood as a custom
op; its forward returns the value and d value / d params, and backward only scales them.

``reduction``/``scale`` let the ELBO reduce and sign the value inside the op (as the
ELBO op does), so ``loss.backward()`` hands it a grad_output of exactly 1 and the saved
gradient needs no pass at all. Per-sample values ("none") are weighed row by row, in
place when nothing else can see the saved gradient (the IWAE bound's softmax weights).
The discrete data x gets no gradient.
"""
from __future__ import annotations

from typing import List

import torch
from torch import Tensor

from .. import backends, reference
from .._dtypes import grad_factor, result_dtype
from . import _autograd as A


def _dmol_fwd(x: Tensor, params: Tensor, bits: int, reduction: str, scale: float,
              needs: List[bool], backend: str) -> tuple[Tensor, Tensor]:
    return A.filled(_dmol_value(x, params, bits, reduction, scale, needs, backend), x)


def _dmol_value(x, params, bits, reduction, scale, needs, backend):
    """The backend's (value, d/dparams), None for the gradient when not needed."""
    return backends.computing(backend).discretized_logistic_mixture_log_prob_fwd(
        x, params, bits, reduction, scale, needs)


_op = torch.library.custom_op("fastvae::discretized_logistic_mixture_log_prob",
                              mutates_args=())(_dmol_fwd)


@_op.register_fake
def _(x, params, bits, reduction, scale, needs, backend):
    shape = (x.shape[0],) if reduction == "none" else ()
    return (x.new_empty(shape, dtype=result_dtype(x, params)),
            A.grad_like(params, needs[0], x))


def _setup(ctx, inputs, output):
    A.save_grads(ctx, output[1:], needs_=inputs[5], backend=inputs[6], inputs=inputs[:5])
    ctx.per_row = inputs[3] == "none"
    ctx.like = A.cast_like(inputs[1])


def _backward(ctx, grad_out, *_):
    if not ctx.per_row:
        g = A.weigh_saved(ctx, grad_out, (0,))[0]
    elif ctx.needs[0] and grad_out is not None and A.may_scale_in_place(ctx, grad_out):
        g = A.saved_grads(ctx)[0]
        g.mul_(grad_factor(g, grad_out, 0))
    else:
        g = A.weigh(A.saved_grads(ctx)[0] if ctx.needs[0] else None, grad_out, 0)
    return None, A.to_shape(g, ctx.like), None, None, None, None, None


def _higher_order(ctx, grad_out, *_):
    x, params, bits, reduction, scale = A.kept_inputs(ctx)
    value = scale * reference.discretized_logistic_mixture_log_prob(x, params, bits, reduction)
    g = A.recompute_grads(value, (params,), ctx.needs, grad_out)[0]
    return None, g, None, None, None, None, None


_dmol = A.Fused(_op, _dmol_fwd, _setup, A.with_higher_order(_backward, _higher_order),
                tensor_args=2, value_forward=_dmol_value)


def discretized_logistic_mixture_log_prob(x, params, bits, reduction="none", *, backend,
                                          scale=1.0):
    """``scale`` times the per-sample DMoL log-likelihood, reduced per ``reduction``;
    arguments as ``fastvae.backends`` documents."""
    needs = A.needs(params)
    if x.requires_grad:   # data: the value needs no graph from x (the reference's too)
        x = x.detach()
    return _dmol.value(x, params, int(bits), reduction, float(scale), needs, backend)
