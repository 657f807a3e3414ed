"""fastvae.iwae_bound's numerics on every backend (the ``backend`` fixture): 16-bit
inputs, weights that sum to one at any size of log w, log-weights of order -1e4, many
rows, Bernoulli logits over the whole float range (the Triton kernels' products of
(1 + e) factors), and a row's weights summed in blocks.

The op's values and gradients over its options: tests/test_iwae_bound.py."""
from __future__ import annotations

import math

import pytest
import torch

import fastvae
import _formulas as F
from _backends import case_dtype
from _compare import assert_close, grads, leaf
from _iwae import F64, LIKELIHOODS, check, eager_fp32, grad_rtol, make


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
