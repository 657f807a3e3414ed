"""``fastvae::kl_normal``: per-row KL between diagonal Gaussians as a custom op.

The backend's forward returns the KL and its gradients; those are saved, and backward
weighs them by grad_output. ``dKL/dmu_p = -dKL/dmu_q`` is saved once, as dKL/dmu_q in
``kl_mean_grad_dtype`` (wide enough for either mean's gradient), as
``fastvae.ops.sample_with_kl`` does.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from .. import backends, reference
from .._dtypes import kl_mean_grad_dtype, kl_saved_needs, result_dtype
from . import _autograd as A


def _kl_normal_fwd(mu_q: Tensor, logvar_q: Tensor, mu_p: Optional[Tensor],
                   logvar_p: Optional[Tensor], needs: List[bool], backend: str
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return A.filled(_kl_normal_value(mu_q, logvar_q, mu_p, logvar_p, needs, backend), mu_q)


def _kl_normal_value(mu_q, logvar_q, mu_p, logvar_p, needs, backend):
    """The backend's (KL, dKL/dmu_q, dKL/dlogvar_q, dKL/dlogvar_p), None for a gradient
    not needed (dKL/dmu_q serves mu_p too)."""
    return backends.computing(backend).kl_normal_fwd(mu_q, logvar_q, mu_p, logvar_p, needs)


_op = torch.library.custom_op("fastvae::kl_normal", mutates_args=())(_kl_normal_fwd)


@_op.register_fake
def _(mu_q, logvar_q, mu_p, logvar_p, needs, backend):
    return (mu_q.new_empty(mu_q.shape[:1], dtype=result_dtype(mu_q, logvar_q, mu_p, logvar_p)),
            (mu_q.new_empty(mu_q.shape, dtype=kl_mean_grad_dtype(mu_q, mu_p, needs[2]))
             if kl_saved_needs(needs)[0] else mu_q.new_empty(0)),
            A.grad_like(logvar_q, needs[1], mu_q, mu_q.shape),
            A.grad_like(logvar_p, needs[3], mu_q, mu_q.shape))


def _setup(ctx, inputs, output):
    needs = inputs[4]
    A.save_grads(ctx, output[1:], needs_=kl_saved_needs(needs), backend=inputs[5],
                 inputs=inputs[:4])
    ctx.needs = list(needs)   # save_grads took the saved gradients' needs; backward the inputs'
    # each gradient back in its input's dtype (saved wider: saved_grad_dtype), a shared
    # prior's summed over rows
    ctx.like = [A.input_like(t) for t in inputs[:4]]


def _backward(ctx, grad_out, *_):
    g, saved, needs = None, A.saved_grads(ctx), ctx.needs
    fused = getattr(backends.get(ctx.backend), "kl_normal_bwd", None)  # one pass, where offered
    if fused is not None and grad_out is not None and A.plain_eager((grad_out,)):
        g = fused(grad_out, *saved, needs)
    if g is None:
        g_mu, g_lv, g_plv = (A.weigh(t if n else None, grad_out, 0)
                             for t, n in zip(saved, kl_saved_needs(needs)))
        g = (g_mu if needs[0] else None, g_lv,
             # the sum over a shared prior's rows, then the sign: the same rounding
             None if g_mu is None or not needs[2] else A.to_shape(g_mu, ctx.like[2]).neg(),
             g_plv)
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
