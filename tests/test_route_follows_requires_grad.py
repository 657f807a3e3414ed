"""A prepared call (``fastvae.ops.Route``) holds which inputs need a gradient, so a
call signature includes each tensor's ``requires_grad`` (``validation.layouts``): calls
on inputs that need none (a frozen encoder's outputs, detached tensors) made with grad
mode on, then calls on inputs that do, must give the latter their gradients."""
import pytest
import torch

import fastvae


def _inputs(b=4, d=6, l=3):
    torch.manual_seed(0)
    return (torch.rand(b, d), torch.randn(b, d), torch.randn(b, l), torch.randn(b, l),
            torch.randn(b, l))


@pytest.mark.parametrize("kl", ["analytic", "mc"])
def test_elbo_gradients_after_calls_that_needed_none(backend, kl):
    x, recon, mu, lv, z = _inputs()
    z = z if kl == "mc" else None
    for _ in range(3):   # seen again: a route is kept for this signature
        v = fastvae.elbo(x, recon, mu, lv, kl=kl, z=z, backend=backend)
        assert not v.requires_grad
    leaves = [t.clone().requires_grad_() for t in (recon, mu, lv)]
    if z is not None:
        leaves.append(z.clone().requires_grad_())
    wide = [t.double() for t in leaves]
    want = torch.autograd.grad(
        fastvae.elbo(x.double(), *wide[:3], kl=kl, z=None if z is None else wide[3],
                     backend="reference"), leaves)
    for _ in range(2):
        v = fastvae.elbo(x, *leaves[:3], kl=kl, z=None if z is None else leaves[3],
                         backend=backend)
        got = torch.autograd.grad(v, leaves)
        for g, w in zip(got, want):
            torch.testing.assert_close(g.double(), w.double(), rtol=1e-5, atol=1e-6)


def test_sample_with_kl_gradients_after_calls_that_needed_none(backend):
    _, _, mu, lv, pm = _inputs()
    for _ in range(3):
        z, kl = fastvae.sample_with_kl(mu, lv, pm, None, backend=backend)
        assert not z.requires_grad and not kl.requires_grad
    leaves = [t.clone().requires_grad_() for t in (mu, lv, pm)]
    for _ in range(2):
        z, kl = fastvae.sample_with_kl(*leaves, None, backend=backend)
        g_mu, g_lv, g_pm = torch.autograd.grad(kl.sum() + z.sum(), leaves)
        # d(KL + z)/dmu = (mu - pm) + 1; dKL/dpm = -(mu - pm); dKL/dlv = 0.5 (e^lv - 1)
        # plus dz/dlv = 0.5 (z - mu)
        d = (mu - pm).double()
        torch.testing.assert_close(g_mu.double(), d + 1, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g_pm.double(), -d, rtol=1e-5, atol=1e-6)
        want_lv = 0.5 * (lv.double().exp() - 1) + 0.5 * (z.detach() - mu).double()
        torch.testing.assert_close(g_lv.double(), want_lv, rtol=1e-5, atol=1e-5)
