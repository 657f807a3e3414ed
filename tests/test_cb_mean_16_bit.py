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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mean_near_zero_logits_is_the_float64_mean(dtype):
    """Around l = 0, where the closed form's two terms cancel, and on both sides of the
    switch to the series (|l| = 0.1): float32 within 2e-6 of the float64 mean, float64
    within 1e-12 (the float64 closed form's own cancellation at |l| >= 1e-3)."""
    l = torch.cat([torch.linspace(-0.3, 0.3, 6001), torch.logspace(-8, 1, 500)])
    l = torch.cat([l, -l]).to(dtype)
    from fastvae.observation import cb_mean
    got = cb_mean(l).double()
    wide = l.double()
    # float64: the closed form away from 0, the series (to l^9) at |l| < 1e-3
    closed = -torch.expm1(-wide).reciprocal() - wide.reciprocal()
    w2 = wide * wide
    series = 0.5 + wide * (1 / 12 + w2 * (-1 / 720 + w2 * (1 / 30240 + w2 * (
        -1 / 1209600 + w2 / 47900160))))
    want = torch.where(wide.abs() < 1e-3, series, closed)
    tol = 2e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, want, rtol=0, atol=tol)
    assert torch.equal(cb_mean(torch.zeros(3, dtype=dtype)), torch.full((3,), 0.5, dtype=dtype))


def test_float64_model_mean_keeps_float64():
    """A float64 continuous Bernoulli model's picture (reconstruct, sample) is cb_mean of its
    float64 logits: only 16-bit logits are widened, never float64 ones narrowed to float32
    (which put the mean ~1e-6 off)."""
    from fastvae.models import VAE
    from fastvae.observation import cb_mean
    torch.manual_seed(0)
    logits = torch.cat([torch.randn(64) * 0.05, torch.randn(64) * 3]).double()
    model = ObservationModel((128,), "continuous_bernoulli")
    assert torch.equal(model.mean(logits), cb_mean(logits))
    vae = VAE((1, 4, 4), 2, (8,), likelihood="continuous_bernoulli").double()
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        want = cb_mean(vae.decode(vae.encode(x)[0]))
    assert torch.equal(vae.reconstruct(x), want)
