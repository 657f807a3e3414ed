"""The gradient estimators (``fastvae.estimators``) on every backend (the ``backend``
fixture): sticking the landing for the ELBO, STL and DReG for the IWAE bound.

Each estimator's value and every gradient (x, the encoder outputs through z, the decoder's
weights, obs_logvar; z_k and recon_k as leaves) equals an eager float64 reference written
here from the papers (log q at stopped parameters for STL; mmvae's construction for DReG:
``sum_k w~_k log w_k`` with w~ held constant plus a hook multiplying z_k's gradient by
w~_k), on a pipeline ``z = mu + exp(logvar/2) eps``, ``recon = z W + b`` where the
decoder's path into z_k matters. The value never changes, DReG's decoder gradients are the
standard ones, the encoder gradients are unbiased (a paired test over many draws that
rejects IWAE-STL's known bias), the hook fires only in the bound's backward, higher-order
gradients agree, and the Triton backend launches the same kernels for every estimator.
torch.compile, torch.func, DReG's graph check and hooks, and the errors:
tests/test_estimators_eager.py.
"""
from __future__ import annotations

import math

import pytest
import torch

import fastvae
import _formulas as F
from _backends import bounded, case_dtype
from _compare import TOL, assert_close, grads, leaf

F64 = torch.float64
ESTIMATORS = ["standard", "stl", "dreg"]
LIKES = ["bernoulli", "gaussian", "continuous_bernoulli"]


# -- the pipeline and its references -------------------------------------------------------

def make_case(k, b, l, d, likelihood, dtype):
    """Fixed inputs of one case: data, encoder outputs, noise (K, B, L) or (B, L) for K = 0
    (the ELBO's single sample), a linear decoder and, for "gaussian", a (D,) obs_logvar."""
    shape = (b, l) if k == 0 else (k, b, l)
    x = torch.randn(b, d) if likelihood == "gaussian" else torch.rand(b, d)
    case = dict(x=x, mu=torch.randn(b, l) * 0.7, lv=torch.randn(b, l) * 0.4 - 0.3,
                eps=torch.randn(shape), w=torch.randn(l, d) * 0.8, bias=torch.randn(d) * 0.3,
                obs=torch.randn(d) * 0.3 if likelihood == "gaussian" else None)
    return {n: None if t is None else leaf(t.to(dtype), n not in ("eps",)) for n, t in case.items()}


def dreg_reference(x, recon_k, mu, lv, z_k, likelihood, obs, reduction, prior_mu=None,
                   prior_logvar=None):
    """mmvae's DReG (iffsid/mmvae, objectives.py): log w with q's parameters stopped, the
    surrogate ``sum_k w~_k log w_k`` (w~ constant) under the bound's value, and a hook on
    z_k that multiplies its gradient by w~_k. The hook weighs the first backward only, so a
    second derivative is that of the DReG gradient with the weights held constant (mmvae's
    hook, which fires in every backward, would weigh the z_k path of the second one again).
    A learned prior's log p(z_k) is not stopped."""
    mu_q, lv_q = mu.detach().unsqueeze(0), lv.detach().unsqueeze(0)
    if prior_mu is None and prior_logvar is None:
        kl = F.kl_mc_dim(z_k, mu_q, lv_q)
    else:
        kl = F.kl_mc_prior_dim(z_k, mu_q, lv_q, 0.0 if prior_mu is None else prior_mu,
                               0.0 if prior_logvar is None else prior_logvar)
    log_w = F.log_likelihood(x, recon_k, likelihood, obs) - kl.sum(-1)
    wt = torch.softmax(log_w.detach(), 0)
    if z_k.requires_grad:
        fired = []

        def hook(g):
            if fired:
                return g
            fired.append(True)
            return g * wt.unsqueeze(-1).to(g.dtype)
        z_k.register_hook(hook)
    surrogate = (wt * log_w).sum(0)
    lse = torch.logsumexp(log_w.detach(), 0) - math.log(log_w.shape[0])
    return F.reduce(lse + surrogate - surrogate.detach(), reduction)


def reference(objective, estimator, x, recon, mu, lv, z, likelihood, obs, reduction, **kw):
    """The float64 oracle of one objective and estimator (stopped parameters for STL)."""
    if objective == "iwae" and estimator == "dreg":
        return dreg_reference(x, recon, mu, lv, z, likelihood, obs, reduction, **kw)
    if estimator != "standard":
        mu, lv = mu.detach(), lv.detach()
    obs = 0.0 if obs is None else obs
    if objective == "iwae":
        return F.iwae(x, recon, mu, lv, z, likelihood=likelihood, obs_logvar=obs,
                      reduction=reduction, **kw)
    return F.elbo(x, recon, mu, lv, likelihood=likelihood, kl="mc", z=z, obs_logvar=obs,
                  reduction=reduction, **kw)


def fastvae_call(backend, objective, estimator, x, recon, mu, lv, z, likelihood, obs,
                 reduction, **kw):
    opts = dict(likelihood=likelihood, obs_logvar=0.0 if obs is None else obs,
                reduction=reduction, backend=backend, estimator=estimator)
    if objective == "iwae":
        return fastvae.iwae_bound(x, recon, mu, lv, z, **opts, **kw)
    return fastvae.elbo(x, recon, mu, lv, kl="mc", z=z, **opts, **kw)


def pipeline(fn, case, dtype=None, **kw):
    """fn's value on z = mu + exp(lv/2) eps, recon = z W + b, with the gradients w.r.t. x,
    mu, logvar, W, b, obs (None where not used); rows weighted 0.5..2 for "none"."""
    c = case if dtype is None else {n: (None if t is None else leaf(t.to(dtype), t.requires_grad))
                                    for n, t in case.items()}
    z = c["mu"] + torch.exp(0.5 * c["lv"]) * c["eps"]
    recon = z @ c["w"] + c["bias"]
    value = fn(c["x"], recon, c["mu"], c["lv"], z, obs=c["obs"], **kw)
    ins = [c[n] for n in ("x", "mu", "lv", "w", "bias", "obs")]
    weight = torch.linspace(0.5, 2.0, value.numel(), dtype=F64) if value.dim() else None
    return value, grads(value, ins, weight)


NAMES = ("x", "mu", "logvar", "W", "b", "obs_logvar")


def check_pipeline(backend, objective, estimator, k, b, l, d, likelihood, reduction, **kw):
    dt = case_dtype(backend)
    case = make_case(k, b, l, d, likelihood, dt)
    got, got_g = pipeline(lambda *a, **o: fastvae_call(backend, objective, estimator, *a,
                                                       likelihood=likelihood,
                                                       reduction=reduction, **o, **kw), case)
    want, want_g = pipeline(lambda *a, **o: reference(objective, estimator, *a,
                                                      likelihood=likelihood,
                                                      reduction=reduction, **o, **kw), case, F64)
    eager_g = [None] * 6
    if dt != F64:  # the same pipeline in float32 on the reference backend: rounding any fp32 code shares
        eager_g = pipeline(lambda *a, **o: fastvae_call("reference", objective, estimator, *a,
                                                        likelihood=likelihood,
                                                        reduction=reduction, **o, **kw),
                           case, torch.float32)[1]
    assert_close("value", got, want, dt, scale=want.abs().max() + 1.0)
    rtol = {torch.float32: max(TOL[torch.float32], 4 * torch.finfo(torch.float32).eps * 3 * d)}
    for name, g, e, ee in zip(NAMES, got_g, want_g, eager_g):
        assert_close(f"{objective}/{estimator}: d/d{name}", g, e, dt, rtol=rtol,
                     scale=None if e is None else e.abs().max() + 1e-3, eager=ee)
    return got, got_g


# -- each estimator equals its reference, every gradient --------------------------------------

@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("k", [1, 4, 9])  # Triton: one-pass kernel to K = 8, two-pass above
@pytest.mark.parametrize("likelihood,reduction", [("bernoulli", "sum"), ("gaussian", "none"),
                                                  ("continuous_bernoulli", "mean")])
def test_iwae_estimators_match_the_reference(seed, backend, estimator, k, likelihood, reduction):
    check_pipeline(backend, "iwae", estimator, k, 5, 3, 7, likelihood, reduction)


@pytest.mark.parametrize("estimator", ["standard", "stl"])
@pytest.mark.parametrize("likelihood,reduction,kw", [
    ("bernoulli", "mean", {}), ("gaussian", "sum", dict(beta=0.5)),
    ("continuous_bernoulli", "none", {}), ("bernoulli", "mean", dict(free_bits=0.3)),
    ("gaussian", "mean", dict(beta=2.0, free_bits=0.5))])
def test_elbo_stl_matches_the_reference(seed, backend, estimator, likelihood, reduction, kw):
    check_pipeline(backend, "elbo", estimator, 0, 6, 4, 9, likelihood, reduction, **kw)


@pytest.mark.parametrize("k,b,l,d", [(3, 257, 16, 784), (50, 3, 5, 30), (2, 3, 129, 7)])
@pytest.mark.parametrize("estimator", ["stl", "dreg"])
def test_iwae_estimators_at_odd_sizes(seed, backend, estimator, k, b, l, d):
    """Past one row block, K = 50, L past the one-pass kernel's 128."""
    b, d, l, k = bounded(b=b, d=d, l=l, k=k)
    check_pipeline(backend, "iwae", estimator, k, b, l, d, "bernoulli", "mean")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(seed, backend, dtype):
    """Half inputs: the same estimators within the dtype's tolerance; gradients in its dtype."""
    case = make_case(4, 8, 3, 20, "bernoulli", dtype)
    for est in ESTIMATORS:
        got, got_g = pipeline(lambda *a, **o: fastvae_call(backend, "iwae", est, *a,
                                                           likelihood="bernoulli",
                                                           reduction="sum", **o), case)
        want, want_g = pipeline(lambda *a, **o: reference("iwae", est, *a, likelihood="bernoulli",
                                                          reduction="sum", **o), case, F64)
        assert got.dtype == torch.float32
        assert_close(f"{est} value", got, want, dtype, scale=want.abs() + 10)
        for name, g, e in zip(NAMES[:5], got_g, want_g):
            assert g.dtype == dtype, name
            # the half-precision inputs' own rounding, through the softmax weights
            assert_close(f"{est} d/d{name}", g, e, dtype, scale=e.abs().max() + 1e-2,
                         rtol={torch.float16: 2e-2, torch.bfloat16: 1e-1})


# -- what the estimators keep and what they change -------------------------------------------

@pytest.mark.parametrize("objective", ["iwae", "elbo"])
def test_value_and_decoder_gradients_do_not_change(seed, backend, objective):
    """The reported value is bitwise the same for every estimator; so are the gradients that
    do not pass through z (x, the decoder, obs_logvar), which DReG leaves at w~ weighting."""
    dt = case_dtype(backend)
    case = make_case(5 if objective == "iwae" else 0, 4, 3, 6, "gaussian", dt)
    runs = {}
    for est in (ESTIMATORS if objective == "iwae" else ["standard", "stl"]):
        runs[est] = pipeline(lambda *a, **o: fastvae_call(backend, objective, est, *a,
                                                          likelihood="gaussian", reduction="none",
                                                          **o), case)
    (v0, g0) = runs.pop("standard")
    for est, (v, g) in runs.items():
        assert torch.equal(v, v0), est
        for i in (0, 3, 4, 5):  # x, W, b, obs_logvar
            assert_close(f"{est} d/d{NAMES[i]}", g[i], g0[i], dt, rtol={F64: 1e-13})
        assert not torch.allclose(g[1], g0[1]), f"{est}: the encoder gradient did not change"


def test_leaf_z_k_gets_the_dreg_gradient(seed, backend):
    """With z_k and recon_k as leaves (no decoder path): recon_k's gradient is the standard
    w~_k d log p / d recon_k, z_k's is w~_k^2 d log w_k / d z_k, mu's and logvar's none."""
    dt = case_dtype(backend)
    k, b, l, d = 6, 4, 3, 5
    x = torch.rand(b, d, dtype=dt)
    recon_k, mu, lv = leaf(torch.randn(k, b, d, dtype=dt)), leaf(torch.randn(b, l, dtype=dt)), \
        leaf(torch.randn(b, l, dtype=dt) * 0.3)
    z_k = leaf(mu.detach() + torch.exp(0.5 * lv.detach()) * torch.randn(k, b, l, dtype=dt))
    v = fastvae.iwae_bound(x, recon_k, mu, lv, z_k, reduction="sum", backend=backend,
                           estimator="dreg")
    v.backward()
    assert mu.grad is None and lv.grad is None  # stopped: log q's parameters get nothing
    with torch.no_grad():
        xd, rd, md, ld, zd = (t.detach().double() for t in (x, recon_k, mu, lv, z_k))
        log_w = F.log_likelihood(xd, rd, "bernoulli") - F.kl_mc_dim(zd, md, ld).sum(-1)
        wt = torch.softmax(log_w, 0).unsqueeze(-1)
        d_log_w_dz = -(zd - (zd - md) * torch.exp(-ld))
    assert_close("d/drecon_k", recon_k.grad, wt * (xd - torch.sigmoid(rd)), dt, rtol={F64: 1e-12})
    assert_close("d/dz_k", z_k.grad, wt * wt * d_log_w_dz, dt, rtol={F64: 1e-12})


@pytest.mark.parametrize("likelihood", LIKES)
def test_k1_dreg_is_stl_is_the_elbo_stl(seed, backend, likelihood):
    """At K = 1 the weight is 1: DReG's gradients are STL's, which are the MC ELBO's STL."""
    dt = case_dtype(backend)
    case = make_case(1, 5, 3, 6, likelihood, dt)
    out = {}
    for est in ("stl", "dreg"):
        out[est] = pipeline(lambda *a, **o: fastvae_call(backend, "iwae", est, *a,
                                                         likelihood=likelihood, reduction="mean",
                                                         **o), case)
    one = dict(case, eps=case["eps"][0])
    out["elbo"] = pipeline(lambda *a, **o: fastvae_call(backend, "elbo", "stl", *a,
                                                        likelihood=likelihood, reduction="mean",
                                                        **o), one)
    for other in ("dreg", "elbo"):
        assert_close(f"{other} value", out[other][0], out["stl"][0], dt, rtol={F64: 1e-12},
                     scale=10.0)
        for name, g, e in zip(NAMES, out[other][1], out["stl"][1]):
            assert_close(f"{other} d/d{name}", g, e, dt, rtol={F64: 1e-12}, scale=1.0)


# -- unbiasedness ------------------------------------------------------------------------------

# (objective, K, estimator, unbiased): the last row is the test's own check that it can fail:
# IWAE with STL is biased for K > 1 (Tucker et al. 2018, sec. 4), and must be rejected.
UNBIASED_CASES = [("elbo", 1, "stl", True), ("iwae", 5, "dreg", True), ("iwae", 5, "stl", False)]


@pytest.mark.parametrize("objective,k,estimator,unbiased", UNBIASED_CASES)
def test_encoder_gradients_are_unbiased(seed, backend, objective, k, estimator, unbiased):
    """One input, many noise draws (one row each): the estimator's mean encoder gradient
    minus the standard one's, paired on the same draws, is within 5 standard errors of 0
    for each of the 4 encoder outputs; a biased estimator is more than 8 away somewhere."""
    dt = case_dtype(backend)
    n = bounded(b=20000, d=6, l=2, k=k)[0]
    l, d = 2, 6
    g = torch.Generator().manual_seed(seed)  # on the CPU: the same draws on every backend
    dev = torch.get_default_device()

    def draw(fn, *shape):
        return fn(*shape, generator=g, device="cpu").to(dev, dt)
    x = (draw(torch.rand, 1, d) > 0.5).to(dt).expand(n, d)
    w, bias = draw(torch.randn, l, d) * 1.5, draw(torch.randn, d) * 0.5
    mu1 = draw(torch.randn, 1, l) * 0.5
    lv1 = draw(torch.randn, 1, l) * 0.3 - 0.5
    eps = draw(torch.randn, *((n, l) if objective == "elbo" else (k, n, l)))
    per_draw = {}
    for est in ("standard", estimator):
        mu, lv = leaf(mu1.expand(n, l)), leaf(lv1.expand(n, l))
        z = mu + torch.exp(0.5 * lv) * eps
        v = fastvae_call(backend, objective, est, x, z @ w + bias, mu, lv, z, "bernoulli", None,
                         "sum")
        per_draw[est] = torch.cat(torch.autograd.grad(v, [mu, lv]), 1).double()
    diff = per_draw[estimator] - per_draw["standard"]
    t = diff.mean(0) / (diff.std(0) / math.sqrt(n))
    if unbiased:
        assert t.abs().max() < 5, f"{objective}/{estimator} looks biased: t = {t.tolist()}"
        # and it is the lower-variance estimator it is meant to be
        assert (per_draw[estimator].var(0) < per_draw["standard"].var(0)).all()
    else:
        assert t.abs().max() > 8, f"the paired test no longer detects IWAE-STL's bias: t = {t}"


# -- DReG's hook -----------------------------------------------------------------------------

def _dreg_setup(backend):
    dt = case_dtype(backend)
    case = make_case(4, 3, 2, 5, "bernoulli", dt)
    z = case["mu"] + torch.exp(0.5 * case["lv"]) * case["eps"]
    return case, z, z @ case["w"] + case["bias"]


def test_the_hook_weighs_only_the_bounds_backward(seed, backend):
    """A backward through another loss of the same z_k alone is plain autograd; the bound's
    own backward can run again on a retained graph and gives the same gradients."""
    case, z, recon = _dreg_setup(backend)
    v = fastvae.iwae_bound(case["x"], recon, case["mu"], case["lv"], z, reduction="sum",
                           backend=backend, estimator="dreg")
    other = (z * z).sum()
    got = torch.autograd.grad(other, [case["mu"]], retain_graph=True)[0]
    want = torch.autograd.grad((z * z).sum(), [case["mu"]], retain_graph=True)[0]
    assert torch.equal(got, want)
    first = torch.autograd.grad(v, [case["mu"], case["lv"]], retain_graph=True)
    again = torch.autograd.grad(v, [case["mu"], case["lv"]])
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    ref_case = {n: None if t is None else leaf(t.double(), t.requires_grad) for n, t in case.items()}
    zr = ref_case["mu"] + torch.exp(0.5 * ref_case["lv"]) * ref_case["eps"]
    r = dreg_reference(ref_case["x"], zr @ ref_case["w"] + ref_case["bias"], ref_case["mu"],
                       ref_case["lv"], zr, "bernoulli", 0.0, "sum")
    want = torch.autograd.grad(r, [ref_case["mu"], ref_case["lv"]])
    for name, a, b in zip(("mu", "logvar"), first, want):
        assert_close(f"d/d{name}", a, b, a.dtype)


def test_two_dreg_bounds_of_one_z_k_in_one_backward_raise(seed, backend):
    """Each bound's hook would weigh the total gradient of z_k, the other bound's part
    too: refused when both are in one backward. Each alone, or in separate backwards
    on retained graphs, is a single bound's DReG gradient."""
    case, z, recon = _dreg_setup(backend)

    def bound():
        return fastvae.iwae_bound(case["x"], recon, case["mu"], case["lv"], z, reduction="sum",
                                  backend=backend, estimator="dreg")
    a, b = bound(), bound()
    # to the decoder alone z_k's gradient is not weighed: nothing to refuse
    (gw,) = torch.autograd.grad(a + b, [case["w"]], retain_graph=True)
    assert torch.isfinite(gw).all()
    with pytest.raises(RuntimeError, match="two DReG bounds of the same z_k"):
        torch.autograd.grad(a + b, [case["mu"]], retain_graph=True)
    ga = torch.autograd.grad(a, [case["mu"]], retain_graph=True)[0]
    gb = torch.autograd.grad(b, [case["mu"]])[0]
    assert torch.equal(ga, gb)


def test_no_gradient_no_hook(seed, backend):
    case, z, recon = _dreg_setup(backend)
    with torch.no_grad():
        v = fastvae.iwae_bound(case["x"], recon, case["mu"], case["lv"], z, backend=backend,
                               estimator="dreg")
    want = fastvae.iwae_bound(case["x"], recon, case["mu"], case["lv"], z, backend=backend)
    assert torch.equal(v, want.detach()) and not v.requires_grad
    assert not getattr(z, "_backward_hooks", None)  # nothing registered on z_k


@pytest.mark.parametrize("objective,estimator", [("iwae", "stl"), ("iwae", "dreg"),
                                                 ("elbo", "stl")])
def test_stopped_parameters_alone_require_no_gradient(seed, backend, objective, estimator):
    """Where only mu and logvar require a gradient, the STL/DReG value does not require one
    on any backend: log q's parameters are stopped and the samples carry no graph, so
    there is nothing to differentiate (as the reference's detached parameters have it)."""
    dt = case_dtype(backend)
    b, l, k, d = 3, 4, 2, 5
    mu, lv = leaf(torch.randn(b, l, dtype=dt)), leaf(torch.randn(b, l, dtype=dt))
    x = torch.rand(b, d, dtype=dt)
    if objective == "elbo":
        v = fastvae.elbo(x, torch.randn(b, d, dtype=dt), mu, lv, kl="mc",
                         z=torch.randn(b, l, dtype=dt), estimator=estimator, backend=backend)
    else:
        v = fastvae.iwae_bound(x, torch.randn(k, b, d, dtype=dt), mu, lv,
                               torch.randn(k, b, l, dtype=dt), estimator=estimator,
                               backend=backend)
    assert not v.requires_grad


@pytest.mark.parametrize("objective,estimator", [("iwae", "standard"), ("iwae", "stl"),
                                                 ("iwae", "dreg"), ("elbo", "standard"),
                                                 ("elbo", "stl")])
def test_higher_order_gradients_follow_the_estimator(seed, backend, objective, estimator):
    """create_graph=True recomputes with the reference math, with the estimator's stopped
    parameters (and, for DReG, the surrogate with constant weights plus the op's hook):
    d/dtheta of <grad, r> equals the float64 reference's. The inputs depend on each other
    here (z on mu, recon on z): the op's recomputed gradients are partial derivatives, or
    the path through z would count twice ("standard" included for that)."""
    dt = case_dtype(backend)
    case = make_case(3 if objective == "iwae" else 0, 4, 2, 5, "gaussian", dt)
    r = [torch.randn(s, dtype=F64) for s in ((4, 2), (4, 2), (2, 5))]

    def second(fn, c):
        z = c["mu"] + torch.exp(0.5 * c["lv"]) * c["eps"]
        v = fn(c["x"], z @ c["w"] + c["bias"], c["mu"], c["lv"], z, obs=c["obs"])
        ins = [c["mu"], c["lv"], c["w"]]
        g = torch.autograd.grad(v, ins, create_graph=True)
        s = sum((gi * ri.to(gi.dtype)).sum() for gi, ri in zip(g, r))
        return torch.autograd.grad(s, ins, allow_unused=True)

    got = second(lambda *a, **o: fastvae_call(backend, objective, estimator, *a,
                                              likelihood="gaussian", reduction="sum", **o), case)
    c64 = {n: None if t is None else leaf(t.double(), t.requires_grad) for n, t in case.items()}
    want = second(lambda *a, **o: reference(objective, estimator, *a, likelihood="gaussian",
                                            reduction="sum", **o), c64)
    for name, a, b in zip(("mu", "logvar", "W"), got, want):
        assert_close(f"second derivative, {name}", a, b, dt, scale=b.abs().max() + 1e-3)


def test_launches_are_the_standard_estimators(seed, kernel_device, launches):
    """Same kernels, same number of launches, for every estimator (Triton)."""
    for k in (4, 9):  # one-pass and two-pass IWAE kernels
        seen = {}
        for est in ESTIMATORS:
            case = make_case(k, 5, 3, 7, "bernoulli", torch.float32)
            launches.clear()
            v, _ = pipeline(lambda *a, **o: fastvae_call("triton", "iwae", est, *a,
                                                         likelihood="bernoulli", reduction="mean",
                                                         **o), case)
            seen[est] = [n for n in launches if "iwae" in n or "finish" in n]
        assert seen["stl"] == seen["dreg"] == seen["standard"] and seen["standard"], seen
    seen = {}
    for est in ("standard", "stl"):
        case = make_case(0, 5, 3, 7, "bernoulli", torch.float32)
        launches.clear()
        pipeline(lambda *a, **o: fastvae_call("triton", "elbo", est, *a, likelihood="bernoulli",
                                              reduction="mean", free_bits=0.1, **o), case)
        seen[est] = [n for n in launches if "elbo" in n]
    assert seen["stl"] == seen["standard"] and seen["standard"], seen


# -- with a learned prior ----------------------------------------------------------------------

@pytest.mark.parametrize("objective,estimator,k", [("elbo", "stl", 0), ("iwae", "stl", 4),
                                                   ("iwae", "dreg", 4), ("iwae", "dreg", 9)])
def test_learned_prior(seed, backend, objective, estimator, k):
    """STL/DReG with a learned prior: log q at stopped (mu, logvar) only; log p(z) keeps its
    gradients w.r.t. prior_mu, prior_logvar and z (so, through z, the encoder's), against
    the float64 estimators with the prior (one-pass and two-pass IWAE kernels on Triton)."""
    dt = case_dtype(backend)
    b, l, d = 5, 3, 7
    case = make_case(k, b, l, d, "gaussian", dt)
    case["pm"] = leaf((torch.randn(l) * 0.5).to(dt))
    case["plv"] = leaf((torch.randn(b, l) * 0.4).to(dt))

    def run(fn, c):
        z = c["mu"] + torch.exp(0.5 * c["lv"]) * c["eps"]
        value = fn(c["x"], z @ c["w"] + c["bias"], c["mu"], c["lv"], z, obs=c["obs"],
                   likelihood="gaussian", reduction="sum", prior_mu=c["pm"],
                   prior_logvar=c["plv"])
        return value, grads(value, [c[n] for n in ("mu", "lv", "w", "bias", "obs", "pm", "plv")])
    got, got_g = run(lambda *a, **o: fastvae_call(backend, objective, estimator, *a, **o), case)
    c64 = {n: None if t is None else leaf(t.double(), t.requires_grad) for n, t in case.items()}
    want, want_g = run(lambda *a, **o: reference(objective, estimator, *a, **o), c64)
    assert_close("value", got, want, dt, scale=want.abs().max() + 1.0)
    for name, g, e in zip(("mu", "logvar", "W", "b", "obs_logvar", "prior_mu", "prior_logvar"),
                          got_g, want_g):
        assert_close(f"{objective}/{estimator} with a prior: d/d{name}", g, e, dt,
                     scale=e.abs().max() + 1e-3)
    # the prior matters: without it the encoder's gradient differs
    _, plain = run(lambda *a, **o: fastvae_call(backend, objective, estimator, *a,
                                                **dict(o, prior_mu=None, prior_logvar=None)),
                   case)
    assert not torch.allclose(plain[0].double(), want_g[0], rtol=1e-3, atol=1e-4)
