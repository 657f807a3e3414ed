"""``fastvae::iwae_bound``: the fused importance-weighted bound as a custom op."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from .. import backends, reference
from . import _autograd as A
from .elbo import fake_value_and_grads, finish_grads, setup_shapes


def _iwae_bound_fwd(x: Tensor, recon_k: Tensor, mu: Tensor, logvar: Tensor, z_k: Tensor,
                    obs: Optional[Tensor], prior_mu: Optional[Tensor],
                    prior_logvar: Optional[Tensor], obs_scalar: float, likelihood: str,
                    reduction: str, needs: List[bool], backend: str
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                               Tensor]:
    return tuple(backends.get(backend).iwae_bound_fwd(x, recon_k, mu, logvar, z_k, obs, prior_mu,
                                                      prior_logvar, obs_scalar, likelihood,
                                                      reduction, needs))


_iwae_bound_op = torch.library.custom_op("fastvae::iwae_bound", mutates_args=())(_iwae_bound_fwd)


@_iwae_bound_op.register_fake
def _(x, recon_k, mu, logvar, z_k, obs, prior_mu, prior_logvar, obs_scalar, likelihood,
      reduction, needs, backend):
    return fake_value_and_grads((x, recon_k, mu, logvar, z_k, obs, prior_mu, prior_logvar),
                                reduction, needs)


def _setup(ctx, inputs, output):
    A.save_grads(ctx, output[1:], needs_=inputs[11], backend=inputs[12], inputs=inputs[:11])
    setup_shapes(ctx, inputs)


def _backward(ctx, grad_out, *_):
    # recon_k, z_k: (K, B, ...)
    g = finish_grads(ctx, A.weigh_saved(ctx, grad_out, (0, 1, 0, 0, 1, 0, 0, 0)))
    return (*g, None, None, None, None, None)


def _higher_order(ctx, grad_out, *_):
    (x, recon_k, mu, logvar, z_k, obs, prior_mu, prior_logvar, obs_scalar, likelihood,
     reduction) = A.kept_inputs(ctx, "iwae_bound")
    value = reference.iwae_bound(x, recon_k, mu, logvar, z_k,
                                 obs_scalar if obs is None else obs, likelihood=likelihood,
                                 reduction=reduction, prior_mu=prior_mu,
                                 prior_logvar=prior_logvar)
    g = A.recompute_grads(value, (x, recon_k, mu, logvar, z_k, obs, prior_mu, prior_logvar),
                          ctx.needs, grad_out)
    return (*g, None, None, None, None, None)


_iwae_bound = A.Fused(_iwae_bound_op, _iwae_bound_fwd, _setup,
                      A.with_higher_order(_backward, _higher_order))


def iwae_bound(x, recon_k, mu, logvar, z_k, obs_logvar, *, likelihood, reduction, backend,
               prior_mu=None, prior_logvar=None):
    """The IWAE bound through the fused op; arguments as ``fastvae.backends`` documents."""
    obs, obs_scalar = (obs_logvar, 0.0) if isinstance(obs_logvar, Tensor) else (None, obs_logvar)
    needs = A.needs(x, recon_k, mu, logvar, z_k, obs, prior_mu, prior_logvar)
    return A.owned(_iwae_bound(x, recon_k, mu, logvar, z_k, obs, prior_mu, prior_logvar,
                               float(obs_scalar), likelihood, reduction, needs, backend))
