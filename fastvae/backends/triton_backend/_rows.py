"""Host code shared by the ELBO's and the IWAE bound's row launches: the likelihood's
arguments (LIK code, obs_logvar pointer and stride) and the gradient buffers."""
from __future__ import annotations

import torch

from . import _launch, configs


def likelihood_args(likelihood: str, obs, like):
    """(LIK code, obs_logvar as rows or the dummy, its row stride, whether it is a tensor).

    ``like`` is x: a dummy obs pointer takes its dtype, as a real one would.
    """
    if likelihood == "gaussian" and obs is not None:
        obs = _launch.rows(obs)
        return configs.GAUSSIAN_TENSOR, obs, (0 if obs.dim() == 1 else obs.stride(0)), True
    return configs.LIKELIHOOD_CODES[likelihood], _launch.dummy(like.dtype, like.device), 0, False


def gradient_buffers(inputs, needs, obs_tensor: bool, partial: bool, programs: int, obs, device):
    """(gx, grecon, gmu, glogvar, gz, gobs, gobs_partials) for ``inputs`` = (x, recon, mu,
    logvar, z): each needed one in its input's shape and dtype, else None."""
    grads = [_launch.alloc(t.shape, t.dtype, device) if need and t is not None else None
             for t, need in zip(inputs, needs)]
    b, d = inputs[0].shape
    return (*grads, *_obs_grad_buffers(needs[5] and obs_tensor, partial, programs, b, d, obs,
                                       device))


def _obs_grad_buffers(need: bool, partial: bool, programs: int, b: int, d: int, obs, device):
    """(gradient, per-program fp32 partials) for a tensor obs_logvar: a (D,) one is summed
    from one row of partials per program (deterministic, no atomics); a (B, D) one is
    written row by row."""
    if not need:
        return None, None
    if partial:
        return (_launch.alloc((d,), obs.dtype, device),
                _launch.alloc((programs, d), torch.float32, device))
    return _launch.alloc((b, d), obs.dtype, device), None
