"""reference.discretized_logistic_mixture_log_prob below bin width w = 1e-5 takes
log((1 - e^-w) / w) as log(1 - w/2 + w^2/6); the w^2/6 term is ~1e-11 there, far above
float64's rounding of log p (~1e-15). One grayscale pixel, one component, log-scale 7 (w = 2/255 e^-7 = 7.1e-6),
against the mpmath oracle."""
import pytest
import torch

from _formulas import dmol_log_prob_mpmath
from fastvae import reference


@pytest.mark.parametrize("log_scale", [6.8, 7.0, 9.0])
@pytest.mark.parametrize("k", [1, 128, 254])   # interior bins
def test_dmol_interior_bin_below_the_series_threshold(log_scale, k):
    n = 255
    x = torch.tensor([[[[k / n]]]], dtype=torch.float64)
    mean = 0.013
    params = torch.tensor([0.0, mean, log_scale], dtype=torch.float64).reshape(1, 3, 1, 1)
    got = reference.discretized_logistic_mixture_log_prob(x, params, 8).item()
    want = dmol_log_prob_mpmath([k / n], [0.0, mean, log_scale], bits=8)
    assert abs(got - want) <= 1e-13 * max(1.0, abs(want)), (got, want, got - want)
