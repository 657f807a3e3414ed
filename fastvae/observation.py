"""What every fastvae model shares on the data side: the data shape, the observation
model (likelihood) with its learnable log-variance for "gaussian", and the mean of the
decoder's output distribution. A leaf module: ``fastvae.models`` and ``fastvae.hvae``
both build on it."""
from __future__ import annotations

import torch
from torch import nn

from .validation import LIKELIHOODS, check_option


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
    ``obs_logvar`` (starting at 0, unit variance: the usual neutral choice)."""

    def __init__(self, data_shape, likelihood: str):
        super().__init__()
        check_option("likelihood", likelihood, LIKELIHOODS)
        self.data_shape = tuple(int(s) for s in data_shape)
        self.likelihood = likelihood
        if likelihood == "gaussian":
            self.obs_logvar = nn.Parameter(torch.zeros(self.data_shape))
        else:
            self.register_parameter("obs_logvar", None)

    def _obs(self):
        return self.obs_logvar if self.obs_logvar is not None else 0.0

    def mean(self, recon: torch.Tensor) -> torch.Tensor:
        """Decoder output -> the observation model's mean (an image)."""
        if self.likelihood == "bernoulli":
            return torch.sigmoid(recon)
        if self.likelihood == "continuous_bernoulli":
            return cb_mean(recon.float()).to(recon.dtype)
        return recon
