"""``fastvae::elbo``: the fused ELBO as a custom op with its fake kernel and autograd."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from .. import backends, estimators, reference
from .._dtypes import result_dtype
from . import _autograd as A


def fake_value_and_grads(tensors, reduction, needs):
    """Fake outputs of elbo and iwae_bound: the value, then one gradient (or placeholder)
    for each of ``tensors`` = (x, recon, mu, logvar, z, obs, prior_mu, prior_logvar), as
    their ``*_fwd`` return (a prior's gradient per row, mu's shape)."""
    x, mu, obs = tensors[0], tensors[2], tensors[5]
    out_shape = (x.shape[0],) if reduction == "none" else ()
    # a shared obs_logvar's gradient per row where unreduced; a per-sample one's (iwae_bound's
    # (K, B, D)) is per row already
    obs_shape = x.shape if (reduction == "none" and obs is not None and obs.dim() < 3) else None
    grads = [A.grad_like(t, n, x) for t, n in zip(tensors[:5], needs)]
    grads.append(A.grad_like(obs, needs[5], x, obs_shape))
    grads += [A.grad_like(t, n, x, mu.shape) for t, n in zip(tensors[6:], needs[6:])]
    return (x.new_empty(out_shape, dtype=result_dtype(*tensors)), *grads)


def _elbo_fwd(x: Tensor, recon: Tensor, mu: Tensor, logvar: Tensor, z: Optional[Tensor],
              obs: Optional[Tensor], prior_mu: Optional[Tensor], prior_logvar: Optional[Tensor],
              obs_scalar: float, likelihood: str, kl: str, beta: float, free_bits: float,
              reduction: str, scale: float, estimator: str, needs: List[bool], backend: str
              ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return A.filled(_elbo_value(x, recon, mu, logvar, z, obs, prior_mu, prior_logvar,
                                obs_scalar, likelihood, kl, beta, free_bits, reduction, scale,
                                estimator, needs, backend), x)


def _elbo_value(x, recon, mu, logvar, z, obs, prior_mu, prior_logvar, obs_scalar, likelihood,
                kl, beta, free_bits, reduction, scale, estimator, needs, backend):
    """The backend's (value, *gradients), None for a gradient not needed. ``estimator``:
    for the higher-order recomputation only; its first-order effect is in ``needs``."""
    return backends.computing(backend).elbo_fwd(x, recon, mu, logvar, z, obs, prior_mu,
                                                prior_logvar, obs_scalar, likelihood, kl, beta,
                                                free_bits, reduction, scale, needs)


_elbo_op = torch.library.custom_op("fastvae::elbo", mutates_args=())(_elbo_fwd)


@_elbo_op.register_fake
def _(x, recon, mu, logvar, z, obs, prior_mu, prior_logvar, obs_scalar, likelihood, kl, beta,
      free_bits, reduction, scale, estimator, needs, backend):
    return fake_value_and_grads((x, recon, mu, logvar, z, obs, prior_mu, prior_logvar),
                                reduction, needs)


def setup_shapes(ctx, inputs) -> None:
    """What backward finishes each gradient with (:func:`finish_grads`)."""
    ctx.sum_to = finishing(inputs)


def finishing(inputs):
    """:func:`finish_grads`' (shape, dtype) per gradient, None where none needs finishing
    (every call without a float16 input or a shared obs_logvar or prior)."""
    like = [A.cast_like(t) for t in inputs[:5]] + [A.input_like(t) for t in inputs[5:8]]
    return None if like.count(None) == len(like) else like


def finish_grads(ctx, g):
    """The gradients in their inputs' dtypes (a float16 input's was saved in float32), those
    of (obs, prior_mu, prior_logvar), per row where the inputs are shared by every row,
    summed to the inputs' shapes."""
    if ctx.sum_to is None:
        return g
    return [A.to_shape(t, like) for t, like in zip(g, ctx.sum_to)]


def _setup(ctx, inputs, output):
    A.save_grads(ctx, output[1:], needs_=inputs[16], backend=inputs[17], inputs=inputs[:16])
    setup_shapes(ctx, inputs)


def _backward(ctx, grad_out, *_):
    g = finish_grads(ctx, A.weigh_saved(ctx, grad_out, (0,) * 8))
    return (*g, None, None, None, None, None, None, None, None, None, None)


def _higher_order(ctx, grad_out, *_):
    (x, recon, mu, logvar, z, obs, prior_mu, prior_logvar, obs_scalar, likelihood, kl, beta,
     free_bits, reduction, scale, estimator) = A.kept_inputs(ctx)
    value = scale * reference.elbo(x, recon, mu, logvar, z, obs_scalar if obs is None else obs,
                                   likelihood=likelihood, kl=kl, beta=beta, free_bits=free_bits,
                                   reduction=reduction, prior_mu=prior_mu,
                                   prior_logvar=prior_logvar, estimator=estimator)
    g = A.recompute_grads(value, (x, recon, mu, logvar, z, obs, prior_mu, prior_logvar),
                          ctx.needs, grad_out)
    return (*g, None, None, None, None, None, None, None, None, None, None)


_elbo = A.Fused(_elbo_op, _elbo_fwd, _setup, A.with_higher_order(_backward, _higher_order),
                tensor_args=8, value_forward=_elbo_value)


def elbo(x, recon, mu, logvar, z, obs_logvar, *, likelihood, kl, beta, free_bits, reduction,
         backend, scale=1.0, prior_mu=None, prior_logvar=None, estimator="standard"):
    """``scale * ELBO`` through the fused op; arguments as ``fastvae.backends`` documents.

    ``estimator="stl"`` (``fastvae.estimators``): the direct gradients w.r.t. mu and
    logvar are zero, so they enter detached and the backend is not asked for them. A
    learned prior's log p(z) does not involve mu or logvar, so its gradients (w.r.t. z
    and the prior) are the standard ones under either estimator."""
    obs, obs_scalar = (obs_logvar, 0.0) if isinstance(obs_logvar, Tensor) else (None, obs_logvar)
    if estimators.stops_parameters(estimator):
        # log q at stopped parameters, as the reference has it: no gradient and no graph
        # edge to them (so a value that needs no other gradient does not require one)
        mu, logvar = mu.detach(), logvar.detach()
    needs = A.needs(x, recon, mu, logvar, z, obs, prior_mu, prior_logvar)
    return _elbo.value(x, recon, mu, logvar, z, obs, prior_mu, prior_logvar, float(obs_scalar),
                       likelihood, kl, float(beta), float(free_bits), reduction, float(scale),
                       estimator, needs, backend)


def route(x, recon, mu, logvar, z, obs_scalar, *, likelihood, kl, beta, free_bits, reduction,
          backend, scale=1.0, estimator="standard"):
    """A :class:`~fastvae.ops._autograd.Route` for :func:`elbo` calls like this one (no
    obs_logvar tensor, no prior), or None where there is none (an estimator that stops
    mu and logvar: the call detaches them)."""
    if estimators.stops_parameters(estimator):
        return None
    needs = A.needs(x, recon, mu, logvar, z, None, None, None)
    args = (x, recon, mu, logvar, z, None, None, None, float(obs_scalar), likelihood, kl,
            float(beta), float(free_bits), reduction, float(scale))
    compute = backends.get(backend)
    fwd = compute.elbo_fwd
    prepare = getattr(fwd, "prepare", None)
    run = prepare(*args, needs) if prepare is not None else None
    if run is None:
        rest = (*args[5:], needs)

        def run(x, recon, mu, logvar, z):
            return fwd(x, recon, mu, logvar, z, *rest)
    sum_to = finishing(args)
    return A.Route(_elbo, run, 5, 4 if z is None else 5, (*args[5:], estimator), needs, backend,
                   {"sum_to": sum_to}, None if sum_to is None else finish_grads,
                   source=(compute, "elbo_fwd", fwd))
