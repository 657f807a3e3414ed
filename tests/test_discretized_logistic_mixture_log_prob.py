"""fastvae.discretized_logistic_mixture_log_prob on every backend (the ``backend`` fixture):
value and d/dparams against the float64 bin-probability formula of tests/_formulas.py
(RGB and grayscale, several shapes and M, edge bins), exact normalization over every
value of a pixel at random and extreme parameters, mpmath at extreme parameters, the
log-scale clamp, dtypes (of the parameters and of x), errors, empty batches, gradcheck,
higher-order gradients (its likelihood in the objectives: tests/test_dmol_objectives.py).
The "torch" backend runs float32 math in its C kernel (dmol_rows.c) and float64 on aten
ops: the formula, normalization and extreme-scale tests run it in both (``dtypes``).

Logits, means and NaNs far from the data: tests/test_dmol_log_prob_extremes.py; the
"torch" backend's memory, C kernel, aten fallback and threads:
tests/test_dmol_log_prob_torch_backend.py; the Triton kernel's fast-math bound:
tests/test_dmol_log_prob_fast_math.py.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

import fastvae

import _formulas as F
from _backends import INTERPRET, case_dtype
from _compare import assert_close, grads, leaf
from _dmol import F64, OP, all_values, check, extreme_params, make


def dtypes(backend):
    """The dtypes a case runs in: the backend's own (case_dtype), and on "torch" float32
    too, which its C kernel computes (float64 runs its aten path)."""
    return [case_dtype(backend)] + ([torch.float32] if backend == "torch" else [])


SHAPES = [(1, 1, 1, 1), (3, 4, 5, 10), (2, 7, 3, 4), (2, 9, 11, 3), (5, 2, 2, 33)]


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_formula(seed, backend, c, shape):
    b, h, w, m = shape
    for dt in dtypes(backend):
        x, p = make(b, c, h, w, m, dt)
        check(x, p, backend)


@pytest.mark.parametrize("bits", [1, 2, 5, 12, 16])
def test_other_bit_depths(seed, backend, bits):
    for dt in dtypes(backend):
        x, p = make(3, 3, 4, 3, 5, dt, bits=bits)
        check(x, p, backend, bits=bits)


def test_chunks_split_rows_and_pixels(seed, backend, monkeypatch):
    """The "torch" backend cuts samples into pixel chunks when one sample's parameters
    exceed its chunk: the same values at every chunk size (the other backends: as is)."""
    from fastvae.backends.torch_backend import discretized_logistic_mixture_log_prob as T
    x, p = make(3, 3, 5, 7, 4, case_dtype(backend))
    for elems in (1, 37, 400, T.CHUNK_ELEMS):
        monkeypatch.setattr(T, "CHUNK_ELEMS", elems)
        check(x, p, backend)



@pytest.mark.parametrize("c", [1, 3])
def test_int64_row_bases(seed, backend, monkeypatch, c):
    """The Triton kernel's int64 row bases (INT64: B times a sample's span past 2^31;
    offsets within a sample stay int32), taken at a small shape by lowering the host's
    limit: the formula's values and gradients. A sample whose own parameters would pass
    int32 goes to the "torch" backend."""
    if backend != "triton":
        pytest.skip("the Triton kernel's offsets")
    from fastvae.backends.triton_backend import _launch, configs
    monkeypatch.setattr(configs, "INT32_LIMIT", 100)
    seen, real = [], _launch.launch

    def record(kernel, grid, **args):
        seen.append(args["INT64"])
        return real(kernel, grid, **args)
    monkeypatch.setattr(_launch, "launch", record)
    x, p = make(3, c, 5, 7, 4, case_dtype(backend))
    check(x, p, backend)
    assert seen == [True]
    want = OP(x, p, backend="triton")
    monkeypatch.setattr(configs, "DMOL_ROW_LIMIT", p[0].numel() - 1)
    got = OP(x, p, backend="triton")
    assert fastvae.last_backend() == "torch" and seen == [True, True]
    assert_close("log p", got, want, p.dtype, scale=want.abs().max() + 1)


# The interpreter runs a program per pixel value here, at ~0.2 s each: it stops at 64 values.
NORMALIZATION = [(1, 1), (1, 2), (1, 5), (3, 1), (3, 2)] + ([] if INTERPRET else [(1, 8), (3, 3)])


@pytest.mark.parametrize("c,bits", NORMALIZATION)
def test_exact_normalization(seed, backend, c, bits):
    """Summed over every value of a pixel (all 2^bits gray levels; all (2^bits)^3 RGB
    triples), the probabilities add up to 1 to float64 rounding (float32's on "triton"),
    at random parameters with log-scales from -9 (clamped) to 40."""
    for dt in dtypes(backend):
        g = torch.Generator().manual_seed(seed)
        x = all_values(c, bits, dt)
        for m in ((7,) if INTERPRET else (1, 7)):
            p = extreme_params(c, m, g, dt).expand(x.shape[0], -1, -1, -1).contiguous()
            total = OP(x, p, bits=bits, backend=backend).double().exp().sum().item()
            assert abs(total - 1.0) <= (1e-13 if dt == F64 else 2e-5), (dt, m, total)


def test_top_edge_is_decided_by_the_bin(seed, backend):
    """254/255 is an interior bin: NVAE's ``x > 0.99`` threshold would give it the mass
    of the whole top edge [253.5/255 + ..., inf) and make the 256 masses add up to more
    than one. A component centred at 1 with a narrow scale shows the difference."""
    p = torch.zeros(2, 3, 1, 1, dtype=F64)
    p[:, 1], p[:, 2] = 1.0, -5.0                      # mean 1, log-scale -5: width ~0.007
    x = torch.tensor([254.0, 255.0], dtype=F64).view(2, 1, 1, 1) / 255
    y, h = 2 * 254 / 255 - 1, 1 / 255
    as_top_edge = torch.nn.functional.logsigmoid(torch.tensor(-(y - h - 1.0) * math.exp(5.0)))
    for dt in dtypes(backend):
        got = OP(x.to(dt), p.to(dt), backend=backend).double()
        want = F.dmol_log_prob(x, p)
        assert_close("log p", got, want, dt, rtol={F64: 1e-13})
        assert abs(got[0].item() - as_top_edge.item()) > 1.0
        assert got.exp().sum() < 1.0 < as_top_edge.exp() + got[1].exp()


@pytest.mark.parametrize("bits", [8, 16])
def test_a_denormal_bin_width_keeps_finite_gradients(backend, bits):
    """Log-scales where the bin's width on the logistic's scale, 2h e^-s, is denormal in
    float32 (bits 8: s ~ 82.5-98.5; 16: from ~77) or underflows: every gradient finite
    and float64's (log p falls as -s there, so d/dlog_scale is -1)."""
    dt = torch.float32
    x = torch.tensor([0, 1, 100, 2 ** bits - 2, 2 ** bits - 1], dtype=F64) / (2 ** bits - 1)
    for s in (77.0, 85.0, 90.0, 98.0, 110.0):
        p = torch.tensor([0.0, 0.2, s], dtype=F64).repeat(5, 1).view(5, 3, 1, 1)
        got_p = leaf(p.to(dt))
        got = OP(x.view(5, 1, 1, 1).to(dt), got_p, bits=bits, backend=backend)
        want_p = leaf(p)
        want = OP(x.view(5, 1, 1, 1), want_p, bits=bits, backend="reference")
        assert_close(f"log p at s = {s}", got, want, dt)
        (g,), (e,) = grads(got, [got_p]), grads(want, [want_p])
        assert torch.isfinite(g).all(), (s, g)
        assert_close(f"gradient at s = {s}", g, e, dt, scale=1.0)


@pytest.mark.parametrize("c", [1, 3])
def test_extreme_parameters_against_mpmath(seed, backend, c):
    """One pixel at a time, values far in every tail, against mpmath at 100 digits."""
    g = torch.Generator().manual_seed(seed)
    m = 7
    per = 3 if c == 3 else 2
    pixels, params = [], []
    for k in (0, 1, 2, 127, 253, 254, 255):
        p = extreme_params(c, m, g, F64)
        p[0, :m] *= 10                                   # logits up to ~+-60
        for ch in range(c):
            base = m + per * m * ch
            p[0, base:base + m] = p[0, base:base + m] * 20   # means far outside [-1, 1]
            if per == 3:
                p[0, base + 2 * m:base + 3 * m] *= 5
        p[0, m + m:m + 2 * m, 0, 0] = torch.tensor([-9.0, -7.0, 0.0, 9.0, 60.0, 120.0, 3.0])
        pixels.append(torch.full((c,), k / 255.0, dtype=F64))
        params.append(p.view(-1))
    x = torch.stack(pixels).view(-1, c, 1, 1)
    p = torch.stack(params).view(len(params), -1, 1, 1)
    for dt in dtypes(backend):
        got = OP(x.to(dt), p.to(dt), backend=backend).double()
        assert torch.isfinite(got).all()
        # float32 rounds the inputs: compare with the oracle at the rounded inputs
        want = torch.tensor([F.dmol_log_prob_mpmath(xi.to(dt).double().tolist(),
                                                    pi.to(dt).double().tolist())
                             for xi, pi in zip(x.view(-1, c), p.view(len(params), -1))],
                            dtype=F64)
        # float32: the inputs' rounding is exact; its error is the math's (|log p| up to
        # ~1e4), relative to |log p| plus the kernel's absolute floor (its log(1 + e) is
        # fp32's log of a rounded 1 + e, and compiled lg2.approx: kernels/discretized_...)
        # float64: a bin's mass near 1 is rounded absolutely (~1e-16 in log p near 0)
        floor = 1e-4 if dt == F64 else 5.0   # rtol 2e-6 x 5 = FAST_MATH_BOUND
        assert_close("log p vs mpmath", got, want, dt,
                     rtol={F64: 1e-12, torch.float32: 2e-6}, scale=want.abs() + floor)
        gp = leaf(p.to(dt))
        value = OP(x.to(dt), gp, backend=backend)
        (gr,) = grads(value, [gp])
        assert torch.isfinite(gr).all()


def test_log_scale_clamp(backend):
    """Below -7 the log-scale is clamped: the same value as at -7, and no gradient."""
    for dt in dtypes(backend):
        x = torch.full((3, 1, 1, 1), 100 / 255, dtype=dt)
        p = torch.zeros(3, 3, 1, 1, dtype=dt)
        p[:, 1] = 100 / 255 * 2 - 1 + 0.003
        p[:, 2, 0, 0] = torch.tensor([-7.5, -7.0, -6.9], dtype=dt)
        p = leaf(p)
        v = OP(x, p, backend=backend)
        v.sum().backward()
        assert v[0].item() == pytest.approx(v[1].item(), rel=1e-6)
        assert p.grad[0, 2].item() == 0.0
        assert p.grad[1, 2].item() != 0.0 and p.grad[2, 2].item() != 0.0


def test_scale_beyond_float32_exp(backend):
    """log-scales where exp(-s) underflows (float32: ~88 and beyond; float64: ~745): the
    interior bin's log mass is log(2h) - s - log 4 + O(e^-s), finite, and d/ds -1."""
    for dt in dtypes(backend):
        s = torch.tensor([100.0, 200.0, 800.0 if dt == F64 else 300.0], dtype=F64)
        p = torch.zeros(3, 3, 1, 1, dtype=F64)
        p[:, 2, 0, 0] = s
        x = torch.full((3, 1, 1, 1), 100 / 255, dtype=F64)
        gp = leaf(p.to(dt))
        v = OP(x.to(dt), gp, backend=backend)
        want = math.log(2 / 255) - s - math.log(4.0)
        assert_close("log p", v, want, dt, rtol={F64: 1e-14}, scale=want.abs())
        v.sum().backward()
        assert_close("d/ds", gp.grad[:, 2, 0, 0], -torch.ones(3, dtype=F64), dt)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision(seed, backend, dtype):
    """Half inputs: math in float32, value float32, the gradient in params' dtype."""
    x, p = make(3, 3, 4, 5, 6)
    p = leaf(p.to(dtype))
    x = x.to(torch.float32)
    got = OP(x, p, backend=backend)
    assert got.dtype == torch.float32
    want = F.dmol_log_prob(x, p)  # at the rounded parameters
    assert_close("log p", got, want, torch.float32, rtol=1e-5, scale=want.abs().max())
    got.sum().backward()
    assert p.grad.dtype == dtype
    (e,) = grads(want, [p])
    # fp32 math, then one rounding to dtype
    assert_close("d/dparams", p.grad, e, dtype, rtol=max(2 * torch.finfo(dtype).eps, 2e-5),
                 scale=e.abs().max())


def test_autocast(seed, backend):
    """Under CPU autocast (bf16) a decoder's output feeds the op as it is."""
    if backend == "triton" and not INTERPRET:
        pytest.skip("CUDA autocast: tests/test_models.py")
    x, _ = make(2, 3, 4, 4, 3)
    x = x.float()
    lin = torch.nn.Linear(5, 30 * 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        params = lin(torch.randn(2, 5)).view(2, 30, 4, 4)
        value = OP(x, params, backend=backend)
    assert params.dtype == torch.bfloat16 and value.dtype == torch.float32
    value.sum().backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()


@pytest.mark.parametrize("c", [1, 3])
def test_gradcheck(backend, c):
    """float64 finite differences (on "triton": the float64 path)."""
    x, p = make(2, c, 1, 2, 2)
    p.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda q: OP(x, q, backend=backend), (p,))


def test_higher_order(seed, backend):
    """create_graph: d/dparams of (d log p / d params . v) matches the formula's."""
    x, p = make(2, 3, 2, 2, 3)
    p = leaf(p.to(case_dtype(backend)))
    v = torch.randn(p.shape, dtype=p.dtype)
    (g,) = torch.autograd.grad(OP(x.to(p.dtype), p, backend=backend).sum(), p, create_graph=True)
    (hv,) = torch.autograd.grad((g * v).sum(), p)
    q = leaf(p.detach().double())
    (ge,) = torch.autograd.grad(F.dmol_log_prob(x, q).sum(), q, create_graph=True)
    (hve,) = torch.autograd.grad((ge * v.double()).sum(), q)
    assert_close("Hv", hv, hve, p.dtype, scale=hve.abs().max())


def test_empty_batch(backend):
    x = torch.zeros(0, 3, 4, 4)
    p = torch.zeros(0, 20, 4, 4, requires_grad=True)
    out = OP(x, p, backend=backend)
    assert out.shape == (0,)
    out.sum().backward()
    assert p.grad.shape == p.shape


def test_x_gets_no_gradient(backend):
    x, p = make(2, 1, 3, 3, 2, case_dtype(backend))
    x.requires_grad_(True)
    p.requires_grad_(True)
    OP(x, p, backend=backend).sum().backward()
    assert x.grad is None and p.grad is not None
    # x alone needing one: no graph at all, as the reference's (backward then raises)
    assert not OP(x, p.detach(), backend=backend).requires_grad


# -- errors (before any backend runs) ------------------------------------------------

@pytest.mark.parametrize("xs,ps,match", [
    ((2, 2, 4, 4), (2, 20, 4, 4), "C = 1 or 3"),
    ((2, 3, 16), (2, 30, 16), r"\(B, C, H, W\)"),
    ((2, 3, 4, 4), (2, 25, 4, 4), r"10\*M"),
    ((2, 1, 4, 4), (2, 10, 4, 4), r"3\*M"),
    ((2, 3, 4, 4), (3, 30, 4, 4), "batch 2"),
    ((2, 3, 4, 4), (2, 30, 4, 5), "4x4"),
    ((2, 3, 4, 4), (2, 0, 4, 4), r"10\*M"),
])
def test_shape_errors(xs, ps, match):
    with pytest.raises(ValueError, match=match):
        OP(torch.zeros(xs), torch.zeros(ps))


def test_value_errors():
    p = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match="8-bit grid"):
        OP(torch.full((1, 1, 2, 2), 10 / 256), p, validate=True)
    OP(torch.full((1, 1, 2, 2), 10 / 256), p)  # validation off: the nearest bin
    OP(torch.full((1, 1, 2, 2), 10 / 255), p, validate=True)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        OP(torch.full((1, 1, 2, 2), 1.5), p, validate=True)
    with pytest.raises(ValueError, match="non-finite"):
        OP(torch.zeros(1, 1, 2, 2), torch.full((1, 3, 2, 2), float("nan")), validate=True)
    for bits in (0, 17, 2.5):
        with pytest.raises((ValueError, TypeError), match="bits"):
            OP(torch.zeros(1, 1, 2, 2), p, bits=bits)
    with pytest.raises(TypeError, match="floating-point"):
        OP(torch.zeros(1, 1, 2, 2, dtype=torch.uint8), p)


@pytest.mark.parametrize("shape", list(itertools.product([1, 3], [(2, 5, 7, 3)])))
def test_forward_without_grad_matches(seed, backend, shape):
    """Without a gradient wanted, the fused backends skip writing it: the same value."""
    c, (b, h, w, m) = shape
    x, p = make(b, c, h, w, m, case_dtype(backend))
    with torch.no_grad():
        v = OP(x, p, backend=backend)
    assert_close("log p", v, F.dmol_log_prob(x, p), p.dtype, scale=v.abs().max() + 1)


# -- the dtypes x may come in ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_a_grid_is_refused_exactly_where_x_dtype_cannot_hold_it(dtype):
    """``validation.holds_grid`` against every value of every grid: refused bits are those
    where some ``k / (2^bits - 1)``, rounded to x's dtype, rounds back to another bin."""
    from fastvae.validation import holds_grid
    p = torch.zeros(1, 3, 1, 1)
    for bits in range(1, 17):
        n = 2 ** bits - 1
        k = torch.arange(n + 1, dtype=F64)
        kept = torch.equal(torch.round((k / n).to(dtype).double() * n), k)
        assert holds_grid(dtype, bits) == kept, bits
        x = torch.full((1, 1, 1, 1), 1 / n).to(dtype)
        if kept:
            OP(x, p, bits=bits)
        else:
            with pytest.raises(TypeError, match=f"cannot hold a {bits}-bit grid"):
                OP(x, p, bits=bits)
