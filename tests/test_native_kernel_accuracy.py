"""The torch backend's C kernels (fastvae/backends/torch_backend/*.c, vecmath.h): the
accuracy of its own exp, log1p, log, sqrt, sin/cos, softplus and sigmoid (and the DMoL
kernel's expm1, tanh, log-sigmoid and log1mexp) against float64 over dense sweeps of
float32 inputs, and the 8- and 16-lane builds computing the same bits.

Threads: test_native_kernel_threads.py; fallback warnings and the on-disk cache:
test_native_kernel_cache.py. The results on real ELBO inputs (tails, strides, extreme
logits, both paths) are in test_closed_form.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fastvae.backends.torch_backend import native

from _native_kernel import _kernel_or_skip


# -- accuracy: a dense sweep of float32 inputs against float64 ----------------------------

def _floats(lo: float, hi: float, step: int) -> np.ndarray:
    """Every ``step``-th float32 in [lo, hi] by bit pattern (same sign), ends included."""
    a, b = sorted(int(i) for i in np.array([lo, hi], dtype=np.float32).view(np.int32))
    bits = np.arange(a, b + 1, step, dtype=np.int32)
    if bits[-1] != b:
        bits = np.append(bits, np.int32(b))
    return bits.view(np.float32)


def _run(what: str, v: np.ndarray) -> np.ndarray:
    inp = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
    out = torch.empty_like(inp)
    native.eval_elementwise(what, inp, out)
    return out.numpy()


def _ulps(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """|got - want| in units of the float32 spacing at ``want`` (float64)."""
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    return np.abs(got.astype(np.float64) - want) / ulp


# An odd stride over the bit patterns visits every mantissa residue: ~1.7M points per range
# (3 x 211: a subset of the earlier stride-211 sweep, for CI time). The bounds below hold
# with margin over a 49x denser sweep (stride 13, ~86M points per function; the measured
# maxima are in benchmarks/RESULTS.md). An ulp is the float32 spacing at the float64
# value, so a correctly rounded result is within 0.5 ulp.
STRIDE = 633


def test_exp_ulps():
    """exp(x), x in [-87, 0]: within 1.5 ulps (Cephes expf); below -87: exp(-87), an
    absolute error below 1.7e-38."""
    _kernel_or_skip()
    x = _floats(-0.0, -87.0, STRIDE)
    got, want = _run("exp", x), np.exp(x.astype(np.float64))
    assert _ulps(got, want).max() <= 1.5
    low = np.array([-87.0001, -88, -100, -1e4, -3.4e38, -np.inf], dtype=np.float32)
    got = _run("exp", low)
    assert np.all(got > 0) and np.all(np.abs(got - np.exp(low.astype(np.float64))) < 1.7e-38)


def test_log1p_ulps():
    """log1p(e), e in [0, 1] (the kernel's only range), denormals included: within 2.5
    ulps (2 atanh(e / (2 + e)): the rounded 2 + e and the division cost about 1 ulp);
    exact for e in [2^-125, 2^-24), where log1p(e) rounds to e and e / 2 is exact."""
    _kernel_or_skip()
    e = _floats(0.0, 1.0, STRIDE)
    got, want = _run("log1p", e), np.log1p(e.astype(np.float64))
    assert _ulps(got, want).max() <= 2.5
    tiny = e[(e < 2.0 ** -24) & (e >= 2.0 ** -125)]
    assert np.array_equal(_run("log1p", tiny), tiny)


def test_exp_any_ulps():
    """exp(x) for any x: within 1.5 ulps wherever the result is a normal float32
    (x in [-87.3, 88.7]); denormal results within 1.5e-45 (one denormal step); inf above
    88.73, 0 far below, NaN kept."""
    _kernel_or_skip()
    x = np.concatenate([_floats(-0.0, -87.3, STRIDE), _floats(0.0, 88.72, STRIDE)])
    got, want = _run("exp_any", x), np.exp(x.astype(np.float64))
    assert _ulps(got, want).max() <= 1.5
    sub = _floats(-87.34, -103.9, 97)
    assert np.all(np.abs(_run("exp_any", sub) - np.exp(sub.astype(np.float64))) <= 1.5e-45)
    edge = np.array([88.73, 89.0, 1e4, np.inf, -104.0, -1e4, -np.inf, np.nan], np.float32)
    got = _run("exp_any", edge)
    assert np.array_equal(got[:4], np.full(4, np.inf, np.float32))
    assert np.array_equal(got[4:7], np.zeros(3, np.float32)) and np.isnan(got[7])


def test_log_ulps():
    """log(x) for every positive float32 (denormals included): within 2.5 ulps (the
    series' 2.5 near 1, plus the exponent's two-part ln 2); log 0 = -inf, log inf = inf,
    NaN below 0 and for NaN."""
    _kernel_or_skip()
    x = np.concatenate([_floats(1.4e-45, 3.4e38, STRIDE), _floats(0.5, 2.0, 7)])
    got, want = _run("log", x), np.log(x.astype(np.float64))
    assert _ulps(got, want).max() <= 2.5
    edge = np.array([0.0, -0.0, np.inf, -1.0, -np.inf, np.nan], np.float32)
    got = _run("log", edge)
    assert np.array_equal(got[:3], np.array([-np.inf, -np.inf, np.inf], np.float32))
    assert np.all(np.isnan(got[3:]))


def test_log_normal_ulps():
    """log(x) for positive normal x without log_any's guards (the Box-Muller radius):
    within 2.5 ulps, as log_any."""
    _kernel_or_skip()
    x = np.concatenate([_floats(1.1754944e-38, 3.4e38, STRIDE), _floats(1e-7, 1.0, STRIDE)])
    assert _ulps(_run("log_normal", x), np.log(x.astype(np.float64))).max() <= 2.5


def test_sqrt_ulps():
    """sqrt(x) for x = 0 and normal x up to 2^126: within 0.5 ulp with AVX (vsqrtps), 1
    ulp from the Newton steps without; the Box-Muller radius needs [0, 33]."""
    _kernel_or_skip()
    x = np.concatenate([_floats(1.1754944e-38, 8.5e37, STRIDE), _floats(0.0, 64.0, 10 * STRIDE + 1)])
    got = _run("sqrt", x)
    assert _ulps(got, np.sqrt(x.astype(np.float64))).max() <= 1.0
    assert got[x == 0].tolist() == [0.0]


@pytest.mark.parametrize("what,fn", [("cos_turn", np.cos), ("sin_turn", np.sin)])
def test_cos_sin_of_turns(what, fn):
    """cos(2 pi t), sin(2 pi t) for t in [-1/2, 1/2] (the Box-Muller angle, reduced
    exactly in turns): within 2 ulps of the float64 value and 1e-7 absolute; exact at
    multiples of 1/4 (where float64's own sin(pi) is 1.2e-16, not 0)."""
    _kernel_or_skip()
    t = np.concatenate([_floats(-0.0, -0.5, STRIDE), _floats(0.0, 0.5, STRIDE)])
    t = t[np.abs(t) != 0.5]
    got, want = _run(what, t), fn(2 * np.pi * t.astype(np.float64))
    assert np.abs(got - want).max() <= 1e-7
    assert _ulps(got, want)[t != 0].max() <= 2.0
    quarters = np.array([-0.5, -0.25, 0.0, 0.25, 0.5], np.float32)
    want = np.round(fn(2 * np.pi * quarters.astype(np.float64)))
    assert np.array_equal(_run(what, quarters), want.astype(np.float32))


def _softplus64(l):
    return np.logaddexp(0.0, l)


def _sigmoid64(l):
    e = np.exp(-np.abs(l))
    return np.where(l >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@pytest.mark.parametrize("sign", [-1.0, 1.0])
def test_softplus_and_sigmoid_ulps(sign):
    """Logits of either sign up to |l| = 100, where l >= -87: softplus within 3 ulps and
    sigmoid within 3 (exp's error, then a rounded 1 + e and a division). Below -87, where
    both are exp(l) < 1.7e-38 and the kernel uses exp(-87): within 1.7e-38 absolute. (The
    row's value sums softplus, the gradient is x - sigmoid: ulps of these, not of their
    differences, are what the kernel controls.)"""
    _kernel_or_skip()
    l = _floats(0.0 * sign, 100.0 * sign, STRIDE)  # -0.0: negative floats share its sign bit
    l64 = l.astype(np.float64)
    sp, sig = _run("softplus", l), _run("sigmoid", l)
    want_sp, want_sig = _softplus64(l64), _sigmoid64(l64)
    normal = l64 >= -87.0
    assert _ulps(sp[normal], want_sp[normal]).max() <= 3.0
    assert _ulps(sig[normal], want_sig[normal]).max() <= 3.0
    assert np.all(np.abs(sp[~normal] - want_sp[~normal]) < 1.7e-38)
    assert np.all(np.abs(sig[~normal] - want_sig[~normal]) < 1.7e-38)
    if sign > 0:  # no overflow far out: softplus(l) = l, sigmoid = 1
        big = np.array([88.0, 1e4, 3.4e38], dtype=np.float32)
        assert np.array_equal(_run("softplus", big), big)
        assert np.array_equal(_run("sigmoid", big), np.ones(3, np.float32))


# -- the functions vecmath.h gained for the DMoL kernel (dmol_rows.c's test entry) -------

_DMOL_EVAL = {"expm1": 0, "tanh": 1, "sigmoid": 2, "softplus": 3, "log_sigmoid": 4,
              "log_sigmoid_grad": 5, "log1mexp": 6, "log1mexp_grad": 7}


def _run_dmol(what: str, v: np.ndarray) -> np.ndarray:
    import ctypes
    fn = native.symbol("fastvae_dmol_eval", [ctypes.c_int, ctypes.c_int64, ctypes.c_void_p,
                                             ctypes.c_void_p])
    inp = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
    out = torch.empty_like(inp)
    assert fn(_DMOL_EVAL[what], inp.numel(), inp.data_ptr(), out.data_ptr()) == 0
    return out.numpy()


def test_expm1_ulps():
    """expm1(x), x in [-87, 0]: within 1.5 ulps, relative to the result near 0 where
    e^x - 1 cancels (tiny x: exactly x); below -87: -1."""
    _kernel_or_skip()
    x = _floats(-0.0, -87.0, STRIDE)
    assert _ulps(_run_dmol("expm1", x), np.expm1(x.astype(np.float64))).max() <= 1.5
    tiny = x[(x > -2.0 ** -30) & (x < -2.0 ** -125)]
    assert np.array_equal(_run_dmol("expm1", tiny), tiny)
    low = np.array([-87.5, -1e4, -np.inf], dtype=np.float32)
    assert np.array_equal(_run_dmol("expm1", low), -np.ones(3, np.float32))


def test_tanh_ulps():
    """tanh(x), |x| <= 20: within 3 ulps (expm1, then a rounded 2 + e and a division),
    odd to the bit, tiny x exact; +-1 beyond, NaN kept."""
    _kernel_or_skip()
    x = _floats(0.0, 20.0, STRIDE)
    got = _run_dmol("tanh", x)
    assert _ulps(got, np.tanh(x.astype(np.float64))).max() <= 3.0
    assert np.array_equal(_run_dmol("tanh", -x), -got)
    tiny = x[(x > 0) & (x < 2.0 ** -30) & (x > 2.0 ** -100)]
    assert np.array_equal(_run_dmol("tanh", tiny), tiny)
    edge = np.array([30.0, 1e30, np.inf, -np.inf, np.nan], dtype=np.float32)
    got = _run_dmol("tanh", edge)
    assert np.array_equal(got[:4], np.array([1, 1, 1, -1], np.float32)) and np.isnan(got[4])


@pytest.mark.parametrize("sign", [-1.0, 1.0])
def test_sigmoid_family_ulps(sign):
    """|x| <= 87: sigmoid within 4.5 ulps, softplus 5, log sigmoid 5, and the derivative
    log_sigmoid_and_grad returns with it (sigmoid(-x)) 4.5: one exp, one division shared
    by sigmoid and log1p (their (1 + e)(2 + e) rounded once more than separate divisions).
    Four functions: about STRIDE, prime.
    Beyond 87, where the kernels' exp stops at e^-87: within 1.7e-38 of the exact values
    (softplus(x) = x, sigmoid 1, log sigmoid 0 far out on the right)."""
    _kernel_or_skip()
    x = _floats(0.0 * sign, 87.0 * sign, 631)  # prime, ~STRIDE
    x64 = x.astype(np.float64)
    ls = -np.logaddexp(0.0, -x64)
    for what, want, bound in (("sigmoid", _sigmoid64(x64), 4.5),
                              ("softplus", _softplus64(x64), 5.0),
                              ("log_sigmoid", ls, 5.0),
                              ("log_sigmoid_grad", _sigmoid64(-x64), 4.5)):
        assert _ulps(_run_dmol(what, x), want).max() <= bound, what
    far = np.array([87.5, 100.0, 1e4, 3.4e38], dtype=np.float32) * sign
    f64 = far.astype(np.float64)
    for what, want in (("sigmoid", _sigmoid64(f64)), ("softplus", _softplus64(f64)),
                       ("log_sigmoid", -np.logaddexp(0.0, -f64)),
                       ("log_sigmoid_grad", _sigmoid64(-f64))):
        got = _run_dmol(what, far).astype(np.float64)
        assert np.all(np.abs(got - want) <= 1.7e-38 + 1e-7 * np.abs(want)), what


def test_log1mexp_ulps():
    """log(1 - e^-w) and w / (e^w - 1), w in (0, 87]: within 3 ulps each (series below 1,
    log1p(-e^-w) above); w = 0: -inf and 1; w below 1e-30: log w to the ulp."""
    _kernel_or_skip()
    w = _floats(1.4e-45, 87.0, 631)  # prime, ~STRIDE: two functions, float64 log1p/expm1
    w64 = w.astype(np.float64)
    with np.errstate(divide="ignore"):
        want = np.where(w64 > np.log(2.0), np.log1p(-np.exp(-w64)), np.log(-np.expm1(-w64)))
    assert _ulps(_run_dmol("log1mexp", w), want).max() <= 3.0
    assert _ulps(_run_dmol("log1mexp_grad", w), w64 / np.expm1(w64)).max() <= 3.0
    zero = np.zeros(1, np.float32)
    assert _run_dmol("log1mexp", zero)[0] == -np.inf and _run_dmol("log1mexp_grad", zero)[0] == 1


def test_eval_rejects_unknown():
    _kernel_or_skip()
    with pytest.raises(KeyError):
        native.eval_elementwise("tanh", torch.zeros(8), torch.zeros(8))


# Inputs of each elementwise function, within its documented domain (native.eval_elementwise).
DOMAINS = {"exp": (-100.0, -1e-30), "log1p": (1e-30, 1.0), "softplus": (-100.0, 100.0),
           "sigmoid": (-100.0, 100.0), "exp_any": (-110.0, 90.0), "log": (1e-30, 1e30),
           "sqrt": (1e-30, 1e30), "cos_turn": (-0.5, 0.5), "sin_turn": (-0.5, 0.5),
           "log_normal": (1.2e-38, 1e30)}


def test_both_vector_widths_compute_the_same_bits(tmp_path, monkeypatch):
    """Where the CPU has AVX-512 the library is 16 lanes wide, elsewhere 8 (vecmath.h); the
    per-lane math must not depend on it. An 8-lane build of the same sources here
    (-mno-avx512f) draws the same Philox uniforms and normals and computes the same
    elementwise functions, bit for bit, over sizes with ragged tails."""
    import ctypes

    from fastvae.backends.torch_backend import gaussian_rows

    _kernel_or_skip()
    if native.lanes(native._lib) != 16:
        pytest.skip("this CPU's build is 8 lanes wide: the 16-lane one needs AVX-512")
    monkeypatch.setenv("FASTVAE_CACHE_DIR", str(tmp_path))
    narrow = ctypes.CDLL(native._library(native.read_sources(), native._compiler(),
                                         ["-O3", "-march=native", "-mno-avx512f", "-fPIC",
                                          "-shared"]))
    assert native.lanes(narrow) == 8

    seed, first, count = 0x1234_5678_9ABC_DEF, (1 << 32) - 40, 4096 + 83  # a carry, a tail
    u, n = torch.empty(count, 4), torch.empty(count, 4)
    assert narrow.fastvae_philox_eval(ctypes.c_int64(seed), ctypes.c_int64(first),
                                      ctypes.c_int64(count), ctypes.c_void_p(u.data_ptr()),
                                      ctypes.c_void_p(n.data_ptr())) == 0
    wide_u, wide_n = gaussian_rows.philox_eval(seed, first, count)
    assert torch.equal(u.view(torch.int32), wide_u.view(torch.int32))
    assert torch.equal(n.view(torch.int32), wide_n.view(torch.int32))

    for what, (lo, hi) in DOMAINS.items():
        step = 2049 if lo * hi > 0 else 4099  # ~1-4e5 points, an odd count
        v = np.concatenate([_floats(lo, -1e-30, step), _floats(1e-30, hi, step)]
                           if lo < 0 < hi else [_floats(lo, hi, step)])
        inp = torch.from_numpy(np.ascontiguousarray(v[: len(v) // 16 * 16 - 3]))
        out = torch.empty_like(inp)
        assert narrow.fastvae_eval(native._EVAL_CODES[what], ctypes.c_int64(inp.numel()),
                                   ctypes.c_void_p(inp.data_ptr()),
                                   ctypes.c_void_p(out.data_ptr())) == 0
        want = torch.empty_like(inp)
        native.eval_elementwise(what, inp, want)
        assert torch.equal(out.view(torch.int32), want.view(torch.int32)), what
