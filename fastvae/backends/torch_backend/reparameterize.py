"""reparameterize on the "torch" backend: eps drawn by torch.randn and kept for backward.
float32 z is computed by the C kernel of ``gaussian_rows`` where it is available, by the
same code as sample_with_kl's z (so both give the same bits for the same seed).

``noise`` is eps itself, ``(B, L)`` or ``(K, B, L)`` in mu's dtype (the Triton backend's
is a Philox seed instead); backward needs ``exp(0.5 * logvar) * eps``, so only eps and a
reference to logvar are kept, as eager autograd would keep them.
"""
from __future__ import annotations

import torch

from . import gaussian_rows


def reparameterize_noise(mu, n_samples: int, generator):
    """eps ~ N(0, I) of the output's shape (n_samples 0: ``(B, L)``, else ``(K, B, L)``)."""
    shape = mu.shape if n_samples == 0 else (n_samples,) + tuple(mu.shape)
    # generator=None is left out: dynamo cannot trace randn(generator=...) on symbolic sizes.
    rng = {} if generator is None else {"generator": generator}
    return torch.randn(shape, device=mu.device, dtype=mu.dtype, **rng)


def reparameterize_fwd(mu, logvar, noise, n_samples: int):
    """``mu + exp(0.5 * logvar) * eps``, ``(B, L)`` or ``(K, B, L)`` like ``noise``."""
    if (mu.dim() == 2 and mu.dtype == torch.float32 and mu.device.type == "cpu"
            and noise.is_contiguous()):
        z = torch.empty(noise.shape, dtype=mu.dtype, device=mu.device)
        samples = [(noise, z)] if n_samples == 0 else list(zip(noise, z))
        if all(gaussian_rows.sample_rows(mu, logvar, e, out) for e, out in samples):
            return z
    return torch.addcmul(mu, torch.exp(0.5 * logvar), noise)


def reparameterize_std_eps(logvar, noise, n_samples: int):
    """``exp(0.5 * logvar) * eps`` per sample: what dz is multiplied by for dlogvar."""
    return torch.exp(0.5 * logvar) * noise


def reparameterize_bwd(dz, logvar, noise, n_samples: int, need_dlogvar: bool):
    """(dmu, dlogvar): ``sum_k dz_k`` and ``0.5 * exp(0.5 * logvar) * sum_k dz_k * eps_k``
    (dlogvar empty unless needed). dmu is dz itself for one sample."""
    dmu = dz if n_samples == 0 else dz.sum(0)
    if not need_dlogvar:
        return dmu, logvar.new_empty(0)
    prod = dz * noise
    if n_samples:
        prod = prod.sum(0)
    return dmu, prod.mul_(torch.exp(0.5 * logvar)).mul_(0.5)
