"""Host side of the sampler (``fastvae.kernels.reparameterize``): ``noise`` is a one-element
int64 Philox seed, and eps exists only inside the kernels (regenerated in backward).

float64 and empty inputs go to the "torch" backend, whose noise for them is eps itself
(its own Philox seed is only for non-empty float32), so an int64 noise here is always
this backend's seed: the noise's dtype tells the later calls which path the forward took.
"""
from __future__ import annotations

import torch

from fastvae.kernels import reparameterize as kr

from .. import torch_backend
from ..torch_backend.reparameterize import philox_seed, sample_shape, seeded
from . import _launch, configs

_PLANS = _launch.Plans()   # per key (_launch.plan_for): a training step's repeated launches


def reparameterize_noise(mu, n_samples: int, generator):
    """A one-element int64 seed from torch's generator (no host sync, traceable), so
    ``torch.manual_seed`` and a passed ``generator`` control the kernel's Philox stream."""
    if _launch.delegated(mu):
        return _launch.by_torch(torch_backend.reparameterize_noise, mu, n_samples, generator)
    return philox_seed(mu.device, generator)


def reparameterize_fwd(mu, logvar, noise, n_samples: int):
    """``mu + exp(0.5*logvar) * eps``, eps from Philox at the seed ``noise``."""
    if not seeded(noise):
        return _launch.by_torch(torch_backend.reparameterize_fwd, mu, logvar, noise, n_samples)
    mu, logvar = mu.contiguous(), logvar.contiguous()
    z = _launch.alloc(sample_shape(mu, n_samples), mu.dtype, mu.device)
    plan = _launch.plan_for(_PLANS, ("fwd", mu.numel(), n_samples, mu.device,
                                     configs.interpreter_tiles()),
                            lambda: _plan(kr.reparameterize_fwd_kernel, mu, n_samples))
    _launch.launch_planned(plan, MU=mu, LV=logvar, SEED=noise, Z=z)
    return z


def _plan(kernel, like, n_samples: int, **fixed):
    """The planned launch of ``kernel`` over B*L = ``like.numel()`` latents."""
    bl = like.numel()
    grid, chunks, cpad = configs.reparameterize_grid(bl)
    return _launch.Planned(kernel, grid, like.device, dict(
        BL=bl, K=max(n_samples, 1), CPAD=cpad, CHUNKS=chunks, Q=kr.Q,
        num_warps=configs.reparameterize_warps(bl), **fixed))


def reparameterize_std_eps(logvar, noise, n_samples: int):
    """``exp(0.5*logvar) * eps`` per sample: the forward kernel with mu = 0."""
    if not seeded(noise):
        return torch_backend.reparameterize_std_eps(logvar, noise, n_samples)
    return reparameterize_fwd(torch.zeros_like(logvar), logvar, noise, n_samples)


def reparameterize_bwd(dz, logvar, noise, n_samples: int, need_dlogvar: bool):
    """(dmu, dlogvar) from dz, regenerating eps from the seed (dlogvar empty unless needed)."""
    if not seeded(noise):
        return torch_backend.reparameterize_bwd(dz, logvar, noise, n_samples, need_dlogvar)
    dz, logvar = dz.contiguous(), logvar.contiguous()
    dmu = _launch.alloc(logvar.shape, logvar.dtype, logvar.device)
    dlv = (_launch.alloc(logvar.shape, logvar.dtype, logvar.device) if need_dlogvar
           else logvar.new_empty(0))
    plan = _launch.plan_for(
        _PLANS, ("bwd", logvar.numel(), n_samples, bool(need_dlogvar), logvar.device,
                 configs.interpreter_tiles()),
        lambda: _plan(kr.reparameterize_bwd_kernel, logvar, n_samples,
                      need_dlv=int(need_dlogvar)))
    _launch.launch_planned(plan, DZ=dz, LV=logvar, SEED=noise, DMU=dmu,
                           DLV=dlv if need_dlogvar else _launch.dummy(logvar.dtype,
                                                                      logvar.device))
    return dmu, dlv
