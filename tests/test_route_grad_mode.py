"""sample_with_kl keeps a route per call signature (gaussians._route_key), which holds
what the first calls prepared, including which gradients are needed. The key includes
torch.is_grad_enabled(): requires_grad of the inputs is the same under torch.no_grad()
(an evaluation loop), so without it a route made there would be taken by the training
step's calls."""
import pytest
import torch

import fastvae
from _backends import BACKENDS


@pytest.mark.parametrize("backend", [None] + BACKENDS, indirect=True)
@pytest.mark.parametrize("prior", [False, True])
def test_no_grad_calls_then_grad_calls(backend, prior):
    torch.manual_seed(0)
    b, n = 4, 6
    mu = torch.randn(b, n, requires_grad=True)
    lv = torch.randn(b, n, requires_grad=True)
    pm = torch.randn(b, n, requires_grad=True) if prior else None
    plv = torch.randn(b, n, requires_grad=True) if prior else None
    with torch.no_grad():
        for _ in range(3):                       # seen again: a route is kept
            z, kl = fastvae.sample_with_kl(mu, lv, pm, plv, backend=backend)
            assert not z.requires_grad and not kl.requires_grad
    for _ in range(3):
        z, kl = fastvae.sample_with_kl(mu, lv, pm, plv, backend=backend)
        assert z.requires_grad and kl.requires_grad
        g = torch.autograd.grad(kl.sum() + z.sum(), [t for t in (mu, lv, pm, plv) if t is not None])
        # dKL/dmu_q + dz/dmu = (mu - pm) e^-plv + 1 (prior) or mu + 1
        want = (mu - pm) * torch.exp(-plv) + 1 if prior else mu + 1
        torch.testing.assert_close(g[0], want.detach(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():                        # and back
        z, kl = fastvae.sample_with_kl(mu, lv, pm, plv, backend=backend)
        assert not z.requires_grad


@pytest.mark.parametrize("backend", [None] + BACKENDS, indirect=True)
@pytest.mark.parametrize("kl", ["analytic", "mc"])
def test_elbo_no_grad_calls_then_grad_calls(backend, kl):
    """The same for functional.elbo's signature memo and route (_elbo_signature)."""
    torch.manual_seed(0)
    b, d, l = 4, 5, 3
    x = torch.rand(b, d)
    recon = torch.randn(b, d, requires_grad=True)
    mu = torch.randn(b, l, requires_grad=True)
    lv = torch.randn(b, l, requires_grad=True)
    z = torch.randn(b, l, requires_grad=True) if kl == "mc" else None
    with torch.no_grad():
        for _ in range(3):
            v = fastvae.elbo(x, recon, mu, lv, kl=kl, z=z, backend=backend)
            assert not v.requires_grad
    for _ in range(3):
        v = fastvae.elbo(x, recon, mu, lv, kl=kl, z=z, backend=backend)
        (g,) = torch.autograd.grad(v, [recon])
        torch.testing.assert_close(g, ((x - torch.sigmoid(recon)) / b).detach(),
                                   rtol=1e-5, atol=1e-6)
