"""reparameterize's gradient formulas on the path training takes by default: float32
CPU on the "torch" backend, where eps is drawn from a Philox seed inside the C kernel
and drawn again in backward (gaussian_rows.c: fastvae_gauss_sample_bwd_rows).
tests/test_reparameterize.py checks the formulas only on float64 inputs for "torch"
(case_dtype), which take the aten path: the C backward's d/dlogvar is checked nowhere
(only its finiteness, test_low_precision)."""
import pytest
import torch

import fastvae


@pytest.mark.parametrize("n_samples", [None, 1, 3])
@pytest.mark.parametrize("b,l", [(5, 7), (33, 130)])
def test_float32_torch_gradient_formulas(n_samples, b, l):
    torch.manual_seed(0)
    mu = (torch.randn(b, l) * 2).requires_grad_(True)
    lv = torch.randn(b, l).requires_grad_(True)
    z = fastvae.reparameterize(mu, lv, n_samples=n_samples, backend="torch")
    dz = torch.randn(z.shape)
    gmu, glv = torch.autograd.grad(z, [mu, lv], dz)
    std = torch.exp(0.5 * lv.detach().double())
    eps = (z.detach().double() - mu.detach().double()) / std      # eps as drawn
    want_lv = 0.5 * std * (dz.double() * eps)
    want_mu = dz.double()
    if n_samples is not None:
        want_lv, want_mu = want_lv.sum(0), want_mu.sum(0)
    torch.testing.assert_close(gmu.double(), want_mu, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(glv.double(), want_lv, rtol=1e-4, atol=1e-4)
