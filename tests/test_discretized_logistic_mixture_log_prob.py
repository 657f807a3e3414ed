"""fastvae.discretized_logistic_mixture_log_prob on every backend (the ``backend`` fixture):
value and d/dparams against the float64 bin-probability formula of tests/_formulas.py
(RGB and grayscale, several shapes and M, edge bins), exact normalization over every
value of a pixel at random and extreme parameters, mpmath at extreme parameters, the
log-scale clamp, dtypes, errors, empty batches, gradcheck, higher-order gradients (its
likelihood in the objectives: tests/test_dmol_objectives.py); and, on the "torch" backend, that no
B x C x M x H x W tensor is ever made. The "torch" backend runs float32 math in its C
kernel (dmol_rows.c) and float64 on aten ops: the formula, normalization and extreme-scale
tests run it in both (``dtypes``); its aten fallback for float32 (``cpu_path``) and the
kernel's thread-count independence are tested at the end.
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
from _dmol import F64, OP, all_values, extreme_params, make, slots


def check(x, params, backend, bits=8, rtol=None):
    dt = params.dtype
    p = leaf(params)
    got = OP(x, p, bits=bits, backend=backend)
    assert fastvae.last_backend() == backend
    assert got.shape == (x.shape[0],) and got.dtype == (F64 if dt == F64 else torch.float32)
    want = F.dmol_log_prob(x, p, bits)
    # summed terms: log p per pixel is of the order of C * |log bin mass|
    assert_close("log p", got, want, dt, rtol=rtol, scale=want.abs().max() + 1)
    w = torch.rand(got.shape, dtype=F64) + 0.5
    (g,), (e,) = grads(got, [p], w), grads(want, [p], w)
    assert g.dtype == dt and g.shape == p.shape
    assert_close("d log p / d params", g, e, dt, rtol=rtol, scale=e.abs().max() + 1e-3)


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


@pytest.mark.parametrize("c", [1, 3])
def test_logits_far_from_zero_or_from_each_other_keep_log_p(seed, backend, c):
    """log_softmax is shift-invariant, so log p must not round to the logits' magnitude:
    every logit shifted, one logit far below the others, one at -inf (a component
    switched off; validation off). The fused backends, in float32."""
    if backend == "reference":
        pytest.skip("the reference is the float64 oracle here")
    x, p = make(3, c, 2, 2, 4)
    x, p = x.float(), p.float()
    cases = []
    for shift in (1e3, 1e5, -1e6):
        q = p.clone()
        q[:, :4] += shift
        cases.append(q)
    for low in (-1e4, -1e6, float("-inf")):
        for m in (0, 2):
            q = p.clone()
            q[:, m] = low
            cases.append(q)
    for q in cases:
        q32, q64 = leaf(q), leaf(q.double())   # the same inputs
        got = OP(x, q32, backend=backend, validate=False)
        want = OP(x.double(), q64, backend="reference", validate=False)
        what = f"logits {q[0, :4, 0, 0].tolist()}"
        assert_close(f"log p, {what}", got, want, torch.float32, scale=want.abs().max())
        e = grads(want, [q64])[0]
        assert_close(f"d log p / d params, {what}", grads(got, [q32])[0], e, torch.float32,
                     scale=e.abs().max() + 1e-3)


def test_a_pixel_of_no_float32_mass_has_log_p_minus_inf(backend, cpu_path):
    """A mean past ~3e35 puts every component's log mass of a pixel below float32's
    range: log p is -inf on every path, as the reference's, not -inf - -inf = NaN from
    the logsumexp's shift (a docstring reviewer's find). The other pixel stays exact."""
    x = torch.full((2, 1, 1, 1), 128 / 255)
    p = torch.tensor([[0.0, 1e36, -7.0], [0.0, 0.5, -1.0]]).reshape(2, 3, 1, 1)
    for m in (1, 3):   # one component, and the same pixel under three
        q = p.repeat_interleave(m, dim=1) if m > 1 else p
        got = OP(x, q, backend=backend)
        assert got[0].item() == float("-inf")
        assert OP(x, q, backend="reference")[0].item() == float("-inf")   # in float32
        want = OP(x.double(), q.double(), backend="reference")
        assert_close("the finite pixel", got[1:], want[1:], torch.float32,
                     scale=want[1:].abs())


@pytest.mark.parametrize("c", [1, 3])
def test_a_nan_input_gives_nan_on_every_path(backend, cpu_path, c):
    """With validation off a NaN in x or in a parameter is the caller's, as in eager: its
    sample's log p is NaN on every path (clamping the bin dropped a NaN x, and the
    logsumexp's max a NaN mass, into finite or -inf values); the others stay exact."""
    m = 2
    x, p = make(5, c, 2, 2, m, torch.float32)
    want = OP(x, p, backend="reference")
    x[0, c - 1, 1, 0] = float("nan")
    last = 1 + (3 if c == 3 else 2) * (c - 1)     # the last channel's means: slot * m
    for b, slot in ((1, 1), (2, last * m + 1), (3, (last + 1) * m + 1)):   # logit, mean,
        p[b, slot, 0, 1] = float("nan")                                     # log-scale
    got = OP(x, p, backend=backend)
    assert got[:4].isnan().all(), got
    assert_close("the other sample", got[4:], want[4:], torch.float32, scale=want[4:].abs())


@pytest.mark.parametrize("channels", [1, 3])
def test_a_component_of_no_mass_adds_no_gradient(backend, cpu_path, channels):
    """A component whose mean is far from the pixel (1e30 to 1e38 on the [-1, 1] scale,
    what only a diverged network gives) has responsibility 0: its parameters' gradients are
    0, as the reference's, not e^-87 or 0 times its partials (which overflow to inf or NaN
    past ~3e35): a review's find. The live component's gradients stay the reference's."""
    x = torch.full((1, channels, 1, 1), 128 / 255)
    m = 2
    for far, log_scale in ((1e30, -7.0), (3e35, -7.0), (4e35, -7.0), (1e38, 0.0)):
        p = torch.zeros(1, slots(channels) * m, 1, 1)
        per = 3 if channels == 3 else 2
        for ch in range(channels):   # component 0 far off in every channel, 1 at the pixel
            base = m + per * m * ch
            p[0, base] = far
            p[0, base + m] = log_scale
        q = leaf(p)
        got = grads(OP(x, q, backend=backend), [q])[0]
        r = leaf(p)
        want = grads(OP(x, r, backend="reference"), [r])[0]
        assert torch.isfinite(got).all(), (far, got.flatten().tolist())
        dead = [m + per * m * ch + j for ch in range(channels) for j in (0, m)]
        dead += [(3 + 3 * ch) * m for ch in range(3)] if channels == 3 else []   # coefficients
        assert (got[0, dead] == 0).all(), (far, got.flatten().tolist())
        assert_close(f"gradients, the far mean {far:g}", got, want, torch.float32,
                     scale=want.abs().max())


def test_responsibilities_sum_to_one_far_from_the_data(seed, backend, cpu_path):
    """M identical components each take 1/M of a pixel however unlikely the pixel: the
    logits' gradient (responsibility minus softmax(logits)) is 0, and the components'
    gradients add up to the one component's of M = 1. Here each component's
    log-probability is -3000 to -6600 (means toward the far edge, the narrowest scale),
    where responsibilities taken as exp(lp - the rounded logsumexp) are all off by up to
    exp(ulp(6600)) ~ 1 + 5e-4 in float32."""
    x = torch.zeros(2, 3, 16, 16)
    means = torch.ones(2, 3, 16, 16)     # sample 0 at the far edge, sample 1 toward it
    means[1] = 0.5 + 0.5 * torch.rand(3, 16, 16)

    def params(m):
        p = torch.zeros(2, slots(3) * m, 16, 16)
        for ch in range(3):
            base = m + 3 * m * ch
            p[:, base:base + m] = means[:, ch:ch + 1]
            p[:, base + m:base + 2 * m] = -7.0  # the clamp's log-scale
        return leaf(p)
    one, four = params(1), params(4)
    got = OP(x, four, backend=backend)
    assert got.max() < -3000 * 256
    (g1,), (g4,) = grads(OP(x, one, backend=backend), [one]), grads(got, [four])
    assert g4[:, :4].abs().max() < 1e-7, g4[:, :4].abs().max()
    for ch in range(3):   # the means' and log-scales' gradients, summed over components
        for j in (0, 1):
            a = 1 + 3 * ch + j
            b = 4 + 12 * ch + 4 * j
            assert_close(f"channel {ch} slot {j}", g4[:, b:b + 4].sum(1), g1[:, a],
                         torch.float32, rtol=1e-6)


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



# -- the "torch" backend's memory: no B x C x M x H x W tensor --------------------------

@pytest.mark.parametrize("native", [True, False], ids=["kernel", "aten"])
def test_torch_backend_makes_no_full_size_intermediate(native, monkeypatch):
    """Every tensor an aten op creates during the forward (value and gradient) holds at
    most a chunk's worth, except the gradient itself: eager autograd makes ~25 tensors
    of B x C x M x H x W elements. On the C kernel's path and on its aten fallback."""
    if INTERPRET:
        pytest.skip("the torch backend's own: runs in the main session")
    from fastvae.backends.torch_backend import native as N
    if not native:
        monkeypatch.setenv("FASTVAE_NATIVE", "0")
    N.reset()
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    b, c, h, w, m = 16, 3, 32, 32, 10   # a sample's parameters fit one chunk
    x, p = make(b, c, h, w, m, torch.float32)
    p.requires_grad_(True)
    full = b * c * m * h * w
    sizes = []

    class Sizes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            seen = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                    if isinstance(t, torch.Tensor)}
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                    sizes.append((t.numel(), tuple(t.shape), str(func)))  # new memory
            return out

    with Sizes():
        from fastvae.backends.torch_backend import discretized_logistic_mixture_log_prob as T
        T.discretized_logistic_mixture_log_prob_fwd(x, p.detach(), 8, "mean", -1.0, [True])
    big = [s for s in sizes if s[0] >= full // 4 and s[1] != tuple(p.shape)]
    assert not big, big[:5]
    assert any(s[1] == tuple(p.shape) for s in sizes)  # the gradient, allocated once
    monkeypatch.undo()
    N.reset()


# -- the "torch" backend's C kernel: its path, its aten fallback, its threads -----------

def _kernel_calls(monkeypatch):
    """A list that grows by one per call of the C kernel's wrapper."""
    from fastvae.backends.torch_backend import discretized_logistic_mixture_log_prob as T
    calls, real = [], T.native_rows

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "native_rows", counting)
    return calls


def test_kernel_and_its_fallback(seed, backend, cpu_path, monkeypatch):
    """float32 math on the "torch" backend runs the C kernel where it builds ("default")
    and aten ops with FASTVAE_NATIVE=0 ("aten"); both match the float64 formula, RGB and
    gray, at pixel counts that leave a partial vector and a partial tile (99 and 75
    pixels), channels-last parameters, and bfloat16 ones (upcast to float32 a chunk of
    samples at a time, the gradient rounded once)."""
    if backend != "torch":
        pytest.skip("the torch backend's two paths")
    from fastvae.backends.torch_backend import discretized_logistic_mixture_log_prob as T
    from fastvae.backends.torch_backend import native
    if cpu_path == "default" and native.load() is None:
        pytest.skip(f"C kernels unavailable here: {native.status()}")
    calls = _kernel_calls(monkeypatch)
    monkeypatch.setattr(T, "NATIVE_CHUNK", 500)
    for c, (b, h, w, m) in ((1, (3, 9, 11, 4)), (3, (2, 5, 15, 3))):
        x, p = make(b, c, h, w, m, torch.float32)
        check(x, p, backend)
        check(x, p.to(memory_format=torch.channels_last), backend)
    x, p = make(4, 3, 3, 5, 2)
    p = leaf(p.to(torch.bfloat16))        # 300 elements a sample: one sample a chunk
    got = OP(x.float(), p, backend=backend)
    want = F.dmol_log_prob(x, p)
    assert_close("log p", got, want, torch.float32, rtol=1e-5, scale=want.abs().max())
    got.sum().backward()
    (e,) = grads(want, [p])
    assert p.grad.dtype == torch.bfloat16
    assert_close("d/dparams", p.grad, e, torch.bfloat16, scale=e.abs().max())
    assert bool(calls) == (cpu_path == "default")


def test_kernel_same_bits_for_any_thread_count(monkeypatch):
    """Per-sample values and the gradient are the same bits for 1, 2 and 3 threads, on
    OpenMP or the Python pool: a sample's pixels are cut into units by the shape alone
    (here 4 units of at most 16 pixels), each summed by one thread in a fixed order."""
    if INTERPRET:
        pytest.skip("the torch backend's own: runs in the main session")
    from fastvae.backends.torch_backend import discretized_logistic_mixture_log_prob as T
    from fastvae.backends.torch_backend import native
    fn = T.native_kernel()
    if fn is None:
        pytest.skip(f"C kernels unavailable here: {native.status()}")
    monkeypatch.setattr(T, "PIXEL_BLOCK", 16)
    for c in (1, 3):
        x, p = make(5, c, 7, 9, 4, torch.float32)
        runs = []
        for threads, pool in itertools.product((1, 2, 3), (False, True)):
            monkeypatch.setattr(native, "_openmp", native._openmp and not pool)
            g = torch.empty_like(p)
            runs.append((T.native_rows(fn, x, p, g, 8, -0.5, threads=threads), g))
            monkeypatch.undo()
            monkeypatch.setattr(T, "PIXEL_BLOCK", 16)
        for rows, g in runs[1:]:
            assert torch.equal(rows, runs[0][0]) and torch.equal(g, runs[0][1])
        want = F.dmol_log_prob(x.double(), p.double())
        assert_close("log p", runs[0][0], want, torch.float32, scale=want.abs().max())


@pytest.mark.parametrize("shape", list(itertools.product([1, 3], [(2, 5, 7, 3)])))
def test_forward_without_grad_matches(seed, backend, shape):
    """Without a gradient wanted, the fused backends skip writing it: the same value."""
    c, (b, h, w, m) = shape
    x, p = make(b, c, h, w, m, case_dtype(backend))
    with torch.no_grad():
        v = OP(x, p, backend=backend)
    assert_close("log p", v, F.dmol_log_prob(x, p), p.dtype, scale=v.abs().max() + 1)


# -- fast math: the stated bound of kernels/discretized_logistic_mixture_log_prob.py -------

def _kernel_value(x, params, bits, lg, dv):
    """The kernel's value formulas in float32 per pixel (x (N, C), params (N, S*M)), with
    ``lg(t)`` for its fast logs and ``dv(a, b)`` for its fast divisions; exact logs where
    the kernel keeps them (Kahan's expm1)."""
    n = 2 ** bits - 1
    lv = torch.tensor(float(n))
    h = 1.0 / lv
    log_2h = torch.log(2.0 * h)
    m = params.shape[1] // slots(x.shape[1])
    k = torch.floor(x * lv + 0.5)
    y = k.clamp(0, n) * (2.0 / lv) - 1.0
    logits = params[:, :m]
    l_max = logits.max(1, keepdim=True).values
    log_pi = logits - (l_max + lg(torch.exp(logits - l_max).sum(1, keepdim=True)))

    def kahan_tanh(v):
        a = v.abs()
        u = torch.exp(-2.0 * a)
        skip = (u == 1.0) | (u == 0.0)
        em = torch.where(skip, -2.0 * a,
                         (u - 1.0) * (-2.0 * a) / torch.log(torch.where(skip, 0.5, u)))
        em = torch.where(a > 0.5, u - 1.0, em)
        t = -em / (2.0 + em)
        return torch.where(v < 0, -t, t)

    def bin_value(yc, mean, ls, kc):
        inv_s = torch.exp(-ls)
        a, b = (yc - mean + h) * inv_s, (yc - mean - h) * inv_s
        log_w = log_2h - ls
        w = torch.exp(log_w)
        u = torch.exp(-w)
        skip = (u == 1.0) | (u == 0.0)
        kahan = torch.where(skip, 1.0, dv(1.0 - u, -torch.log(torch.where(skip, 0.5, u))))
        ratio = torch.where(w > 1.0, dv(1.0 - u, w.clamp(min=1.0)), kahan)
        lsa = a.clamp(max=0) - lg(1.0 + torch.exp(-a.abs()))
        lsb = (-b).clamp(max=0) - lg(1.0 + torch.exp(-b.abs()))
        top, bottom = kc >= n, kc <= 0
        return (torch.where(top, 0.0, lsa) + torch.where(bottom, 0.0, lsb)
                + torch.where(~top & ~bottom, log_w + lg(ratio), 0.0))

    per = 3 if x.shape[1] == 3 else 2
    total = log_pi
    for c in range(x.shape[1]):
        base = m + per * m * c
        mean = params[:, base:base + m]
        if c == 1:
            mean = mean + kahan_tanh(params[:, m + 2 * m:m + 3 * m]) * y[:, :1]
        if c == 2:
            mean = (mean + kahan_tanh(params[:, m + per * m + 2 * m:m + per * m + 3 * m])
                    * y[:, :1] + kahan_tanh(params[:, base + 2 * m:base + 3 * m]) * y[:, 1:2])
        ls = params[:, base + m:base + 2 * m].clamp(min=-7.0)
        total = total + bin_value(y[:, c:c + 1], mean, ls, k[:, c:c + 1])
    t_max = total.max(1, keepdim=True).values
    return (t_max + lg(torch.exp(total - t_max).sum(1, keepdim=True)))[:, 0]


@pytest.mark.parametrize("c", [1, 3])
def test_fast_math_within_the_stated_bound(c):
    """Compiled, the kernel's logs are lg2.approx (2^-22 in log2: absolute on [0.5, 2],
    relative beyond) and its divisions div.approx (2 ulp): at those worst errors, every
    sign, a pixel's log p stays within FAST_MATH_BOUND of the same float32 formulas with
    exact logs and divisions, from below the log-scale clamp to very wide components.
    (What the interpreter cannot run, bounded on CPU; the formulas are checked against
    the float64 ones first.)"""
    from fastvae.kernels.discretized_logistic_mixture_log_prob import FAST_MATH_BOUND
    g = torch.Generator().manual_seed(7 + c)
    m, n_pix, bits = 16, 4000, 8
    x = torch.randint(0, 256, (n_pix, c), generator=g).float() / 255
    x[:200] = 0.0
    x[200:400] = 1.0
    p = torch.randn(n_pix, slots(c) * m, generator=g) * 3
    per = 3 if c == 3 else 2
    for ch in range(c):  # log-scales over [-9, 12]: the clamp, sharp bins, wide logistics
        base = m + per * m * ch
        p[:, base + m:base + 2 * m] = torch.rand(n_pix, m, generator=g) * 21 - 9
    exact = _kernel_value(x, p, bits, torch.log, torch.div)
    want = F.dmol_log_prob(x.double()[:, :, None, None], p.double()[:, :, None, None], bits)
    assert_close("float32 formulas", exact, want, torch.float32, scale=want.abs() + 1)
    ln2 = math.log(2.0)
    for lg_sign, dv_sign in itertools.product((-1, 1), (-1, 1)):
        e = lg_sign * 2.0 ** -22

        def lg(t):
            l2 = torch.log2(t)
            return (l2 + e * torch.clamp(l2.abs(), min=1.0)) * ln2

        def dv(a, b):
            return a / b * (1 + dv_sign * 2.0 ** -23)
        err = (_kernel_value(x, p, bits, lg, dv).double() - exact.double()).abs()
        assert float(err.max()) <= FAST_MATH_BOUND, float(err.max())


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
