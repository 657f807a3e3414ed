"""What every fastvae model shares on the data side: the data shape, the observation
model (likelihood) with its learnable log-variance for "gaussian", the shape of the
decoder's output (the data's, or a discretized logistic mixture's parameters), and the
pictures of that output: its mean, and a draw for samples. A leaf module:
``fastvae.models`` and ``fastvae.hvae`` both build on it."""
from __future__ import annotations

import torch
from torch import nn

from .dmol_sampling import dmol_mean, dmol_sample
from .validation import (DMOL, LIKELIHOODS, check_number, check_option, check_sizes,
                         check_tensor, dmol_slots)

# NVAE's and PixelCNN++'s mixture size: what a DMoL decoder gets unless told.
DEFAULT_N_MIX = 10
# The models' DMoL data grid: 8-bit images (k / 255), the default ``bits`` of
# fastvae.elbo / iwae_bound, which the models call without it.
DMOL_BITS = 8


def cb_mean(logits: torch.Tensor) -> torch.Tensor:
    """Mean of the continuous Bernoulli with natural parameter ``logits``.

    ``E[x] = p/(2p-1) + 1/(2 artanh(1-2p))``, written in logits as
    ``1/(1-exp(-l)) - 1/l``; it tends to 1/2 at ``l = 0``, where we use the series
    ``1/2 + l/12`` to avoid 0/0.
    """
    small = logits.abs() < 1e-3
    safe = torch.where(small, torch.ones_like(logits), logits)
    mean = -torch.expm1(-safe).reciprocal() - safe.reciprocal()
    return torch.where(small, 0.5 + logits / 12, mean)


class ObservationModel(nn.Module):
    """``data_shape``, ``likelihood`` and, for "gaussian", the learnable per-dimension
    ``obs_logvar`` (starting at 0, unit variance: the usual neutral choice).

    "discretized_logistic_mixture" (DMoL) needs ``(C, H, W)`` images with C = 1 or 3 on
    the 8-bit grid ``k / 255``; the decoder then outputs the ``n_mix``-component mixture's
    parameters, :attr:`out_shape` = ``(10*M, H, W)`` (RGB) or ``(3*M, H, W)`` (gray),
    in the layout of :func:`fastvae.discretized_logistic_mixture_log_prob`."""

    def __init__(self, data_shape, likelihood: str, n_mix=None):
        super().__init__()
        check_option("likelihood", likelihood, LIKELIHOODS)
        self.data_shape = check_sizes("data_shape", data_shape)
        self.likelihood = likelihood
        self.n_mix = None
        self.out_shape = self.data_shape
        if likelihood == DMOL:
            if len(self.data_shape) != 3 or self.data_shape[0] not in (1, 3):
                raise ValueError(f"likelihood {DMOL!r} needs (C, H, W) images with C = 1 or 3 "
                                 f"channels, got data shape {self.data_shape}")
            self.n_mix = int(check_number("n_mix", DEFAULT_N_MIX if n_mix is None else n_mix,
                                          minimum=1, integer=True))
            c, h, w = self.data_shape
            self.out_shape = (dmol_slots(c) * self.n_mix, h, w)
        elif n_mix is not None:
            raise ValueError(f"n_mix is the number of mixture components of likelihood "
                             f"{DMOL!r}, not of {likelihood!r}")
        if likelihood == "gaussian":
            self.obs_logvar = nn.Parameter(torch.zeros(self.data_shape))
        else:
            self.register_parameter("obs_logvar", None)

    def _obs(self):
        return self.obs_logvar if self.obs_logvar is not None else 0.0

    def check_images(self, x) -> torch.Tensor:
        """x itself, a floating-point ``(B, *data_shape)`` tensor; else the error that says
        so (the layers would fail later, or run on another size and leave the blame to
        the loss's shape check)."""
        check_tensor("x", x)
        if x.dim() == 0 or tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"x must be (B, *data_shape) = (B, "
                             f"{', '.join(map(str, self.data_shape))}) for this model, got "
                             f"shape {tuple(x.shape)}")
        return x

    def mean(self, recon: torch.Tensor) -> torch.Tensor:
        """Decoder output -> the observation model's mean (an image)."""
        if self.likelihood == "bernoulli":
            return torch.sigmoid(recon)
        if self.likelihood == "continuous_bernoulli":
            return cb_mean(recon.float()).to(recon.dtype)
        if self.likelihood == DMOL:
            return dmol_mean(recon, self.data_shape[0])
        return recon

    def draw(self, recon: torch.Tensor, generator=None) -> torch.Tensor:
        """Decoder output -> the picture of a sample: for DMoL an image drawn from the
        mixture (Gumbel-max over components, logistic inversion channel by channel, on
        the 8-bit grid: :func:`fastvae.dmol_sampling.dmol_sample`); for the other
        likelihoods the mean (their per-pixel noise shows nothing of the model)."""
        if self.likelihood == DMOL:
            return dmol_sample(recon, self.data_shape[0], DMOL_BITS, generator=generator)
        return self.mean(recon)
