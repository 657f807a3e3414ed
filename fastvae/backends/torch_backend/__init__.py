"""The "torch" backend: closed-form forward and gradient in one pass, for any device.

Each ``<op>_fwd`` (one file per op) computes an op's value and its analytic gradients
together from the per-element math in ``terms``; the autograd wiring that saves only
those gradients lives once, in ``fastvae.ops``. The Bernoulli rows of float32 inputs,
nearly all of a typical ELBO's cost on CPU, run in a small compiled C kernel where one
can be built (``rows``); everything else is aten ops over row chunks sized for L2.
Memory: the only B x D tensors are the returned gradients.
"""
from .discretized_logistic_mixture_log_prob import discretized_logistic_mixture_log_prob_fwd
from .elbo import elbo_fwd
from .gaussian_log_prob import gaussian_log_prob_fwd
from .iwae_bound import iwae_bound_fwd
from .kl_normal import kl_normal_bwd, kl_normal_fwd
from .kl_standard_normal import kl_standard_normal_fwd
from .reparameterize import (reparameterize_bwd, reparameterize_fwd, reparameterize_noise,
                             reparameterize_std_eps)
from .sample_with_kl import sample_with_kl_bwd, sample_with_kl_fwd
from .scale import scale_saved_

__all__ = ["elbo_fwd", "iwae_bound_fwd", "gaussian_log_prob_fwd", "kl_standard_normal_fwd",
           "kl_normal_fwd", "kl_normal_bwd", "reparameterize_noise", "reparameterize_fwd", "reparameterize_bwd",
           "reparameterize_std_eps", "sample_with_kl_fwd", "sample_with_kl_bwd",
           "scale_saved_", "discretized_logistic_mixture_log_prob_fwd"]
