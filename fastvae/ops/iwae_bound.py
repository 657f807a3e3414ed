"""``fastvae::iwae_bound``: the fused importance-weighted bound as a custom op."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from .. import backends, estimators, reference
from .._dtypes import result_dtype
from . import _autograd as A
from .elbo import fake_value_and_grads, finish_grads, setup_shapes


def _iwae_bound_fwd(x: Tensor, recon_k: Tensor, mu: Tensor, logvar: Tensor, z_k: Tensor,
                    obs: Optional[Tensor], prior_mu: Optional[Tensor],
                    prior_logvar: Optional[Tensor], obs_scalar: float, likelihood: str,
                    reduction: str, scale: float, estimator: str, needs: List[bool],
                    backend: str
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                               Tensor, Tensor]:
    # The last output: the softmax weights (K, B) DReG's hook needs (STL and DReG), else empty.
    out = _iwae_bound_value(x, recon_k, mu, logvar, z_k, obs, prior_mu, prior_logvar,
                            obs_scalar, likelihood, reduction, scale, estimator, needs, backend)
    # the weights' placeholder in the result dtype, as the fake kernel's (not x's)
    weights = out[9] if out[9] is not None else x.new_empty(0, dtype=result_dtype(
        x, recon_k, mu, logvar, z_k, obs, prior_mu, prior_logvar))
    return (*A.filled(out[:9], x), A.declared(weights))


def _iwae_bound_value(x, recon_k, mu, logvar, z_k, obs, prior_mu, prior_logvar, obs_scalar,
                      likelihood, reduction, scale, estimator, needs, backend):
    """The backend's outputs, None for a gradient not needed (and the weights not wanted)."""
    return backends.computing(backend).iwae_bound_fwd(
        x, recon_k, mu, logvar, z_k, obs, prior_mu, prior_logvar, obs_scalar, likelihood,
        reduction, scale, needs, _wants_weights(estimator, needs))


def _wants_weights(estimator: str, needs) -> bool:
    """DReG's hook needs the weights; STL gets them too, so that the Triton backend
    compiles one kernel specialization for both (stopped parameters, weights stored),
    not two, for 4K bytes per row that STL leaves unused."""
    return estimators.stops_parameters(estimator) and bool(needs[4])


_iwae_bound_op = torch.library.custom_op("fastvae::iwae_bound", mutates_args=())(_iwae_bound_fwd)


@_iwae_bound_op.register_fake
def _(x, recon_k, mu, logvar, z_k, obs, prior_mu, prior_logvar, obs_scalar, likelihood,
      reduction, scale, estimator, needs, backend):
    tensors = (x, recon_k, mu, logvar, z_k, obs, prior_mu, prior_logvar)
    shape = tuple(z_k.shape[:2]) if _wants_weights(estimator, needs) else (0,)
    weights = x.new_empty(shape, dtype=result_dtype(*tensors))
    return (*fake_value_and_grads(tensors, reduction, needs), weights)


def _setup(ctx, inputs, output):
    A.save_grads(ctx, output[1:9], needs_=inputs[13], backend=inputs[14], inputs=inputs[:13])
    A.mark_outputs_constant(ctx, output[9:])   # DReG's weights: the hook reads them detached
    setup_shapes(ctx, inputs)
    obs = inputs[5]
    # the dim of each gradient's rows: recon_k, z_k and a per-sample obs_logvar are (K, B, ...)
    ctx.row_dims = _SAMPLE_OBS_ROWS if obs is not None and obs.dim() == 3 else _ROWS


_ROWS = (0, 1, 0, 0, 1, 0, 0, 0)
_SAMPLE_OBS_ROWS = (0, 1, 0, 0, 1, 1, 0, 0)


def _backward(ctx, grad_out, *_):
    g = finish_grads(ctx, A.weigh_saved(ctx, grad_out, ctx.row_dims))
    return (*g, None, None, None, None, None, None, None)


def _higher_order(ctx, grad_out, *_):
    (x, recon_k, mu, logvar, z_k, obs, prior_mu, prior_logvar, obs_scalar, likelihood,
     reduction, scale, estimator) = A.kept_inputs(ctx)
    if estimator == "dreg" and getattr(ctx, "stale", False) and not ctx.recorded[4]:
        # a graph recorded from a z_k that needed no gradient holds no hook (the one the
        # call registers): these gradients would be the standard estimator's, unannounced
        raise RuntimeError("estimator='dreg' in a graph recorded (torch.export) from inputs "
                           "that needed no gradient: its second weight, a gradient hook on "
                           "z_k, is not in the graph; call fastvae.iwae_bound outside the "
                           "exported program, or use estimator='stl'")
    # Without DReG's hook: the op's own one, registered at the call, still applies.
    value, _ = reference.iwae_bound_surrogate(x, recon_k, mu, logvar, z_k,
                                              obs_scalar if obs is None else obs,
                                              likelihood=likelihood, reduction=reduction,
                                              estimator=estimator, prior_mu=prior_mu,
                                              prior_logvar=prior_logvar)
    g = A.recompute_grads(scale * value, (x, recon_k, mu, logvar, z_k, obs, prior_mu,
                                          prior_logvar), ctx.needs, grad_out)
    return (*g, None, None, None, None, None, None, None)


_iwae_bound = A.Fused(_iwae_bound_op, _iwae_bound_fwd, _setup,
                      A.with_higher_order(_backward, _higher_order), tensor_args=8,
                      value_forward=_iwae_bound_value)


def iwae_bound(x, recon_k, mu, logvar, z_k, obs_logvar, *, likelihood, reduction, backend,
               estimator="standard", prior_mu=None, prior_logvar=None, scale=1.0):
    """``scale`` times the IWAE bound through the fused op; arguments as
    ``fastvae.backends`` documents (``scale=-1``: the loss, whose ``loss.backward()``
    then finds its gradients ready, with no scaling pass).

    ``estimator`` (``fastvae.estimators``): "stl" and "dreg" stop log q's parameters, so
    mu and logvar enter detached, the backend is not asked for their (zero) gradients,
    and it returns the softmax weights, which for "dreg" the hook registered on z_k here
    applies to every gradient reaching z_k in this bound's backward. A learned prior's
    gradients are the standard ones (weighted by w~_k) under every estimator; its
    d log p(z_k) / d z_k is part of d log w_k / d z_k, so DReG weighs it like the rest."""
    obs, obs_scalar = (obs_logvar, 0.0) if isinstance(obs_logvar, Tensor) else (None, obs_logvar)
    if estimators.stops_parameters(estimator):
        # log q at stopped parameters, as the reference has it: no gradient and no graph
        # edge to them (so a value that needs no other gradient does not require one)
        mu, logvar = mu.detach(), logvar.detach()
    needs = A.needs(x, recon_k, mu, logvar, z_k, obs, prior_mu, prior_logvar)
    args = (x, recon_k, mu, logvar, z_k, obs, prior_mu, prior_logvar, float(obs_scalar),
            likelihood, reduction, float(scale), estimator, needs, backend)
    if not (estimator == "dreg" and _wants_weights(estimator, needs)):
        return _iwae_bound.value(*args)
    outputs = _iwae_bound(*args)  # the weights too, for DReG's hook
    value = A.owned(outputs)
    estimators.attach_dreg_hook(value, z_k, outputs[9])
    return value
