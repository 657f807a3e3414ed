"""fastvae.iwae_bound against a brute-force float64 logsumexp, K=1 == MC ELBO, softmax
gradient weights, monotonicity in K on a toy model with a known log p(x)."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastvae
import _formulas as F

BACKENDS = ["torch", "reference"]
LIKELIHOODS = ["bernoulli", "gaussian", "continuous_bernoulli"]
REDUCTIONS = ["none", "mean", "sum"]
F64 = torch.float64


def make(k, b, data_shape, l, dtype=F64):
    x = torch.rand(b, *data_shape, dtype=dtype)
    recon_k = torch.randn(k, b, *data_shape, dtype=dtype) * 2
    mu = torch.randn(b, l, dtype=dtype)
    lv = torch.randn(b, l, dtype=dtype) * 0.5
    z_k = mu + torch.exp(0.5 * lv) * torch.randn(k, b, l, dtype=dtype)
    return [F.leaf(t) for t in (x, recon_k, mu, lv, z_k)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("sizes", [(1, 1, (1,), 1), (3, 4, (1003,), 5), (5, 2, (2, 3, 3), 3)],
                         ids=["K1B1D1L1", "D1003", "image"])
def test_matches_bruteforce_fp64(seed, backend, likelihood, reduction, sizes):
    k, b, shape, l = sizes
    x, recon_k, mu, lv, z_k = make(k, b, shape, l)
    obs = F.leaf(torch.randn(shape, dtype=F64) * 0.3) if likelihood == "gaussian" else 0.0
    got = fastvae.iwae_bound(x, recon_k, mu, lv, z_k, likelihood=likelihood, obs_logvar=obs,
                             reduction=reduction, backend=backend)
    assert fastvae.last_backend() == backend
    want = F.iwae(x, recon_k, mu, lv, z_k, likelihood=likelihood, obs_logvar=obs, reduction=reduction)
    assert got.shape == want.shape == ((b,) if reduction == "none" else ())
    assert got.dtype == F64
    scale = 5.0 * (x.numel() + mu.numel()) / b * (b if reduction == "sum" else 1)
    F.assert_close(got, want, 1e-10, scale=scale, what="value")
    ins = [x, recon_k, mu, lv, z_k] + ([obs] if isinstance(obs, torch.Tensor) else [])
    w = torch.rand(got.shape, dtype=F64) + 0.5
    names = ["x", "recon_k", "mu", "logvar", "z_k", "obs_logvar"]
    for g, e, name in zip(F.grads(got, ins, w), F.grads(want, ins, w), names):
        assert g.shape == e.shape, name
        F.assert_close(g, e, 1e-10, scale=e.abs().max() + 1e-3, what=f"d/d{name}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_default_reduction_is_none(seed, backend):
    x, recon_k, mu, lv, z_k = make(2, 3, (4,), 2)
    assert fastvae.iwae_bound(x, recon_k, mu, lv, z_k, backend=backend).shape == (3,)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_k1_is_the_mc_elbo(seed, backend, likelihood, reduction):
    x, recon_k, mu, lv, z_k = make(1, 5, (7,), 3)
    obs = -0.2 if likelihood == "gaussian" else 0.0
    iw = fastvae.iwae_bound(x, recon_k, mu, lv, z_k, likelihood=likelihood, obs_logvar=obs,
                            reduction=reduction, backend=backend)
    el = fastvae.elbo(x, recon_k[0], mu, lv, kl="mc", z=z_k[0], likelihood=likelihood,
                      obs_logvar=obs, reduction=reduction, backend=backend)
    F.assert_close(iw, el, 1e-12, scale=10.0)
    ins = [x, recon_k, mu, lv, z_k]
    for g1, g2 in zip(F.grads(iw, ins), F.grads(el, ins)):
        F.assert_close(g1, g2, 1e-12, scale=1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_weights_are_softmax(seed, backend):
    """d L_K / d recon_k[k] = softmax_k(log w)_k * d log p(x|z_k) / d recon_k[k]."""
    x, recon_k, mu, lv, z_k = make(6, 4, (5,), 2)
    v = fastvae.iwae_bound(x, recon_k, mu, lv, z_k, reduction="sum", backend=backend)
    (g,) = torch.autograd.grad(v, recon_k)
    with torch.no_grad():
        log_w = F.log_likelihood(x, recon_k, "bernoulli") - F.kl_mc_dim(z_k, mu, lv).sum(-1)
        wts = torch.softmax(log_w, 0)  # (K, B)
        per_sample_grad = x - torch.sigmoid(recon_k)  # d log p(x|z_k) / d logits
    F.assert_close(g, wts.unsqueeze(-1) * per_sample_grad, 1e-12, scale=1e-3)
    # and the z_k gradient is -softmax weight * d(log q - log p)/dz
    (gz,) = torch.autograd.grad(fastvae.iwae_bound(x, recon_k, mu, lv, z_k, reduction="sum",
                                                   backend=backend), z_k)
    with torch.no_grad():
        dkl = z_k - (z_k - mu) * torch.exp(-lv)
    F.assert_close(gz, -wts.unsqueeze(-1) * dkl, 1e-12, scale=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bound_tightens_with_k_on_a_toy_model(seed, backend):
    """p(z) = N(0,1), p(x|z) = N(z, 1): log p(x) = log N(x; 0, 2) exactly. With a poor q the
    bound increases with K in expectation and approaches log p(x) from below."""
    x0 = 1.3
    b = 4000  # independent replicas of the same x, averaged
    x = torch.full((b, 1), x0, dtype=F64)
    mu = torch.full((b, 1), -0.5, dtype=F64)  # exact posterior: N(x/2, 1/2)
    lv = torch.full((b, 1), math.log(1.5), dtype=F64)
    log_px = -0.5 * (x0 ** 2 / 2 + math.log(2) + math.log(2 * math.pi))
    means = {}
    for k in (1, 4, 32, 256):
        z_k = fastvae.reparameterize(mu, lv, n_samples=k, backend=backend)
        v = fastvae.iwae_bound(x, z_k, mu, lv, z_k, likelihood="gaussian", backend=backend)
        means[k] = (v.mean().item(), v.std().item() / math.sqrt(b))
    ks = sorted(means)
    for k1, k2 in zip(ks, ks[1:]):
        (m1, s1), (m2, s2) = means[k1], means[k2]
        assert m2 > m1 - 3 * math.hypot(s1, s2), means
    assert means[1][0] < log_px - 0.1  # the poor q leaves a real gap at K = 1 ...
    m, s = means[256]
    assert m <= log_px + 4 * s and abs(m - log_px) < 0.02, (m, log_px)  # ... which K closes
    # exact-posterior q makes every log w equal log p(x): the bound is tight for any K
    mu_star = torch.full((3, 1), x0 / 2, dtype=F64)
    lv_star = torch.full((3, 1), math.log(0.5), dtype=F64)
    z_k = fastvae.reparameterize(mu_star, lv_star, n_samples=5, backend=backend)
    v = fastvae.iwae_bound(x[:3], z_k, mu_star, lv_star, z_k, likelihood="gaussian", backend=backend)
    F.assert_close(v, torch.full_like(v, log_px), 1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_gradcheck(seed, reduction, likelihood):
    x, recon_k, mu, lv, z_k = make(3, 2, (3,), 2)
    ins = [x, recon_k, mu, lv, z_k]
    if likelihood == "gaussian":
        ins.append(F.leaf(torch.randn(3, dtype=F64) * 0.3))

    def fn(*a):
        return fastvae.iwae_bound(*a[:5], likelihood=likelihood, reduction=reduction,
                                  obs_logvar=a[5] if likelihood == "gaussian" else 0.0,
                                  backend="torch")

    assert torch.autograd.gradcheck(fn, tuple(ins))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision(seed, backend, dtype):
    x, recon_k, mu, lv, z_k = (t.detach().to(dtype).requires_grad_() for t in make(4, 8, (30,), 3))
    v = fastvae.iwae_bound(x, recon_k, mu, lv, z_k, reduction="mean", backend=backend)
    assert v.dtype == torch.float32
    want = F.iwae(x, recon_k, mu, lv, z_k, reduction="mean")
    F.assert_close(v, want, 1e-5, scale=30.0)
    v.backward()
    assert recon_k.grad.dtype == dtype and z_k.grad.dtype == dtype and mu.grad.dtype == dtype


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_log_weights_stay_finite(backend):
    """logsumexp must be stable: log w of -1e4 and widely spread weights."""
    x = torch.ones(2, 50, dtype=F64)
    recon_k = torch.full((3, 2, 50), -200.0, dtype=F64)  # log p(x|z) ~ -1e4
    recon_k[1] = 300.0
    recon_k = recon_k.requires_grad_()
    mu = torch.zeros(2, 2, dtype=F64)
    z_k = torch.zeros(3, 2, 2, dtype=F64)
    v = fastvae.iwae_bound(x, recon_k, mu, mu, z_k, backend=backend)
    want = F.iwae(x, recon_k, mu, mu, z_k)
    assert torch.isfinite(v).all()
    F.assert_close(v, want, 1e-12)
    v.sum().backward()
    assert torch.isfinite(recon_k.grad).all()
    assert torch.all(recon_k.grad[0] == 0) or recon_k.grad[0].abs().max() < 1e-300


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch(backend, reduction):
    x, recon_k, mu, lv, z_k = make(3, 0, (4,), 2)
    v = fastvae.iwae_bound(x, recon_k, mu, lv, z_k, reduction=reduction, backend=backend)
    assert v.shape == ((0,) if reduction == "none" else ())
    if reduction != "none":
        assert v.item() == 0.0
    v.sum().backward()
    assert recon_k.grad is not None and recon_k.grad.shape == recon_k.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous_and_expanded(seed, backend):
    x, recon_k, mu, lv, z_k = make(3, 4, (6,), 2)
    xe = x[:1].detach().expand(4, 6)
    rt = recon_k.detach().transpose(0, 1).contiguous().transpose(0, 1)  # (K, B, D), permuted strides
    a = fastvae.iwae_bound(xe, rt, mu, lv, z_k, backend=backend)
    b = fastvae.iwae_bound(xe.contiguous(), rt.contiguous(), mu, lv, z_k, backend=backend)
    F.assert_close(a, b, 1e-13)


def test_errors():
    x, recon_k, mu, lv, z_k = make(3, 2, (4,), 2)
    with pytest.raises(ValueError, match=r"z_k must have shape \(K, 2, 2\) with K >= 1, got \(2, 2\)"):
        fastvae.iwae_bound(x, recon_k, mu, lv, z_k[0])
    with pytest.raises(ValueError, match=r"z_k must have shape .*got \(0, 2, 2\)"):
        fastvae.iwae_bound(x, recon_k[:0], mu, lv, z_k[:0])
    with pytest.raises(ValueError, match=r"recon_k must have shape \(3, 2, 4\).*got \(2, 2, 4\)"):
        fastvae.iwae_bound(x, recon_k[:2], mu, lv, z_k)
    with pytest.raises(ValueError, match=r"recon_k must have shape \(3, 2, 4\).*got \(2, 4\)"):
        fastvae.iwae_bound(x, recon_k[0], mu, lv, z_k)
    with pytest.raises(ValueError, match="reduction must be one of"):
        fastvae.iwae_bound(x, recon_k, mu, lv, z_k, reduction="avg")
    with pytest.raises(ValueError, match="likelihood must be one of"):
        fastvae.iwae_bound(x, recon_k, mu, lv, z_k, likelihood="poisson")
    with pytest.raises(ValueError, match="obs_logvar is only used with likelihood='gaussian'"):
        fastvae.iwae_bound(x, recon_k, mu, lv, z_k, obs_logvar=1.0)
    with pytest.raises(TypeError, match="z_k must be a floating-point tensor"):
        fastvae.iwae_bound(x, recon_k, mu, lv, z_k.long())
    with pytest.raises(ValueError, match=r"one device"):
        fastvae.iwae_bound(x, recon_k, mu, lv, z_k.detach().to("meta"))


@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 6), b=st.integers(0, 6), d=st.integers(1, 20), l=st.integers(1, 6),
       likelihood=st.sampled_from(LIKELIHOODS), reduction=st.sampled_from(REDUCTIONS),
       dtype=st.sampled_from([torch.float32, F64]), seed=st.integers(0, 2**31 - 1))
def test_property_torch_vs_reference(k, b, d, l, likelihood, reduction, dtype, seed):
    torch.manual_seed(seed)
    ins = [F.leaf(t.detach().to(dtype)) for t in make(k, b, (d,), l)]
    obs = 0.3 if likelihood == "gaussian" else 0.0
    a = fastvae.iwae_bound(*ins, likelihood=likelihood, obs_logvar=obs, reduction=reduction,
                           backend="torch")
    r = fastvae.iwae_bound(*ins, likelihood=likelihood, obs_logvar=obs, reduction=reduction,
                           backend="reference")
    want = F.iwae(*ins, likelihood=likelihood, obs_logvar=obs, reduction=reduction)
    tol = F.TOL[dtype]
    scale = 5.0 * (d + l) * (max(b, 1) if reduction == "sum" else 1)
    F.assert_close(a, want, tol, scale=scale)
    F.assert_close(r, want, tol, scale=scale)
    if a.numel():
        for g1, g2, e in zip(F.grads(a, ins), F.grads(r, ins), F.grads(want, ins)):
            s = (e.abs().max() if e.numel() else 0.0) + 1
            F.assert_close(g1, e, tol, scale=s)
            F.assert_close(g2, e, tol, scale=s)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["float", "0-d", "(D,)", "full", "per-sample", "channel"])
def test_gaussian_obs_logvar_layouts(seed, backend, reduction, kind):
    k, b = 3, 4
    x, recon_k, mu, lv, z_k = make(k, b, (2, 3, 3), 2)
    obs = {"float": 0.3, "0-d": torch.tensor(-0.2, dtype=F64), "(D,)": torch.randn(2, 3, 3, dtype=F64),
           "full": torch.randn(b, 2, 3, 3, dtype=F64), "per-sample": torch.randn(b, 1, 1, 1, dtype=F64),
           "channel": torch.randn(2, 1, 1, dtype=F64)}[kind]
    if isinstance(obs, torch.Tensor):
        obs = F.leaf(obs * 0.5)
    got = fastvae.iwae_bound(x, recon_k, mu, lv, z_k, likelihood="gaussian", obs_logvar=obs,
                             reduction=reduction, backend=backend)
    want = F.iwae(x, recon_k, mu, lv, z_k, likelihood="gaussian", obs_logvar=obs, reduction=reduction)
    F.assert_close(got, want, 1e-10, scale=100.0)
    ins = [x, recon_k, mu, lv, z_k] + ([obs] if isinstance(obs, torch.Tensor) else [])
    w = torch.rand(got.shape, dtype=F64) + 0.5
    for g, e in zip(F.grads(got, ins, w), F.grads(want, ins, w)):
        assert g.shape == e.shape
        F.assert_close(g, e, 1e-10, scale=e.abs().max() + 1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_many_rows(seed, dtype):
    k, b, d, l = 3, 16, 1003, 8
    ins = [F.leaf(t.detach().to(dtype)) for t in make(k, b, (d,), l)]
    for likelihood in LIKELIHOODS:
        got = fastvae.iwae_bound(*ins, likelihood=likelihood, reduction="none", backend="torch")
        want = F.iwae(*ins, likelihood=likelihood, reduction="none")
        F.assert_close(got, want, F.TOL[dtype], scale=3.0 * d)
        # The softmax weights are as exact as log w's absolute error allows: a fp32 sum of
        # ~D terms of size ~3 is good to ~eps * 3D, and that is the gradients' relative error.
        gtol = 1e-10 if dtype == F64 else 4 * torch.finfo(dtype).eps * 3 * d
        for g, e in zip(F.grads(got, ins), F.grads(want, ins)):
            F.assert_close(g, e, gtol, scale=e.abs().max() + 1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_usage_through_reparameterize(seed, backend):
    """z_k = reparameterize(mu, logvar, K), recon_k = decoder(z_k): the gradient w.r.t. the
    encoder outputs includes the paths through z_k and recon_k, as the formula on the same eps."""
    k, b, l, d = 5, 4, 3, 8
    x = torch.rand(b, d, dtype=F64)
    w_dec = torch.randn(l, d, dtype=F64)
    mu, lv = F.leaf(torch.randn(b, l, dtype=F64)), F.leaf(torch.randn(b, l, dtype=F64) * 0.3)
    z_k = fastvae.reparameterize(mu, lv, n_samples=k, generator=torch.Generator().manual_seed(11),
                                 backend=backend)
    v = fastvae.iwae_bound(x, z_k @ w_dec, mu, lv, z_k, reduction="mean", backend=backend)
    eps = torch.randn(k, b, l, generator=torch.Generator().manual_seed(11), dtype=F64)
    m2, l2 = F.leaf(mu), F.leaf(lv)
    z2 = m2 + torch.exp(0.5 * l2) * eps
    want = F.iwae(x, z2 @ w_dec, m2, l2, z2, reduction="mean")
    F.assert_close(v, want, 1e-12, scale=10.0)
    v.backward()
    want.backward()
    F.assert_close(mu.grad, m2.grad, 1e-11, scale=1.0)
    F.assert_close(lv.grad, l2.grad, 1e-11, scale=1.0)
