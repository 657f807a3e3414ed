"""fastvae.elbo's numerics on every backend (the ``backend`` fixture): extreme logits
(stable softplus and sigmoid, the continuous Bernoulli's tails) and log-variances, and
KL terms whose parts overflow float32 (MC samples far from the means, free bits,
beta = 0), against float64.
The rest of the ELBO's numerics: tests/test_elbo_numerics_*.py.
"""
from __future__ import annotations

import pytest
import torch

import fastvae
import _formulas as F
from _backends import case_dtype
from _compare import F64, assert_close, assert_close_past_range, grads, leaf


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli"])
def test_extreme_logits(backend, cpu_path, dtype, likelihood):
    """Stable softplus/sigmoid: finite, accurate values and gradients out to |l| = 1e4,
    across the fp32 exp underflow (-87 .. -104) and for many elements per row (SIMD tails)."""
    dt = case_dtype(backend, dtype)
    pts = [0.0, 1e-30, -1e-7, 3.0, -3.0, 20.0, -20.0, 86.0, -86.0, 87.5, -87.5, 88.7, -88.8,
           100.0, -103.0, -104.5, 200.0, -200.0, 1e4, -1e4]
    l = torch.tensor(pts, dtype=dt).repeat(3, 7)  # (3, 140): rows of 140, not a multiple of 8
    x = torch.rand(3, 140, dtype=dt)
    x[0] = 0.0
    x[1] = 1.0
    lr = leaf(l)
    z = torch.zeros(3, 1, dtype=dt)
    v = fastvae.elbo(x, lr, z, z, likelihood=likelihood, reduction="none", backend=backend)
    l64 = leaf(l.double())
    want = F.elbo(x, l64, z, z, likelihood=likelihood, reduction="none")
    assert torch.isfinite(v).all()
    scale = (x.double() * l.double()).abs().sum(-1) + F.softplus(l).sum(-1) + 1
    assert_close("value", v, want, dt, scale=scale.detach())
    v.sum().backward()
    (e,) = grads(want, [l64])
    assert torch.isfinite(lr.grad).all()
    assert_close("d/dlogits", lr.grad, e, dt, rtol={F64: 1e-12, torch.float32: 1e-6}, scale=1.0)


def test_continuous_bernoulli_tails_to_their_own_precision(backend):
    """At large |l| the continuous Bernoulli's value and gradient are small differences of
    large terms: x = 1, l = 1e20 gives log C + softplus cancellations down to log l = 46
    and a gradient of 1/l. Each to float32's relative precision of itself, not only to
    that of |x * l| (test_extreme_logits' scale)."""
    import mpmath
    dt = torch.float32
    ls = [1e4, 1e6, 1e8, 1e20, 30.0, 2.0, 1.0]
    l = torch.tensor(ls + [-v for v in ls], dtype=dt).reshape(-1, 1)
    for xv in (0.0, 1.0):
        x = torch.full_like(l, xv)
        lr = leaf(l)
        z = torch.zeros(l.shape[0], 1, dtype=dt)
        v = fastvae.elbo(x, lr, z, z, likelihood="continuous_bernoulli", reduction="none",
                         backend=backend)
        v.sum().backward()
        with mpmath.workdps(60):  # x l - A(l), A = log(expm1(l) / l); x - A'(l)
            ms = [mpmath.mpf(t) for t in l.flatten().tolist()]
            want = [float(xv * m - mpmath.log(mpmath.expm1(m) / m)) for m in ms]
            want_g = [float(xv - 1 / (1 - mpmath.exp(-m)) + 1 / m) for m in ms]
        assert_close(f"value at x = {xv}", v, torch.tensor(want, dtype=F64), dt, scale=0.0)
        assert_close(f"d/dlogits at x = {xv}", lr.grad.flatten(), torch.tensor(want_g, dtype=F64),
                     dt, scale=0.0)


@pytest.mark.parametrize("kl", ["analytic", "mc"])
def test_float32_at_extreme_log_variance(backend, kl):
    """The numerics rule: float32 at log-variance +-89 stays finite where float64 is
    (exp(lv - log 2), not 0.5 * exp(lv); (d * exp(-s/2))^2, not d^2 * exp(-s)): the
    latents' and the Gaussian observation's log-variances, values and gradients."""
    dt = torch.float32
    lv = torch.tensor([[88.9], [-89.0], [-89.0], [0.0]], dtype=dt)
    mu = torch.tensor([[0.5], [0.0], [0.0], [0.2]], dtype=dt)
    eps = torch.tensor([[0.3], [1.2], [-0.7], [0.4]], dtype=F64)
    z = (mu.double() + torch.exp(0.5 * lv.double()) * eps).to(dt)
    # the data a few 1e-19 off the mean: standardized by exp(-(-89)/2), of order 1
    x = torch.zeros(4, 2, dtype=dt)
    m = torch.tensor([[1e-19, -2e-19], [3e-20, 1e-19], [0.0, -1e-19], [2e-19, 1e-19]], dtype=dt)
    obs = torch.tensor([-89.0, -88.0], dtype=dt)
    if kl == "mc":
        lv = lv[1:]  # the MC KL at +88.9 is ~1.8e37: its size would set every row's scale
        mu, z, x, m = mu[1:], z[1:], x[1:], m[1:]
    ins = [leaf(t) for t in (m, mu, lv, z, obs)]
    got = fastvae.elbo(x, ins[0], ins[1], ins[2], kl=kl, z=ins[3] if kl == "mc" else None,
                       likelihood="gaussian", obs_logvar=ins[4], reduction="none",
                       backend=backend)
    want_ins = [leaf(t.double()) for t in ins]
    want = F.elbo(x, want_ins[0], want_ins[1], want_ins[2], kl=kl,
                  z=want_ins[3] if kl == "mc" else None, likelihood="gaussian",
                  obs_logvar=want_ins[4], reduction="none")
    assert torch.isfinite(want).all()
    assert_close("value", got, want, dt)
    used = [0, 1, 2, 4] + ([3] if kl == "mc" else [])
    for i, g, e in zip(used, grads(got, [ins[i] for i in used]),
                       grads(want, [want_ins[i] for i in used])):
        assert_close(f"d/d{['mean', 'mu', 'logvar', 'z', 'obs_logvar'][i]}", g, e, dt)


@pytest.mark.parametrize("prior", ["standard", "learned"])
def test_mc_kl_of_a_sample_far_from_both_means(seed, backend, prior):
    """kl="mc" with samples 1e20 away: z^2 and t^2 overflow float32, while their
    difference is 0 where q is the prior, and 2^44 (2^67 - 2^44) where q's mean is 2^44
    from the prior's (values exact in float32, so that float32 can match float64; it was
    inf - inf = NaN on every backend). logvar's gradient there, (t^2 - 1) / 2 ~ 5e39 in
    float64, overflows to -inf."""
    b, d, l = 2, 4, 3
    x, recon = torch.rand(b, d).round(), torch.randn(b, d)
    mu, lv = torch.randn(b, l), torch.randn(b, l) * 0.5
    z = mu + torch.exp(lv / 2) * torch.randn(b, l)
    pm, plv = (torch.randn(b, l) * 0.3, torch.randn(b, l) * 0.3) if prior == "learned" else (
        torch.zeros(b, l), torch.zeros(b, l))
    for i, j, far in ((0, 0, 1e20), (1, 2, -6e19)):
        mu[i, j], lv[i, j], z[i, j] = pm[i, j], plv[i, j], far
    pm[1, 0] = plv[1, 0] = lv[1, 0] = 0.0
    mu[1, 0], z[1, 0] = 2.0 ** 44, 2.0 ** 66
    if prior == "standard":
        pm = plv = None
    assert _mc_kl_against_float64(backend, x, recon, mu, lv, z, pm, plv)[1].abs() > 1e32


def test_free_bits_clamp_a_latent_whose_partial_overflows(seed, backend):
    """Free bits clamp latent 1 (its batch-mean KL 0, below 0.5 nats), where one sample
    sits 2^66 from q's mean and the prior's: its logvar partial, (t^2 - 1) / 2, overflows
    float32. A clamped latent passes no gradient: 0 (it was 0 * inf = NaN on "torch")."""
    b, d, l = 4, 6, 3
    x, recon = torch.rand(b, d), torch.randn(b, d)
    mu, lv, z = torch.zeros(b, l), torch.zeros(b, l), torch.randn(b, l)
    z[0, 1] = 2.0 ** 66
    ins = [leaf(t) for t in (recon, mu, lv, z)]
    got = fastvae.elbo(x, *ins[:3], kl="mc", z=ins[3], free_bits=0.5, reduction="sum",
                       backend=backend)
    want_ins = [leaf(t.double()) for t in ins]
    want = fastvae.elbo(x.double(), *want_ins[:3], kl="mc", z=want_ins[3], free_bits=0.5,
                        reduction="sum", backend="reference")
    assert_close("elbo", got, want, torch.float32)
    for name, g, e in zip(("recon", "mu", "logvar", "z"), grads(got, ins), grads(want, want_ins)):
        assert bool(torch.isfinite(g).all()), name
        assert_close(f"d elbo / d {name}", g, e, torch.float32)
    assert float(grads(got, [ins[2]])[0][:, 1].abs().max()) == 0.0


@pytest.mark.parametrize("prior", [False, True])
@pytest.mark.parametrize("kl", ["analytic", "mc"])
def test_beta_0_drops_a_kl_that_overflows(seed, backend, kl, prior):
    """beta = 0 (a user's KL warm-up from 0) leaves no KL term, even where it overflows
    float32 (logvar 95: exp(logvar); -100: exp(-logvar); a prior's -90:
    exp(-prior_logvar)): the value is log p(x|z) alone and the latents' gradients are 0,
    as in float64, on every backend and also for a graph of the backward and under
    torch.func (the reference math); 0 * inf made them NaN."""
    b, d, l = 3, 5, 4
    x, recon = torch.rand(b, d), torch.randn(b, d)
    mu, lv, z = torch.randn(b, l), torch.randn(b, l), torch.randn(b, l)
    lv[0, 1], lv[2, 3] = 95.0, -100.0
    ins = [leaf(t) for t in (recon, mu, lv, z)]
    pri = [leaf(torch.randn(l)), leaf(torch.full((b, l), -90.0))] if prior else []

    def run(ins, pri, x, backend):
        extra = dict(prior_mu=pri[0], prior_logvar=pri[1]) if pri else {}
        return fastvae.elbo(x, *ins[:3], kl=kl, z=ins[3] if kl == "mc" else None, beta=0.0,
                            reduction="sum", backend=backend, **extra)
    used = (ins if kl == "mc" else ins[:3]) + pri
    want_ins = [leaf(t.double()) for t in ins]
    want_pri = [leaf(t.double()) for t in pri]
    want = run(want_ins, want_pri, x.double(), "reference")
    wanted = grads(want, (want_ins if kl == "mc" else want_ins[:3]) + want_pri)
    for create_graph in (False, True):
        got = run(ins, pri, x, backend)
        assert bool(torch.isfinite(got)), got
        assert_close("elbo", got, want, torch.float32)
        got_g = torch.autograd.grad(got, used, create_graph=create_graph)
        for i, (g, e) in enumerate(zip(got_g, wanted)):
            assert bool(torch.isfinite(g).all()), (create_graph, i)
            assert_close(f"gradient {i}", g, e, torch.float32)
            if i > 0:
                assert float(g.abs().max()) == 0.0, (create_graph, i)
    from torch.func import grad
    g_lv = grad(lambda t: run([ins[0].detach(), ins[1].detach(), t, ins[3].detach()],
                              [t.detach() for t in pri], x, backend))(ins[2].detach())
    assert float(g_lv.abs().max()) == 0.0


@pytest.mark.parametrize("case", ["one square overflows", "t overflows", "t^2 overflows"])
def test_mc_kl_where_one_square_overflows(seed, backend, case):
    """kl="mc" where one standardized sample's square overflows float32 and the other's
    does not: with z 1.85e19 from N(0, I)'s mean and 1.75e19 from q's, the difference (a
    KL of -1.8e37) fits; with q's variance e^-170 and z 100 from its mean, t itself
    overflows, and with e^-176 and 1, t (1.6e38) does not but t^2 does. Then the value and
    mu's, logvar's and z's gradients overflow as in float64, while a learned prior's
    gradients are ordinary numbers (the product's own derivative made them NaN, or 0)."""
    x, recon = torch.rand(2, 3).round(), torch.randn(2, 3)
    mu, lv, pm, plv = (torch.randn(2, 2) * 0.5 for _ in range(4))
    z = mu + torch.exp(lv / 2) * torch.randn(2, 2)
    if case == "one square overflows":   # (a prior's d/dlogvar_p, -tp^2 / 2, would sit
        # within 2x of the largest float, where the chain rule's steps overflow)
        pm = plv = None
        mu[0, 0], lv[0, 0], z[0, 0] = 1e18, 0.0, 1.85e19
    elif case == "t overflows":
        lv[0, 0], z[0, 0] = -170.0, mu[0, 0] + 100.0
    else:
        lv[0, 0], z[0, 0] = -176.0, mu[0, 0] + 1.0
    _mc_kl_against_float64(backend, x, recon, mu, lv, z, pm, plv)


def _mc_kl_against_float64(backend, x, recon, mu, lv, z, pm, plv):
    """``elbo(kl="mc", reduction="none")`` of float32 inputs (a prior of None or tensors)
    on ``backend`` against the float64 formula: the value and every gradient, by
    ``assert_close_past_range``. Returns the float64 value."""
    ins = [leaf(t) for t in (recon, mu, lv, z, pm, plv)]
    want_ins = [None if t is None else leaf(t.double()) for t in ins]
    got, want = (fn(x.to(ts[0].dtype), *ts[:3], kl="mc", z=ts[3], reduction="none",
                    prior_mu=ts[4], prior_logvar=ts[5], **kw)
                 for fn, ts, kw in ((fastvae.elbo, ins, {"backend": backend}),
                                    (F.elbo, want_ins, {})))
    assert_close_past_range("value", got, want, torch.float32)
    used = range(4 if pm is None else 6)
    for i, g, e in zip(used, grads(got, [ins[i] for i in used]),
                       grads(want, [want_ins[i] for i in used])):
        assert_close_past_range(f"grad {i}", g, e, torch.float32)
    return want
