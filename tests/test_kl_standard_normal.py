"""fastvae.kl_standard_normal on every backend (the ``backend`` fixture): value and
gradients against the float64 formula KL = 0.5 * sum_l (mu^2 + exp(logvar) - 1 - logvar),
shapes, dtypes, layouts, empty inputs, gradcheck and a property test.

Launch counts of the Triton kernel: tests/test_triton_backend.py. Higher-order
gradients: tests/test_higher_order.py.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastvae
import _formulas as F
from _backends import case_dtype, generator
from _compare import assert_close, grads, leaf

F64 = torch.float64


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (7, 3), (2, 1003), (257, 33), (3, 4, 5),
                                   (4, 3, 200), (6,)])
def test_matches_formula(seed, backend, shape):
    dt = case_dtype(backend)
    mu = leaf(torch.randn(shape, dtype=dt) * 2)
    lv = leaf(torch.randn(shape, dtype=dt) * 2)
    got = fastvae.kl_standard_normal(mu, lv, backend=backend)
    assert fastvae.last_backend() == backend
    want = F.kl_analytic_dim(mu, lv).sum(-1)
    assert got.shape == shape[:-1] and got.dtype == (F64 if dt == F64 else torch.float32)
    assert_close("kl", got, want, dt, rtol={F64: 1e-12})
    w = torch.randn(shape[:-1], dtype=F64)
    # d kl / d logvar = 0.5 * (exp(lv) - 1) * w cancels near lv = 0: its terms set the scale.
    lv_terms = 0.5 * (lv.detach().double().exp() + 1) * w.abs()[..., None]
    g_mu, g_lv = grads(got, [mu, lv], w)
    e_mu, e_lv = grads(want, [mu, lv], w)
    assert g_mu.dtype == g_lv.dtype == dt
    assert_close("d kl / d mu", g_mu, e_mu, dt, rtol={F64: 1e-12})
    assert_close("d kl / d logvar", g_lv, e_lv, dt, rtol={F64: 1e-12}, scale=lv_terms)


def test_zero_at_prior_and_positive(seed, backend):
    z = torch.zeros(4, 9)
    assert torch.equal(fastvae.kl_standard_normal(z, z, backend=backend), torch.zeros(4))
    mu, lv = torch.randn(50, 9), torch.randn(50, 9)
    assert (fastvae.kl_standard_normal(mu, lv, backend=backend) > 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(5, 33), (257, 33), (4, 3, 200)])
def test_low_precision(seed, backend, dtype, shape):
    """Math in fp32 at least (half in, fp32 out) on the rounded inputs; gradients rounded
    once, to the input dtype."""
    mu = leaf(torch.randn(shape).to(dtype))
    lv = leaf(torch.randn(shape).to(dtype))
    got = fastvae.kl_standard_normal(mu, lv, backend=backend)
    assert got.dtype == torch.float32
    want = F.kl_analytic_dim(mu, lv).sum(-1)  # on the same (rounded) inputs
    assert_close("kl", got, want, torch.float32, rtol=1e-5)
    got.sum().backward()
    assert mu.grad.dtype == dtype and lv.grad.dtype == dtype
    e_mu, e_lv = grads(want, [mu, lv])
    eps = 4 * torch.finfo(dtype).eps  # fp32 math rounding, then one rounding to dtype
    assert_close("d/dmu", mu.grad, e_mu, dtype, rtol=eps)
    assert_close("d/dlogvar", lv.grad, e_lv, dtype, rtol=eps)


def test_gradcheck(backend):
    """float64 finite differences (on "triton" the documented float64 path)."""
    mu = torch.randn(3, 4, dtype=F64, requires_grad=True)
    lv = torch.randn(3, 4, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: fastvae.kl_standard_normal(a, b, backend=backend), (mu, lv))
    # one input needing no gradient
    assert torch.autograd.gradcheck(
        lambda b: fastvae.kl_standard_normal(mu.detach(), b, backend=backend), (lv,))


def test_empty_and_noncontiguous(seed, backend):
    dt = case_dtype(backend)
    kl = fastvae.kl_standard_normal
    assert kl(torch.zeros(0, 3), torch.zeros(0, 3), backend=backend).shape == (0,)
    # no latent dims: a KL of exactly 0 per row (as elbo treats L = 0)
    assert torch.equal(kl(torch.zeros(2, 0), torch.zeros(2, 0), backend=backend), torch.zeros(2))
    base = leaf(torch.randn(6, 10, dtype=dt))
    mu = base[:, ::2]  # strided
    lv1 = leaf(torch.randn(1, 5, dtype=dt))
    lv = lv1.expand(6, 5)  # expanded
    got = kl(mu, lv, backend=backend)
    want = F.kl_analytic_dim(mu, lv).sum(-1)
    assert_close("kl", got, want, dt, rtol={F64: 1e-12})
    for name, g, e in zip(("mu", "logvar"), grads(got, [base, lv1]), grads(want, [base, lv1])):
        assert_close(f"d/d{name}", g, e, dt, rtol={F64: 1e-12})


@settings(max_examples=25)
@given(lead=st.lists(st.integers(0, 5), min_size=0, max_size=2), l=st.integers(1, 40),
       seed=st.integers(0, 2**31 - 1), spread=st.floats(0.1, 5.0))
def test_property_matches_formula(backend, lead, l, seed, spread):
    g = generator(seed)
    shape = (*lead, l)
    dt = case_dtype(backend)
    mu = leaf((torch.randn(shape, generator=g, dtype=F64) * spread).to(dt))
    lv = leaf((torch.randn(shape, generator=g, dtype=F64) * spread).to(dt))
    want = F.kl_analytic_dim(mu, lv).sum(-1)
    got = fastvae.kl_standard_normal(mu, lv, backend=backend)
    # exp(lv) - 1 - lv cancels for small lv: the terms' size sets the scale
    terms = 0.5 * (mu.detach().double() ** 2 + lv.detach().double().exp() + 1
                   + lv.detach().double().abs()).sum(-1)
    assert_close("kl", got, want, dt, rtol={F64: 1e-11}, scale=terms)
    if got.numel():
        for name, g1, g2 in zip(("mu", "logvar"), grads(got, [mu, lv]), grads(want, [mu, lv])):
            assert_close(f"d/d{name}", g1, g2, dt, rtol={F64: 1e-11}, scale=1.0)

