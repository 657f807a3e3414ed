"""reparameterize on the "torch" backend.

``noise`` (:func:`reparameterize_noise`) is, for a non-empty float32 CPU ``mu`` where the
C library runs, a one-element int64 Philox seed, drawn exactly as the Triton backend
draws its own: eps is drawn inside the C kernel of ``gaussian_rows`` (philox.h: the
Triton kernels' counter layout and uniforms bit for bit, Box-Muller with the CPU's own
transcendentals), never stored, and drawn again in backward; only the seed and a
reference to logvar are kept. Otherwise (float64, 16-bit, ``FASTVAE_NATIVE=0``, no
compiler, empty) it is eps itself, ``(B, L)`` or ``(K, B, L)`` in mu's dtype, from
``torch.randn``, and the math runs as aten ops. float32 z equals the Triton backend's z
for the same seed up to the transcendentals' difference (each C normal within 8e-7 *
max(1, |eps|) of float64 Box-Muller of the shared uniforms; tests/test_philox.py).
"""
from __future__ import annotations

import contextlib

import torch

from ..._compiler import constant_result
from ..._dtypes import widened
from . import gaussian_rows

_randn_only = False


def seeded(noise) -> bool:
    """Whether ``noise`` is a Philox seed (one int64; eps is drawn in the kernel), not eps."""
    return noise.dtype == torch.int64


def sample_shape(mu, n_samples: int):
    """z's shape: ``(B, L)`` for n_samples 0, else ``(K, B, L)``."""
    return tuple(mu.shape) if n_samples == 0 else (n_samples,) + tuple(mu.shape)


def philox_seed(device, generator):
    """One int64 Philox seed from torch's generator or the one passed, so
    ``torch.manual_seed`` and ``generator`` govern the kernels' stream (no host sync)."""
    # generator=None is left out: dynamo cannot trace randn(generator=...) on symbolic sizes.
    rng = {} if generator is None else {"generator": generator}
    return torch.randint(0, 2**62, (1,), dtype=torch.int64, device=device, **rng)


@constant_result
def _drawn_in_c() -> bool:
    return not _randn_only and gaussian_rows.available()


@contextlib.contextmanager
def randn_noise():
    """Within it, this backend draws ``torch.randn``'s eps for every input (the reference
    backend's stream, and the aten sampler), not its C kernel's Philox stream: for checks
    that follow the reference draw by draw (the benchmark's first-step agreement, tests).
    Process-wide, not thread-local."""
    global _randn_only
    before, _randn_only = _randn_only, True
    try:
        yield
    finally:
        _randn_only = before


def reparameterize_noise(mu, n_samples: int, generator):
    """A Philox seed (one int64, ``torch.randint(0, 2**62)`` from torch's generator or the
    one passed, as the Triton backend draws it) for float32 CPU ``mu`` where the C kernel
    runs; else eps ~ N(0, I) of the output's shape (n_samples 0: ``(B, L)``, else
    ``(K, B, L)``)."""
    if (mu.dtype == torch.float32 and mu.is_cpu and mu.numel() > 0
            and _drawn_in_c()):
        return philox_seed(mu.device, generator)
    rng = {} if generator is None else {"generator": generator}
    return torch.randn(sample_shape(mu, n_samples), device=mu.device, dtype=mu.dtype, **rng)


def _c_failed(what: str):
    return RuntimeError(f"fastvae: reparameterize's {what} got a Philox seed but the C kernel "
                        "cannot run on these tensors (float32 CPU (B, L) expected)")


def reparameterize_fwd(mu, logvar, noise, n_samples: int):
    """``mu + exp(0.5 * logvar) * eps``, ``(B, L)`` or ``(K, B, L)``."""
    if seeded(noise):
        z = torch.empty(sample_shape(mu, n_samples), dtype=mu.dtype, device=mu.device)
        if not gaussian_rows.sample_rows(mu, logvar, noise, n_samples, z):
            raise _c_failed("forward")
        return z
    # 16-bit: in float32, rounded once
    return torch.addcmul(widened(mu), torch.exp(0.5 * widened(logvar)), widened(noise)).to(
        torch.promote_types(mu.dtype, logvar.dtype))


def reparameterize_std_eps(logvar, noise, n_samples: int):
    """``exp(0.5 * logvar) * eps`` per sample: what dz is multiplied by for dlogvar."""
    if seeded(noise):
        out = torch.empty(sample_shape(logvar, n_samples), dtype=logvar.dtype,
                          device=logvar.device)
        if not gaussian_rows.sample_rows(None, logvar, noise, n_samples, out):
            raise _c_failed("higher-order path")
        return out
    return (torch.exp(0.5 * widened(logvar)) * widened(noise)).to(
        torch.promote_types(logvar.dtype, noise.dtype))


def reparameterize_bwd(dz, logvar, noise, n_samples: int, need_dlogvar: bool):
    """(dmu, dlogvar): ``sum_k dz_k`` and ``0.5 * exp(0.5 * logvar) * sum_k dz_k * eps_k``
    (dlogvar empty unless needed). dmu is dz itself for one sample."""
    if seeded(noise) and need_dlogvar:
        dlv = torch.empty(logvar.shape, dtype=logvar.dtype, device=logvar.device)
        dmu = dz if n_samples == 0 else torch.empty_like(dlv)
        if not gaussian_rows.sample_bwd_rows(dz.to(logvar.dtype), logvar, noise, n_samples,
                                             None if n_samples == 0 else dmu, dlv):
            raise _c_failed("backward")
        return dmu, dlv
    dmu = dz if n_samples == 0 else dz.sum(0)
    if not need_dlogvar:
        return dmu, logvar.new_empty(0)
    # 16-bit: in float32, rounded once; the 0.5 before exp(logvar/2), which may be near
    # the largest float
    prod = widened(dz) * widened(noise)
    if n_samples:
        prod = prod.sum(0)
    return dmu, prod.mul_(0.5).mul_(torch.exp(0.5 * widened(logvar))).to(
        torch.promote_types(dz.dtype, noise.dtype))
