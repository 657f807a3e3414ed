"""A difference of exactly 0 where the standardizing factor exp(-logvar/2) overflows
(float32: logvar < -177.4): data equal to the Gaussian mean, a sample equal to its
posterior mean (z = mu + sigma * eps rounds to mu once sigma is tiny), a posterior mean
equal to the prior's. The exact standardized value is 0, and every value and gradient is
finite; ``d * exp(-logvar/2)`` computed as inf * 0 made them NaN on every backend. Each
op on every backend against the float64 formulas, in lanes mixed with ordinary ones,
and at log-variances past float64's overflow against the closed form of d = 0.
"""
from __future__ import annotations

import math

import pytest
import torch

import fastvae
import _formulas as F
from _compare import assert_close, grads, leaf

F64 = torch.float64
CENTRES = [-180.0, -300.0, -600.0]   # the float64 textbook forms hold to -709
LOG_2PI = math.log(2 * math.pi)


def lanes(shape, centre, *, dtype=torch.float32):
    """(a log-variance tile, the mask of its vanishing lanes): every third lane at
    ``centre`` (plus a little noise), the others ordinary."""
    lv = torch.randn(shape, dtype=dtype)
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[..., ::3] = True
    return torch.where(mask, lv + centre, lv), mask


def check(name, got, want, ins, want_ins, dt=torch.float32, weight=None, rtol=None):
    assert_close(f"{name} value", got, want, dt, rtol=rtol)
    for i, (g, e) in enumerate(zip(grads(got, ins, weight), grads(want, want_ins, weight))):
        assert g is None or torch.isfinite(g).all(), f"{name}: input {i}'s gradient {g}"
        assert_close(f"{name} d/d input {i}", g, e, dt, rtol=rtol)


@pytest.mark.parametrize("centre", CENTRES)
def test_gaussian_log_prob_at_the_mean(seed, backend, centre):
    b, n = 4, 11
    lv, mask = lanes((b, n), centre)
    mean = torch.randn(b, n)
    x = torch.where(mask, mean, torch.randn(b, n))
    ins = [leaf(t) for t in (x, mean, lv)]
    want_ins = [leaf(t.double()) for t in (x, mean, lv)]
    got = fastvae.gaussian_log_prob(*ins, backend=backend)
    want = F.gaussian_ll(*want_ins).sum(-1)
    check("gaussian_log_prob", got, want, ins, want_ins)


@pytest.mark.parametrize("centre", CENTRES)
def test_gaussian_log_prob_float_logvar(seed, backend, centre):
    """A float obs_logvar that far out: every element must sit at its mean."""
    x = torch.randn(3, 7)
    ins = [leaf(x), leaf(x)]
    got = fastvae.gaussian_log_prob(*ins, centre, backend=backend)
    want = torch.full((3,), -0.5 * 7 * (centre + LOG_2PI), dtype=F64)
    assert_close("value", got, want, torch.float32)
    for g in grads(got, ins):
        assert torch.equal(g, torch.zeros_like(g)), g


@pytest.mark.parametrize("kl", ["analytic", "mc"])
@pytest.mark.parametrize("prior", [False, True])
@pytest.mark.parametrize("centre", CENTRES)
def test_elbo(seed, backend, kl, prior, centre):
    """The Gaussian observation at its mean and, with ``kl="mc"``, z at mu (no prior) or
    at the prior's mean; analytic with a prior, the prior's mean at mu."""
    b, n, d = 5, 9, 13
    obs, omask = lanes((b, d), centre)
    recon = torch.randn(b, d)
    x = torch.where(omask, recon, torch.randn(b, d))
    lv, lmask = lanes((b, n), centre)
    mu = torch.randn(b, n)
    z = torch.where(lmask, mu, mu + torch.randn(b, n))
    pm = plv = None
    if prior:  # the same lanes: z = mu = prior_mu there
        plv, _ = lanes((b, n), centre)
        pm = torch.where(lmask, mu, torch.randn(b, n))
    ins = [leaf(t) for t in (recon, mu, lv, z if kl == "mc" else None, obs, pm, plv)]
    want_ins = [leaf(t.double()) if t is not None else None for t in ins]

    def call(f, r, m, v, zz, o, p, q):
        return f(x if f is fastvae.elbo else x.double(), r, m, v, z=zz, kl=kl,
                 likelihood="gaussian", obs_logvar=o, prior_mu=p, prior_logvar=q,
                 reduction="none", **({"backend": backend} if f is fastvae.elbo else {}))

    got = call(fastvae.elbo, *ins)
    want = call(F.elbo, *want_ins)
    check(f"elbo {kl}", got, want, ins, want_ins)


@pytest.mark.parametrize("k", [3, 12])   # Triton: K padded to 4 in one pass; two passes
@pytest.mark.parametrize("prior", [False, True])
@pytest.mark.parametrize("centre", CENTRES)
def test_iwae_bound(seed, backend, prior, centre, k):
    b, n, d = 4, 7, 10
    obs, omask = lanes((b, d), centre)
    recon = torch.randn(k, b, d)
    x = torch.where(omask, recon[0], torch.randn(b, d))
    recon[:, omask] = x[omask]
    lv, lmask = lanes((b, n), centre)
    mu = torch.randn(b, n)
    z = torch.where(lmask, mu, mu + torch.randn(k, b, n))
    pm = plv = None
    if prior:  # the same lanes: z = mu = prior_mu there
        plv, _ = lanes((b, n), centre)
        pm = torch.where(lmask, mu, torch.randn(b, n))
    ins = [leaf(t) if t is not None else None for t in (recon, mu, lv, z, obs, pm, plv)]
    want_ins = [leaf(t.double()) if t is not None else None for t in ins]
    got = fastvae.iwae_bound(x, *ins[:4], likelihood="gaussian", obs_logvar=ins[4],
                             prior_mu=ins[5], prior_logvar=ins[6], backend=backend)
    want = F.iwae(x.double(), *want_ins[:4], likelihood="gaussian", obs_logvar=want_ins[4],
                  prior_mu=want_ins[5], prior_logvar=want_ins[6])
    # A row's log-weight is ~|centre| * 6 here: its float32 rounding (ulp(4000) = 5e-4,
    # on every backend) is the relative error of the weights, and so of the gradients.
    lw = abs(centre) * (n // 3 + 1 + d // 3 + 1) / 2
    check("iwae_bound", got, want, ins, want_ins, rtol=2e-5 + 2 * lw * 2.0**-23)


@pytest.mark.parametrize("centre", CENTRES)
def test_kl_normal_at_the_prior_mean(seed, backend, centre):
    """mu_q = mu_p where the prior's variance vanishes (the posterior's near it, so the
    variance ratio stays finite)."""
    b, n = 4, 10
    plv, mask = lanes((b, n), centre)
    lv = plv + torch.randn(b, n)
    mu = torch.randn(b, n)
    pm = torch.where(mask, mu, torch.randn(b, n))
    ins = [leaf(t) for t in (mu, lv, pm, plv)]
    want_ins = [leaf(t.double()) for t in (mu, lv, pm, plv)]
    check("kl_normal", fastvae.kl_normal(*ins, backend=backend),
          F.kl_normal_dim(*want_ins).sum(-1), ins, want_ins)
    z, kl = fastvae.sample_with_kl(*ins, backend=backend)
    gk = torch.randn(b)
    check("sample_with_kl's kl", kl, F.kl_normal_dim(*want_ins).sum(-1), ins, want_ins,
          weight=gk)
    assert torch.isfinite(z).all()


def test_past_float64s_overflow(backend):
    """float64 at log-variance -1500 (exp(750) overflows float64): the closed form of a
    zero difference, ``-0.5 * (lv + log 2 pi)`` per element and a d/dlogvar of -0.5."""
    x = torch.randn(2, 5, dtype=F64)
    lv = leaf(torch.full((2, 5), -1500.0, dtype=F64))
    got = fastvae.gaussian_log_prob(x, x, lv, backend=backend)
    torch.testing.assert_close(got, torch.full((2,), -2.5 * (-1500.0 + LOG_2PI), dtype=F64))
    (g,) = grads(got, [lv])
    torch.testing.assert_close(g, torch.full_like(g, -0.5))
    mu = torch.randn(2, 5, dtype=F64)
    plv = leaf(torch.full((2, 5), -1500.0, dtype=F64))
    for kl in (fastvae.kl_normal(mu, plv.detach() + 1.0, mu, plv, backend=backend),
               fastvae.sample_with_kl(mu, plv.detach() + 1.0, mu, plv, backend=backend)[1]):
        torch.testing.assert_close(kl, torch.full((2,), 2.5 * (-1.0 + math.e - 1), dtype=F64))
        (g,) = grads(kl, [plv])
        torch.testing.assert_close(g, torch.full_like(g, 0.5 * (1 - math.e)))


def test_a_held_factor_passes_the_log_variance_gradient_on(backend):
    """A tiny nonzero difference where the factor is held: d/dlogvar = 0.5 * t^2 - 0.5 with
    the held t, huge and positive, on every backend; the reference's hold was a clamp whose
    zero gradient left -0.5, the opposite sign."""
    lv = leaf(torch.tensor([[-180.0, -200.0]]))
    x = torch.tensor([[1e-30, -1e-30]])
    fastvae.gaussian_log_prob(x, torch.zeros(1, 2), lv, backend=backend).sum().backward()
    held = math.exp(math.log(torch.finfo(torch.float32).max) - 1e-4)
    want = 0.5 * (1e-30 * held) ** 2 - 0.5   # held: the factor exp(-logvar/2) itself
    assert torch.allclose(lv.grad.double(), torch.full((1, 2), want, dtype=F64), rtol=1e-3)


@pytest.mark.parametrize("lv", [-3e9, -1e20])
def test_a_factor_held_far_past_the_overflow_is_the_hold(backend, lv):
    """Far past the overflow the held factor is exp(cap) itself, value and gradient: the
    reference's straight-through hold rounded y - (y - cap) to 128 (an inf factor, inf * 0
    = NaN for a zero difference) at logvar -3e9 and to 0 (a factor of 1) at -1e20."""
    lvs = leaf(torch.full((1, 2), lv))
    x = torch.tensor([[0.0, 1e-30]])
    got = fastvae.gaussian_log_prob(x, torch.zeros(1, 2), lvs, backend=backend)
    held = math.exp(math.log(torch.finfo(torch.float32).max) - 1e-4)
    t = 1e-30 * held
    want = -0.5 * (t * t + 2 * lv + 2 * LOG_2PI)
    assert torch.allclose(got.double(), torch.tensor([want], dtype=F64), rtol=1e-3), got
    (g,) = grads(got, [lvs])
    assert torch.allclose(g.double(), torch.tensor([[-0.5, 0.5 * t * t - 0.5]], dtype=F64),
                          rtol=1e-3), g


def test_a_log_variance_of_minus_inf_holds_the_factor(backend):
    """logvar = -inf: the factor held, a zero difference standardized to 0, the value
    +inf, not inf - inf = NaN in the reference's straight-through hold."""
    got = fastvae.gaussian_log_prob(torch.zeros(1, 2), torch.zeros(1, 2),
                                    torch.full((1, 2), -math.inf), backend=backend)
    assert torch.equal(got, torch.full((1,), math.inf)), got
