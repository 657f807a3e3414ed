"""The "triton" backend: host side of the fused kernels in ``fastvae.kernels``, one file
per op (``elbo``, ``iwae_bound``, ``gaussian_log_prob``, ``kl_standard_normal`` (with
``kl_normal``), ``reparameterize``, ``sample_with_kl``, ``scale``), with the same functions
and contracts as the "torch" backend. Launch configurations live in ``configs`` (the IWAE
kernels' in ``iwae_configs``); every allocation and launch goes through ``_launch`` (tests
hook both); what the JIT builds for real calls is captured and compiled by
``fastvae.bench.offline`` (tests/test_kernels_compile.py).

Launches per call (machine-independent; tests count them):
    reparameterize       forward 1, backward 1
    elbo                 1 (reduction "none", no free bits) or 2 (row pass + finish: the
                         deterministic batch sum, free bits' per-latent clamp,
                         per-dimension obs_logvar column sums); backward: 1 with a scalar
                         grad_output (``scale_saved_``: all gradients in place, no bytes
                         moved at 1), else torch's multiply by the (B,) one
    iwae_bound           1, or 2 with a mean/sum reduction or a (D,) obs_logvar sum;
                         backward as elbo's. One pass where a row's K x D fits on chip
                         (``iwae_configs``): the pair kernel ((row, sample) pairs as tile
                         rows, ``iwae_pairs_config``) where no gradient sums over k per
                         column (bf16 training at 512-784 columns: one warp a row,
                         ``iwae_row_warps_config``), else the 3-D one
                         (``iwae_onepass_config``); bf16 training at K 17-64: one warp a
                         sample (``iwae_sample_warps_config``); else the two-pass kernel,
                         which reads the row again for the gradients
    gaussian_log_prob    1            kl_standard_normal    1            kl_normal    1
    sample_with_kl       forward 1, backward 1 (plus torch's sum over rows of a prior's
                         gradient where one prior row is shared by every row)
    discretized_logistic_mixture_log_prob   1 (+ torch's sum of per-block partials);
                         backward as elbo's

Float64 inputs and empty dimensions go to the "torch" backend (same contract).
"""
from .discretized_logistic_mixture_log_prob import discretized_logistic_mixture_log_prob_fwd
from .elbo import elbo_fwd
from .gaussian_log_prob import gaussian_log_prob_fwd
from .iwae_bound import iwae_bound_fwd
from .kl_standard_normal import kl_normal_fwd, kl_standard_normal_fwd
from .reparameterize import (reparameterize_bwd, reparameterize_fwd, reparameterize_noise,
                             reparameterize_std_eps)
from .sample_with_kl import sample_with_kl_bwd, sample_with_kl_fwd
from .scale import scale_saved_

__all__ = ["elbo_fwd", "iwae_bound_fwd", "gaussian_log_prob_fwd", "kl_standard_normal_fwd",
           "kl_normal_fwd", "reparameterize_noise", "reparameterize_fwd", "reparameterize_bwd",
           "reparameterize_std_eps", "sample_with_kl_fwd", "sample_with_kl_bwd",
           "scale_saved_", "discretized_logistic_mixture_log_prob_fwd"]
