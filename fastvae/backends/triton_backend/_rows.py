"""Host code shared by the ELBO's and the IWAE bound's row launches: the likelihood's
arguments (LIK code, obs_logvar pointer and stride) and the gradient buffers."""
from __future__ import annotations

import torch

from ..._dtypes import saved_grad_dtype
from . import _launch, configs


def likelihood_args(likelihood: str, obs, like):
    """(LIK code, obs_logvar as rows or the dummy, its row stride, whether it is a tensor).

    ``like`` is x: a dummy obs pointer takes its dtype, as a real one would. A per-sample
    obs_logvar (IWAE's (K, B, D)) has its rows' stride at dim 1.
    """
    if likelihood == "gaussian" and obs is not None:
        obs = _launch.rows(obs)
        if obs.dim() == 3:
            return configs.GAUSSIAN_SAMPLES, obs, obs.stride(1), True
        return configs.GAUSSIAN_TENSOR, obs, (0 if obs.dim() == 1 else obs.stride(0)), True
    return configs.LIKELIHOOD_CODES[likelihood], _launch.dummy(like.dtype, like.device), 0, False


def gradient_dtypes(inputs, needs) -> tuple:
    """The dtype of each of ``inputs``' gradient buffers (``saved_grad_dtype``;
    ``_launch.SAME`` where it is a contiguous input's own), None where it is absent or not
    needed: what :func:`gradient_buffers` allocates, fixed per plan."""
    return tuple([None if not need or t is None else _buffer_dtype(t, saved_grad_dtype(t))
                  for t, need in zip(inputs, needs)])


def _buffer_dtype(t, dtype):
    return _launch.SAME if dtype == t.dtype and t.is_contiguous() else dtype


def gradient_buffers(inputs, dtypes, needs, obs_tensor: bool, partial: bool, programs: int,
                     obs, device, priors=(None, None)):
    """(gx, grecon, gmu, glogvar, gz, gobs, gobs_partials, gprior_mu, gprior_logvar) for
    ``inputs`` = (x, recon, mu, logvar, z) (``dtypes``: :func:`gradient_dtypes`) and the
    kernel's ``priors`` (``prior_args``): each needed one in its input's shape and dtype (a
    prior's per row, mu's shape), else None."""
    grads = [None if dt is None else _launch.alloc_like(t, dt) for t, dt in zip(inputs, dtypes)]
    if not (obs_tensor or priors[0] is not None or priors[1] is not None):
        return (*grads, None, None, None, None)
    b, d = inputs[0].shape
    mu = inputs[2]
    prior_needs = tuple(needs[6:8]) or (False, False)
    prior_grads = [_launch.alloc_like(mu, saved_grad_dtype(p, mu.shape))
                   if need and p is not None else None for p, need in zip(priors, prior_needs)]
    return (*grads, *_obs_grad_buffers(needs[5] and obs_tensor, partial, programs, b, d, obs,
                                       device), *prior_grads)


def prior_args(prior_mu, prior_logvar, mu):
    """(mean, log-variance, their row strides, whether there is a prior) for the row
    kernels' PRIOR switch: a missing half is a zero row when the other is given, both
    dummies of mu's dtype for N(0, I). A shared ``(L,)`` row has stride 0."""
    if prior_mu is None and prior_logvar is None:
        dummy = _launch.dummy(mu.dtype, mu.device)
        return dummy, dummy, 0, 0, False
    pm = None if prior_mu is None else _launch.rows(prior_mu)
    plv = None if prior_logvar is None else _launch.rows(prior_logvar)
    if pm is None or plv is None:  # the zero row (a fill launch) only for a missing half
        zeros = torch.zeros(mu.shape[1:], dtype=(plv if pm is None else pm).dtype,
                            device=mu.device)
        pm, plv = (zeros if pm is None else pm), (zeros if plv is None else plv)
    return pm, plv, _row_stride(pm), _row_stride(plv), True


def _row_stride(t) -> int:
    return 0 if t.dim() == 1 else t.stride(0)


def _obs_grad_buffers(need: bool, partial: bool, programs: int, b: int, d: int, obs, device):
    """(gradient, per-program fp32 partials) for a tensor obs_logvar: a (D,) one is summed
    from one row of partials per program (deterministic, no atomics); a (B, D) one is
    written row by row, an IWAE (K, B, D) one sample by sample."""
    if not need:
        return None, None
    if partial:
        return (_launch.alloc((d,), saved_grad_dtype(obs), device),
                _launch.alloc((programs, d), torch.float32, device))
    if obs.dim() == 3:   # one per sample: (K, B, D), as recon_k's
        return _launch.alloc(obs.shape, saved_grad_dtype(obs), device), None
    return _launch.alloc((b, d), saved_grad_dtype(obs, (b, d)), device), None
