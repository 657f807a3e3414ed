"""The backend registry: which implementation runs an op, and which one ran last.

``fastvae.functional`` validates, then calls ``fastvae.reference`` for "reference",
or ``fastvae.ops`` (custom ops with autograd) for the fused backends, which fetch their
compute module here (:func:`computing` for a forward, which marks it used; else
:func:`get`). A fused backend module provides, on canonical (already checked, flattened)
arguments, per op ``<op>_fwd`` returning the value and its
gradients together (see ``fastvae.ops``; None for a gradient not needed, which the op
turns into the custom op's empty placeholder), ``reparameterize_noise`` /
``reparameterize_fwd`` / ``reparameterize_bwd`` / ``reparameterize_std_eps`` and
``scale_saved_``; optionally ``kl_normal_bwd`` (the saved gradients weighed by grad_output
in one pass; None where it cannot, and ``fastvae.ops`` weighs them). ``elbo_fwd``,
``sample_with_kl_fwd`` and ``scale_saved_`` may carry a ``prepare`` attribute for
``fastvae.ops.Route``: their arguments (``scale_saved_``'s gradients alone; without the
noise) -> the same function for calls that differ only in the tensors' values (x, recon,
mu, logvar, z; mu, logvar, the prior's and the noise; the gradients and grad_output), or
None. The canonical shapes:

``elbo``: x, recon ``(B, D)``; mu, logvar ``(B, L)``; z ``(B, L)`` or None (given iff
    kl == "mc"); obs_logvar a float, or a tensor ``(D,)`` or ``(B, D)``. The value is
    ``()`` for "mean"/"sum", ``(B,)`` for "none".
``iwae_bound``: x ``(B, D)``, recon_k ``(K, B, D)``, mu/logvar ``(B, L)``, z_k ``(K, B, L)``,
    obs_logvar as elbo's or ``(K, B, D)`` (one per sample);
    with ``weights=True`` (STL, DReG: ``fastvae.estimators``) also the softmax weights ``(K, B)``.
``kl_standard_normal``: ``(N, L)`` -> ``(N,)``.
``gaussian_log_prob``: x, mean ``(N, D)``; logvar a float or ``(D,)`` / ``(N, D)`` -> ``(N,)``.
``reparameterize``: mu, logvar ``(B, L)``; ``(B, L)``, or ``(K, B, L)`` for K samples.

Results are float64 when any floating input is float64, else float32
(``fastvae._dtypes``); gradients come back in each input's own dtype.
"""
from __future__ import annotations

import importlib
from types import ModuleType

import torch

from .. import _env, _warnings

NAMES = ("auto", "torch", "triton", "reference")
_MODULES = {
    "torch": "fastvae.backends.torch_backend",
    "triton": "fastvae.backends.triton_backend",
    "reference": "fastvae.reference",
}
_loaded: dict = {}
_last_used: str | None = None
_triton_ok: bool | None = None
_triton_broken: str | None = None   # why the backend failed to import, triton installed
_broken_warned = False


def get(name: str) -> ModuleType:
    """The module that computes backend ``name`` (imported on first use)."""
    module = _loaded.get(name)
    if module is None:
        module = _loaded[name] = importlib.import_module(_MODULES[name])
    return module


def triton_available() -> bool:
    """True when the Triton backend can be imported (it needs the ``triton`` package).

    Answered once and cached; under ``torch.compile`` it is evaluated at trace time as
    a constant (dynamo does not trace ``importlib``: it would be a graph break).
    """
    global _triton_ok, _triton_broken
    if _triton_ok is None:
        try:
            get("triton")
            _triton_ok = True
        except ImportError as e:
            _triton_ok = False
            # only "No module named 'triton'" is a missing package; a submodule or a name
            # that does not import is an installed one that is broken or of another version
            if not (isinstance(e, ModuleNotFoundError) and e.name == "triton"):
                _triton_broken = f"{type(e).__name__}: {e}"
    return _triton_ok


def triton_missing() -> str:
    """Why backend='triton' cannot run, after :func:`triton_available` said False: the
    package is missing, or the backend failed to import beside it (an installed wheel
    shadowed by a source checkout holds no ``fastvae.kernels``)."""
    if _triton_broken is None:
        return "backend='triton' needs the triton package (pip install triton)"
    return f"backend='triton' failed to import ({_triton_broken})"


def _warn_broken_once() -> None:
    global _broken_warned
    if not _broken_warned:
        _broken_warned = True
        _warnings.warn(f"fastvae: {triton_missing()}; CUDA tensors run the torch backend")


def check_name(name, source: str = "backend") -> None:
    """ValueError unless ``name`` is one of :data:`NAMES` (``source``: what to call it)."""
    if name not in NAMES:
        raise ValueError(f"{source} must be one of {NAMES}, got {name!r}")


def select(backend: str | None, device: torch.device) -> str:
    """The backend that runs for ``backend`` ("auto" resolves here) on ``device``.

    ``backend=None`` reads the ``FASTVAE_BACKEND`` environment variable (default "auto").
    "auto" picks "triton" for CUDA tensors when triton imports, else "torch".
    """
    name = backend if backend is not None else _env.backend_default()
    if name not in NAMES:  # tested here first: this runs on every op call
        check_name(name, "backend" if backend is not None else "FASTVAE_BACKEND")
    if name == "auto":
        if device.type != "cuda":
            return "torch"
        if triton_available():
            return "triton"
        if _triton_broken is not None:
            _warn_broken_once()
        return "torch"
    if name == "triton":
        if not triton_available():
            raise RuntimeError(triton_missing())
        if device.type != "cuda" and not _env.interpreting():
            raise ValueError(
                f"backend='triton' needs CUDA tensors, got tensors on {device}; "
                "CPU tensors run the kernels only under TRITON_INTERPRET=1"
            )
    return name


def select_backend(backend: str | None, device) -> str:
    """``fastvae.select_backend(backend, device)``: the name of the backend an op would run
    on for tensors on ``device`` ("torch", "triton" or "reference").

    backend: "auto", "torch", "triton", "reference", or None for the ``FASTVAE_BACKEND``
        environment variable (default "auto": "triton" for CUDA tensors where triton
        imports, else "torch").
    device: a torch.device or what ``torch.device()`` takes ("cpu", "cuda:0").

    Raises ValueError for an unknown name or "triton" on a device it cannot run on,
    RuntimeError for "triton" without the triton package, TypeError for a device that is
    neither. (The ops' own calls pass a torch.device to :func:`select` and skip this
    function's conversion.)"""
    if not isinstance(device, torch.device):
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError):
            raise TypeError(f"device must be a torch.device or a string such as 'cpu' or "
                            f"'cuda:0', got {device!r}") from None
    return select(backend, device)


def mark_used(name: str) -> None:
    """Record that backend ``name`` (resolved by :func:`select`) runs the current op."""
    global _last_used
    _last_used = name


def computing(name: str):
    """The backend ``name``'s module, marked used (:func:`mark_used`): what a fused op's
    forward asks for. It runs when the op does, also inside a compiled graph, which
    calls the custom op; a mark while torch.compile traces would be a side effect it
    replays, and one that a checkpointed block (a higher-order op) refuses."""
    mark_used(name)
    return get(name)


def last_used() -> str | None:
    """Name of the backend that ran the most recent fastvae op in this process (None before any)."""
    return _last_used


# Import the backends now, so that torch.compile never traces an import: the Triton one
# only where it can run (elsewhere importing triton would only cost start-up time).
get("torch")
get("reference")
if torch.cuda.is_available() or _env.interpreting():
    triton_available()
