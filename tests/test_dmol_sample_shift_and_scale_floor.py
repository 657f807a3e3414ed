"""dmol_sample draws what the likelihood scores: a later channel's mean is shifted by the
earlier channels' values on the grid (the data the likelihood conditions on), not by
their continuous draws, and a log-scale below -7 draws at the likelihood's clamped scale
e^-7, not at its own."""
from __future__ import annotations

import math

import torch

from fastvae.dmol_sampling import dmol_sample


def test_later_channels_are_shifted_by_the_earlier_grid_values():
    """bits=1: the grid is {0, 1}, i.e. -1 and 1 on the mixture's scale, the edge between
    them at 0. Red sits at 0.4 (bin 1, value 1.0); green's mean is -0.7 + tanh(20) * 1.0
    = 0.3 (bin 1), blue's -0.7 + tanh(20) * green's 1.0 = 0.3 (bin 1). Shifted by red's
    draw (0.4) instead, green would land at -0.3: bin 0. Scales of e^-7 (at most ~0.08
    away even at the most extreme uniform) keep every draw in its bin."""
    p = torch.zeros(1, 10, 2, 2)
    #    logit | red: mean, log-scale, coeff | green: ... | blue: ...
    p[:, 0] = 0.0
    p[:, 1:4] = torch.tensor([0.4, -7.0, 20.0])[:, None, None]
    p[:, 4:7] = torch.tensor([-0.7, -7.0, 0.0])[:, None, None]
    p[:, 7:10] = torch.tensor([-0.7, -7.0, 20.0])[:, None, None]
    p = p.expand(500, -1, -1, -1)
    x = dmol_sample(p, channels=3, bits=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, torch.ones(500, 3, 2, 2))


def test_a_log_scale_below_the_clamp_draws_at_the_clamped_scale():
    """A gray mean 1e-6 above the bin edge (0, bits=1): at the clamped scale e^-7 a draw
    falls above the edge with probability sigmoid(1e-6 / e^-7) = 0.5003; at the unclamped
    e^-20 (2e-9) it always would."""
    p = torch.zeros(20000, 3, 1, 1)
    p[:, 1] = 1e-6
    p[:, 2] = -20.0
    x = dmol_sample(p, channels=1, bits=1, generator=torch.Generator().manual_seed(0))
    upper = float(x.mean())
    want = 1 / (1 + math.exp(-1e-6 / math.exp(-7.0)))
    se = math.sqrt(want * (1 - want) / len(p))
    assert abs(upper - want) < 5 * se, upper
