"""fastvae.elbo's numerics on every backend (the ``backend`` fixture): the continuous
Bernoulli normaliser (against mpmath and torch.distributions), extreme logits and
log-variances, many rows (the "torch" backend's row chunks, also on its aten path:
``cpu_path``), and dtypes: half precision within 2x eager's error, mixed dtypes,
autocast, float64 promotion.
"""
from __future__ import annotations

import math

import pytest
import torch

import fastvae
import _formulas as F
from _backends import bounded, case_dtype
from _compare import TOL, assert_close, assert_close_past_range, grads, leaf
from test_elbo import LIKELIHOODS, make, make_like

F64 = torch.float64


# -- continuous Bernoulli normaliser ------------------------------------------------------

def cb_minus_bernoulli(logits, backend, dtype=F64):
    """log C(l) per element, read off elbo(continuous_bernoulli) - elbo(bernoulli), B=n, D=1."""
    l = logits.to(dtype).reshape(-1, 1)
    x = torch.full_like(l, 0.25)
    z = torch.zeros(l.shape[0], 1, dtype=dtype)
    args = dict(reduction="none", backend=backend)
    cb = fastvae.elbo(x, l, z, z, likelihood="continuous_bernoulli", **args)
    be = fastvae.elbo(x, l, z, z, likelihood="bernoulli", **args)
    return cb - be


def test_cb_against_torch_distributions_moderate_logits(seed, backend):
    dt = case_dtype(backend)
    l = ((torch.rand(200, 13, dtype=F64) * 2 - 1) * 4.9).to(dt)
    l[0, 0] = 0.3  # ContinuousBernoulli is accurate away from 0 and for |l| < 5
    x = torch.rand(200, 13, dtype=dt)
    mu = torch.zeros(200, 1, dtype=dt)
    got = fastvae.elbo(x, l, mu, mu, likelihood="continuous_bernoulli", reduction="none",
                       backend=backend)
    l, x = l.double(), x.double()
    away = l.abs() > 0.1  # torch.distributions switches to a Taylor series near p = 1/2
    lp = torch.distributions.ContinuousBernoulli(logits=torch.where(away, l, torch.ones_like(l)),
                                                 validate_args=False).log_prob(x)
    lp = torch.where(away, lp, F.bernoulli_ll(x, l) + F.cb_log_norm(l))
    assert_close("value", got, lp.sum(-1), dt, rtol={F64: 1e-9}, scale=lp.abs().sum(-1))


def test_formula_cb_log_norm_against_mpmath():
    """The test's own float64 log C against a 50-digit evaluation of the paper's p-space form."""
    pts = [0.0, 1e-8, -1e-6, 1e-4, -3e-3, 0.0199, 0.0201, -0.1, 0.5, 1.0, -2.5, 4.9, 10.0, -20.0,
           39.0, 40.0, -40.0, 80.0]
    got = F.cb_log_norm(torch.tensor(pts, dtype=F64))
    want = torch.tensor([F.cb_log_norm_mpmath(p) for p in pts], dtype=F64)
    assert_close("log C", got, want, rtol=2e-15, scale=0)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_cb_log_norm_stability(backend, dtype):
    dt = case_dtype(backend, dtype)
    pts = [0.0, 1e-6, -1e-6, 1e-5, 1e-4, -1e-3, 2e-3, 1e-2, -1e-2, 0.099, 0.101, 0.5, -1.0, 3.0,
           -4.9, 10.0, 40.0, -40.0, 60.0, -100.0]
    l = torch.tensor(pts, dtype=F64)
    got = cb_minus_bernoulli(l, backend, dt)
    want = torch.tensor([F.cb_log_norm_mpmath(p) for p in pts], dtype=F64)
    assert torch.isfinite(got).all()
    # the fp32 difference carries both log-likelihoods' rounding (~ulp of |l|): the
    # Triton kernel computes the continuous Bernoulli's directly as x*l - log((e^l - 1)/l)
    tol = 1e-13 if dt == F64 else 4e-7 * (1 + l.abs())
    # l = 0: exactly log 2 (+0); l = +-40: log 2 + log(20 / tanh 20) = log 40
    assert abs(got[0].item() - math.log(2)) < (1e-15 if dt == F64 else 1e-7)
    assert abs(got[pts.index(40.0)].item() - math.log(40)) < (1e-13 if dt == F64 else 41 * 4e-7)
    assert abs(got[pts.index(-40.0)].item() - math.log(40)) < (1e-13 if dt == F64 else 41 * 4e-7)
    assert ((got.double() - want).abs() <= tol).all(), (got.double() - want).abs().max()


def test_cb_torch_distributions_is_off_at_40_but_we_are_not(backend):
    """The motivating measurement in the design notes: keep it true, or the note is stale."""
    dt = case_dtype(backend)
    l = torch.tensor([40.0], dtype=F64)
    x = torch.tensor([0.3], dtype=F64)
    td = torch.distributions.ContinuousBernoulli(logits=l).log_prob(x)
    exact = F.bernoulli_ll(x, l) + F.cb_log_norm_mpmath(40.0)
    z = torch.zeros(1, 1, dtype=dt)
    ours = fastvae.elbo(x[None].to(dt), l[None].to(dt), z, z, likelihood="continuous_bernoulli",
                        backend=backend)
    assert abs(ours.item() - exact.item()) < (1e-12 if dt == F64 else 1e-5)
    assert abs(td.item() - exact.item()) > 0.01


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_cb_gradient_everywhere(backend, dtype):
    """d/dl of the CB log-likelihood is x - sigmoid(l) + 0.5 (1/u - 1/tanh u + tanh u)."""
    dt = case_dtype(backend, dtype)
    pts = [0.0, 1e-7, -1e-5, 1e-3, -2e-3, 0.05, -0.0999, 0.1001, 1.0, -4.0, 40.0, -40.0, 100.0]
    l = torch.tensor(pts, dtype=dt).reshape(-1, 1).requires_grad_()
    x = torch.full((len(pts), 1), 0.7, dtype=dt)
    z = torch.zeros(len(pts), 1, dtype=dt)
    v = fastvae.elbo(x, l, z, z, likelihood="continuous_bernoulli", reduction="sum",
                     backend=backend)
    v.backward()
    want = torch.tensor([0.7 - 1 / (1 + math.exp(-p)) + F.cb_log_norm_grad_mpmath(p)
                         for p in pts], dtype=F64)
    tol = 1e-12 if dt == F64 else 2e-6
    assert torch.isfinite(l.grad).all()
    assert ((l.grad.double().flatten() - want).abs() <= tol).all(), (l.grad.flatten(), want)


# Logits about the series' switch (|l| = 1), about 0.1 and 2e-3 (where a short series
# meets the closed form with float32's and float64's cancellation in the ulps), and
# between them: where l / tanh(l/2) and, more, 1/l - 1/sinh l cancel.
CB_NEAR_ZERO = [s * m for s in (1.0, -1.0) for m in (
    1e-6, 1e-4, 3e-4, 1e-3, 1.9e-3, 2e-3, 2.1e-3, 5e-3, 0.01, 0.03, 0.0999, 0.1, 0.1001, 0.12,
    0.2, 0.35, 0.5, 0.7, 0.9, 0.999, 1.0, 1.001, 1.2, 1.5, 2.0, 3.0, 7.0)]


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_cb_log_norm_and_derivative_near_zero(dtype):
    """The reference's log C (and autograd's derivative of it) and the "torch" backend's
    value and derivative against a ``decimal`` evaluation (no mpmath needed): the value
    within 3 eps relative, d/dl within 8 eps relative (the difference 1/l - 1/sinh l
    evaluated as written is off by ~eps/l^2 relative there)."""
    from fastvae import reference
    from fastvae.backends.torch_backend import terms

    eps = torch.finfo(dtype).eps
    l = torch.tensor([0.0] + CB_NEAR_ZERO, dtype=dtype)
    pts = l.double().tolist()  # the representable points
    want_v = torch.tensor([F.cb_log_norm_decimal(p) for p in pts], dtype=F64)
    want_d = torch.tensor([F.cb_log_norm_grad_decimal(p) for p in pts], dtype=F64)
    leaf_l = l.clone().requires_grad_()
    ref_v = reference.cb_log_norm(leaf_l)
    ref_v.sum().backward()
    for name, v, g in (("reference", ref_v.detach(), leaf_l.grad),
                       ("torch", *terms.cb_log_norm(l))):
        v, g = v.double(), g.double()
        assert abs(v[0].item() - math.log(2)) <= eps and g[0].item() == 0, (name, v[0], g[0])
        err_v = ((v - want_v) / want_v).abs()[1:].max().item() / eps
        err_d = ((g - want_d) / want_d).abs()[1:].max().item() / eps
        assert err_v <= 3 and err_d <= 8, (name, err_v, err_d)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_cb_normaliser_gradient_near_zero(backend, dtype):
    """Through fastvae.elbo on every backend: d/dl of the continuous Bernoulli term less the
    Bernoulli term's is 1/l - 1/sinh l (``decimal``) to within the two gradients' rounding,
    2 eps absolute."""
    dt = case_dtype(backend, dtype)
    l = torch.tensor(CB_NEAR_ZERO, dtype=dt).reshape(-1, 1)
    x = torch.full_like(l, 0.25)
    z = torch.zeros(l.shape[0], 1, dtype=dt)
    got = []
    for likelihood in ("continuous_bernoulli", "bernoulli"):
        r = l.clone().requires_grad_()
        fastvae.elbo(x, r, z, z, likelihood=likelihood, reduction="sum",
                     backend=backend).backward()
        got.append(r.grad.double().flatten())
    want = torch.tensor([F.cb_log_norm_grad_decimal(p) for p in l.double().flatten().tolist()],
                        dtype=F64)
    err = (got[0] - got[1] - want).abs().max().item() / torch.finfo(dt).eps
    assert err <= 2, err


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("create_graph", [False, True])
def test_cb_gradient_at_huge_logits(backend, dtype, create_graph):
    """|l| up to 3e38: d/dl = x - sigmoid(l) (the normaliser's part vanishes), also where a
    graph of the gradient is built (the reference math): its small-|u| series, unselected,
    overflowed in u**4 and its zero gradient times inf was NaN."""
    dt = case_dtype(backend, dtype)
    l = torch.tensor([[1e13, -1e13, 3e38, -3e38]], dtype=dt, requires_grad=True)
    x = torch.tensor([[0.2, 0.7, 0.5, 0.1]], dtype=dt)
    z = torch.zeros(1, 1, dtype=dt)
    v = fastvae.elbo(x, l, z, z, likelihood="continuous_bernoulli", reduction="sum",
                     backend=backend)
    (g,) = torch.autograd.grad(v, l, create_graph=create_graph)
    assert torch.isfinite(v) and torch.isfinite(g).all(), g
    torch.testing.assert_close(g.detach(), x - (l > 0).to(dt), rtol=0, atol=1e-6)


# -- extreme values ---------------------------------------------------------------------

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


# -- many rows -----------------------------------------------------------------------------

def _rows_past_a_chunk(d):
    """B past one row chunk of the "torch" backend (then a ragged tail), where it chunks."""
    from fastvae.backends.torch_backend.rows import CHUNK_ELEMS
    return CHUNK_ELEMS // d + 5


@pytest.mark.parametrize("dtype,layout", [(torch.float32, "contiguous"),
                                          (torch.float32, "strided"), (F64, "contiguous")])
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_many_rows(seed, backend, cpu_path, dtype, likelihood, layout):
    """B * D past the "torch" backend's row chunk, values and gradients vs the formula,
    per-row and summed, both obs_logvar layouts."""
    if cpu_path == "aten" and likelihood != "bernoulli":
        pytest.skip("only the Bernoulli term has a compiled kernel: the aten path is the same")
    dt = case_dtype(backend, dtype)
    b, d, l = bounded(b=_rows_past_a_chunk(1003), d=1003, l=4)
    x, recon, mu, lv, z = make(b, (d,), l, dtype=dt)
    if layout == "strided":
        x = torch.rand(d, b, dtype=dt).t()
        recon = (torch.randn(b, 2 * d, dtype=dt) * 2)[:, ::2]
    for reduction, obs_kind in [("none", "(D,)"), ("sum", "full")]:
        xs, rs, ms, ls = (leaf(t) for t in (x, recon, mu, lv))
        obs = 0.0
        if likelihood == "gaussian":
            obs = leaf((torch.randn(d) if obs_kind == "(D,)" else torch.randn(b, d)).to(dt) * 0.3)
        got = fastvae.elbo(xs, rs, ms, ls, likelihood=likelihood, obs_logvar=obs,
                           reduction=reduction, backend=backend)
        want = F.elbo(xs, rs, ms, ls, likelihood=likelihood, obs_logvar=obs, reduction=reduction)
        assert got.dtype == dt
        scale = 3.0 * d * (b if reduction == "sum" else 1)
        assert_close(f"value {reduction}", got, want, dt, scale=scale)
        ins = [xs, rs, ms, ls] + ([obs] if isinstance(obs, torch.Tensor) else [])
        w = torch.rand(got.shape, dtype=F64) + 0.5
        for g, e, name in zip(grads(got, ins, w), grads(want, ins, w),
                              ["x", "recon", "mu", "logvar", "obs"]):
            assert g.dtype == dt
            assert_close(f"d/d{name} {reduction}", g, e, dt, scale=e.abs().max() + 1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_many_rows_half(seed, backend, cpu_path, dtype):
    b, d, l = bounded(b=_rows_past_a_chunk(1003), d=1003, l=4)
    x, recon, mu, lv, _ = (t.to(dtype) for t in make(b, (d,), l, dtype=torch.float32))
    for likelihood in LIKELIHOODS:
        rs = leaf(recon)
        got = fastvae.elbo(x, rs, mu, lv, likelihood=likelihood, reduction="none", backend=backend)
        r64 = leaf(recon.double())  # exact gradient: fp64 all the way, no rounding to dtype
        want = F.elbo(x, r64, mu, lv, likelihood=likelihood, reduction="none")
        assert got.dtype == torch.float32
        assert_close(likelihood, got, want, torch.float32, scale=3.0 * d)  # fp32 math on half data
        got.sum().backward()
        (e,) = grads(want, [r64])
        assert rs.grad.dtype == dtype
        # fp32 math (x - sigmoid(l) cancels: up to ~1e-6 absolute), then one rounding to
        # the half dtype (half an ulp relative)
        rtol = torch.finfo(dtype).eps
        assert_close(f"d/drecon {likelihood}", rs.grad, e, dtype, rtol=rtol, scale=4e-6 / rtol)


# -- dtypes ---------------------------------------------------------------------------------

def eager_same_dtype(x, recon, mu, lv, likelihood):
    """What a user writes by hand, run in the inputs' own dtype (the error we must not exceed 2x)."""
    if likelihood == "bernoulli":
        return -F.examples_loss_function(recon, x, mu, lv)
    ll = -0.5 * ((x - recon) ** 2 + math.log(2 * math.pi))
    kld = -0.5 * torch.sum(1 + lv - mu.pow(2) - lv.exp())
    return ll.sum() - kld


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_half_precision_error_bounded_by_eager(seed, backend, dtype, likelihood):
    b, d, l = 64, 300, 16
    x, recon, mu, lv, _ = make(b, (d,), l, dtype=torch.float32)
    x, recon, mu, lv = (leaf(t.to(dtype)) for t in (x, recon, mu, lv))
    got = fastvae.elbo(x, recon, mu, lv, likelihood=likelihood, reduction="sum", backend=backend)
    assert got.dtype == torch.float32  # half in -> fp32 out
    got.backward()
    got_grads = [t.grad for t in (recon, mu, lv)]
    assert all(g.dtype == dtype for g in got_grads)

    e = [leaf(t) for t in (x, recon, mu, lv)]
    eager = eager_same_dtype(*e, likelihood)
    eager.backward()
    exact_in = [leaf(t.double()) for t in (x, recon, mu, lv)]
    exact = F.elbo(*exact_in, likelihood=likelihood, reduction="sum")
    exact.backward()

    err = (got.double() - exact).abs().item()
    err_eager = (eager.double() - exact).abs().item()
    assert err <= 2 * err_eager + 1e-5 * abs(exact.item()), (err, err_eager)
    for g, ge, gx, name in zip(got_grads, [t.grad for t in e[1:]], [t.grad for t in exact_in[1:]],
                               ["recon", "mu", "logvar"]):
        e1 = (g.double() - gx).abs().max().item()
        e2 = (ge.double() - gx).abs().max().item()
        assert e1 <= 2 * e2 + torch.finfo(dtype).eps * gx.abs().max().item(), (name, e1, e2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("like,kl", [("bernoulli", "analytic"), ("continuous_bernoulli", "mc"),
                                     ("gaussian_full", "mc"), ("gaussian", "analytic")])
def test_low_precision_inputs(seed, backend, dtype, like, kl):
    """Upcast at load: the value is fp32-accurate for the rounded inputs; gradients are
    rounded once, on store, to the input dtype."""
    (x, recon, mu, lv, z), obs, likelihood = make_like(33, 130, 9, like, dtype)
    ins = [x, recon, mu, lv, z if kl == "mc" else None, obs]
    got = fastvae.elbo(x, recon, mu, lv, likelihood=likelihood, kl=kl, z=ins[4], obs_logvar=obs,
                       reduction="sum", backend=backend)
    assert got.dtype == torch.float32
    want = F.elbo(x, recon, mu, lv, likelihood=likelihood, kl=kl, z=ins[4], obs_logvar=obs,
                  reduction="sum")
    assert_close("value", got, want, dtype)
    for name, t, g, e in zip(("x", "recon", "mu", "logvar", "z", "obs"), ins, grads(got, ins),
                             grads(want, ins)):
        if g is not None:
            assert g.dtype == t.dtype, name
            assert_close(f"d/d{name}", g, e, dtype)


def test_a_per_row_grad_output_past_float16s_range(backend):
    """reduction="none" under a loss scale: each row's grad_output (70,000) times a float16
    gradient that fits (-350) was computed with grad_output cast to float16 first: inf."""
    x = torch.full((8, 20), 0.5, dtype=torch.float16)
    recon = leaf(torch.full((8, 20), 0.02, dtype=torch.float16))
    z = torch.zeros(8, 4, dtype=torch.float16)
    v = fastvae.elbo(x, recon, z, z, reduction="none", backend=backend)
    v.backward(torch.full((8,), 70000.0, dtype=v.dtype))
    want = 70000.0 * (0.5 - 1 / (1 + math.exp(-0.02)))
    torch.testing.assert_close(recon.grad.double(), torch.full_like(recon.grad.double(), want),
                               rtol=2e-3, atol=0)


def test_mixed_dtypes_like_autocast(seed, backend):
    """x fp32 (data), recon bf16 (decoder under autocast), latents fp32; and x fp16."""
    x, recon, mu, lv, _ = make(8, (50,), 4, dtype=torch.float32)
    recon16 = leaf(recon.to(torch.bfloat16))
    mu, lv = leaf(mu), leaf(lv)
    v = fastvae.elbo(x, recon16, mu, lv, backend=backend)
    assert v.dtype == torch.float32
    v.backward()
    assert recon16.grad.dtype == torch.bfloat16 and mu.grad.dtype == torch.float32
    want = F.elbo(x, recon16, mu, lv)
    assert_close("value", v, want, torch.float32, rtol=1e-5)
    x16 = x.half()
    v = fastvae.elbo(x16, recon16, mu, lv, backend=backend)
    want = F.elbo(x16, recon16, mu, lv)
    assert_close("value, x fp16", v, want, torch.float32, rtol=1e-5)
    for name, g, e in zip(("recon", "logvar"), grads(v, [recon16, lv]), grads(want, [recon16, lv])):
        assert_close(f"d/d{name}", g, e, g.dtype)


def test_under_autocast(seed, backend):
    """A decoder under torch.autocast (bf16) feeding the loss: fp32 result, bf16 gradient
    for the bf16 logits, the same value as the explicit mixed-dtype call."""
    dec = torch.nn.Linear(3, 20)
    x = torch.rand(6, 20)
    mu, lv = torch.randn(6, 3, requires_grad=True), torch.randn(6, 3)
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        logits = dec(mu)
        assert logits.dtype == torch.bfloat16
        v = fastvae.elbo(x, logits, mu, lv, backend=backend)
    assert v.dtype == torch.float32
    v.backward()
    assert dec.weight.grad is not None and mu.grad.dtype == torch.float32
    want = F.elbo(x, logits.detach(), mu.detach(), lv)
    assert_close("value", v, want, torch.float32, rtol=1e-5)


@pytest.mark.parametrize("which", ["x", "recon", "mu", "logvar", "z", "obs_logvar"])
def test_any_float64_input_gives_float64(seed, backend, which):
    x, recon, mu, lv, z = make(3, (5,), 2, dtype=torch.float32)
    obs = torch.zeros(5)
    ins = dict(x=x, recon=recon, mu=mu, logvar=lv, z=z, obs_logvar=obs)
    ins[which] = ins[which].double()
    v = fastvae.elbo(ins["x"], ins["recon"], ins["mu"], ins["logvar"], kl="mc", z=ins["z"],
                     likelihood="gaussian", obs_logvar=ins["obs_logvar"], backend=backend)
    assert v.dtype == F64
    want = F.elbo(x, recon, mu, lv, kl="mc", z=z, likelihood="gaussian", obs_logvar=obs)
    assert_close("value", v, want, torch.float32, rtol=TOL[torch.float32])
