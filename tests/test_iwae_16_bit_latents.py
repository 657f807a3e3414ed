"""The importance-weighted bound repeats the posterior's mu and logvar over the K
samples; a 16-bit input's gradient is summed over its copies in float32 and rounded to its
dtype once (README, "Dtypes": the math runs in float32 at least), on every backend and
likelihood. The reference summed the copies in the input's own dtype: a float16 sum whose
terms overflow went inf, and a bfloat16 one drifted by a rounding per sample.
tests/test_dmol_iwae_16_bit_latents.py: the discretized mixture's bound."""
import pytest
import torch

import fastvae

LIKELIHOODS = ["bernoulli", "gaussian", "continuous_bernoulli"]


def _grads(backend, likelihood, x, recon_k, mu, logvar, z_k):
    mu, logvar = mu.detach().requires_grad_(), logvar.detach().requires_grad_()
    v = fastvae.iwae_bound(x, recon_k, mu, logvar, z_k, likelihood=likelihood,
                           reduction="sum", backend=backend)
    return torch.autograd.grad(v, [mu, logvar])


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_a_float16_mean_gradient_summed_over_samples_fits(backend, likelihood):
    """Two samples of equal weight 1/2 (identical decoder outputs, q = p = N(0, 1)) at
    z - mu = 140000 and -130000: d bound / d mu = 1/2 (-140000 + 130000) = -5000, each
    term alone past float16's 65504."""
    x, recon_k = torch.zeros(1, 1), torch.zeros(2, 1, 1)
    z_k = torch.tensor([140000.0, -130000.0]).view(2, 1, 1)
    mu = torch.zeros(1, 1, dtype=torch.float16)
    (g_mu, _) = _grads(backend, likelihood, x, recon_k, mu, mu, z_k)
    assert g_mu.dtype == torch.float16
    (want, _) = _grads("reference", likelihood, x.double(), recon_k.double(), mu.double(),
                       mu.double(), z_k.double())
    torch.testing.assert_close(g_mu.double(), want, rtol=1e-3, atol=0)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_a_bfloat16_mean_gradient_of_cancelling_samples_rounds_once(backend, likelihood):
    """K = 64 samples of equal weight 1/K (as above) at z_k = +-1000 + k/64: d bound / d mu
    = -mean(z_k) = -63/128, where each term is +-15.6, whose bfloat16 rounding (a unit of
    1/16) loses its k/64. Within one unit in the last place of it (the Triton
    interpreter truncates its bfloat16 stores)."""
    k = 64
    x, recon_k = torch.zeros(1, 1), torch.zeros(k, 1, 1)
    z_k = (torch.tensor([1000.0, -1000.0]).repeat(k // 2) + torch.arange(k) / k).view(k, 1, 1)
    mu = torch.zeros(1, 1, dtype=torch.bfloat16)
    (g_mu, g_lv) = _grads(backend, likelihood, x, recon_k, mu, mu, z_k)
    assert g_mu.dtype == g_lv.dtype == torch.bfloat16
    want = -(k - 1) / (2 * k)
    assert abs(g_mu.item() - want) <= torch.finfo(torch.bfloat16).eps * -want, g_mu.item()
