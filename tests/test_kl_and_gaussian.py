"""kl_standard_normal and gaussian_log_prob against the float64 formulas of DESIGN.md."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastvae
import _formulas as F

BACKENDS = ["torch", "reference"]


# -- kl_standard_normal ---------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (2, 1003), (3, 4, 5), (6,)])
def test_kl_matches_formula_fp64(seed, backend, shape):
    mu = F.leaf(torch.randn(shape, dtype=torch.float64) * 2)
    lv = F.leaf(torch.randn(shape, dtype=torch.float64) * 2)
    got = fastvae.kl_standard_normal(mu, lv, backend=backend)
    assert fastvae.last_backend() == backend
    want = F.kl_analytic_dim(mu, lv).sum(-1)
    assert got.shape == shape[:-1] and got.dtype == torch.float64
    F.assert_close(got, want, 1e-12, what="kl value")
    w = torch.randn(shape[:-1], dtype=torch.float64)
    # d kl / d logvar = 0.5 * (exp(lv) - 1) * w cancels near lv = 0: its terms set the scale.
    lv_terms = 0.5 * (lv.detach().exp() + 1) * w.abs()[..., None]
    g_mu, g_lv = F.grads(got, [mu, lv], w)
    e_mu, e_lv = F.grads(want, [mu, lv], w)
    F.assert_close(g_mu, e_mu, 1e-12, what="d kl / d mu")
    F.assert_close(g_lv, e_lv, 1e-12, scale=lv_terms, what="d kl / d logvar")


@pytest.mark.parametrize("backend", BACKENDS)
def test_kl_zero_at_prior_and_positive(seed, backend):
    z = torch.zeros(4, 9)
    assert torch.equal(fastvae.kl_standard_normal(z, z, backend=backend), torch.zeros(4))
    mu, lv = torch.randn(50, 9), torch.randn(50, 9)
    assert (fastvae.kl_standard_normal(mu, lv, backend=backend) > 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_kl_low_precision(seed, backend, dtype):
    mu = F.leaf(torch.randn(5, 33).to(dtype))
    lv = F.leaf(torch.randn(5, 33).to(dtype))
    got = fastvae.kl_standard_normal(mu, lv, backend=backend)
    assert got.dtype == torch.float32  # math in fp32 at least, half in -> fp32 out
    want = F.kl_analytic_dim(mu, lv).sum(-1)  # on the same (rounded) inputs
    F.assert_close(got, want, 1e-5, what="kl value")
    got.sum().backward()
    assert mu.grad.dtype == dtype and lv.grad.dtype == dtype
    e_mu, e_lv = F.grads(want, [mu, lv])
    eps = 4 * torch.finfo(dtype).eps  # fp32 math rounding, then one rounding to dtype
    F.assert_close(mu.grad, e_mu, eps, scale=e_mu.abs().max(), what="d/dmu")
    F.assert_close(lv.grad, e_lv, eps, scale=e_lv.abs().max(), what="d/dlogvar")


def test_kl_gradcheck():
    mu = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    lv = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: fastvae.kl_standard_normal(a, b, backend="torch"),
                                    (mu, lv))
    # one input needing no gradient
    assert torch.autograd.gradcheck(
        lambda b: fastvae.kl_standard_normal(mu.detach(), b, backend="torch"), (lv,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_kl_empty_and_noncontiguous(seed, backend):
    assert fastvae.kl_standard_normal(torch.zeros(0, 3), torch.zeros(0, 3), backend=backend).shape == (0,)
    # no latent dims: a KL of exactly 0 per row (as elbo treats L = 0)
    assert torch.equal(fastvae.kl_standard_normal(torch.zeros(2, 0), torch.zeros(2, 0), backend=backend),
                       torch.zeros(2))
    base = torch.randn(6, 10, dtype=torch.float64)
    mu = base[:, ::2]  # strided
    lv = torch.randn(1, 5, dtype=torch.float64).expand(6, 5)  # expanded
    got = fastvae.kl_standard_normal(mu, lv, backend=backend)
    F.assert_close(got, F.kl_analytic_dim(mu, lv).sum(-1), 1e-12)


# -- gaussian_log_prob ----------------------------------------------------------------

def _logvar_variants(shape):
    d = shape[-1]
    yield "float", -0.7
    yield "0-d", torch.tensor(0.3, dtype=torch.float64)
    yield "(D,)", torch.randn(d, dtype=torch.float64)
    yield "full", torch.randn(shape, dtype=torch.float64)
    if len(shape) > 1:
        yield "(1,D)", torch.randn(1, d, dtype=torch.float64)
        yield "per-row", torch.randn(*shape[:-1], 1, dtype=torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1), (5, 1003), (2, 3, 4), (7,)])
def test_gaussian_log_prob_matches_formula_fp64(seed, backend, shape):
    for name, lv in _logvar_variants(shape):
        x = F.leaf(torch.randn(shape, dtype=torch.float64))
        m = F.leaf(torch.randn(shape, dtype=torch.float64))
        lvl = F.leaf(lv) if isinstance(lv, torch.Tensor) else lv
        got = fastvae.gaussian_log_prob(x, m, lvl, backend=backend)
        want = F.gaussian_ll(x, m, lvl).expand(shape).sum(-1)
        assert got.shape == shape[:-1] and got.dtype == torch.float64, name
        scale = 0.5 * (F.d(x - m) ** 2).sum(-1).detach() + shape[-1] * 3
        F.assert_close(got, want, 1e-12, scale=scale, what=f"value, logvar {name}")
        w = torch.randn(shape[:-1], dtype=torch.float64)
        ins = [x, m, lvl]
        for g, e, what in zip(F.grads(got, ins, w), F.grads(want, ins, w), ["x", "mean", "logvar"]):
            if e is None:
                assert g is None
                continue
            assert g.shape == e.shape, (name, what)
            F.assert_close(g, e, 1e-11, scale=e.abs().max(), what=f"d/d{what}, logvar {name}")


def test_gaussian_log_prob_is_normal_log_prob(seed):
    """Against torch.distributions as a second, independent source."""
    x, m, lv = (torch.randn(4, 6, dtype=torch.float64) for _ in range(3))
    want = torch.distributions.Normal(m, torch.exp(0.5 * lv)).log_prob(x).sum(-1)
    F.assert_close(fastvae.gaussian_log_prob(x, m, lv, backend="torch"), want, 1e-12)


@pytest.mark.parametrize("lv_kind", ["float", "(D,)", "full", "per-row"])
def test_gaussian_log_prob_gradcheck(lv_kind):
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    m = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    lv = {"float": 0.4, "(D,)": torch.randn(4, dtype=torch.float64),
          "full": torch.randn(3, 4, dtype=torch.float64),
          "per-row": torch.randn(3, 1, dtype=torch.float64)}[lv_kind]
    if isinstance(lv, torch.Tensor):
        lv.requires_grad_(True)
        fn = lambda a, b, c: fastvae.gaussian_log_prob(a, b, c, backend="torch")  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, m, lv))
    else:
        fn = lambda a, b: fastvae.gaussian_log_prob(a, b, lv, backend="torch")  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, m))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gaussian_log_prob_low_precision(seed, backend, dtype):
    x = F.leaf(torch.randn(4, 65).to(dtype))
    m = F.leaf(torch.randn(4, 65).to(dtype))
    lv = F.leaf((torch.randn(65) * 0.5).to(dtype))
    got = fastvae.gaussian_log_prob(x, m, lv, backend=backend)
    assert got.dtype == torch.float32
    want = F.gaussian_ll(x, m, lv).sum(-1)
    F.assert_close(got, want, 1e-5, scale=65.0, what="value")
    got.sum().backward()
    assert x.grad.dtype == m.grad.dtype == lv.grad.dtype == dtype
    assert lv.grad.shape == (65,)


def test_gaussian_log_prob_mixed_fp64_logvar(seed):
    x, m = torch.randn(3, 5), torch.randn(3, 5)
    lv = torch.randn(5, dtype=torch.float64)
    got = fastvae.gaussian_log_prob(x, m, lv, backend="torch")
    assert got.dtype == torch.float64  # any fp64 input -> fp64 result
    F.assert_close(got, F.gaussian_ll(x, m, lv).sum(-1), 1e-12, scale=20.0)


def test_gaussian_log_prob_empty():
    x = torch.zeros(0, 4, requires_grad=True)
    out = fastvae.gaussian_log_prob(x, torch.zeros(0, 4), 0.0, backend="torch")
    assert out.shape == (0,)
    out.sum().backward()
    assert x.grad.shape == (0, 4)


# -- property tests: fused backend == reference == formula -------------------------------

@settings(max_examples=25, deadline=None)
@given(lead=st.lists(st.integers(0, 5), min_size=0, max_size=2), d=st.integers(1, 40),
       lv_kind=st.sampled_from(["float", "(D,)", "full"]), seed=st.integers(0, 2**31 - 1),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_property_gaussian_torch_vs_reference(lead, d, lv_kind, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    shape = (*lead, d)
    x = torch.randn(shape, generator=g, dtype=dtype)
    m = torch.randn(shape, generator=g, dtype=dtype)
    lv = {"float": 0.25, "(D,)": torch.randn(d, generator=g, dtype=dtype),
          "full": torch.randn(shape, generator=g, dtype=dtype)}[lv_kind]
    a = fastvae.gaussian_log_prob(x, m, lv, backend="torch")
    b = fastvae.gaussian_log_prob(x, m, lv, backend="reference")
    want = F.gaussian_ll(x, m, lv).expand(shape).sum(-1)
    tol = F.TOL[dtype]
    scale = 3.0 * d + 0.5 * float((F.d(x - m) ** 2 * 3).sum()) if x.numel() else 1.0
    F.assert_close(a, want, tol, scale=scale)
    F.assert_close(b, want, tol, scale=scale)


@settings(max_examples=25, deadline=None)
@given(lead=st.lists(st.integers(0, 5), min_size=0, max_size=2), l=st.integers(1, 40),
       seed=st.integers(0, 2**31 - 1), spread=st.floats(0.1, 5.0))
def test_property_kl_torch_vs_reference(lead, l, seed, spread):
    g = torch.Generator().manual_seed(seed)
    shape = (*lead, l)
    mu = (torch.randn(shape, generator=g, dtype=torch.float64) * spread).requires_grad_()
    lv = (torch.randn(shape, generator=g, dtype=torch.float64) * spread).requires_grad_()
    want = F.kl_analytic_dim(mu, lv).sum(-1)
    for backend in BACKENDS:
        got = fastvae.kl_standard_normal(mu, lv, backend=backend)
        F.assert_close(got, want, 1e-11)
        if got.numel():
            for g1, g2 in zip(F.grads(got, [mu, lv]), F.grads(want, [mu, lv])):
                F.assert_close(g1, g2, 1e-11, scale=1.0)


def test_half_log_2pi_constant():
    # a unit-variance density at its mean: exactly -0.5 log(2 pi) per dim
    got = fastvae.gaussian_log_prob(torch.zeros(1, 10, dtype=torch.float64),
                                    torch.zeros(1, 10, dtype=torch.float64), 0.0, backend="torch")
    assert abs(got.item() + 5 * math.log(2 * math.pi)) < 1e-12
