"""A continuous Bernoulli decoder's mean of 16-bit logits (autocast) is computed in float32
and rounded once: its closed form ``1/(1 - exp(-l)) - 1/l`` cancels near l = 0, where
16-bit arithmetic would lose every digit."""
import pytest
import torch

from fastvae.observation import CB_MEAN_SERIES, ObservationModel, cb_mean


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
def test_mean_near_zero_logits_is_the_exact_mean(dtype):
    """Around l = 0, where the closed form's two terms cancel, and on both sides of the
    switch to the series (|l| = 1): within 4 eps of the mean evaluated to 40 digits. The
    closed form alone is 20 eps off at |l| = 0.1, where the switch used to be."""
    mpmath = pytest.importorskip("mpmath")
    torch.manual_seed(0)
    l = torch.cat([torch.linspace(-3, 3, 3001, dtype=torch.float64),
                   torch.logspace(-8, 1, 400, dtype=torch.float64),
                   torch.rand(2000, dtype=torch.float64) * 1.4 + 0.05])
    l = torch.cat([l, -l]).to(dtype)
    l = l[l != 0]
    got = cb_mean(l).double()
    with mpmath.workdps(40):
        want = torch.tensor([float(1 / (1 - mpmath.exp(-mpmath.mpf(float(v)))) - 1 / mpmath.mpf(float(v)))
                             for v in l.double().tolist()], dtype=torch.float64)
    rel = ((got - want).abs() / want.abs()).max().item()
    assert rel <= 4 * torch.finfo(dtype).eps, rel
    assert torch.equal(cb_mean(torch.zeros(3, dtype=dtype)), torch.full((3,), 0.5, dtype=dtype))


def test_series_coefficients_are_the_bernoulli_numbers_over_factorials():
    mpmath = pytest.importorskip("mpmath")
    want = [float(mpmath.bernoulli(2 * n) / mpmath.factorial(2 * n))
            for n in range(1, len(CB_MEAN_SERIES) + 1)]
    assert list(CB_MEAN_SERIES) == want


def test_float64_model_mean_keeps_float64():
    """A float64 continuous Bernoulli model's picture (reconstruct, sample) is cb_mean of its
    float64 logits: only 16-bit logits are widened, never float64 ones narrowed to float32
    (which put the mean ~1e-6 off)."""
    from fastvae.models import VAE
    torch.manual_seed(0)
    logits = torch.cat([torch.randn(64) * 0.05, torch.randn(64) * 3]).double()
    model = ObservationModel((128,), "continuous_bernoulli")
    assert torch.equal(model.mean(logits), cb_mean(logits))
    vae = VAE((1, 4, 4), 2, (8,), likelihood="continuous_bernoulli").double()
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        want = cb_mean(vae.decode(vae.encode(x)[0]))
    assert torch.equal(vae.reconstruct(x), want)
