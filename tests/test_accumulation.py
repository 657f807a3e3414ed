"""Sums over many terms on the torch backend stay near eager float32's accuracy: the IWAE
weights and reparameterize's backward over K samples, and a shared (D,) obs_logvar's
gradient over many row chunks, where a float32 running sum's error would grow with K or B
to 10-400x eager's (the oracle: the reference in float64)."""
import pytest
import torch

import fastvae
from fastvae.backends.torch_backend import rows as torch_rows


def _rel(a, b):
    return float((a.double() - b).abs().max() / b.abs().max())


def test_iwae_gradients_over_many_samples():
    """K = 20000: torch.softmax over dim 0 sums its weights in order (to 1 +- 3e-6 at
    K = 5000), which every gradient would carry: 4e-5 here against eager's 2e-7."""
    g = torch.Generator().manual_seed(0)
    k, b, d, l = 20000, 2, 4, 3
    x = torch.rand(b, d, generator=g).round()
    mu, lv = torch.randn(b, l, generator=g) * 0.5, torch.randn(b, l, generator=g) * 0.3 - 1
    z_k = mu + (0.5 * lv).exp() * torch.randn(k, b, l, generator=g)
    recon_k = torch.randn(b, d, generator=g) * 2 + 0.05 * torch.randn(k, b, d, generator=g)
    grads = {}
    for backend, dt in (("torch", torch.float32), ("reference", torch.float64)):
        ins = [t.to(dt, copy=True).requires_grad_() for t in (x, recon_k, mu, lv, z_k)]
        fastvae.iwae_bound(*ins, reduction="sum", backend=backend).backward()
        grads[backend] = [t.grad for t in ins]
    for name, got, want in zip(("x", "recon_k", "mu", "logvar", "z_k"), grads["torch"],
                               grads["reference"]):
        assert _rel(got, want) < 1e-6, name


@pytest.mark.parametrize("shape", ["(D,)", "(1, D)"])
def test_a_shared_obs_logvar_gradient_over_many_row_chunks(monkeypatch, shape):
    """The rows in 2500 chunks (the chunk size made small, the same code as B = 2500 x
    2^17 / D): the chunks' sums of d/dobs_logvar added up in float32 would be 6e-7 off."""
    monkeypatch.setattr(torch_rows, "CHUNK_ELEMS", 32)
    g = torch.Generator().manual_seed(1)
    b, d = 20000, 4
    x, r = torch.rand(b, d, generator=g), torch.rand(b, d, generator=g)
    mu, lv = torch.randn(b, 2, generator=g), torch.randn(b, 2, generator=g)
    obs = torch.randn(d if shape == "(D,)" else (1, d), generator=g) * 0.3
    grads = {}
    for backend, dt in (("torch", torch.float32), ("reference", torch.float64)):
        o = obs.to(dt, copy=True).requires_grad_()
        fastvae.elbo(x.to(dt), r.to(dt), mu.to(dt), lv.to(dt), likelihood="gaussian",
                     obs_logvar=o, reduction="sum", backend=backend).backward()
        grads[backend] = o.grad
    assert _rel(grads["torch"], grads["reference"]) < 3e-7


@pytest.mark.parametrize("k", [65, 5000])
@pytest.mark.parametrize("mu_grad", [True, False])
def test_reparameterize_gradients_over_many_samples(k, mu_grad):
    """The C backward sums dz_k and dz_k eps_k over blocks of samples, the blocks in float64
    (one float32 sum over every sample: 1.2e-6 off at K = 5000, eager 2e-7). eps is
    recovered from z: the blocks draw the forward's noise."""
    g = torch.Generator().manual_seed(2)
    b, l = 4, 64
    mu = torch.randn(b, l, generator=g).requires_grad_(mu_grad)
    lv = (torch.randn(b, l, generator=g) * 0.5).requires_grad_()
    z = fastvae.reparameterize(mu, lv, n_samples=k, generator=g, backend="torch")
    dz = torch.rand(k, b, l, generator=g) + 0.1
    z.backward(dz)
    eps = (z.detach().double() - mu.detach().double()) * torch.exp(-0.5 * lv.detach().double())
    want_lv = 0.5 * torch.exp(0.5 * lv.detach().double()) * (dz.double() * eps).sum(0)
    assert _rel(lv.grad, want_lv) < 5e-7
    if mu_grad:
        assert _rel(mu.grad, dz.double().sum(0)) < 5e-7
    else:
        assert mu.grad is None


@pytest.mark.parametrize("k", [64, 65, 128])
def test_reparameterize_backward_without_d_mu_is_the_same_d_logvar(k):
    """The C backward's blocks with no d_mu to write (the op asks for it whenever it has
    samples: called directly here) give d_logvar bit for bit as with it."""
    from fastvae.backends.torch_backend import gaussian_rows, native
    if native.load() is None:
        pytest.skip("the C kernels are unavailable")
    g = torch.Generator().manual_seed(3)
    b, l = 3, 40
    lv = torch.randn(b, l, generator=g) * 0.5
    dz = torch.randn(k, b, l, generator=g)
    seed = torch.tensor([12345], dtype=torch.int64)
    d_mu, with_mu, without = torch.empty(b, l), torch.empty(b, l), torch.empty(b, l)
    assert gaussian_rows.sample_bwd_rows(dz, lv, seed, k, d_mu, with_mu)
    assert gaussian_rows.sample_bwd_rows(dz, lv, seed, k, None, without)
    assert torch.equal(with_mu, without)
    assert _rel(d_mu, dz.double().sum(0)) < 3e-7


@pytest.mark.parametrize("shape", ["(D,)", "(B, D)"])
def test_iwae_obs_logvar_gradient_over_many_samples(shape):
    """K = 20000: each sample's weighted d/dobs_logvar summed over K in float64; a float32
    running sum in sample order was 2e-6 off ((D,): 350x eager's 6e-9, (B, D): 20x)."""
    g = torch.Generator().manual_seed(4)
    k, b, d, l = 20000, 2, 4, 3
    x = torch.rand(b, d, generator=g)
    mu, lv = torch.randn(b, l, generator=g) * 0.5, torch.randn(b, l, generator=g) * 0.3 - 1
    z_k = mu + (0.5 * lv).exp() * torch.randn(k, b, l, generator=g)
    recon_k = x + 0.05 * torch.randn(k, b, d, generator=g)
    obs = torch.randn(d if shape == "(D,)" else (b, d), generator=g) * 0.3 - 3
    grads = {}
    for backend, dt in (("torch", torch.float32), ("reference", torch.float64)):
        o = obs.to(dt, copy=True).requires_grad_()
        fastvae.iwae_bound(x.to(dt), recon_k.to(dt), mu.to(dt), lv.to(dt), z_k.to(dt),
                           likelihood="gaussian", obs_logvar=o, reduction="sum",
                           backend=backend).backward()
        grads[backend] = o.grad
    assert _rel(grads["torch"], grads["reference"]) < 3e-7
