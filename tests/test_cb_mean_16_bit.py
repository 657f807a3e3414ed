"""A continuous Bernoulli decoder's mean of 16-bit logits (autocast) is computed in float32
and rounded once: its closed form ``1/(1 - exp(-l)) - 1/l`` cancels near l = 0, where
16-bit arithmetic would lose every digit."""
import pytest
import torch

from fastvae.observation import ObservationModel


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mean_of_16_bit_logits_is_the_float64_mean_rounded(dtype):
    torch.manual_seed(0)
    logits = torch.cat([torch.randn(64) * 0.05, torch.randn(64) * 3]).to(dtype)
    got = ObservationModel((128,), "continuous_bernoulli").mean(logits)
    assert got.dtype == dtype
    want = torch.distributions.ContinuousBernoulli(logits=logits.double()).mean
    # one rounding to the dtype, plus float32's error in the closed form near l = 0
    tol = torch.finfo(dtype).eps
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=1e-4)
