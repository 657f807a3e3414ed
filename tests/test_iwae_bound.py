"""fastvae.iwae_bound on every backend (the ``backend`` fixture): values and gradients
against a brute-force float64 logsumexp (tests/_formulas.py) for every likelihood,
obs_logvar layout and reduction, K = 1 (the MC ELBO) to past the one-pass kernel's
limit, odd sizes and layouts; the softmax gradient weights; the bound tightening with K
on a toy model with a known log p(x); stability at log-weights of -1e4; errors.

Which Triton kernel runs (one pass or two) and launch counts:
tests/test_triton_backend.py, tests/test_triton_tiles.py. Higher-order gradients:
tests/test_higher_order.py.
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
from _compare import TOL, assert_close, assert_close_past_range, grads, leaf

LIKELIHOODS = ["bernoulli", "gaussian", "continuous_bernoulli"]
LIKES = ["bernoulli", "continuous_bernoulli", "gaussian", "gaussian_perdim", "gaussian_full"]
REDUCTIONS = ["none", "mean", "sum"]
F64 = torch.float64


def make(k, b, data_shape, l, dtype=F64):
    x = torch.rand(b, *data_shape, dtype=dtype)
    recon_k = torch.randn(k, b, *data_shape, dtype=dtype) * 2
    mu = torch.randn(b, l, dtype=dtype)
    lv = torch.randn(b, l, dtype=dtype) * 0.5
    z_k = mu + torch.exp(0.5 * lv) * torch.randn(k, b, l, dtype=dtype)
    return [leaf(t) for t in (x, recon_k, mu, lv, z_k)]


def strided(t):
    """A leaf with the same values and a non-contiguous layout the kernels read in place:
    padded rows (row stride > width) and, for (K, B, n), the samples interleaved per row
    (strides (n + 3, K * (n + 3), 1)); a (D,) tensor is a unit-stride slice of a wider one."""
    n = t.shape[-1]
    if t.dim() == 3:
        k, b = t.shape[:2]
        base = torch.zeros(b, k, n + 3, dtype=t.dtype)
        base[..., :n] = t.detach().transpose(0, 1)
        out = base.transpose(0, 1)[..., :n]
    else:
        base = torch.zeros(*t.shape[:-1], n + 3, dtype=t.dtype)
        base[..., 1:n + 1] = t.detach()
        out = base[..., 1:n + 1]
    out = out.detach().requires_grad_(t.requires_grad)
    assert t.dim() == 1 or not out.is_contiguous()
    return out


def make_like(k, b, d, l, like, dtype, noncontig=False):
    """Inputs for one of LIKES (x ~ N(0, 1) for the Gaussian ones; obs_logvar a float, a
    (D,) or a (B, D) tensor), optionally in strided layouts."""
    x, recon, mu, lv, z = make(k, b, (d,), l, dtype)
    if like.startswith("gaussian"):
        x = leaf(torch.randn(b, d, dtype=dtype))
    obs = leaf({"gaussian": 0.2, "gaussian_perdim": torch.randn(d, dtype=dtype) * 0.4,
                "gaussian_full": torch.randn(b, d, dtype=dtype) * 0.4}.get(like, 0.0))
    ts = [x, recon, mu, lv, z] + ([obs] if isinstance(obs, torch.Tensor) else [])
    if noncontig:
        ts = [strided(t) for t in ts]
    obs = ts[5] if len(ts) > 5 else obs
    return ts[:5], obs, ("gaussian" if like.startswith("gaussian") else like)


def grad_rtol(d):
    """The gradients' rtol: their softmax weights are as exact as log w, a sum of ~D terms
    of size ~3 (fp32: good to ~4 eps * 3D, which for D ~ 1000 is 1e-3)."""
    return {torch.float32: max(TOL[torch.float32], 4 * torch.finfo(torch.float32).eps * 3 * d)}


def eager_fp32(ins, w=None, **opts):
    """The reference backend in float32 on the same inputs (value, gradients): the error
    any fp32 implementation shares (the "2x eager" allowance of _compare.assert_close)."""
    e_ins = [leaf(t.float()) if isinstance(t, torch.Tensor) else t for t in ins]
    obs = opts.pop("obs_logvar", 0.0)
    if isinstance(obs, torch.Tensor):
        obs = e_ins[5]
    value = fastvae.iwae_bound(*e_ins[:5], obs_logvar=obs, backend="reference", **opts)
    return value, grads(value, e_ins, w)


def check(backend, k, b, d, l, like, reduction, dtype=F64, noncontig=False):
    """Values and every gradient (rows weighted 0.5 .. 2) vs the float64 oracle. In low
    precision, twice the fp32 eager reference's error is allowed on top: the softmax
    weights amplify rounding of large log-weights in any fp32 implementation."""
    dt = case_dtype(backend, dtype)
    (x, recon, mu, lv, z), obs, likelihood = make_like(k, b, d, l, like, dt, noncontig)
    ins = [x, recon, mu, lv, z, obs if isinstance(obs, torch.Tensor) else None]
    opts = dict(likelihood=likelihood, obs_logvar=obs, reduction=reduction)
    got = fastvae.iwae_bound(x, recon, mu, lv, z, backend=backend, **opts)
    want = F.iwae(x, recon, mu, lv, z, **opts)
    w = torch.linspace(0.5, 2.0, b, dtype=F64) if got.dim() else None
    eager, eager_g = eager_fp32(ins, w, **opts) if dt != F64 else (None, [None] * 6)
    assert_close("bound", got, want, dt, eager=eager)
    for name, t, a, e, ee in zip(("x", "recon_k", "mu", "logvar", "z_k", "obs"), ins,
                                 grads(got, ins, w), grads(want, ins, w), eager_g):
        if t is not None:
            assert a.dtype == t.dtype, name
            assert_close(f"d/d{name}", a, e, dt, rtol=grad_rtol(d), eager=ee)
    return got


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


# -- numerics ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k", [4, 9])
def test_low_precision(seed, backend, dtype, k):
    check(backend, k, 17, 100, 6, "gaussian_full", "sum", dtype=dtype)
    x, recon_k, mu, lv, z_k = (leaf(t.to(dtype)) for t in make(k, 8, (30,), 3))
    v = fastvae.iwae_bound(x, recon_k, mu, lv, z_k, reduction="mean", backend=backend)
    assert v.dtype == torch.float32
    v.backward()
    assert recon_k.grad.dtype == z_k.grad.dtype == mu.grad.dtype == dtype


@pytest.mark.parametrize("scale", [300.0, 3000.0])  # log w ~ -1.2e7, -1.2e9
def test_weights_sum_to_one_at_any_size_of_log_w(seed, backend, scale):
    """K identical samples weigh 1/K each however large |log w| is: the bound's gradient
    summed over k is one sample's, in float32 too. Weights taken as exp(log w - the rounded
    logsumexp) (torch.logsumexp's backward) are all off by exp(that rounding): x 0.68 and
    x K at these sizes."""
    b, d, k = 2, 784, 5
    x = torch.rand(b, d)
    mean = torch.rand(b, d) * scale
    recon_k = mean.expand(k, b, d).clone().requires_grad_()
    mu = torch.zeros(b, 3)
    v = fastvae.iwae_bound(x, recon_k, mu, mu, torch.zeros(k, b, 3), likelihood="gaussian",
                           backend=backend)
    assert v.max() < -1e7
    (g,) = torch.autograd.grad(v.sum(), recon_k)
    assert_close("sum_k d/drecon_k", g.sum(0), x - mean, torch.float32, rtol=1e-5)


@pytest.mark.parametrize("d", [50, 1000, 2000])
def test_extreme_log_weights_stay_finite(seed, backend, d):
    """logsumexp must be stable at log-weights of order -1e4: one sample ahead by 1e4 nats
    (row 0), and every sample near -1e4 (row 1)."""
    dt = case_dtype(backend)
    x = torch.ones(2, d, dtype=dt)
    recon_k = torch.full((3, 2, d), -200.0 * 50 / d, dtype=dt)  # log p(x|z) ~ -1e4
    recon_k[1, 0] = 300.0 * 50 / d
    recon_k[:, 1] += torch.randn(3, d, dtype=dt) * 0.1
    recon_k = recon_k.requires_grad_()
    mu = torch.zeros(2, 2, dtype=dt)
    z_k = torch.zeros(3, 2, 2, dtype=dt)
    v = fastvae.iwae_bound(x, recon_k, mu, mu, z_k, backend=backend)
    want = F.iwae(x, recon_k, mu, mu, z_k)
    assert torch.isfinite(v).all() and v[1].item() < -1000
    # each term x*l - softplus(l) rounds to ~ulp(|l|): the terms' size sets the scale
    assert_close("value", v, want, dt, rtol={F64: 1e-12}, scale=recon_k.detach().abs().sum(-1).max(0).values)
    (g,) = torch.autograd.grad(v.sum(), recon_k)
    (e,) = grads(want, [recon_k])
    # log w of 1e4 carries up to ulp(1e4) ~ 1e-3 of fp32 rounding into the weights, in any
    # fp32 implementation, by its summation order (the eager reference's own error here
    # is that order's luck)
    eager = eager_fp32([x, recon_k, mu, mu, z_k])[1][1] if dt != F64 else None
    assert_close("d/drecon_k", g, e, dt, rtol={F64: 1e-12, torch.float32: 1e-3}, eager=eager)
    assert g[0, 0].abs().max() < 1e-30  # a weight of exp(-1e4)


def test_many_rows(seed, backend):
    k, b, d, l = 3, 16, 1003, 8
    dt = case_dtype(backend)
    ins = make(k, b, (d,), l, dt)
    for likelihood in LIKELIHOODS:
        got = fastvae.iwae_bound(*ins, likelihood=likelihood, reduction="none", backend=backend)
        want = F.iwae(*ins, likelihood=likelihood, reduction="none")
        assert_close(likelihood, got, want, dt, scale=3.0 * d)
        for i, (g, e) in enumerate(zip(grads(got, ins), grads(want, ins))):
            assert_close(f"{likelihood} grad {i}", g, e, dt, rtol=grad_rtol(d),
                         scale=e.abs().max() + 1e-3)


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


@pytest.mark.parametrize("k, d", [(5, 784), (2, 8200)], ids=["pairs", "two-pass"])
def test_bernoulli_logits_over_the_whole_range(seed, backend, k, d):
    """The Bernoulli's sum of ln(1 + e^-|l|), taken by the Triton kernels as the log of
    products of (1 + e) factors, against float64 over the whole logit range: uniform in
    [-100, 100] (row 0), near 0 where every factor is ~2 (row 1), +-88 and +-1e4 among
    moderate logits (row 2). D = 784 runs the pair kernel, D = 8200 the two-pass kernel
    (under the interpreter a product over two 4096-column blocks)."""
    dt = case_dtype(backend)
    g = torch.Generator().manual_seed(seed)  # drawn on the CPU, moved to the default device
    cpu = dict(dtype=F64, device="cpu")
    x = torch.rand(3, d, generator=g, dtype=F64, device="cpu")
    l = torch.randn(k, 3, d, generator=g, dtype=F64, device="cpu")
    l[:, 0] = torch.rand(k, d, generator=g, dtype=F64, device="cpu") * 200 - 100
    l[:, 1] *= 1e-3
    extremes = torch.tensor([1e4, -1e4, 88.0, -88.0, 87.5, -87.5, 20.0, -20.0], **cpu)
    l[:, 2, torch.randperm(d, generator=g, device="cpu")[:64]] = extremes.repeat(8)
    x[2, :8] = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.0, 1.0], **cpu)
    mu = torch.zeros(3, 2, **cpu)
    z_k = torch.randn(k, 3, 2, generator=g, dtype=F64, device="cpu")
    ins = [leaf(t.to(torch.get_default_device(), dt)) for t in (x, l, mu, mu, z_k)]
    v = fastvae.iwae_bound(*ins, backend=backend)
    want = F.iwae(*ins)
    # a sum of D terms x*l - softplus(l) rounds at the scale of its terms, per row
    terms = (ins[0].detach().double() * ins[1].detach().double()).sub(
        torch.nn.functional.softplus(ins[1].detach().double())).abs().sum(-1).max(0).values
    assert_close("value", v, want, dt, rtol={F64: 1e-12}, scale=terms)
    eager = eager_fp32(ins)[1] if dt != F64 else [None] * 5
    for name, a, e, ee, t in zip(("x", "recon_k", "mu", "logvar", "z_k"), grads(v, ins),
                                 grads(want, ins), eager, ins):
        assert_close(f"d/d{name}", a, e, dt, eager=ee)


@pytest.mark.parametrize("prior", ["standard", "learned"])
def test_a_sample_far_from_both_means(seed, backend, prior):
    """A latent where q is the prior, its sample 1e20 away (z^2 and the standardized
    sample's square t^2 both overflow float32): log q - log p is 0 there, and the bound
    is finite, as in float64; log w as a difference of those squares was inf - inf = NaN
    on every backend. The far rows' K samples are otherwise equal (weights 1/K), so that
    logvar's gradient there, w * (t^2 - 1) / 2 ~ 1.7e39 in float64, overflows float32 as
    the kernels' w * inf does: at a far smaller weight float64 would fit and they would
    still give inf (0 at a weight of exactly 0: test_a_far_sample_of_weight_zero), a limit
    of samples no draw from q makes."""
    dt = torch.float32
    k, b, l = 3, 2, 3
    x, recon_k, mu, lv, z_k = (t.detach().float() for t in make(k, b, (5,), l, F64))
    pm, plv = (torch.randn(b, l) * 0.3, torch.randn(b, l) * 0.3) if prior == "learned" else (
        torch.zeros(b, l), torch.zeros(b, l))
    for i, j, kk, far in ((0, 0, 0, 1e20), (1, 2, 2, -6e19)):
        recon_k[:, i], z_k[:, i] = recon_k[0, i].clone(), z_k[0, i].clone()
        mu[i, j], lv[i, j], z_k[kk, i, j] = pm[i, j], plv[i, j], far
    ins = [leaf(t) for t in (x, recon_k, mu, lv, z_k, pm, plv)]
    priors = (ins[5], ins[6]) if prior == "learned" else (None, None)
    got = fastvae.iwae_bound(*ins[:5], prior_mu=priors[0], prior_logvar=priors[1],
                             backend=backend)
    want_ins = [leaf(t.double()) for t in ins]
    want = F.iwae(*want_ins[:5], prior_mu=want_ins[5] if prior == "learned" else None,
                  prior_logvar=want_ins[6] if prior == "learned" else None)
    assert_close("bound", got, want, dt)
    used = range(1, 7 if prior == "learned" else 5)
    for i, g, e in zip(used, grads(got, [ins[i] for i in used]),
                       grads(want, [want_ins[i] for i in used])):
        assert_close_past_range(f"grad {i}", g, e, dt)


# (K, D): the Triton backend's one-pass, (row, sample)-pair and two-pass kernels
FAR_SHAPES = [(3, 5), (3, 300), (12, 5)]


@pytest.mark.parametrize("k,d", FAR_SHAPES)
@pytest.mark.parametrize("prior", ["standard", "learned"])
def test_a_far_sample_of_weight_zero(seed, backend, prior, k, d):
    """A sample 2^66 from the prior's mean and 2^66 - 2^44 from q's (values exact in
    float32): its log w, about -2^109, is finite (it was inf - inf = NaN) and its weight
    0. Its log-variances' partials, (t^2 - 1) / 2 and the prior's, overflow float32: the
    gradients take its weight's 0 for them, as float64 does, where 0 * inf had made them
    NaN. Every sample of that row has log w ~ -2^87 (mu is 2^44): the weights still sum
    to 1 (the two-pass kernel's exp(log w - lse), lse rounded to the max, summed to K)."""
    dt = torch.float32
    b, l = 2, 3
    x, recon_k, mu, lv, z_k = (t.detach().float() for t in make(k, b, (d,), l, F64))
    pm, plv = (torch.randn(b, l) * 0.3, torch.randn(b, l) * 0.3) if prior == "learned" else (
        torch.zeros(b, l), torch.zeros(b, l))
    pm[0, 1] = plv[0, 1] = lv[0, 1] = 0.0
    mu[0, 1] = 2.0 ** 44
    z_k[:, 0, 1] = mu[0, 1] + torch.randn(k)   # the other samples near q's mean
    z_k[1, 0, 1] = 2.0 ** 66
    # x takes no gradient: d/dx keeps the pair kernel out
    ins = [leaf(t, requires_grad=i > 0) for i, t in enumerate((x, recon_k, mu, lv, z_k, pm, plv))]
    priors = (ins[5], ins[6]) if prior == "learned" else (None, None)
    got = fastvae.iwae_bound(*ins[:5], prior_mu=priors[0], prior_logvar=priors[1],
                             backend=backend)
    want_ins = [leaf(t.double(), t.requires_grad) for t in ins]
    want = F.iwae(*want_ins[:5], prior_mu=want_ins[5] if prior == "learned" else None,
                  prior_logvar=want_ins[6] if prior == "learned" else None)
    assert_close("bound", got, want, dt, scale=0.0)
    used = range(1, 7 if prior == "learned" else 5)
    for i, g, e in zip(used, grads(got, [ins[i] for i in used]),
                       grads(want, [want_ins[i] for i in used])):
        assert_close_past_range(f"grad {i}", g, e, dt)
    assert float(grads(got, [ins[4]])[0][1, 0].abs().max()) == 0.0   # the weight 0


def test_a_sample_of_log_w_past_float32_leaves_the_rows_other_samples_alone(seed, backend):
    """q narrower than the prior, a sample 1e20 away: log p - log q ~ 3e39 passes float32's
    largest, so that sample's log w is +inf and its weight (float64: 1) NaN in float32. The
    row's other samples weigh 0, as in float64, and the other row is untouched; the torch
    backend's softmax shifted by the +inf max and made the whole row NaN."""
    k, b, l = 3, 2, 2
    x, recon_k, mu, lv, z_k = (t.detach().float() for t in make(k, b, (4,), l, F64))
    lv.fill_(-0.5)
    z_k[0, 0, 0] = 1e20
    ins = [leaf(t, requires_grad=i in (1, 4)) for i, t in enumerate((x, recon_k, mu, lv, z_k))]
    got = fastvae.iwae_bound(*ins, backend=backend)
    assert got[0] == float("inf") and got[1].isfinite()
    want_ins = [leaf(t.double(), t.requires_grad) for t in ins]
    want = F.iwae(*want_ins)
    assert_close("the finite row", got[1], want[1], torch.float32)
    for name, g, e in zip(("recon_k", "z_k"), grads(got, [ins[1], ins[4]]),
                          grads(want, [want_ins[1], want_ins[4]])):
        assert g[0, 0].isnan().all(), name   # the sample of weight 1 in float64
        assert (g[1:, 0] == 0).all(), f"{name}: the row's other samples"
        assert_close(f"{name}, the other row", g[:, 1], e[:, 1], torch.float32)


def test_torch_func_grad_of_a_sample_of_weight_zero(seed):
    """torch.func runs the reference math: at a sample of weight 0 whose (x - r)^2
    overflows, its gradients are the eager op's, 0 there (NaN before), every input's."""
    b, d, l, k = 2, 5, 3, 3
    x, _, mu, lv, z_k = (t.detach().float() for t in make(k, b, (d,), l, F64))
    recon_k = x + 1e-19 * torch.randn(k, b, d)
    recon_k[1, 0, 2] = x[0, 2] + 1e30
    olv = torch.full((d,), -80.0)

    def bound(*ins):
        return fastvae.iwae_bound(x, *ins[:4], likelihood="gaussian", obs_logvar=ins[4],
                                  reduction="sum", backend="torch")
    ins = [leaf(t) for t in (recon_k, mu, lv, z_k, olv)]
    want = grads(bound(*ins), ins)
    got = torch.func.grad(bound, argnums=tuple(range(5)))(recon_k, mu, lv, z_k, olv)
    for i, (g, e) in enumerate(zip(got, want)):
        assert torch.isfinite(g).all(), i
        assert_close(f"grad {i}", g, e, torch.float32, scale=e.abs().max() + 1e-3)
    assert float(got[0][1, 0].abs().max()) == 0.0


@pytest.mark.parametrize("likelihood,k,d", [("gaussian", 2, 3), ("gaussian", 12, 3),
                                             ("bernoulli", 5, 272)])  # one pass, two, pairs
@pytest.mark.parametrize("estimator", ["standard", "stl", "dreg"])
def test_every_sample_of_weight_zero(seed, backend, estimator, likelihood, k, d):
    """Every log w of a row -inf in float32: a Gaussian decoder at obs_logvar -100 that
    misses x (float64: about -1e42), or every z_k 1e30 from a wider q's mean (the MC KL
    past float32). The bound is -inf whatever the estimator and kernel: the Triton
    kernels' logsumexp shifted by the max, -inf - -inf = NaN, and the reference's DReG
    surrogate weighed the row by softmax's NaN."""
    b, l = 2, 2
    x, recon_k, mu, lv, z_k = (t.detach().float() for t in make(k, b, (d,), l, F64))
    if likelihood == "gaussian":
        recon_k = x + 0.5 + torch.rand(k, b, d)
    else:
        mu, lv, z_k = torch.zeros(b, l), torch.full((b, l), 2.0), torch.full((k, b, l), 1e30)
    got = fastvae.iwae_bound(x, recon_k, mu, lv, z_k, likelihood=likelihood,
                             obs_logvar=-100.0 if likelihood == "gaussian" else 0.0,
                             estimator=estimator, backend=backend)
    assert got.tolist() == [-math.inf] * b


@pytest.mark.parametrize("likelihood,k,d", [("gaussian", 2, 3), ("gaussian", 12, 3),
                                             ("bernoulli", 5, 272)])  # one pass, two, pairs
@pytest.mark.parametrize("estimator", ["standard", "stl", "dreg"])
def test_a_sample_whose_log_w_is_past_float32_above(seed, backend, estimator, likelihood, k, d):
    """Row 0's log q of sample 0 is -inf in float32 (a latent at logvar -100 that z_0 misses
    by 1: float64 log w about 3e43), so its log w is +inf: the bound is +inf, as the
    reference's, whatever the estimator and kernel (the Triton kernels' logsumexp shifted
    by the max, inf - inf = NaN); row 1 is untouched."""
    b, l = 2, 2
    x, recon_k, mu, lv, z_k = (t.detach().float() for t in make(k, b, (d,), l, F64))
    lv[0, 0] = -100.0
    z_k[:, 0, 0] = mu[0, 0]
    z_k[0, 0, 0] += 1.0
    obs = 0.0 if likelihood == "bernoulli" else -1.0
    got = fastvae.iwae_bound(x, recon_k, mu, lv, z_k, likelihood=likelihood, obs_logvar=obs,
                             estimator=estimator, backend=backend)
    want = fastvae.iwae_bound(x.double(), recon_k.double(), mu.double(), lv.double(),
                              z_k.double(), likelihood=likelihood, obs_logvar=obs,
                              backend="reference")
    assert got[0].item() == math.inf and want[0].item() > 1e43
    assert math.isclose(got[1].item(), want[1].item(), rel_tol=1e-4, abs_tol=1e-3)


@pytest.mark.parametrize("k", [3, 12])   # the one-pass and two-pass kernels
@pytest.mark.parametrize("obs", ["scalar", "perdim", "full"])
@pytest.mark.parametrize("miss", [1e4, 1e30])
def test_a_far_reconstruction_of_weight_zero(seed, backend, obs, k, miss):
    """A Gaussian decoder at a vanishing variance (obs_logvar -80) whose sample 1 misses
    one pixel by 1e4: its (x - r) / var overflows float32 and its log w is -inf (float64:
    -3e42), weight 0; by 1e30, (x - r)^2 overflows on its own. Its d/drecon, d/dx and
    d/dobs_logvar are the weight's 0, as in float64, where 0 * inf had made them NaN (the
    reference backend's autograd, at 1e30)."""
    dt = torch.float32
    b, d, l = 2, 5, 3
    x, _, mu, lv, z_k = (t.detach().float() for t in make(k, b, (d,), l, F64))
    recon_k = x + 1e-19 * torch.randn(k, b, d)   # the others close: log w moderate
    recon_k[1, 0, 2] = x[0, 2] + miss
    olv = {"scalar": -80.0, "perdim": torch.full((d,), -80.0),
           "full": torch.full((b, d), -80.0)}[obs]
    ins = [leaf(t) for t in (x, recon_k, mu, lv, z_k, olv)]
    got = fastvae.iwae_bound(*ins[:5], likelihood="gaussian", obs_logvar=ins[5],
                             backend=backend)
    want_ins = [leaf(t.double()) if isinstance(t, torch.Tensor) else t for t in ins]
    want = F.iwae(*want_ins[:5], likelihood="gaussian", obs_logvar=want_ins[5])
    assert_close("bound", got, want, dt, scale=0.0)
    used = range(6) if obs != "scalar" else range(5)
    for i, g, e in zip(used, grads(got, [ins[i] for i in used]),
                       grads(want, [want_ins[i] for i in used])):
        assert_close_past_range(f"grad {i}", g, e, dt)
    assert float(grads(got, [ins[1]])[0][1, 0].abs().max()) == 0.0   # the weight 0


def test_a_row_s_weights_summed_in_blocks(backend):
    """The softmax's normalizer of a row whose largest weight comes first: 1, then 63
    weights of 2^-25.5, each under half an ulp of 1. A running float32 sum drops every one
    of them (the bound 1.3e-6 off); summed in blocks over k (or pairwise), the small ones
    meet each other first and count."""
    k = 64
    x = torch.zeros(1, 1)
    r = math.sqrt(2 * 25.5 * math.log(2.0))   # log w_k = -r^2 / 2 = -25.5 log 2
    recon_k = torch.full((k, 1, 1), r)
    recon_k[0] = 0.0
    mu = logvar = torch.zeros(1, 1)
    z_k = torch.zeros(k, 1, 1)                # log q(z_k|x) = log p(z_k): log w = log p(x|z)
    got = fastvae.iwae_bound(x, recon_k, mu, logvar, z_k, likelihood="gaussian",
                             backend=backend)
    want = math.log1p((k - 1) * 2.0 ** -25.5) - math.log(k) - 0.5 * math.log(2 * math.pi)
    assert abs(got.item() - want) < 9e-7, got.item() - want
