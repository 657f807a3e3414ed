"""fastvae.iwae_bound on every backend (the ``backend`` fixture): values and gradients
against a brute-force float64 logsumexp (tests/_formulas.py) for every likelihood,
obs_logvar layout and reduction, K = 1 (the MC ELBO) to past the one-pass kernel's
limit, odd sizes and layouts; the softmax gradient weights; the bound tightening with K
on a toy model with a known log p(x); gradcheck, empty batches, learned priors; errors.

Numerics (low precision, log-weights of -1e4 and beyond, the logits' whole range):
tests/test_iwae_bound_numerics.py; samples whose log w or gradients pass float32's
range: tests/test_iwae_bound_past_float32.py. Which Triton kernel runs (one pass or two)
and launch counts: tests/test_triton_backend.py, tests/test_triton_iwae_tiles.py.
Higher-order gradients: tests/test_higher_order.py.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastvae
import _formulas as F
from _backends import INTERPRET, bounded, case_dtype
from _compare import TOL, assert_close, grads, leaf
from _iwae import (F64, LIKELIHOODS, LIKES, REDUCTIONS, check, eager_fp32, grad_rtol, make,
                   make_like)


# -- values and gradients vs the brute-force formula ------------------------------------------

@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("sizes", [(1, 1, (1,), 1), (3, 4, (1003,), 5), (5, 2, (2, 3, 3), 3)],
                         ids=["K1B1D1L1", "D1003", "image"])
def test_matches_bruteforce(seed, backend, likelihood, reduction, sizes):
    k, b, shape, l = sizes
    dt = case_dtype(backend)
    x, recon_k, mu, lv, z_k = make(k, b, shape, l, dt)
    obs = leaf(torch.randn(shape, dtype=dt) * 0.3) if likelihood == "gaussian" else 0.0
    got = fastvae.iwae_bound(x, recon_k, mu, lv, z_k, likelihood=likelihood, obs_logvar=obs,
                             reduction=reduction, backend=backend)
    assert fastvae.last_backend() == backend
    want = F.iwae(x, recon_k, mu, lv, z_k, likelihood=likelihood, obs_logvar=obs, reduction=reduction)
    assert got.shape == want.shape == ((b,) if reduction == "none" else ())
    assert got.dtype == (F64 if dt == F64 else torch.float32)
    scale = 5.0 * (x.numel() + mu.numel()) / b * (b if reduction == "sum" else 1)
    assert_close("value", got, want, dt, scale=scale)
    ins = [x, recon_k, mu, lv, z_k] + ([obs] if isinstance(obs, torch.Tensor) else [])
    w = torch.rand(got.shape, dtype=F64) + 0.5
    # fp32: the softmax weights carry log w's rounding (~eps * D), as in eager fp32
    eager_g = eager_fp32(ins, w, likelihood=likelihood, obs_logvar=obs,
                         reduction=reduction)[1] if dt != F64 else [None] * 6
    names = ["x", "recon_k", "mu", "logvar", "z_k", "obs_logvar"]
    for g, e, ee, name in zip(grads(got, ins, w), grads(want, ins, w), eager_g, names):
        assert g.shape == e.shape, name
        assert_close(f"d/d{name}", g, e, dt, rtol=grad_rtol(x[0].numel()),
                     scale=e.abs().max() + 1e-3, eager=ee)


# K <= 8: one pass on the Triton backend; K = 9: two passes
@pytest.mark.parametrize("k,like,reduction", list(itertools.product(
    [1, 4, 9], LIKES, REDUCTIONS)))
def test_every_option(seed, backend, k, like, reduction):
    check(backend, k, 3, 7, 5, like, reduction)


@pytest.mark.parametrize("k,b,d,l", [(2, 257, 784, 16), (1, 1, 1, 1), (5, 4, 1003, 3),
                                     (3, 2, 4100, 2), (50, 2, 30, 4), (2, 3, 7, 129)])
def test_odd_sizes(seed, backend, k, b, d, l):
    """Odd tails, D past one column block, K and L past the one-pass kernel's limits."""
    b, d, l, k = bounded(b=b, d=d, l=l, k=k)
    check(backend, k, b, d, l, "continuous_bernoulli" if d > 1000 else "bernoulli", "mean")


@pytest.mark.parametrize("like,reduction", [("gaussian_perdim", "mean"), ("bernoulli", "none"),
                                            ("gaussian_full", "sum")])
@pytest.mark.parametrize("k", [3, 9])
def test_strided_layouts(seed, backend, k, like, reduction):
    """Padded rows and samples interleaved per row (read in place, no copy)."""
    check(backend, k, 4, 33, 5, like, reduction, noncontig=True)


def test_noncontiguous_and_expanded(seed, backend):
    x, recon_k, mu, lv, z_k = make(3, 4, (6,), 2, case_dtype(backend))
    xe = x[:1].detach().expand(4, 6)
    rt = recon_k.detach().transpose(0, 1).contiguous().transpose(0, 1)  # (K, B, D), permuted strides
    a = fastvae.iwae_bound(xe, rt, mu, lv, z_k, backend=backend)
    b = fastvae.iwae_bound(xe.contiguous(), rt.contiguous(), mu, lv, z_k, backend=backend)
    assert_close("value", a, b, a.dtype, rtol={F64: 1e-13})


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["float", "0-d", "(D,)", "full", "per-sample", "channel"])
def test_gaussian_obs_logvar_layouts(seed, backend, reduction, kind):
    k, b = 3, 4
    dt = case_dtype(backend)
    x, recon_k, mu, lv, z_k = make(k, b, (2, 3, 3), 2, dt)
    obs = {"float": 0.3, "0-d": torch.tensor(-0.2, dtype=dt), "(D,)": torch.randn(2, 3, 3, dtype=dt),
           "full": torch.randn(b, 2, 3, 3, dtype=dt), "per-sample": torch.randn(b, 1, 1, 1, dtype=dt),
           "channel": torch.randn(2, 1, 1, dtype=dt)}[kind]
    if isinstance(obs, torch.Tensor):
        obs = leaf(obs * 0.5)
    got = fastvae.iwae_bound(x, recon_k, mu, lv, z_k, likelihood="gaussian", obs_logvar=obs,
                             reduction=reduction, backend=backend)
    want = F.iwae(x, recon_k, mu, lv, z_k, likelihood="gaussian", obs_logvar=obs, reduction=reduction)
    assert_close("value", got, want, dt, scale=100.0)
    ins = [x, recon_k, mu, lv, z_k] + ([obs] if isinstance(obs, torch.Tensor) else [])
    w = torch.rand(got.shape, dtype=F64) + 0.5
    for i, (g, e) in enumerate(zip(grads(got, ins, w), grads(want, ins, w))):
        assert g.shape == e.shape
        assert_close(f"grad {i}", g, e, dt, scale=e.abs().max() + 1e-3)


def test_default_reduction_is_none(seed, backend):
    x, recon_k, mu, lv, z_k = make(2, 3, (4,), 2, case_dtype(backend))
    assert fastvae.iwae_bound(x, recon_k, mu, lv, z_k, backend=backend).shape == (3,)


# -- what the bound is ---------------------------------------------------------------------

@pytest.mark.parametrize("like", LIKES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_k1_is_the_mc_elbo(seed, backend, like, reduction):
    (x, recon_k, mu, lv, z_k), obs, likelihood = make_like(1, 5, 7, 3, like, case_dtype(backend))
    dt = recon_k.dtype
    opts = dict(likelihood=likelihood, obs_logvar=obs, reduction=reduction, backend=backend)
    iw = fastvae.iwae_bound(x, recon_k, mu, lv, z_k, **opts)
    el = fastvae.elbo(x, recon_k[0], mu, lv, kl="mc", z=z_k[0], **opts)
    assert_close("K=1 bound vs MC ELBO", iw, el, dt, rtol={F64: 1e-12}, scale=10.0)
    ins = [x, recon_k, mu, lv, z_k] + ([obs] if isinstance(obs, torch.Tensor) else [])
    for i, (g1, g2) in enumerate(zip(grads(iw, ins), grads(el, ins))):
        assert_close(f"grad {i}", g1, g2, dt, rtol={F64: 1e-12}, scale=1.0)


def test_gradient_weights_are_softmax(seed, backend):
    """d L_K / d recon_k[k] = softmax_k(log w)_k * d log p(x|z_k) / d recon_k[k]."""
    dt = case_dtype(backend)
    x, recon_k, mu, lv, z_k = make(6, 4, (5,), 2, dt)
    v = fastvae.iwae_bound(x, recon_k, mu, lv, z_k, reduction="sum", backend=backend)
    g, gz = torch.autograd.grad(v, [recon_k, z_k])
    with torch.no_grad():
        x, recon_k, mu, lv, z_k = (t.double() for t in (x, recon_k, mu, lv, z_k))
        log_w = F.log_likelihood(x, recon_k, "bernoulli") - F.kl_mc_dim(z_k, mu, lv).sum(-1)
        wts = torch.softmax(log_w, 0)  # (K, B)
        per_sample_grad = x - torch.sigmoid(recon_k)  # d log p(x|z_k) / d logits
        # and the z_k gradient is -softmax weight * d(log q - log p)/dz
        dkl = z_k - (z_k - mu) * torch.exp(-lv)
    rtol = {F64: 1e-12}
    assert_close("d/drecon_k", g, wts.unsqueeze(-1) * per_sample_grad, dt, rtol=rtol)
    assert_close("d/dz_k", gz, -wts.unsqueeze(-1) * dkl, dt, rtol=rtol)


def test_bound_tightens_with_k_on_a_toy_model(seed, backend):
    """p(z) = N(0,1), p(x|z) = N(z, 1): log p(x) = log N(x; 0, 2) exactly. With a poor q the
    bound increases with K in expectation and approaches log p(x) from below."""
    dt = case_dtype(backend)
    x0 = 1.3
    ks = (1, 4, 32, 256)  # the closure below needs K = 256 ...
    b = 512 if INTERPRET else 4000  # ... so the interpreter averages fewer replicas of x
    x = torch.full((b, 1), x0, dtype=dt)
    mu = torch.full((b, 1), -0.5, dtype=dt)  # exact posterior: N(x/2, 1/2)
    lv = torch.full((b, 1), math.log(1.5), dtype=dt)
    log_px = -0.5 * (x0 ** 2 / 2 + math.log(2) + math.log(2 * math.pi))
    means = {}
    for k in ks:  # the draws from torch: the bound is under test here, not the sampler
        z_k = mu + torch.exp(0.5 * lv) * torch.randn(k, b, 1, dtype=dt)
        v = fastvae.iwae_bound(x, z_k, mu, lv, z_k, likelihood="gaussian", backend=backend)
        means[k] = (v.mean().item(), v.std().item() / math.sqrt(b))
    ks = sorted(means)
    for k1, k2 in zip(ks, ks[1:]):
        (m1, s1), (m2, s2) = means[k1], means[k2]
        assert m2 > m1 - 3 * math.hypot(s1, s2), means
    assert means[1][0] < log_px - 0.1  # the poor q leaves a real gap at K = 1 ...
    m, s = means[ks[-1]]
    assert m <= log_px + 4 * s and abs(m - log_px) < 0.02, (m, log_px)  # ... which K closes
    # exact-posterior q makes every log w equal log p(x): the bound is tight for any K
    mu_star = torch.full((3, 1), x0 / 2, dtype=dt)
    lv_star = torch.full((3, 1), math.log(0.5), dtype=dt)
    z_k = fastvae.reparameterize(mu_star, lv_star, n_samples=5, backend=backend)
    v = fastvae.iwae_bound(x[:3], z_k, mu_star, lv_star, z_k, likelihood="gaussian", backend=backend)
    assert_close("tight bound", v, torch.full_like(v, log_px, dtype=F64), dt, rtol={F64: 1e-12})


# -- plumbing ---------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_gradcheck(seed, backend, reduction, likelihood):
    """float64 finite differences (on "triton" the documented float64 path)."""
    ins = make(3, 2, (3,), 2)
    if likelihood == "gaussian":
        ins.append(leaf(torch.randn(3, dtype=F64) * 0.3))

    def fn(*a):
        return fastvae.iwae_bound(*a[:5], likelihood=likelihood, reduction=reduction,
                                  obs_logvar=a[5] if likelihood == "gaussian" else 0.0,
                                  backend=backend)

    assert torch.autograd.gradcheck(fn, tuple(ins))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch(backend, reduction):
    x, recon_k, mu, lv, z_k = make(3, 0, (4,), 2, case_dtype(backend))
    v = fastvae.iwae_bound(x, recon_k, mu, lv, z_k, reduction=reduction, backend=backend)
    assert v.shape == ((0,) if reduction == "none" else ())
    if reduction != "none":
        assert v.item() == 0.0
    v.sum().backward()
    assert recon_k.grad is not None and recon_k.grad.shape == recon_k.shape


def test_training_usage_through_reparameterize(seed, backend):
    """z_k = reparameterize(mu, logvar, K), recon_k = decoder(z_k): the gradient w.r.t. the
    encoder outputs includes the paths through z_k and recon_k, as the formula on the same eps."""
    dt = case_dtype(backend)
    k, b, l, d = 5, 4, 3, 8
    x = torch.rand(b, d, dtype=dt)
    w_dec = torch.randn(l, d, dtype=dt)
    mu, lv = leaf(torch.randn(b, l, dtype=dt)), leaf(torch.randn(b, l, dtype=dt) * 0.3)
    z_k = fastvae.reparameterize(mu, lv, n_samples=k, backend=backend)
    v = fastvae.iwae_bound(x, z_k @ w_dec, mu, lv, z_k, reduction="mean", backend=backend)
    m2, l2 = leaf(mu.double()), leaf(lv.double())
    eps = (z_k.detach().double() - m2.detach()) * torch.exp(-0.5 * l2.detach())
    z2 = m2 + torch.exp(0.5 * l2) * eps
    want = F.iwae(x, z2 @ w_dec.double(), m2, l2, z2, reduction="mean")
    assert_close("value", v, want, dt, rtol={F64: 1e-12}, scale=10.0)
    v.backward()
    want.backward()
    assert_close("d/dmu", mu.grad, m2.grad, dt, rtol={F64: 1e-11}, scale=1.0)
    assert_close("d/dlogvar", lv.grad, l2.grad, dt, rtol={F64: 1e-11}, scale=1.0)


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


@settings(max_examples=30)
@given(k=st.integers(1, 6), b=st.integers(0, 6), d=st.integers(1, 20), l=st.integers(1, 6),
       likelihood=st.sampled_from(LIKELIHOODS), reduction=st.sampled_from(REDUCTIONS),
       dtype=st.sampled_from([torch.float32, F64]), seed=st.integers(0, 2**31 - 1))
def test_property_matches_formula(backend, k, b, d, l, likelihood, reduction, dtype, seed):
    torch.manual_seed(seed)
    dt = case_dtype(backend, dtype)
    ins = make(k, b, (d,), l, dt)
    obs = 0.3 if likelihood == "gaussian" else 0.0
    got = fastvae.iwae_bound(*ins, likelihood=likelihood, obs_logvar=obs, reduction=reduction,
                             backend=backend)
    want = F.iwae(*ins, likelihood=likelihood, obs_logvar=obs, reduction=reduction)
    scale = 5.0 * (d + l) * (max(b, 1) if reduction == "sum" else 1)
    assert_close("value", got, want, dt, rtol=TOL[dt], scale=scale)
    if got.numel():
        for i, (g, e) in enumerate(zip(grads(got, ins), grads(want, ins))):
            assert_close(f"grad {i}", g, e, dt, scale=(e.abs().max() if e.numel() else 0.0) + 1)


@pytest.mark.parametrize("layout", ["(L,)", "(B,L)", "numbers"])
@pytest.mark.parametrize("k", [1, 3, 12])  # 12: past the one-pass kernel's K
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_learned_prior(seed, backend, layout, k, reduction):
    """log p(z_k) under N(prior_mu, exp(prior_logvar)), shared by the K samples; the
    prior's gradients weighted by softmax_k like mu's."""
    dt = case_dtype(backend)
    b, l = 6, 4
    x, recon_k, mu, lv, z_k = make(k, b, (11,), l, dt)
    if layout == "numbers":
        pm, plv = -0.2, 0.4
    else:
        shape = (l,) if layout == "(L,)" else (b, l)
        pm, plv = leaf(torch.randn(shape, dtype=dt)), leaf(torch.randn(shape, dtype=dt))
    got = fastvae.iwae_bound(x, recon_k, mu, lv, z_k, prior_mu=pm, prior_logvar=plv,
                             reduction=reduction, backend=backend)
    want = F.iwae(x, recon_k, mu, lv, z_k, prior_mu=pm, prior_logvar=plv, reduction=reduction)
    assert_close("bound", got, want, dt, rtol={F64: 1e-11})
    ins = [recon_k, mu, lv, z_k] + [t for t in (pm, plv) if isinstance(t, torch.Tensor)]
    w = torch.rand(got.shape, dtype=F64) + 0.5
    for i, (g, e) in enumerate(zip(grads(got, ins, w), grads(want, ins, w))):
        assert g.shape == ins[i].shape
        assert_close(f"grad {i}", g, e, dt, rtol={F64: 1e-11}, scale=e.abs().max() + 1e-3)
