"""fastvae.gaussian_log_prob on every backend (the ``backend`` fixture): value and
gradients against the float64 formula sum_d -0.5 * ((x - m)^2 exp(-s) + s + log 2 pi)
for every layout of the log-variance s (a float, 0-d, (D,), (1, D), per row, full),
torch.distributions as a second source, dtypes, empty inputs, gradcheck, a property test.

Launch counts of the Triton kernel: tests/test_triton_backend.py. Higher-order
gradients: tests/test_higher_order.py.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastvae
import _formulas as F
from _backends import bounded, case_dtype, generator
from _compare import assert_close, grads, leaf

F64 = torch.float64


def _logvar_variants(shape, dt):
    d = shape[-1]
    yield "float", -0.7
    yield "0-d", torch.tensor(0.3, dtype=dt)
    yield "(D,)", torch.randn(d, dtype=dt) * 0.5
    yield "full", torch.randn(shape, dtype=dt) * 0.5
    if len(shape) > 1:
        yield "(1,D)", torch.randn(1, d, dtype=dt)
        yield "per-row", torch.randn(*shape[:-1], 1, dtype=dt)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (5, 1003), (2, 3, 4), (7,), (257, 784),
                                   (2, 5, 1003)])
def test_matches_formula(seed, backend, shape):
    dt = case_dtype(backend)
    if len(shape) == 2:
        shape = bounded(b=shape[0], d=shape[1])
    for name, lv in _logvar_variants(shape, dt):
        x = leaf(torch.randn(shape, dtype=dt))
        m = leaf(torch.randn(shape, dtype=dt))
        lvl = leaf(lv)
        got = fastvae.gaussian_log_prob(x, m, lvl, backend=backend)
        assert fastvae.last_backend() == backend
        want = F.gaussian_ll(x, m, lvl).expand(shape).sum(-1)
        assert got.shape == shape[:-1], name
        assert got.dtype == (F64 if dt == F64 else torch.float32), name
        # the summed terms' size: a sum over D can cancel
        scale = 0.5 * (F.d(x - m) ** 2 * 3).sum(-1).detach() + shape[-1] * 3
        assert_close(f"value, logvar {name}", got, want, dt, rtol={F64: 1e-12}, scale=scale)
        w = torch.randn(shape[:-1], dtype=F64)
        ins = [x, m, lvl]
        for g, e, what in zip(grads(got, ins, w), grads(want, ins, w), ["x", "mean", "logvar"]):
            if isinstance(lvl, torch.Tensor) or what != "logvar":
                assert g.dtype == dt, (name, what)
            assert_close(f"d/d{what}, logvar {name}", g, e, dt, rtol={F64: 1e-11})


def test_is_normal_log_prob(seed, backend):
    """Against torch.distributions as a second, independent source."""
    dt = case_dtype(backend)
    x, m, lv = (torch.randn(4, 6, dtype=dt) for _ in range(3))
    want = torch.distributions.Normal(m.double(), torch.exp(0.5 * lv.double())).log_prob(
        x.double()).sum(-1)
    got = fastvae.gaussian_log_prob(x, m, lv, backend=backend)
    assert_close("log prob", got, want, dt, rtol={F64: 1e-12}, scale=want.abs().sum())


def test_half_log_2pi_constant(backend):
    """A unit-variance density at its mean: exactly -0.5 log(2 pi) per dim."""
    dt = case_dtype(backend)
    got = fastvae.gaussian_log_prob(torch.zeros(1, 10, dtype=dt), torch.zeros(1, 10, dtype=dt),
                                    0.0, backend=backend)
    assert abs(got.item() + 5 * math.log(2 * math.pi)) < (1e-12 if dt == F64 else 4e-6)


@pytest.mark.parametrize("lv_kind", ["float", "(D,)", "full", "per-row"])
def test_gradcheck(backend, lv_kind):
    """float64 finite differences (on "triton" the documented float64 path)."""
    x = torch.randn(3, 4, dtype=F64, requires_grad=True)
    m = torch.randn(3, 4, dtype=F64, requires_grad=True)
    lv = {"float": 0.4, "(D,)": torch.randn(4, dtype=F64),
          "full": torch.randn(3, 4, dtype=F64),
          "per-row": torch.randn(3, 1, dtype=F64)}[lv_kind]
    if isinstance(lv, torch.Tensor):
        lv.requires_grad_(True)
        fn = lambda a, b, c: fastvae.gaussian_log_prob(a, b, c, backend=backend)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, m, lv))
    else:
        fn = lambda a, b: fastvae.gaussian_log_prob(a, b, lv, backend=backend)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, m))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision(seed, backend, dtype):
    x = leaf(torch.randn(4, 65).to(dtype))
    m = leaf(torch.randn(4, 65).to(dtype))
    lv = leaf((torch.randn(65) * 0.5).to(dtype))
    got = fastvae.gaussian_log_prob(x, m, lv, backend=backend)
    assert got.dtype == torch.float32
    want = F.gaussian_ll(x, m, lv).sum(-1)  # on the same (rounded) inputs
    assert_close("value", got, want, torch.float32, rtol=1e-5, scale=65.0)
    got.sum().backward()
    assert x.grad.dtype == m.grad.dtype == lv.grad.dtype == dtype
    assert lv.grad.shape == (65,)
    for name, g, e in zip(("x", "mean", "logvar"), (x.grad, m.grad, lv.grad),
                          grads(want, [x, m, lv])):
        assert_close(f"d/d{name}", g, e, dtype, rtol=4 * torch.finfo(dtype).eps)


def test_mixed_float64_logvar(seed, backend):
    """Any float64 input makes a float64 result (on "triton" too: the float64 path)."""
    dt = case_dtype(backend, torch.float32)
    x, m = torch.randn(3, 5, dtype=dt), torch.randn(3, 5, dtype=dt)
    lv = torch.randn(5, dtype=F64)
    got = fastvae.gaussian_log_prob(x, m, lv, backend=backend)
    assert got.dtype == F64
    assert_close("value", got, F.gaussian_ll(x, m, lv).sum(-1), F64, rtol=1e-12, scale=20.0)


def test_empty(backend):
    x = torch.zeros(0, 4, requires_grad=True)
    out = fastvae.gaussian_log_prob(x, torch.zeros(0, 4), 0.0, backend=backend)
    assert out.shape == (0,)
    out.sum().backward()
    assert x.grad.shape == (0, 4)


@settings(max_examples=25)
@given(lead=st.lists(st.integers(0, 5), min_size=0, max_size=2), d=st.integers(1, 40),
       lv_kind=st.sampled_from(["float", "(D,)", "full"]), seed=st.integers(0, 2**31 - 1),
       dtype=st.sampled_from([torch.float32, F64]))
def test_property_matches_formula(backend, lead, d, lv_kind, seed, dtype):
    g = generator(seed)
    shape = (*lead, d)
    dt = case_dtype(backend, dtype)
    x = leaf(torch.randn(shape, generator=g, dtype=dt))
    m = leaf(torch.randn(shape, generator=g, dtype=dt))
    lv = {"float": 0.25, "(D,)": torch.randn(d, generator=g, dtype=dt),
          "full": torch.randn(shape, generator=g, dtype=dt)}[lv_kind]
    lv = leaf(lv)
    got = fastvae.gaussian_log_prob(x, m, lv, backend=backend)
    want = F.gaussian_ll(x, m, lv).expand(shape).sum(-1)
    scale = 3.0 * d + 0.5 * float((F.d(x - m).detach() ** 2 * 3).sum()) if x.numel() else 1.0
    assert_close("value", got, want, dt, scale=scale)
    if got.numel():
        ins = [x, m, lv]
        for name, g1, g2 in zip(("x", "mean", "logvar"), grads(got, ins), grads(want, ins)):
            assert_close(f"d/d{name}", g1, g2, dt, scale=scale)
