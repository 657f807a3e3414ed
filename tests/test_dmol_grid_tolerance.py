"""validate=True refuses DMoL data off the bits grid by more than the rounding of x's
dtype (validation.check_dmol_values: tol = min(0.5, max(1e-3, eps n)) of a bin).
Float32/float64 8-bit data 0.002 of a bin off (twice the 1e-3 floor, 60x float32's
rounding of k/255) must be refused, 0.0002 of a bin accepted."""
import pytest
import torch

import fastvae

OP = fastvae.discretized_logistic_mixture_log_prob


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_off_grid_by_a_small_fraction_of_a_bin(dtype):
    p = torch.zeros(1, 3, 2, 2)
    k = torch.tensor([3.0, 100.0, 200.0, 254.0]).reshape(1, 1, 2, 2)
    with pytest.raises(ValueError, match="8-bit grid"):
        OP(((k + 0.002) / 255).to(dtype), p, validate=True)
    OP(((k + 0.0002) / 255).to(dtype), p, validate=True)
