"""Backend registry: which implementation runs an op, and which one ran last.

``fastvae.functional`` validates, then calls ``fastvae.reference`` directly for
"reference", or ``fastvae.ops`` (custom ops with autograd) for "torch"/"triton".
The calls below are on canonical (already checked, flattened) arguments; the
reference module has exactly these functions, and the fused backends
(``closed_form``, ``triton_backend``) provide ``<op>_fwd`` variants returning the
value and the gradients together (see ``fastvae.ops``), plus ``reparameterize``.

``reparameterize(mu, logvar, n_samples, generator)``
    mu, logvar ``(B, L)``; n_samples ``None`` -> ``(B, L)``, an int K -> ``(K, B, L)``.
``elbo(x, recon, mu, logvar, z, obs_logvar, *, likelihood, kl, beta, free_bits, reduction)``
    x, recon ``(B, D)``; mu, logvar ``(B, L)``; z ``(B, L)`` or None (given iff kl == "mc");
    obs_logvar a float, or a tensor ``(D,)`` or ``(B, D)`` (only used by "gaussian").
    Returns the ELBO reduced over the batch: ``()`` for "mean"/"sum", ``(B,)`` for "none".
``kl_standard_normal(mu, logvar)``
    ``(N, L)`` -> ``(N,)``.
``gaussian_log_prob(x, mean, logvar)``
    x, mean ``(N, D)``; logvar a float or a tensor ``(D,)`` or ``(N, D)`` -> ``(N,)``.
``iwae_bound(x, recon_k, mu, logvar, z_k, obs_logvar, *, likelihood, reduction)``
    x ``(B, D)``, recon_k ``(K, B, D)``, mu/logvar ``(B, L)``, z_k ``(K, B, L)``.

Results are float64 when any floating input is float64, else float32 (a loss summed
over a large batch overflows fp16); gradients come back in each input's own dtype.
"""
from __future__ import annotations

import importlib
import os
import torch

NAMES = ("auto", "torch", "triton", "reference")
_MODULES = {
    "torch": "fastvae.backends.closed_form",
    "triton": "fastvae.backends.triton_backend",
    "reference": "fastvae.reference",
}
_last_used: str | None = None


_triton_ok: bool | None = None


@torch.compiler.assume_constant_result
def result_dtype(*ts) -> torch.dtype:
    """The dtype every backend computes and returns in: float64 when any tensor among ``ts``
    is float64, else float32 (also for half inputs, whose sums would overflow)."""
    if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in ts):
        return torch.float64
    return torch.float32


def reduce_scale(batch: int, reduction: str) -> float:
    """The factor a per-sample term gets in the reduced value: 1/B for "mean" (an empty
    batch gives 0, not NaN), else 1."""
    return 1.0 / max(batch, 1) if reduction == "mean" else 1.0


def upcast(t, dtype):
    """t in ``dtype`` (floats and None pass through)."""
    return t.to(dtype) if isinstance(t, torch.Tensor) else t


def triton_available() -> bool:
    """True when the Triton backend can be imported (it needs the ``triton`` package).

    Answered once and cached; under ``torch.compile`` it is evaluated at trace time as
    a constant (dynamo does not trace ``importlib``: it would be a graph break).
    """
    global _triton_ok
    if _triton_ok is None:
        try:
            importlib.import_module(_MODULES["triton"])
            _triton_ok = True
        except ImportError:
            _triton_ok = False
    return _triton_ok


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def select(backend: str | None, device: torch.device) -> str:
    """The backend that runs for ``backend`` ("auto" resolves here) on ``device``.

    ``backend=None`` reads the ``FASTVAE_BACKEND`` environment variable (default "auto").
    "auto" picks "triton" for CUDA tensors when triton imports, else "torch".
    """
    name = backend if backend is not None else os.environ.get("FASTVAE_BACKEND", "auto")
    if name not in NAMES:
        source = "backend" if backend is not None else "FASTVAE_BACKEND"
        raise ValueError(f"{source} must be one of {NAMES}, got {name!r}")
    if name == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if name == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' needs the triton package (pip install triton)")
        if device.type != "cuda" and not _interpreting():
            raise ValueError(
                f"backend='triton' needs CUDA tensors, got tensors on {device}; "
                "CPU tensors run the kernels only under TRITON_INTERPRET=1"
            )
    return name


def mark_used(name: str) -> None:
    """Record that backend ``name`` (resolved by :func:`select`) runs the current op."""
    global _last_used
    _last_used = name


def last_used() -> str | None:
    """Name of the backend that ran the most recent fastvae op in this process (None before any)."""
    return _last_used
