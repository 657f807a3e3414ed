"""``fastvae::kl_normal``: per-row KL between diagonal Gaussians as a custom op."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from .. import backends, reference
from .._dtypes import result_dtype
from . import _autograd as A


def _kl_normal_fwd(mu_q: Tensor, logvar_q: Tensor, mu_p: Optional[Tensor],
                   logvar_p: Optional[Tensor], needs: List[bool], backend: str
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return A.filled(_kl_normal_value(mu_q, logvar_q, mu_p, logvar_p, needs, backend), mu_q)


def _kl_normal_value(mu_q, logvar_q, mu_p, logvar_p, needs, backend):
    """The backend's (KL, *gradients), None for a gradient not needed."""
    return backends.computing(backend).kl_normal_fwd(mu_q, logvar_q, mu_p, logvar_p, needs)


_op = torch.library.custom_op("fastvae::kl_normal", mutates_args=())(_kl_normal_fwd)


@_op.register_fake
def _(mu_q, logvar_q, mu_p, logvar_p, needs, backend):
    grads = [A.grad_like(t, n, mu_q, mu_q.shape)
             for t, n in zip((mu_q, logvar_q, mu_p, logvar_p), needs)]
    return (mu_q.new_empty(mu_q.shape[:1], dtype=result_dtype(mu_q, logvar_q, mu_p, logvar_p)),
            *grads)


def _setup(ctx, inputs, output):
    A.save_grads(ctx, output[1:], needs_=inputs[4], backend=inputs[5], inputs=inputs[:4])
    # each gradient back in its input's dtype (saved wider: saved_grad_dtype), a shared
    # prior's summed over rows
    ctx.like = [A.input_like(t) for t in inputs[:4]]


def _backward(ctx, grad_out, *_):
    g, saved = None, A.saved_grads(ctx)
    fused = getattr(backends.get(ctx.backend), "kl_normal_bwd", None)  # one pass, where offered
    if fused is not None and grad_out is not None and A.plain_eager((grad_out,)):
        g = fused(grad_out, *saved, ctx.needs)
    if g is None:
        return (*A.weigh_rows(ctx, grad_out, ctx.like, saved), None, None)
    return (*[A.to_shape(t, like) for t, like in zip(g, ctx.like)], None, None)


def _higher_order(ctx, grad_out, *_):
    inputs = A.kept_inputs(ctx)
    value = reference.kl_normal(*inputs)
    return (*A.recompute_grads(value, inputs, ctx.needs, grad_out), None, None)


_kl_normal = A.Fused(_op, _kl_normal_fwd, _setup, A.with_higher_order(_backward, _higher_order),
                     tensor_args=4, value_forward=_kl_normal_value)


def kl_normal(mu_q, logvar_q, mu_p, logvar_p, *, backend):
    """(N, L) posterior, prior None / (L,) / (N, L) -> (N,)."""
    return _kl_normal.value(mu_q, logvar_q, mu_p, logvar_p,
                            A.needs(mu_q, logvar_q, mu_p, logvar_p), backend)
