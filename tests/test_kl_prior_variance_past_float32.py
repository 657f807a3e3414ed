"""kl_normal / sample_with_kl with a prior log-variance below -177.4 in float32, where
exp(-plv/2) overflows: the factor is held at the largest float (gaussian_rows.c,
terms.inv_sd), so a posterior mean equal to the prior's (d = 0 exactly) gives u = 0 and
a KL and gradients that are the exact, finite values, not 0 * inf = NaN.
Exact expectation: q = p gives KL 0, dKL/dmu_q = dKL/dmu_p = 0, dKL/dlv_q = 0,
dKL/dlv_p = 0."""
import pytest
import torch

import fastvae
from _backends import BACKENDS


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("op", ["kl_normal", "sample_with_kl"])
@pytest.mark.parametrize("plv", [-178.0, -200.0, -250.0])
def test_equal_gaussians_at_prior_variance_past_float32(backend, op, plv):
    torch.manual_seed(0)
    b, n = 3, 37                       # a tail past the vector width
    mu = torch.randn(b, n)
    mu_q, mu_p = mu.clone().requires_grad_(True), mu.clone().requires_grad_(True)
    lv_q = torch.full((b, n), plv, requires_grad=True)
    lv_p = torch.full((b, n), plv, requires_grad=True)
    if op == "kl_normal":
        kl = fastvae.kl_normal(mu_q, lv_q, mu_p, lv_p, backend=backend)
    else:
        _, kl = fastvae.sample_with_kl(mu_q, lv_q, mu_p, lv_p, backend=backend)
    assert torch.equal(kl, torch.zeros(b)), kl
    kl.sum().backward()
    for name, g in (("mu_q", mu_q.grad), ("lv_q", lv_q.grad), ("mu_p", mu_p.grad),
                    ("lv_p", lv_p.grad)):
        assert torch.isfinite(g).all(), f"d/d{name} not finite"
        torch.testing.assert_close(g, torch.zeros_like(g), rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("kl", ["analytic", "mc"])
def test_gaussian_data_equal_to_mean_at_obs_variance_past_float32(backend, kl):
    """The same guard in log N(x; r, e^s) and the MC KL's (z - mu) e^(-lv/2): x == recon
    at obs_logvar -200 and z == mu at logvar -200 (float32): exact, finite values:
    log p = -0.5 (s + log 2 pi) per element; MC KL = 0.5 (z^2 - lv) per latent."""
    import math
    torch.manual_seed(0)
    b, d, l = 3, 5, 4
    x = torch.rand(b, d)
    recon = x.clone().requires_grad_(True)
    mu = torch.randn(b, l).requires_grad_(True)
    lv = torch.full((b, l), -200.0, requires_grad=True)
    z = mu.detach().clone().requires_grad_(True) if kl == "mc" else None
    v = fastvae.elbo(x, recon, mu, lv, likelihood="gaussian", obs_logvar=-200.0, kl=kl, z=z,
                     reduction="none", backend=backend)
    log_px = -0.5 * d * (-200.0 + math.log(2 * math.pi))
    mu64, lv64 = mu.detach().double(), lv.detach().double()
    if kl == "analytic":
        kl_rows = 0.5 * (mu64 ** 2 + lv64.exp() - 1 - lv64).sum(-1)
    else:
        kl_rows = 0.5 * (mu64 ** 2 - lv64).sum(-1)
    torch.testing.assert_close(v.double(), log_px - kl_rows, rtol=1e-6, atol=1e-4)
    v.sum().backward()
    assert torch.equal(recon.grad, torch.zeros_like(recon.grad))
    for t in (mu, lv, z):
        if t is not None and t.grad is not None:
            assert torch.isfinite(t.grad).all()
