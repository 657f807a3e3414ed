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


def reparameterize_noise(mu, n_samples: int, generator):
    """A one-element int64 seed from torch's generator (no host sync, traceable), so
    ``torch.manual_seed`` and a passed ``generator`` control the kernel's Philox stream."""
    if _launch.delegated(mu):
        return torch_backend.reparameterize_noise(mu, n_samples, generator)
    return philox_seed(mu.device, generator)


def reparameterize_fwd(mu, logvar, noise, n_samples: int):
    """``mu + exp(0.5*logvar) * eps``, eps from Philox at the seed ``noise``."""
    if not seeded(noise):
        return torch_backend.reparameterize_fwd(mu, logvar, noise, n_samples)
    mu, logvar = mu.contiguous(), logvar.contiguous()
    z = _launch.alloc(sample_shape(mu, n_samples), mu.dtype, mu.device)
    bl = mu.numel()
    grid, chunks, cpad = configs.reparameterize_grid(bl)
    _launch.launch(kr.reparameterize_fwd_kernel, grid, MU=mu, LV=logvar, SEED=noise, Z=z,
                   BL=bl, K=max(n_samples, 1), CPAD=cpad,
                   CHUNKS=chunks, Q=kr.Q, num_warps=configs.reparameterize_warps(bl))
    return z


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
    bl = logvar.numel()
    grid, chunks, cpad = configs.reparameterize_grid(bl)
    _launch.launch(kr.reparameterize_bwd_kernel, grid, DZ=dz, LV=logvar, SEED=noise, DMU=dmu,
                   DLV=dlv if need_dlogvar else _launch.dummy(logvar.dtype, logvar.device),
                   BL=bl, K=max(n_samples, 1), CPAD=cpad, need_dlv=int(need_dlogvar),
                   CHUNKS=chunks, Q=kr.Q, num_warps=configs.reparameterize_warps(bl))
    return dmu, dlv
