"""Gradients of inputs shared by every row: a prior's ``(L,)`` mean and log-variance, a
``(D,)`` obs_logvar or log-variance. Each op writes such an input's gradient per row and
``fastvae.ops`` sums it over rows; the per-row terms are float32 at least
(``fastvae._dtypes.saved_grad_dtype``) and are rounded to a 16-bit input's dtype once,
after the sum. Rounded per row first, the sum of a few hundred rows was off by tens of
percent. A 16-bit posterior beside a float32 prior: the prior's gradients are computed
in float32, not in the posterior's dtype (where they overflowed to -inf)."""
from __future__ import annotations

import pytest
import torch

import fastvae
from _backends import INTERPRET, bounded
from _compare import assert_close, leaf

BF16, F64 = torch.bfloat16, torch.float64
ONE_ROUNDING = 2.0 ** -7   # bf16's unit roundoff is 2^-8: one rounding, and float32 sums


def _grads(fn, inputs, wanted):
    """d(fn(*inputs) . w)/d(inputs[i] for i in wanted), w fixed random row weights of
    either sign (a sum over rows that cancels, as a loss's gradient does)."""
    ins = [leaf(t) if i in wanted else t for i, t in enumerate(inputs)]
    out = fn(*ins)
    w = torch.randn(out.shape[0], generator=torch.Generator().manual_seed(1),
                    device="cpu").to(out.device, out.dtype)
    return torch.autograd.grad((out * w).sum(), [ins[i] for i in wanted])


def _check(name, fn, inputs, wanted, backend):
    got = _grads(lambda *a: fn(*a, backend=backend), inputs, wanted)
    want = _grads(lambda *a: fn(*a, backend="reference"), [t.double() for t in inputs], wanted)
    for i, g, w in zip(wanted, got, want):
        assert g.dtype == inputs[i].dtype, f"{name} input {i}: gradient dtype {g.dtype}"
        # elementwise: each element of a sum that cancels is still within one rounding
        assert_close(f"{name}: gradient of shared input {i}", g, w, BF16, rtol=ONE_ROUNDING,
                     scale=1e-3 * w.abs().max())


def test_a_shared_bf16_input_is_rounded_once(seed, backend):
    b, d, l = bounded(b=300, d=24, l=64)[:3]
    r = lambda *s: torch.randn(*s).to(BF16)  # noqa: E731
    mq, lq, mp, lp = r(b, l), r(b, l) * 0.5, r(l), r(l) * 0.5
    x, mean, obs = torch.rand(b, d).to(BF16), r(b, d), r(d) * 0.3
    _check("kl_normal", fastvae.kl_normal, (mq, lq, mp, lp), (2, 3), backend)
    _check("sample_with_kl", lambda *a, backend: fastvae.sample_with_kl(*a, backend=backend)[1],
           (mq, lq, mp, lp), (2, 3), backend)
    _check("gaussian_log_prob", fastvae.gaussian_log_prob, (x, mean, obs), (2,), backend)
    _check("elbo", lambda x, rc, m, v, o, pm, pv, backend: fastvae.elbo(
        x, rc, m, v, likelihood="gaussian", obs_logvar=o, prior_mu=pm, prior_logvar=pv,
        reduction="none", backend=backend), (x, mean, mq, lq, obs, mp, lp), (4, 5, 6), backend)
    k = 3
    zk = mq.float() + torch.randn(k, b, l)
    _check("iwae_bound", lambda x, rk, m, v, z, pm, pv, backend: fastvae.iwae_bound(
        x, rk, m, v, z, prior_mu=pm, prior_logvar=pv, backend=backend),
        (x, r(k, b, d), mq, lq, zk.to(BF16), mp, lp), (5, 6), backend)


@pytest.mark.parametrize("half", [torch.float16, BF16])
def test_a_half_posterior_keeps_a_float32_prior_gradient(seed, backend, half):
    """|dKL/dmu_p| = |mu_q - mu_p| e^15 ~ 3.3e6 overflows float16: the prior's gradients
    are float32 numbers, as kl_normal's, and sample_with_kl's equal them."""
    b, l = 4, 8
    mq = torch.ones(b, l, dtype=half) + torch.rand(b, l).to(half)
    lq = torch.zeros(b, l, dtype=half)
    mp, lp = torch.zeros(l), torch.full((l,), -15.0)
    want = _grads(lambda *a: fastvae.kl_normal(*a, backend="reference"),
                  [t.double() for t in (mq, lq, mp, lp)], (2, 3))
    for name, fn in (("kl_normal", fastvae.kl_normal),
                     ("sample_with_kl", lambda *a, backend: fastvae.sample_with_kl(
                         *a, backend=backend)[1])):
        got = _grads(lambda *a: fn(*a, backend=backend), (mq, lq, mp, lp), (2, 3))
        for what, g, w in zip(("dmu_p", "dlogvar_p"), got, want):
            assert g.dtype == torch.float32
            assert_close(f"{name} {what}", g, w, torch.float32)


def test_repeated_latents_of_the_mixture_bound_are_rounded_once(seed, backend):
    """The discretized-logistic IWAE bound repeats mu, logvar and a prior over its K samples
    before its Gaussian log densities; each gradient's sum over the copies rounds to bf16
    once."""
    # The interpreter pays per mixture row. At B = 100 the prior's gradients still sum
    # 400 copies: rounded per copy, they failed here as often as at B = 2000.
    b, l, k = (100 if INTERPRET else 2000), 8, 4
    r = lambda *s: torch.randn(*s).to(BF16)  # noqa: E731
    x = (torch.randint(0, 256, (b, 1, 2, 2)) / 127.5 - 1).to(BF16)
    mq, lq, mp, lp = r(b, l), r(b, l) * 0.5, r(l), r(l) * 0.5
    zk = (mq.float() + torch.randn(k, b, l)).to(BF16)
    _check("iwae_bound (mixture)", lambda x, rk, m, v, z, pm, pv, backend: fastvae.iwae_bound(
        x, rk, m, v, z, likelihood="discretized_logistic_mixture", prior_mu=pm,
        prior_logvar=pv, backend=backend), (x, r(k, b, 6, 2, 2), mq, lq, zk, mp, lp),
        (2, 3, 5, 6), backend)


def test_the_mixture_bounds_z_is_rounded_once(seed, backend):
    """z_k enters the discretized-logistic IWAE bound twice, in log p(z_k) and log q(z_k|x),
    whose gradients nearly cancel where q is close to p: their sum is float32 and rounds
    to bf16 once (each rounded first, the rounding would dominate the sum)."""
    b, l, k = 6, 8, 4
    x = (torch.randint(0, 256, (b, 1, 2, 2)) / 127.5 - 1).to(BF16)
    mp, lp = torch.randn(l).to(BF16), (torch.randn(l) * 0.5).to(BF16)
    mq = (mp.float() + 0.02 * torch.randn(b, l)).to(BF16)   # q close to p
    lq = (lp.float() + 0.03 * torch.randn(b, l)).to(BF16)
    zk = (mq.float() + 3 * torch.randn(k, b, l)).to(BF16)
    _check("iwae_bound (mixture)", lambda x, rk, m, v, z, pm, pv, backend: fastvae.iwae_bound(
        x, rk, m, v, z, likelihood="discretized_logistic_mixture", prior_mu=pm,
        prior_logvar=pv, backend=backend), (x, torch.randn(k, b, 6, 2, 2).to(BF16), mq, lq, zk,
                                            mp, lp), (4,), backend)
