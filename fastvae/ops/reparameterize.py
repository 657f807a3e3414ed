"""``fastvae::reparameterize``: ``z = mu + exp(0.5*logvar) * eps`` as a custom op, the same
on every backend; ``fastvae::reparameterize_bwd`` is its backward, an op of its own so
that torch.compile traces the Triton backward kernel as one node.

The backend draws ``noise`` first, outside the op (``reparameterize_noise``: a Philox
seed on "triton" and for float32 CPU inputs on "torch" where its C kernel runs, eps
itself otherwise), from torch's generator or the one passed, so ``torch.manual_seed``
governs both. Backward: ``dmu = sum_k dz_k``,
``dlogvar = 0.5 * exp(0.5*logvar) * sum_k dz_k * eps_k``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import backends
from . import _autograd as A


def _sample_shape(mu: Tensor, n_samples: int):
    return tuple(mu.shape) if n_samples == 0 else (n_samples,) + tuple(mu.shape)


def _reparameterize_fwd(mu: Tensor, logvar: Tensor, noise: Tensor, n_samples: int,
                        backend: str) -> Tensor:
    return A.declared(_reparameterize_value(mu, logvar, noise, n_samples, backend))


def _reparameterize_value(mu, logvar, noise, n_samples, backend):
    """z as the backend writes it: the plain path's, in a permuted input's layout."""
    return backends.computing(backend).reparameterize_fwd(mu, logvar, noise, n_samples)


_op = torch.library.custom_op("fastvae::reparameterize", mutates_args=())(_reparameterize_fwd)


@_op.register_fake
def _(mu, logvar, noise, n_samples, backend):
    return mu.new_empty(_sample_shape(mu, n_samples))


@torch.library.custom_op("fastvae::reparameterize_bwd", mutates_args=())
def _bwd_op(dz: Tensor, logvar: Tensor, noise: Tensor, n_samples: int, need_dlogvar: bool,
            backend: str) -> tuple[Tensor, Tensor]:
    """(dmu, dlogvar) of reparameterize; called where dlogvar is needed."""
    dmu, dlv = backends.get(backend).reparameterize_bwd(dz, logvar, noise, n_samples,
                                                        need_dlogvar)
    # an op's output may not alias its input
    dmu = dmu.clone(memory_format=torch.contiguous_format) if dmu is dz else A.declared(dmu)
    return dmu, A.declared(dlv)


@_bwd_op.register_fake
def _(dz, logvar, noise, n_samples, need_dlogvar, backend):
    return (logvar.new_empty(logvar.shape),
            logvar.new_empty(logvar.shape if need_dlogvar else (0,)))


def _setup(ctx, inputs, output):
    mu, logvar, noise, n_samples, backend = inputs
    ctx.n_samples, ctx.backend = n_samples, backend
    ctx.need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1])
    # logvar is the caller's tensor; the noise (eps, or just a seed) only where dlogvar needs it.
    ctx.save_for_backward(logvar, noise if ctx.need[1] else None)


def _backward(ctx, dz):
    logvar, noise = ctx.saved_tensors
    need_mu, need_lv = ctx.need
    if not need_lv:  # dmu alone needs no noise and no backend: the sum over samples
        return (dz.sum(0) if ctx.n_samples else dz) if need_mu else None, None, None, None, None
    if A.plain_eager((dz, logvar)):
        dmu, dlv = backends.get(ctx.backend).reparameterize_bwd(dz, logvar, noise, ctx.n_samples,
                                                                need_lv)
    else:
        dmu, dlv = _bwd_op(dz, logvar, noise, ctx.n_samples, need_lv, ctx.backend)
    return (dmu if need_mu else None, dlv, None, None, None)


def _higher_order(ctx, dz):
    """The same gradients as differentiable functions of dz and logvar."""
    logvar, noise = ctx.saved_tensors
    need_mu, need_lv = ctx.need
    sampled = ctx.n_samples > 0
    dmu = (dz.sum(0) if sampled else dz) if need_mu else None
    dlv = None
    if need_lv:
        with torch.no_grad():
            std_eps = backends.get(ctx.backend).reparameterize_std_eps(logvar, noise, ctx.n_samples)
        std_eps = std_eps * torch.exp(0.5 * (logvar - logvar.detach()))  # its logvar dependence
        prod = 0.5 * dz * std_eps
        dlv = prod.sum(0) if sampled else prod
    return dmu, dlv, None, None, None


_reparameterize = A.Fused(_op, _reparameterize_fwd, _setup,
                          A.with_higher_order(_backward, _higher_order),
                          plain_forward=_reparameterize_value)


def reparameterize(mu, logvar, n_samples, generator, *, backend):
    """``(B, L)`` samples, or ``(K, B, L)`` for ``n_samples=K``."""
    n = 0 if n_samples is None else int(n_samples)
    noise = backends.get(backend).reparameterize_noise(mu, n, generator)
    return _reparameterize(mu, logvar, noise, n, backend)
