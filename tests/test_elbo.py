"""fastvae.elbo on every backend (the ``backend`` fixture): every likelihood, KL mode,
reduction and option (obs_logvar layouts, beta, free bits) against the independent
float64 formulas of tests/_formulas.py, values and gradients; the drop-in promise
(minus pytorch/examples' loss_function); a property test.

Also for the ELBO: tests/test_elbo_numerics_*.py (continuous Bernoulli normaliser,
extreme values, many rows, dtypes), tests/test_elbo_autograd.py (gradcheck, layouts,
empty batches, autograd plumbing, side effects), tests/test_higher_order.py, and what is
specific to a backend in tests/test_triton_backend.py and tests/test_closed_form.py.
"""
from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastvae
import _formulas as F
from _backends import bounded, case_dtype
from _compare import TOL, assert_close, grads, leaf
from _elbo import (F64, LIKELIHOODS, LIKES, REDUCTIONS, check_against_formula,
                   free_bits_inputs, make, make_like)


def result_dtype(dt):
    return F64 if dt == F64 else torch.float32


# -- values and gradients vs the formulas -------------------------------------------------

@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("kl", ["analytic", "mc"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("sizes", [(1, (1,), 1), (3, (1003,), 5), (4, (2, 3, 5), 7)],
                         ids=["B1D1L1", "D1003", "image"])
def test_matches_formula(seed, backend, likelihood, kl, reduction, sizes):
    b, shape, l = sizes
    dt = case_dtype(backend)
    x, recon, mu, lv, z = (leaf(t) for t in make(b, shape, l, dt))
    opts = dict(likelihood=likelihood, kl=kl, reduction=reduction, beta=0.7)
    if likelihood == "gaussian":
        opts["obs_logvar"] = -0.3
    got = check_against_formula(x, recon, mu, lv, z if kl == "mc" else None, backend, **opts)
    assert fastvae.last_backend() == backend
    assert got.dtype == result_dtype(dt)
    assert got.shape == ((b,) if reduction == "none" else ())


# Every likelihood (obs_logvar layouts too) x kl x reduction x (plain, beta + free bits).
@pytest.mark.parametrize("like,kl,reduction,fb", list(itertools.product(
    LIKES, ["analytic", "mc"], REDUCTIONS, [False, True])))
def test_every_option(seed, backend, like, kl, reduction, fb):
    (x, recon, mu, lv, z), obs, likelihood = make_like(3, 7, 5, like, case_dtype(backend))
    # free bits 0.55 on five latents of three samples: some dims clamp, some not (batch
    # means of a dim's KL sit within 1e-3 of the clamp with probability ~1e-3)
    check_against_formula(x, recon, mu, lv, z if kl == "mc" else None, backend,
                          likelihood=likelihood, kl=kl, reduction=reduction,
                          obs_logvar=obs, beta=0.7 if fb else 1.0, free_bits=0.55 if fb else 0.0)


@pytest.mark.parametrize("b,d,l", [(1, 1, 1), (257, 784, 32), (4, 1003, 7), (5, 1, 3),
                                   (2, 4100, 3)])
@pytest.mark.parametrize("like", ["bernoulli", "continuous_bernoulli", "gaussian_perdim"])
def test_odd_sizes(seed, backend, b, d, l, like):
    """Sizes past tiles and odd tails (B = 257), D past one column block (4100)."""
    b, d, l = bounded(b=b, d=d, l=l)
    (x, recon, mu, lv, z), obs, likelihood = make_like(b, d, l, like, case_dtype(backend))
    kl = "mc" if b % 2 else "analytic"
    check_against_formula(x, recon, mu, lv, z if kl == "mc" else None, backend,
                          likelihood=likelihood, kl=kl, obs_logvar=obs,
                          free_bits=0.3 if b > 2 else 0.0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["tensor0d", "(D,)", "(1,D)", "full", "per-sample", "channel"])
def test_gaussian_obs_logvar_tensor(seed, backend, reduction, kind):
    dt = case_dtype(backend)
    x, recon, mu, lv, _ = (leaf(t) for t in make(3, (2, 4, 5), 4, dt))
    obs = {"tensor0d": torch.tensor(0.2, dtype=dt), "(D,)": torch.randn(2, 4, 5, dtype=dt),
           "(1,D)": torch.randn(1, 2, 4, 5, dtype=dt), "full": torch.randn(3, 2, 4, 5, dtype=dt),
           "per-sample": torch.randn(3, 1, 1, 1, dtype=dt),
           "channel": torch.randn(2, 1, 1, dtype=dt)}[kind]
    obs = leaf(obs)
    check_against_formula(x, recon, mu, lv, None, backend, likelihood="gaussian",
                          obs_logvar=obs, reduction=reduction)
    assert obs.grad is None  # grads were taken functionally; now through .backward()
    fastvae.elbo(x, recon, mu, lv, likelihood="gaussian", obs_logvar=obs, backend=backend,
                 reduction=reduction).sum().backward()
    assert obs.grad.shape == obs.shape


@pytest.mark.parametrize("reduction,weight", [("sum", 2.5), ("none", "ramp")])
def test_scaled_grad_output(seed, backend, reduction, weight):
    """A grad_output other than 1 scales the saved gradients (per row for "none")."""
    like, kl, fb = (("continuous_bernoulli", "analytic", 0.0) if reduction == "sum"
                    else ("gaussian_full", "mc", 0.4))
    (x, recon, mu, lv, z), obs, likelihood = make_like(5, 33, 4, like, case_dtype(backend))
    w = torch.tensor(2.5, dtype=F64) if weight == 2.5 else torch.linspace(-1, 2, 5, dtype=F64)
    check_against_formula(x, recon, mu, lv, z if kl == "mc" else None, backend, weight=w,
                          likelihood=likelihood, kl=kl, obs_logvar=obs, reduction=reduction,
                          free_bits=fb)


# -- the drop-in promise: minus pytorch/examples' loss_function --------------------------

@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("b,d,l", [(1, 1, 1), (128, 784, 20), (5, 1003, 3)])
def test_equals_minus_pytorch_examples_loss(seed, backend, dtype, b, d, l):
    b, d, l = bounded(b=b, d=d, l=l)
    dt = case_dtype(backend, dtype)
    x = torch.rand(b, d, dtype=dt)
    x[:, : d // 2] = (x[:, : d // 2] > 0.5).to(dt)  # binarized pixels and grey ones
    a = [leaf(t) for t in make(b, (d,), l, dtype=dt)[1:4]]
    e = [leaf(t) for t in a]
    got = fastvae.elbo(x, *a, reduction="sum", backend=backend)
    want = -F.examples_loss_function(e[0], x, e[1], e[2])  # eager, in the inputs' dtype
    assert got.dtype == dt
    rtol = {F64: 1e-12, torch.float32: 2e-6}
    assert_close("value", got, want, dt, rtol=rtol)
    got.backward()
    want.backward()
    for p, q, name in zip(a, e, ["recon", "mu", "logvar"]):
        assert p.grad.dtype == dt
        # d/dlogvar = 0.5 (exp(lv) - 1) cancels near lv = 0: terms of size ~1 set the scale
        assert_close(f"d/d{name}", p.grad, q.grad, dt, rtol=rtol,
                     scale=q.grad.abs().max().clamp(min=1))


# -- free bits ---------------------------------------------------------------------------

@pytest.mark.parametrize("kl", ["analytic", "mc"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_free_bits(seed, backend, kl, reduction):
    fb, beta = 0.5, 1.3
    dt = case_dtype(backend)
    x, recon, _, _, _ = make(6, (11,), 6, dt)
    mu, lv = free_bits_inputs(dtype=dt)
    z = mu + torch.exp(0.5 * lv) * torch.randn_like(mu) * 0.01  # keeps the MC KL near analytic
    x, recon, mu, lv, z = (leaf(t) for t in (x, recon, mu, lv, z))
    zz = z if kl == "mc" else None
    kl_bl = (F.kl_analytic_dim(mu, lv) if kl == "analytic" else F.kl_mc_dim(z, mu, lv)).detach()
    means = kl_bl.mean(0)
    assert (means[0::2] < 0.3).all() and (means[1::2] > 1.0).all()  # far from the boundary

    got = fastvae.elbo(x, recon, mu, lv, kl=kl, z=zz, beta=beta, free_bits=fb,
                       reduction=reduction, backend=backend)
    # the docstring: mean reduction = E_x[log p] - beta * sum_l max(mean_b KL_bl, fb)
    log_px = F.log_likelihood(x, recon, "bernoulli").detach()
    if reduction == "mean":
        want = log_px.mean() - beta * torch.clamp(means, min=fb).sum()
    else:  # per sample: clamped dims count fb for every sample
        per = log_px - beta * torch.where(means < fb, torch.full_like(kl_bl, fb), kl_bl).sum(-1)
        want = per.sum() if reduction == "sum" else per
    assert_close("value", got, want, dt, scale=50.0)
    check_against_formula(x, recon, mu, lv, zz, backend, kl=kl, beta=beta, free_bits=fb,
                          reduction=reduction)

    # clamped dims pass no gradient to mu / logvar (/ z); free dims pass the usual one
    got.sum().backward()
    for t in [mu, lv] + ([z] if kl == "mc" else []):
        assert torch.all(t.grad[:, 0::2] == 0), "clamped dims must get zero gradient"
        assert torch.all(t.grad[:, 1::2].abs() > 0)


def test_free_bits_zero_and_huge(seed, backend):
    dt = case_dtype(backend)
    x, recon, mu, lv, _ = make(5, (7,), 3, dt)
    plain = fastvae.elbo(x, recon, mu, lv, backend=backend)
    assert torch.equal(fastvae.elbo(x, recon, mu, lv, free_bits=0.0, backend=backend), plain)
    # every dim clamped: the KL term is the constant beta * L * fb and latents get no gradient
    mu, lv = leaf(mu), leaf(lv)
    v = fastvae.elbo(x, recon, mu, lv, free_bits=1e6, beta=2.0, backend=backend)
    log_px = F.log_likelihood(x, recon, "bernoulli").mean()
    assert_close("value", v, log_px - 2.0 * 3 * 1e6, dt, rtol={F64: 1e-12})
    v.backward()
    assert torch.all(mu.grad == 0) and torch.all(lv.grad == 0)


# -- beta and reductions -----------------------------------------------------------------

def test_beta_is_linear(seed, backend):
    dt = case_dtype(backend)
    x, recon, mu, lv, _ = make(4, (9,), 3, dt)
    e0 = fastvae.elbo(x, recon, mu, lv, beta=0.0, backend=backend)
    e1 = fastvae.elbo(x, recon, mu, lv, beta=1.0, backend=backend)
    e3 = fastvae.elbo(x, recon, mu, lv, beta=3.5, backend=backend)
    assert_close("beta=0", e0, F.log_likelihood(x, recon, "bernoulli").mean(), dt,
                 rtol={F64: 1e-12})
    assert_close("linear in beta", e3 - e0, 3.5 * (e1 - e0), dt, scale=e0.abs())
    assert_close("beta=1", e1 - e0, -F.kl_analytic_dim(mu, lv).sum(-1).mean(), dt,
                 scale=e0.abs())


def test_reduction_none_consistent(seed, backend):
    dt = case_dtype(backend)
    x, recon, mu, lv, _ = make(6, (9,), 3, dt)
    none = fastvae.elbo(x, recon, mu, lv, reduction="none", backend=backend)
    rtol = {F64: 1e-13}
    assert_close("sum", fastvae.elbo(x, recon, mu, lv, reduction="sum", backend=backend),
                 none.sum(), dt, rtol=rtol)
    assert_close("mean", fastvae.elbo(x, recon, mu, lv, reduction="mean", backend=backend),
                 none.mean(), dt, rtol=rtol)


def test_mc_kl_through_reparameterize(seed, backend):
    """kl='mc' with z = reparameterize(mu, logvar): the total gradient includes the path
    through z, exactly as the formula built on the same eps."""
    dt = case_dtype(backend)
    x, recon, mu, lv, _ = make(5, (7,), 3, dt)
    mu, lv = leaf(mu), leaf(lv)
    z = fastvae.reparameterize(mu, lv, backend=backend)
    v = fastvae.elbo(x, recon, mu, lv, kl="mc", z=z, backend=backend)
    m2, l2 = leaf(mu.double()), leaf(lv.double())
    eps = ((z.detach().double() - m2.detach()) * torch.exp(-0.5 * l2.detach()))
    want = F.elbo(x, recon, m2, l2, kl="mc", z=m2 + torch.exp(0.5 * l2) * eps)
    assert_close("value", v, want, dt, rtol={F64: 1e-12})
    v.backward()
    want.backward()
    assert_close("d/dmu", mu.grad, m2.grad, dt, rtol={F64: 1e-11}, scale=1.0)
    assert_close("d/dlogvar", lv.grad, l2.grad, dt, rtol={F64: 1e-11}, scale=1.0)


# -- property test: every backend vs the formula -----------------------------------------

@settings(max_examples=40)
@given(b=st.integers(0, 9), data=st.lists(st.integers(1, 9), min_size=1, max_size=3),
       l=st.integers(1, 9), likelihood=st.sampled_from(LIKELIHOODS),
       kl=st.sampled_from(["analytic", "mc"]), reduction=st.sampled_from(REDUCTIONS),
       beta=st.floats(0.0, 4.0), free_bits=st.sampled_from([0.0, 0.0, 0.3, 2.0]),
       obs=st.sampled_from(["float", "(D,)", "full"]),
       dtype=st.sampled_from([torch.float32, F64]), seed=st.integers(0, 2**31 - 1))
def test_property_matches_formula(backend, b, data, l, likelihood, kl, reduction, beta,
                                  free_bits, obs, dtype, seed):
    torch.manual_seed(seed)
    dt = case_dtype(backend, dtype)
    x, recon, mu, lv, z = (leaf(t) for t in make(b, tuple(data), l, dtype=dt))
    obs_logvar = 0.0
    if likelihood == "gaussian":
        obs_logvar = {"float": 0.4, "(D,)": leaf(torch.randn(data, dtype=dt)),
                      "full": leaf(torch.randn(b, *data, dtype=dt))}[obs]
    opts = dict(likelihood=likelihood, kl=kl, z=z if kl == "mc" else None, beta=beta,
                free_bits=free_bits, obs_logvar=obs_logvar, reduction=reduction)
    ins = [x, recon, mu, lv] + ([z] if kl == "mc" else []) + (
        [obs_logvar] if isinstance(obs_logvar, torch.Tensor) else [])
    kl_bl = (F.kl_analytic_dim(mu, lv) if kl == "analytic" else F.kl_mc_dim(z, mu, lv)).detach()
    if free_bits > 0 and b > 0 and ((kl_bl.mean(0) - free_bits).abs() < 1e-3).any():
        return  # too close to the clamp's kink for a comparison in fp32
    got = fastvae.elbo(x, recon, mu, lv, backend=backend, **opts)
    want = F.elbo(x, recon, mu, lv, **opts)
    assert got.dtype == result_dtype(dt) and got.shape == want.shape
    scale = 10.0 * (x.numel() + mu.numel() + 1) / max(b, 1) * (1 if reduction == "mean" else max(b, 1))
    assert_close("value", got, want, dt, rtol=TOL[dt], scale=scale)
    if got.numel() == 0:
        return
    w = torch.rand(got.shape, dtype=F64) + 0.5
    for i, (g, e) in enumerate(zip(grads(got, ins, w), grads(want, ins, w))):
        s = (e.abs().max() if e.numel() else 0.0) + 1
        assert_close(f"grad {i}", g, e, dt, scale=s)


# -- a learned prior N(prior_mu, exp(prior_logvar)) ----------------------------------------

def prior_inputs(layout, b, l, dtype):
    if layout == "(L,)":
        return leaf(torch.randn(l, dtype=dtype)), leaf(torch.randn(l, dtype=dtype))
    if layout == "(B,L)":
        return leaf(torch.randn(b, l, dtype=dtype)), leaf(torch.randn(b, l, dtype=dtype))
    if layout == "(B,1)+(1,L)":
        return leaf(torch.randn(b, 1, dtype=dtype)), leaf(torch.randn(1, l, dtype=dtype))
    if layout == "numbers":
        return 0.3, -0.5
    return leaf(torch.randn(b, l, dtype=dtype)), None  # the mean only: unit variances


@pytest.mark.parametrize("layout", ["(L,)", "(B,L)", "(B,1)+(1,L)", "numbers", "mean only"])
@pytest.mark.parametrize("kl", ["analytic", "mc"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("fb", [0.0, 0.4])
def test_learned_prior(seed, backend, layout, kl, reduction, fb):
    """The analytic KL becomes kl_normal's, the MC one's log p(z) the prior's; beta and
    free bits apply as to the N(0, I) KL; the prior's tensors get their gradients."""
    dt = case_dtype(backend)
    b, l = 9, 5
    x, recon, mu, lv, z = (leaf(t) for t in make(b, (13,), l, dt))
    pm, plv = prior_inputs(layout, b, l, dt)
    opts = dict(kl=kl, z=z if kl == "mc" else None, free_bits=fb, beta=0.7, reduction=reduction,
                likelihood="bernoulli")
    got = fastvae.elbo(x, recon, mu, lv, prior_mu=pm, prior_logvar=plv, backend=backend, **opts)
    want = F.elbo(x, recon, mu, lv, prior_mu=0.0 if pm is None else pm,
                  prior_logvar=0.0 if plv is None else plv, **opts)
    assert got.shape == want.shape
    assert_close("value", got, want, dt, rtol={F64: 1e-11})
    ins = [recon, mu, lv, z] + [t for t in (pm, plv) if isinstance(t, torch.Tensor)]
    w = torch.rand(got.shape, dtype=F64) + 0.5
    for i, (g, e) in enumerate(zip(grads(got, ins, w), grads(want, ins, w))):
        if e is None:
            assert g is None or not g.any()
            continue
        assert g.shape == ins[i].shape and g.dtype == ins[i].dtype
        assert_close(f"grad {i}", g, e, dt, rtol={F64: 1e-11}, scale=e.abs().max() + 1e-3)


def test_zero_prior_is_the_standard_normal(seed, backend):
    dt = case_dtype(backend)
    x, recon, mu, lv, z = make(6, (20,), 4, dt)
    zero = torch.zeros(6, 4, dtype=dt)
    for kl in ("analytic", "mc"):
        opts = dict(kl=kl, z=z if kl == "mc" else None, reduction="none", backend=backend)
        assert_close(kl, fastvae.elbo(x, recon, mu, lv, prior_mu=zero, prior_logvar=zero, **opts),
                     fastvae.elbo(x, recon, mu, lv, **opts), dt)


def test_learned_prior_errors(backend):
    x, recon, mu, lv, _ = make(4, (5,), 3, torch.float32)
    with pytest.raises(ValueError, match=r"prior_mu of shape \(2,\) does not broadcast to mu"):
        fastvae.elbo(x, recon, mu, lv, prior_mu=torch.zeros(2), backend=backend)
    with pytest.raises(TypeError, match="prior_logvar must be a number or a tensor broadcastable to mu, got str"):
        fastvae.elbo(x, recon, mu, lv, prior_logvar="big", backend=backend)
    with pytest.raises(ValueError, match="prior_logvar has 1 non-finite"):
        fastvae.elbo(x, recon, mu, lv, prior_logvar=torch.tensor([0.0, float("nan"), 0.0]),
                     backend=backend, validate=True)
