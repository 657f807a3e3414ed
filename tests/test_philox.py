"""The "torch" backend's in-kernel eps (fastvae/backends/torch_backend/philox.h): the
Triton backend's Philox stream and counter layout, with its uniforms bit for bit (the
``kernel_device`` tests: they run in tests/test_triton_interpreter.py's child under
TRITON_INTERPRET=1, or on a GPU), normals within a stated float32 bound of the float64
Box-Muller of the same uniforms, float32 z within a bound of the Triton backend's for
the same seed, and no eps kept for backward.

The statistics of the draws (KS, independence, seeding) are test_reparameterize.py's,
the seed contract with sample_with_kl test_sample_with_kl.py's."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import fastvae
from _compare import check_no_noise_saved
from fastvae import backends
from fastvae.backends.torch_backend import gaussian_rows, native

try:  # the Triton kernels' Box-Muller (a test kernel below calls it; a jit function's
    # names resolve in this module's globals)
    from fastvae.kernels.reparameterize import _box_muller
except ImportError:  # no triton: the kernel_device tests skip
    _box_muller = None

Q = gaussian_rows.Q
# |n - n64| <= NORMAL_BOUND * max(1, |n64|) between the C normals and float64 Box-Muller
# of the same uniforms (measured: 7.5e-7 absolute, 5.4e-7 relative over 8M normals).
NORMAL_BOUND = 8e-7


@pytest.fixture
def kernel():
    if native.load() is None:
        pytest.skip(f"compiled kernel unavailable here: {native.status()}")


def _box_muller64(u):
    """float64 normals of (count, 4) uniforms, paired (1, 2), (3, 4) as tl.randn4x does."""
    u = u.double()
    r = torch.sqrt(-2 * torch.log(u[:, 0::2].clamp(min=float(np.float32(1e-7)))))
    theta = 2 * np.pi * u[:, 1::2]
    out = torch.empty_like(u)
    out[:, 0::2], out[:, 1::2] = r * torch.cos(theta), r * torch.sin(theta)
    return out


@pytest.mark.parametrize("seed,first", [(3, 0), (2**62 - 1, 2**32 - 4096)])
def test_normals_within_the_bound_of_float64(kernel, seed, first):
    u, n = gaussian_rows.philox_eval(seed, first, 1 << 16)
    assert (u >= 0).all() and (u < 1).all()
    want = _box_muller64(u)
    assert ((n.double() - want).abs() <= NORMAL_BOUND * want.abs().clamp(min=1)).all()


def test_layout_and_the_seed_words(kernel):
    """Element i of sample k of a (B, L) draw is normal (i mod 4Q) // Q of counter
    k CPAD + (i // 4Q) Q + i mod Q; the seed's high word and the counter's matter."""
    b, l, k = 3, 3000, 2                           # B L = 9000: a partial last chunk
    seed = torch.tensor([2**40 + 5], dtype=torch.int64)
    eps = torch.empty(k, b, l)
    assert gaussian_rows.sample_rows(None, torch.zeros(b, l), seed, k, eps)
    cpad = gaussian_rows.cpad(b * l)
    assert cpad == 3 * Q
    i = torch.arange(b * l)
    for s in range(k):
        _, n = gaussian_rows.philox_eval(2**40 + 5, s * cpad, cpad)
        want = n[(i // (4 * Q)) * Q + i % Q, (i % (4 * Q)) // Q]
        assert torch.equal(eps[s].flatten(), want)
    _, low = gaussian_rows.philox_eval(5, 0, 16)
    _, high = gaussian_rows.philox_eval(2**40 + 5, 0, 16)
    _, far = gaussian_rows.philox_eval(2**40 + 5, 2**32, 16)
    assert not torch.equal(low, high) and not torch.equal(high, far)


def test_no_eps_is_saved(kernel):
    check_no_noise_saved("torch")


def test_noise_is_a_seed_only_for_float32(kernel):
    """float64, 16-bit and empty inputs keep torch.randn's eps (the aten path), the same
    hand-over as the Triton backend's for float64 and empty ones."""
    tb = backends.get("torch")
    assert tb.reparameterize_noise(torch.zeros(2, 3), 4, None).dtype == torch.int64
    for mu in (torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.bfloat16),
               torch.zeros(0, 3)):
        noise = tb.reparameterize_noise(mu, 4, None)
        assert noise.dtype == mu.dtype and noise.shape == (4, *mu.shape)


# -- against the Triton kernels (interpreter or GPU) ------------------------------------------

def test_uniforms_bit_identical_to_triton(kernel_device, kernel):
    """tl.rand4x's four uniforms, bit for bit, at counters that use the high word and
    seeds that use the key's high word."""
    import triton
    import triton.language as tl

    from fastvae.backends.triton_backend import _launch

    @triton.jit
    def rand4x(SEED, U, first, N: tl.constexpr):
        i = tl.arange(0, N)
        u1, u2, u3, u4 = tl.rand4x(tl.load(SEED), first + i.to(tl.int64))
        tl.store(U + 4 * i, u1)
        tl.store(U + 4 * i + 1, u2)
        tl.store(U + 4 * i + 2, u3)
        tl.store(U + 4 * i + 3, u4)

    n = 1024
    for seed, first in [(0, 0), (12345, 2**32 - 512), (2**62 - 1, 2**40 + 16)]:
        u = torch.empty(n, 4, device=kernel_device)
        rand4x[(1,)](torch.tensor([seed], dtype=torch.int64, device=kernel_device), u, first,
                     N=n, **_launch.OPTIONS)
        mine, _ = gaussian_rows.philox_eval(seed, first, n)
        assert torch.equal(u.cpu().view(torch.int32), mine.view(torch.int32))


# The compiled kernel's eps against float64 Box-Muller of the same uniforms. Compiled,
# kernels/reparameterize.py's _box_muller runs the GPU's fast math (kernels/_math.py); the
# CUDA/PTX error bounds of each step, each plus the rounding of its fp32 result:
#   log2 u:  lg2.approx, |err| <= 2^-22 on [0.5, 2] and 2 ulp beyond: 2^-22 max(1, |log2 u|)
#            (+ 2^-24 |log2 u|)
#   L = -2 ln u = -2 (log2 u * ln 2): that, times 2 ln 2, plus one rounding (2^-24 L)
#   r = sqrt(L): sqrt.approx, 2^-23 relative (+ 2^-24), after |sqrt(L +- dL) - sqrt(L)|
#                <= dL / (sqrt(L) + sqrt(max(L - dL, 0)))
#   cos/sin:  cos.approx/sin.approx, 2^-20.9 absolute on [-pi, pi) (+ 2^-25), plus the fp32
#             angle's error: 2 pi rounded to fp32 (2.8e-8 relative) and one product
#             rounding (2^-24), times |theta| <= pi: 2.8e-7
#   eps = -r * trig: one rounding, 2^-24 |eps|
# so |eps - eps64| <= |trig| dr + r dtrig + 2^-24 |eps| (_fast_math_eps_error). At the tail
# (u1 = 1e-7, r = 5.68) that is 7.0e-6 where |eps| = r, and 4.6e-6 where eps is near 0 (r
# dtrig alone): 5.8x the C normals' NORMAL_BOUND * max(1, |eps|), the bound the Triton
# normals were given (right for the interpreter's exact float32 math), and why the test
# failed on the GPU. Near u1 = 1 (1 - u1 < 1.7e-7: log2 u1 within 2^-22 of 0, ~1 pair in 6
# million) dL is as large as L, and r's error up to sqrt(dL): 9.6e-4 at |eps| < 4e-4.
LG2_ABS, SQRT_REL = 2.0 ** -22, 2.0 ** -23 + 2.0 ** -24
TRIG_ABS = 2.0 ** -20.9 + 2.0 ** -25 + np.pi * 8.8e-8
# sd = tl.exp(0.5 logvar): ex2.approx (2 ulp, 2^-22) of y = 0.5 logvar log2(e) rounded to
# fp32 (2^-24 |y| in y, so 2^-24 |0.5 logvar| relative in sd); against it the C sd's 1 ulp
# and each path's sd * eps product (2^-24 each), relative to sd |eps|.
EX2_REL, SD_EPS_ROUND = 2.0 ** -22, 2.0 ** -23 + 2 * 2.0 ** -24


def _fast_math_eps_error(u1, u2, cosine):
    """The bound above on |eps - eps64| per element, from float64 uniforms ``u1``, ``u2``
    of its Box-Muller pair; ``cosine``: the pair's cos (True) or sin (False) normal."""
    l2 = torch.log2(u1.clamp(min=float(np.float32(1e-7))))
    big_l = -2 * np.log(2) * l2
    r = big_l.sqrt()
    theta = 2 * np.pi * (u2 - 0.5)
    trig = torch.where(cosine, theta.cos(), theta.sin()).abs()
    d_l = (2 * np.log(2) * (LG2_ABS * l2.abs().clamp(min=1) + 2.0 ** -24 * l2.abs())
           + 2.0 ** -24 * big_l)
    d_r = d_l / (r + (big_l - d_l).clamp(min=0).sqrt()) + SQRT_REL * r
    return trig * d_r + r * TRIG_ABS + 2.0 ** -24 * r * trig


def _draw_uniforms(seed, k, bl):
    """The float64 (u1, u2, cosine) behind each element of a (k, bl) draw (the counter
    layout of kernels/reparameterize.py, as test_layout_and_the_seed_words checks it)."""
    cpad = gaussian_rows.cpad(bl)
    u, _ = gaussian_rows.philox_eval(seed, 0, k * cpad)
    i = torch.arange(bl)
    quarter = (i % (4 * Q)) // Q
    u = u.double()[torch.arange(k)[:, None] * cpad + (i // (4 * Q)) * Q + i % Q]
    low = quarter < 2   # quarters 0, 1: the first pair (u1, u2); 2, 3: (u3, u4)
    return (torch.where(low, u[..., 0], u[..., 2]), torch.where(low, u[..., 1], u[..., 3]),
            (quarter % 2 == 0).expand(k, bl))


def test_fast_math_eps_bound_covers_the_stated_errors():
    """The bound above against the kernel's Box-Muller in float32 with each fast step off
    by its stated worst error (the literals here, not the bound's constants), every sign
    (what the interpreter cannot run): it holds, and is not loose by more than 2x."""
    gen = torch.Generator().manual_seed(1)
    u1 = torch.cat([torch.rand(20000, generator=gen, dtype=torch.float64),
                    torch.tensor([1e-9, 1e-7, 0.25, 0.5, 1 - 2.0 ** -24, 1 - 2.0 ** -22],
                                 dtype=torch.float64)]).float().double()
    u2 = torch.rand(len(u1), generator=gen, dtype=torch.float64).float().double()
    cosine = torch.arange(len(u1)) % 2 == 0
    bound = _fast_math_eps_error(u1, u2, cosine)
    u1c = u1.float().clamp(min=np.float32(1e-7))
    r64 = (-2 * torch.log(u1c.double())).sqrt()
    th64 = 2 * np.pi * (u2 - 0.5)
    want = -r64 * torch.where(cosine, th64.cos(), th64.sin())
    worst = 0.0
    for s_lg, s_sq, s_tr in itertools.product((-1, 1), repeat=3):
        l2 = torch.log2(u1c)
        l2 = (l2.double() + s_lg * 2.0 ** -22 * l2.double().abs().clamp(min=1)).float()
        big_l = (-2.0 * (l2 * np.float32(np.log(2)))).clamp(min=0)
        r = (big_l.double().sqrt() * (1 + s_sq * 2.0 ** -23)).float()
        theta = np.float32(2 * np.pi) * (u2.float() - 0.5)
        trig = torch.where(cosine, theta.double().cos(), theta.double().sin())
        trig = (trig + s_tr * 2.0 ** -20.9).float()
        err = ((-r * trig).double() - want).abs()
        assert (err <= bound).all(), (s_lg, s_sq, s_tr, float((err - bound).max()))
        worst = max(worst, float((err / bound).max()))
    assert worst > 0.5


def test_box_muller_where_the_fast_math_is_worst(kernel_device):
    """The kernel's _box_muller at the uniforms its fast math handles worst: u1 within a
    few ulps of 1 (log2 u1 as small as lg2.approx's error: r must stay a number; a log
    that came out >= 0 there would make it NaN), at and below the 1e-7 clamp, and angles
    where cos or sin is 0 or +-1. Within _fast_math_eps_error compiled, NORMAL_BOUND
    interpreted (exact float32 math), of float64 Box-Muller."""
    import triton
    import triton.language as tl

    from fastvae.backends.triton_backend import _launch
    from fastvae.kernels import _math

    @triton.jit
    def box_muller(U1, U2, N1, N2, N: tl.constexpr):
        i = tl.arange(0, N)
        n1, n2 = _box_muller(tl.load(U1 + i), tl.load(U2 + i))
        tl.store(N1 + i, n1)
        tl.store(N2 + i, n2)

    near_one = [1 - j * 2.0 ** -24 for j in range(1, 17)]
    u1s = near_one + [1e-9, 1e-7, 1.1e-7, 2e-7, 0.25, 0.5 - 2.0 ** -25, 0.5, 0.75,
                      1e-3, 0.1, 0.3, 0.6, 0.9, 0.99, 0.999, 0.9999]
    u2s = [0.0, 0.125, 0.25, 0.5, 0.75, 0.875, 0.5 - 2.0 ** -25, 1 - 2.0 ** -24]
    u1, u2 = (t.reshape(-1) for t in torch.meshgrid(
        torch.tensor(u1s, dtype=torch.float32), torch.tensor(u2s, dtype=torch.float32),
        indexing="ij"))
    n1 = torch.full_like(u1, float("nan"), device=kernel_device)
    n2 = torch.full_like(n1, float("nan"))
    # compiled as the kernels are (FMA fusion: what the error bound is stated for)
    box_muller[(1,)](u1.to(kernel_device), u2.to(kernel_device), n1, n2, N=len(u1),
                     **_launch.OPTIONS)
    u1d, u2d = u1.double(), u2.double()
    r = (-2 * torch.log(u1d.clamp(min=float(np.float32(1e-7))))).sqrt()
    theta = 2 * np.pi * (u2d - 0.5)
    for got, cosine, want in ((n1, True, -r * theta.cos()), (n2, False, -r * theta.sin())):
        got = got.cpu().double()
        if _math.FAST_MATH.value:
            bound = _fast_math_eps_error(u1d, u2d, torch.tensor(cosine).expand(len(u1)))
        else:
            bound = NORMAL_BOUND * want.abs().clamp(min=1)
        bad = ~((got - want).abs() <= bound)
        assert not bad.any(), [
            (u1[j].item(), u2[j].item(), got[j].item(), want[j].item(), bound[j].item())
            for j in bad.nonzero().flatten()[:8]]


def test_z_matches_the_triton_backend(kernel_device, kernel):
    """The same seed on both backends: float32 z (K samples; and sample_with_kl's) within
    each normal's bound against float64 times the standard deviation (the C normals'
    NORMAL_BOUND; the Triton ones' the same interpreted, the fast-math bound above
    compiled), plus sd's own error compiled and a few ulps of mu + sd eps."""
    from fastvae.kernels import _math
    tb, cb = backends.get("triton"), backends.get("torch")
    gen = torch.Generator().manual_seed(4)
    mu = torch.randn(7, 1000, generator=gen, device="cpu")
    lv = torch.randn(7, 1000, generator=gen, device="cpu") * 2
    seed = torch.tensor([987654321], dtype=torch.int64)
    z_c = cb.reparameterize_fwd(mu, lv, seed, 3)
    z_t = tb.reparameterize_fwd(mu.to(kernel_device), lv.to(kernel_device),
                                seed.to(kernel_device), 3).cpu()
    sd = torch.exp(0.5 * lv.double())
    eps = (z_c.double() - mu.double()) / sd
    c_err = NORMAL_BOUND * eps.abs().clamp(min=1)
    draws = _draw_uniforms(987654321, 3, 7000)
    u1 = draws[0].view(3, 7, 1000)
    if _math.FAST_MATH.value:
        t_err = _fast_math_eps_error(*draws).view(3, 7, 1000)
        sd_rel = EX2_REL + 2.0 ** -24 * 0.5 * lv.double().abs() + SD_EPS_ROUND
        t_err = t_err + sd_rel * eps.abs()
    else:
        t_err = c_err
    bound = sd * (c_err + t_err) + 4e-7 * z_c.double().abs() + 1e-30
    diff = (z_c.double() - z_t.double()).abs()
    ratio = torch.where(diff.isnan(), torch.inf, diff / bound)
    if not (ratio <= 1).all():
        w = int(ratio.argmax())
        k, i = divmod(w, 7000)
        raise AssertionError(
            f"{int((ratio > 1).sum())} of {ratio.numel()} z off; worst: sample {k}, element "
            f"{i} (row {i // 1000}, col {i % 1000}): torch {z_c.view(-1)[w].item()!r}, triton "
            f"{z_t.view(-1)[w].item()!r}, |diff| {diff.view(-1)[w].item():.3e} > bound "
            f"{bound.view(-1)[w].item():.3e} (mu {mu.view(-1)[i].item():.6g}, logvar "
            f"{lv.view(-1)[i].item():.6g}, eps {eps.view(-1)[w].item():.6g}, u1 "
            f"{u1.view(-1)[w].item():.9g}, triton's share sd * {t_err.view(-1)[w].item():.3e}, "
            f"fast math {bool(_math.FAST_MATH.value)})")
    z_s, _, *_ = cb.sample_with_kl_fwd(mu, lv, None, None, seed, [False] * 4)
    assert torch.equal(z_s, z_c[0])
