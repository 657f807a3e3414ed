"""fastvae: fused, tested VAE objectives for PyTorch.

Public names only; see ``fastvae.functional`` for the math.
"""
from ._version import __version__
from .backends import last_used as last_backend
from .backends import select_backend
from .backends import triton_available
from .functional import (elbo, gaussian_log_prob, iwae_bound, kl_normal, kl_standard_normal,
                         reparameterize, sample_with_kl)
from .functional import discretized_logistic_mixture_log_prob
from .loss import DiscretizedLogisticMixtureNLLLoss, ELBOLoss, IWAELoss
from .validation import get_validation, set_validation
from . import _compiler

_compiler.not_scriptable(elbo, reparameterize, kl_standard_normal, kl_normal, sample_with_kl,
                         gaussian_log_prob, iwae_bound, discretized_logistic_mixture_log_prob)

__all__ = [
    "__version__",
    "elbo",
    "reparameterize",
    "kl_standard_normal",
    "kl_normal",
    "sample_with_kl",
    "gaussian_log_prob",
    "iwae_bound",
    "ELBOLoss",
    "IWAELoss",
    "set_validation",
    "get_validation",
    "select_backend",
    "last_backend",
    "triton_available",
]
__all__ += ["discretized_logistic_mixture_log_prob", "DiscretizedLogisticMixtureNLLLoss"]

# Loaded on first use: ``import fastvae; fastvae.models.VAE(...)`` as the README writes it,
# without importing the models (and what they pull in) with every op call's package;
# ``fastvae.load_run`` (fastvae.runs) and the error it raises likewise, and so not in
# __all__ (a star import would load them).
_LAZY_SUBMODULES = ("models",)
_LAZY_FUNCTIONS = {"load_run": "runs", "CheckpointError": "checkpoint"}


def __getattr__(name):
    if name in _LAZY_SUBMODULES or name in _LAZY_FUNCTIONS:
        import importlib
        module = importlib.import_module(f".{_LAZY_FUNCTIONS.get(name, name)}", __name__)
        value = getattr(module, name) if name in _LAZY_FUNCTIONS else module
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES) | set(_LAZY_FUNCTIONS))
