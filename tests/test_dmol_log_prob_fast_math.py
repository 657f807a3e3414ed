"""The fast math of kernels/discretized_logistic_mixture_log_prob.py (lg2.approx logs,
div.approx divisions), which the interpreter cannot run: the kernel's value formulas in
float32 on the CPU, at those instructions' worst errors, stay within its stated
FAST_MATH_BOUND of the same formulas with exact logs and divisions.

The op's values and gradients, every backend:
tests/test_discretized_logistic_mixture_log_prob.py."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

import _formulas as F
from _compare import assert_close
from _dmol import slots


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
