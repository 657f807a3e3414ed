"""fastvae.reparameterize: formula, gradients, statistics of the draws, seeding, errors."""
from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

import fastvae
import _formulas as F

BACKENDS = ["torch", "reference"]
F64 = torch.float64


def latents(b, l, dtype=F64, grad=True):
    mu = torch.randn(b, l, dtype=dtype) * 2
    lv = torch.randn(b, l, dtype=dtype)
    return (F.leaf(mu), F.leaf(lv)) if grad else (mu, lv)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_samples", [None, 1, 3])
@pytest.mark.parametrize("b,l", [(1, 1), (7, 5), (4, 1003)])
def test_shape_formula_and_gradients(seed, backend, n_samples, b, l):
    mu, lv = latents(b, l)
    z = fastvae.reparameterize(mu, lv, n_samples=n_samples, backend=backend)
    assert fastvae.last_backend() == backend
    want_shape = (b, l) if n_samples is None else (n_samples, b, l)
    assert z.shape == want_shape and z.dtype == F64
    # z = mu + exp(0.5 logvar) * eps: recover eps, then check both gradient formulas
    eps = ((z - mu) * torch.exp(-0.5 * lv)).detach()
    F.assert_close(z, mu + torch.exp(0.5 * lv) * eps, 1e-14, scale=1.0)
    dz = torch.randn(want_shape, dtype=F64)
    gmu, glv = torch.autograd.grad(z, [mu, lv], dz)
    lead = tuple(range(dz.dim() - 2))
    want_mu = dz.sum(lead) if lead else dz
    want_lv = dz * 0.5 * torch.exp(0.5 * lv.detach()) * eps
    want_lv = want_lv.sum(lead) if lead else want_lv
    F.assert_close(gmu, want_mu, 1e-14, scale=1.0, what="dmu")
    F.assert_close(glv, want_lv, 1e-12, scale=1.0, what="dlogvar")


@pytest.mark.parametrize("n_samples", [None, 2])
def test_gradcheck(n_samples):
    mu, lv = latents(3, 4)

    def fn(m, v):  # re-seeded, so every evaluation draws the same eps
        g = torch.Generator().manual_seed(7)
        return fastvae.reparameterize(m, v, n_samples=n_samples, generator=g, backend="torch")

    assert torch.autograd.gradcheck(fn, (mu, lv))
    # only one input requiring grad
    assert torch.autograd.gradcheck(lambda v: fn(mu.detach(), v), (lv,))
    assert torch.autograd.gradcheck(lambda m: fn(m, lv.detach()), (mu,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_statistics_of_a_million_draws(seed, backend):
    """Standardized draws are N(0, 1): moments and a Kolmogorov-Smirnov test on 10^6 values;
    the K samples and the rows are independent."""
    b, l, k = 1000, 250, 4  # 10^6 draws
    mu = torch.randn(b, l) * 3
    lv = torch.randn(b, l) * 2
    z = fastvae.reparameterize(mu, lv, n_samples=k, backend=backend)
    eps = ((z.double() - mu.double()) * torch.exp(-0.5 * lv.double()))
    flat = eps.flatten()
    n = flat.numel()
    assert n == 10**6
    se = 1 / math.sqrt(n)
    assert abs(flat.mean().item()) < 5 * se
    assert abs(flat.var().item() - 1) < 5 * math.sqrt(2) * se
    assert abs(stats.skew(flat.numpy())) < 5 * math.sqrt(6) * se
    assert abs(stats.kurtosis(flat.numpy())) < 5 * math.sqrt(24) * se
    p = stats.kstest(flat.numpy(), "norm").pvalue
    assert p > 1e-5, f"KS test rejects N(0,1): p = {p}"
    # independence: correlation between samples k, k+1 and between neighbouring rows
    c_k = torch.corrcoef(torch.stack([eps[0].flatten(), eps[1].flatten()]))[0, 1].item()
    c_b = torch.corrcoef(torch.stack([eps[0, :-1].flatten(), eps[0, 1:].flatten()]))[0, 1].item()
    se_c = 1 / math.sqrt(b * l)
    assert abs(c_k) < 6 * se_c and abs(c_b) < 6 * se_c
    # the mean and variance really are mu and exp(logvar): per-element over the K axis is
    # too few draws, so check the pooled standardized moments per latent column instead
    col_means = eps.mean((0, 1))
    assert col_means.abs().max().item() < 6 / math.sqrt(b * k)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scalar_mean_and_variance(seed, backend):
    """A single (mu, logvar) repeated: the sample mean and variance are mu and exp(logvar)."""
    mu = torch.full((200_000, 1), 1.5, dtype=F64)
    lv = torch.full((200_000, 1), math.log(0.25), dtype=F64)
    z = fastvae.reparameterize(mu, lv, backend=backend).flatten()
    assert abs(z.mean().item() - 1.5) < 6 * 0.5 / math.sqrt(2e5)
    assert abs(z.var().item() - 0.25) < 6 * 0.25 * math.sqrt(2 / 2e5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_samples", [None, 3])
def test_manual_seed_reproducible(backend, n_samples):
    mu, lv = latents(5, 7, grad=False)
    torch.manual_seed(1234)
    z1 = fastvae.reparameterize(mu, lv, n_samples=n_samples, backend=backend)
    z2 = fastvae.reparameterize(mu, lv, n_samples=n_samples, backend=backend)
    torch.manual_seed(1234)
    z3 = fastvae.reparameterize(mu, lv, n_samples=n_samples, backend=backend)
    assert torch.equal(z1, z3)
    assert not torch.equal(z1, z2)  # the global generator advanced
    if n_samples:
        assert not torch.equal(z1[0], z1[1])  # K independent samples, not one repeated


@pytest.mark.parametrize("backend", BACKENDS)
def test_generator_is_honoured(backend):
    mu, lv = latents(6, 3, grad=False)
    g1 = torch.Generator().manual_seed(99)
    g2 = torch.Generator().manual_seed(99)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = fastvae.reparameterize(mu, lv, generator=g1, backend=backend)
    b = fastvae.reparameterize(mu, lv, generator=g2, backend=backend)
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is untouched
    c = fastvae.reparameterize(mu, lv, generator=g1, backend=backend)
    assert not torch.equal(a, c)  # and the passed one advanced
    g3 = torch.Generator().manual_seed(100)
    assert not torch.equal(a, fastvae.reparameterize(mu, lv, generator=g3, backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision(seed, backend, dtype):
    mu, lv = latents(64, 33, dtype=dtype)
    z = fastvae.reparameterize(mu, lv, n_samples=2, backend=backend)
    assert z.dtype == dtype and torch.isfinite(z).all()
    z.float().sum().backward()
    assert mu.grad.dtype == dtype and lv.grad.dtype == dtype
    F.assert_close(mu.grad, torch.full_like(mu.grad, 2.0), 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_layouts(seed, backend):
    mu, lv = latents(0, 3)
    z = fastvae.reparameterize(mu, lv, n_samples=2, backend=backend)
    assert z.shape == (2, 0, 3)
    z.sum().backward()
    assert mu.grad.shape == (0, 3)
    # non-contiguous and expanded latents: same formula
    m = F.leaf(torch.randn(1, 4, dtype=F64))
    v = torch.randn(4, 5, dtype=F64).t()
    g = torch.Generator().manual_seed(3)
    z = fastvae.reparameterize(m.expand(5, 4), v, generator=g, backend=backend)
    g = torch.Generator().manual_seed(3)
    z2 = fastvae.reparameterize(m.expand(5, 4).contiguous(), v.contiguous(), generator=g, backend=backend)
    assert torch.equal(z, z2)
    z.sum().backward()
    assert torch.equal(m.grad, torch.full((1, 4), 5.0, dtype=F64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_errors(backend):
    mu, lv = latents(3, 2, grad=False)
    with pytest.raises(ValueError, match=r"n_samples must be >= 1, got 0"):
        fastvae.reparameterize(mu, lv, n_samples=0, backend=backend)
    with pytest.raises(ValueError, match="n_samples"):
        fastvae.reparameterize(mu, lv, n_samples=-2, backend=backend)
    for bad in (2.5, "2", True):
        with pytest.raises(TypeError, match="n_samples"):
            fastvae.reparameterize(mu, lv, n_samples=bad, backend=backend)
    with pytest.raises(TypeError, match="generator must be a torch.Generator, got int"):
        fastvae.reparameterize(mu, lv, generator=0, backend=backend)
    with pytest.raises(TypeError, match=r"mu and logvar must share a dtype.*float64.*float32"):
        fastvae.reparameterize(mu, lv.float(), backend=backend)
    with pytest.raises(ValueError, match=r"logvar must have mu's shape \(3, 2\), got \(3, 1\)"):
        fastvae.reparameterize(mu, lv[:, :1], backend=backend)
    with pytest.raises(ValueError, match=r"mu must be 2-D .*got shape \(3,\)"):
        fastvae.reparameterize(mu[:, 0], lv[:, 0], backend=backend)
    with pytest.raises(TypeError, match=r"mu must be a floating-point tensor, got dtype torch.int64"):
        fastvae.reparameterize(mu.long(), lv, backend=backend)
    with pytest.raises(TypeError, match=r"logvar must be a torch.Tensor, got list"):
        fastvae.reparameterize(mu, [[0.0, 0.0]] * 3, backend=backend)
    with pytest.raises(ValueError, match="backend must be one of"):
        fastvae.reparameterize(mu, lv, backend="cuda")


def test_generator_device_mismatch():
    mu = torch.zeros(2, 3, device="meta")
    with pytest.raises(ValueError, match=r"generator is on cpu, tensors on meta"):
        fastvae.reparameterize(mu, mu, generator=torch.Generator(), backend="reference")
    with pytest.raises(ValueError, match=r"one device.*mu on cpu.*logvar on meta"):
        fastvae.reparameterize(torch.zeros(2, 3), mu, backend="reference")


def test_numpy_integer_n_samples():
    """A careful user passes numpy ints for counts (e.g. from a config array)."""
    np = pytest.importorskip("numpy")
    mu, lv = latents(2, 3, grad=False)
    assert fastvae.reparameterize(mu, lv, n_samples=np.int64(3)).shape == (3, 2, 3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_samples", [None, 2])
def test_double_backward(backend, n_samples):
    """create_graph=True (gradient penalties): the first gradient must carry a correct graph
    (or make any use of it raise); silently dropping it is the failure. True second
    derivative: d/dlogvar of sum(dz * 0.5 * std * eps) = sum(dz * 0.25 * std * eps)."""
    mu, lv = latents(3, 2)
    g = torch.Generator().manual_seed(5)
    z = fastvae.reparameterize(mu, lv, n_samples=n_samples, generator=g, backend=backend)
    dz = torch.randn(z.shape, dtype=F64)
    (glv,) = torch.autograd.grad(z, lv, dz, create_graph=True)
    assert glv.requires_grad, "dlogvar lost its graph: a penalty on it would be silently ignored"
    try:
        (h,) = torch.autograd.grad(glv.sum(), lv)
    except RuntimeError:
        return  # raising is acceptable
    eps = ((z - mu) * torch.exp(-0.5 * lv)).detach()
    want = dz * 0.25 * torch.exp(0.5 * lv.detach()) * eps
    want = want.sum(0) if n_samples else want
    F.assert_close(h, want, 1e-12, scale=1.0)
