"""The fused ops: each public op defined once, as a ``torch.library`` custom op with its
fake kernel and autograd (one file per op), computed by a backend's ``<op>_fwd``.

Registering fake (meta) kernels lets ``torch.compile(fullgraph=True)`` trace through
every op without a graph break; eager calls run the same functions as a plain
``autograd.Function`` (``_autograd.Fused``). What they share lives in ``_autograd``.
"""
from ._autograd import Route
from ._modes import reference_only
from .discretized_logistic_mixture_log_prob import discretized_logistic_mixture_log_prob
from .elbo import elbo
from .elbo import route as elbo_route
from .gaussian_log_prob import gaussian_log_prob
from .iwae_bound import iwae_bound
from .kl_normal import kl_normal
from .kl_standard_normal import kl_standard_normal
from .reparameterize import reparameterize
from .sample_with_kl import route as sample_with_kl_route
from .sample_with_kl import routed as sample_with_kl_routed
from .sample_with_kl import sample_with_kl

__all__ = ["reference_only", "elbo", "iwae_bound", "reparameterize", "gaussian_log_prob",
           "kl_standard_normal", "kl_normal", "sample_with_kl"]
__all__ += ["discretized_logistic_mixture_log_prob"]
