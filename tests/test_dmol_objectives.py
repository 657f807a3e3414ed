"""The discretized mixture of logistics as the likelihood of fastvae.elbo, ELBOLoss and
iwae_bound, on every backend (the ``backend`` fixture): values and every gradient against
the float64 formula of tests/_formulas.py plus the latent terms, each reduction, KL mode,
free bits and beta, K samples, both estimators, a learned prior; and its errors."""
from __future__ import annotations

import math

import pytest
import torch

import fastvae
import _formulas as F
from _backends import case_dtype
from _compare import assert_close, grads, leaf
from _dmol import DMOL, F64, make


def _latents(b, l, dt):
    mu, lv = torch.randn(b, l, dtype=dt), torch.randn(b, l, dtype=dt) * 0.5
    return mu, lv, mu + torch.exp(0.5 * lv) * torch.randn(b, l, dtype=dt)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kl,free_bits,beta", [("analytic", 0.0, 1.0), ("mc", 0.0, 0.5),
                                               ("analytic", 0.3, 2.0)])
def test_elbo(seed, backend, reduction, kl, free_bits, beta):
    dt = case_dtype(backend)
    x, p = make(4, 3, 3, 5, 4, dt)
    mu, lv, z = _latents(4, 6, dt)
    ins = [leaf(p), leaf(mu), leaf(lv), leaf(z) if kl == "mc" else None]
    got = fastvae.elbo(x, ins[0], ins[1], ins[2], likelihood=DMOL, kl=kl, z=ins[3], beta=beta,
                       free_bits=free_bits, reduction=reduction, backend=backend)
    kl_dim = F.kl_analytic_dim(ins[1], ins[2]) if kl == "analytic" else F.kl_mc_dim(
        ins[3], ins[1], ins[2])
    if free_bits:
        below = kl_dim.mean(0, keepdim=True) < free_bits
        kl_dim = torch.where(below, torch.full_like(kl_dim, free_bits), kl_dim)
    want = F.reduce(F.dmol_log_prob(x, ins[0]) - beta * kl_dim.sum(-1), reduction)
    assert_close("elbo", got, want, dt, scale=want.abs().max() + 1)
    w = torch.rand(got.shape, dtype=F64) + 0.5
    for name, g, e in zip(("recon", "mu", "logvar", "z"), grads(got, ins, w), grads(want, ins, w)):
        if e is not None:
            assert g.dtype == dt
            assert_close(f"d elbo / d {name}", g, e, dt, scale=e.abs().max() + 1e-3)
    loss = fastvae.ELBOLoss(likelihood=DMOL, kl=kl, beta=beta, free_bits=free_bits,
                            reduction=reduction, backend=backend)
    assert_close("ELBOLoss", loss(x, ins[0], ins[1], ins[2], z=ins[3]), -want, dt,
                 scale=want.abs().max() + 1)


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("k", [1, 3])
def test_iwae_bound(seed, backend, reduction, k):
    dt = case_dtype(backend)
    b, l = 3, 4
    x, _ = make(b, 1, 4, 3, 5, dt)
    pk = torch.stack([make(b, 1, 4, 3, 5, dt)[1] for _ in range(k)])
    mu, lv, _ = _latents(b, l, dt)
    zk = mu + torch.exp(0.5 * lv) * torch.randn(k, b, l, dtype=dt)
    ins = [leaf(pk), leaf(mu), leaf(lv), leaf(zk)]
    got = fastvae.iwae_bound(x, *ins, likelihood=DMOL, reduction=reduction, backend=backend)
    log_px = torch.stack([F.dmol_log_prob(x, ins[0][i]) for i in range(k)])
    log_w = log_px - F.kl_mc_dim(ins[3], ins[1], ins[2]).sum(-1)
    want = F.reduce(torch.logsumexp(log_w, 0) - math.log(k), reduction)
    assert_close("bound", got, want, dt, scale=want.abs().max() + 1)
    w = torch.rand(got.shape, dtype=F64) + 0.5
    for name, g, e in zip(("recon_k", "mu", "logvar", "z_k"), grads(got, ins, w),
                          grads(want, ins, w)):
        assert_close(f"d bound / d {name}", g, e, dt, scale=e.abs().max() + 1e-3)


def test_iwae_weights_sum_to_one_at_any_size_of_log_w(seed, backend):
    """K identical samples weigh 1/K each, even at log w ~ -3e6 (an untrained decoder's
    32x32 RGB images at the narrowest scale): the bound's gradient summed over k is one
    sample's. torch.logsumexp's backward weighs by exp(log w - the rounded bound), 12% off
    here in float32."""
    b, k, l = 2, 5, 4
    x = torch.randint(0, 256, (b, 3, 32, 32)).float() / 255
    p = torch.randn(b, 20, 32, 32)
    for c in range(3):
        p[:, 2 + 6 * c:4 + 6 * c] = -1.0   # means
        p[:, 4 + 6 * c:6 + 6 * c] = -7.0   # log-scales at the clamp
    one = leaf(p)
    (g1,) = grads(fastvae.discretized_logistic_mixture_log_prob(x, one, backend=backend), [one])
    pk = leaf(p.expand(k, *p.shape))
    zeros = torch.zeros(b, l)
    v = fastvae.iwae_bound(x, pk, zeros, zeros, torch.zeros(k, b, l), likelihood=DMOL,
                           backend=backend)
    assert v.max() < -1e6
    (gk,) = grads(v, [pk])
    assert_close("sum_k d bound / d recon_k", gk.sum(0), g1, torch.float32, rtol=1e-5,
                 scale=g1.abs().max())


@pytest.mark.parametrize("case", ["vanishing prior variance", "far from both means"])
def test_iwae_a_sample_of_weight_zero_whose_partials_overflow(seed, backend, case):
    """A sample of weight 0 whose partials overflow float32. "vanishing prior variance":
    the prior's logvar -90 (1 / sd = 3.5e19), the sample 0.5 from its mean, so
    d log p(z) / dz = -tp / sd overflows. "far from both means": the sample 2^66 from the
    prior's mean and 2^66 - 2^44 from q's (exact in float32), whose log densities overflow
    on their own (their difference, a log w ~ -2^110, was inf - inf = NaN: the bound
    itself). Every gradient takes the weight's 0 for it (0 * inf had made z_k's and the
    prior's NaN), as float64 does."""
    dt = torch.float32
    b, k, l = 2, 3, 2
    x, _ = make(b, 1, 4, 3, 5, dt)
    pk = torch.stack([make(b, 1, 4, 3, 5, dt)[1] for _ in range(k)])
    mu, lv = torch.zeros(b, l), torch.zeros(b, l)
    zk = torch.randn(k, b, l) * 0.5
    pm, plv = torch.zeros(b, l), torch.zeros(b, l)
    if case == "vanishing prior variance":
        plv[0, 0] = -90.0
        zk[:, 0, 0] = 0.0    # samples 0 and 2 at the prior's mean
        zk[1, 0, 0] = 0.5
    else:
        mu[0, 0] = 2.0 ** 44
        zk[:, 0, 0] = mu[0, 0]
        zk[1, 0, 0] = 2.0 ** 66
    ins = [leaf(t) for t in (pk, mu, lv, zk, pm, plv)]
    got = fastvae.iwae_bound(x, *ins[:4], likelihood=DMOL, prior_mu=ins[4],
                             prior_logvar=ins[5], reduction="sum", backend=backend)
    want_ins = [leaf(t.double()) for t in ins]
    log_px = torch.stack([F.dmol_log_prob(x.double(), want_ins[0][i]) for i in range(k)])
    log_w = log_px - F.kl_mc_prior_dim(want_ins[3], want_ins[1], want_ins[2], want_ins[4],
                                       want_ins[5]).sum(-1)
    m = log_w.detach().max(0).values   # not torch.logsumexp: its backward weighs by
    # exp(log w - lse), lse rounded to -2^87 here, and the two samples' weights came to 1 each
    want = (m + torch.log(torch.exp(log_w - m).sum(0)) - math.log(k)).sum()
    assert_close("bound", got, want, dt)
    for name, g, e in zip(("recon_k", "mu", "logvar", "z_k", "prior_mu", "prior_logvar"),
                          grads(got, ins), grads(want, want_ins)):
        assert bool(torch.isfinite(g).all()), name
        assert_close(f"d bound / d {name}", g, e, dt, scale=e.abs().max() + 1e-3)


def _bound_inputs(b, l, k, dt):
    """Grayscale images, one set of parameters and K sets, latents, z and z_k."""
    x, p = make(b, 1, 4, 3, 5, dt)
    pk = torch.stack([make(b, 1, 4, 3, 5, dt)[1] for _ in range(k)])
    mu, lv, z = _latents(b, l, dt)
    zk = mu + torch.exp(0.5 * lv) * torch.randn(k, b, l, dtype=dt)
    return x, p, pk, mu, lv, z, zk


def _no_grad(g):
    return g is None or not g.abs().any()


def test_estimators(seed, backend):
    """STL in both bounds is log q at stopped mu, logvar (no direct gradient for them; z's
    and the parameters' as the float64 formula); DReG's z_k hook is not built for this
    likelihood: a clear error."""
    dt = case_dtype(backend)
    b, l, k = 3, 4, 2
    x, p, pk, mu, lv, z, zk = _bound_inputs(b, l, k, dt)
    with pytest.raises(ValueError, match="dreg"):
        fastvae.iwae_bound(x, pk, mu, lv, zk, likelihood=DMOL, estimator="dreg", backend=backend)
    ins = [leaf(pk), leaf(mu), leaf(lv), leaf(zk)]
    got = fastvae.iwae_bound(x, *ins, likelihood=DMOL, estimator="stl", backend=backend)
    log_px = torch.stack([F.dmol_log_prob(x, ins[0][i]) for i in range(k)])
    want = torch.logsumexp(log_px - F.kl_mc_dim(ins[3], ins[1].detach(), ins[2].detach())
                           .sum(-1), 0) - math.log(k)
    ones = [leaf(p), leaf(mu), leaf(lv), leaf(z)]
    got_e = fastvae.elbo(x, *ones[:3], likelihood=DMOL, kl="mc", z=ones[3], estimator="stl",
                         reduction="none", backend=backend)
    want_e = F.dmol_log_prob(x, ones[0]) - F.kl_mc_dim(ones[3], ones[1].detach(),
                                                       ones[2].detach()).sum(-1)
    for name, g_v, w_v, leaves in (("iwae", got, want, ins), ("elbo", got_e, want_e, ones)):
        assert_close(name, g_v, w_v, dt, scale=w_v.abs().max() + 1)
        g = torch.autograd.grad(g_v.sum(), leaves, allow_unused=True)
        e = torch.autograd.grad(w_v.sum(), [leaves[0], leaves[3]])
        assert _no_grad(g[1]) and _no_grad(g[2]), name
        for n, gi, ei in (("params", g[0], e[0]), ("z", g[3], e[1])):
            assert_close(f"d {name} / d {n}", gi, ei, dt, scale=ei.abs().max() + 1e-3)


@pytest.mark.parametrize("estimator", ["standard", "stl"])
def test_learned_prior(seed, backend, estimator):
    """A learned prior in both DMoL bounds: the ELBO's latent half (the ELBO op on no data
    columns) and the IWAE's log p(z_k) use N(prior_mu, exp(prior_logvar)); its gradients,
    and z's, are the formula's under STL too (only log q's mu, logvar are stopped)."""
    dt = case_dtype(backend)
    b, l, k = 3, 4, 2
    x, p, pk, mu, lv, z, zk = _bound_inputs(b, l, k, dt)
    pm, plv = leaf(torch.randn(l, dtype=dt) * 0.5), leaf(torch.randn(b, l, dtype=dt) * 0.4)
    stl = estimator == "stl"

    def q(t):
        return t.detach() if stl else t
    ones = [leaf(p), leaf(mu), leaf(lv), leaf(z), pm, plv]
    got_e = fastvae.elbo(x, *ones[:3], likelihood=DMOL, kl="mc", z=ones[3], prior_mu=pm,
                         prior_logvar=plv, estimator=estimator, reduction="sum",
                         backend=backend)
    want_e = (F.dmol_log_prob(x, ones[0])
              - F.kl_mc_prior_dim(ones[3], q(ones[1]), q(ones[2]), pm, plv).sum(-1)).sum()
    ins = [leaf(pk), leaf(mu), leaf(lv), leaf(zk), pm, plv]
    got_i = fastvae.iwae_bound(x, *ins[:4], likelihood=DMOL, prior_mu=pm, prior_logvar=plv,
                               estimator=estimator, reduction="sum", backend=backend)
    log_px = torch.stack([F.dmol_log_prob(x, ins[0][i]) for i in range(k)])
    log_w = log_px - F.kl_mc_prior_dim(ins[3], q(ins[1]), q(ins[2]), pm, plv).sum(-1)
    want_i = (torch.logsumexp(log_w, 0) - math.log(k)).sum()
    names = ("recon", "mu", "logvar", "z", "prior_mu", "prior_logvar")
    for what, g_v, w_v, leaves in (("elbo", got_e, want_e, ones), ("iwae", got_i, want_i, ins)):
        assert_close(what, g_v, w_v, dt, scale=w_v.abs().max() + 1)
        for name, g, e in zip(names, grads(g_v, leaves), grads(w_v, leaves)):
            if stl and name in ("mu", "logvar"):
                assert _no_grad(g), (what, name)
                continue
            assert_close(f"d {what} / d {name}", g, e, dt, scale=e.abs().max() + 1e-3)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_iwae_bound_of_an_empty_batch(backend, reduction):
    """B = 0, as every other likelihood: [] or 0, and gradients of the inputs' shapes
    (a reshape to (0, -1) raised before)."""
    dt = case_dtype(backend)
    x, p = make(0, 1, 2, 2, 3, dt)
    ins = [leaf(p.expand(3, *p.shape)), leaf(torch.zeros(0, 2, dtype=dt)),
           leaf(torch.zeros(0, 2, dtype=dt)), leaf(torch.zeros(3, 0, 2, dtype=dt))]
    got = fastvae.iwae_bound(x, *ins, likelihood=DMOL, reduction=reduction, backend=backend)
    assert got.shape == ((0,) if reduction == "none" else ())
    assert got.sum().item() == 0.0
    for t, g in zip(ins, grads(got, ins)):
        assert g.shape == t.shape


def test_likelihood_errors():
    x, p = make(2, 3, 2, 2, 2)
    mu, lv, z = _latents(2, 3, F64)
    with pytest.raises(ValueError, match="obs_logvar"):
        fastvae.elbo(x, p, mu, lv, likelihood=DMOL, obs_logvar=0.5)
    with pytest.raises(ValueError, match="batch size"):
        fastvae.elbo(x[:1], p[:1], mu, lv, likelihood=DMOL)
    with pytest.raises(ValueError, match="recon must be"):
        fastvae.elbo(x, p[:, :7], mu, lv, likelihood=DMOL)
    with pytest.raises(ValueError, match="recon_k must be"):
        fastvae.iwae_bound(x, p, mu, lv, z[None], likelihood=DMOL)
    with pytest.raises(ValueError, match=r"recon_k must be \(K, B, 10\*M, H, W\).* with K = 2 "
                                         r"samples \(z_k's\)"):
        fastvae.iwae_bound(x, p.expand(3, *p.shape), mu, lv, z.expand(2, *z.shape),
                           likelihood=DMOL)
    x3, p3 = make(3, 3, 2, 2, 2)   # x and recon_k agree, mu and z_k have another batch
    with pytest.raises(ValueError, match=r"x must have the batch size of mu \(2\)"):
        fastvae.iwae_bound(x3, p3[None], mu, lv, z[None], likelihood=DMOL)
    with pytest.raises(ValueError, match=r"x must have the batch size of mu \(2\)"):
        fastvae.iwae_bound(x3, p[None], mu, lv, z[None], likelihood=DMOL)   # x alone off
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        fastvae.iwae_bound(None, p[None], mu, lv, z[None], likelihood=DMOL)
    with pytest.raises(ValueError, match="bits"):
        fastvae.ELBOLoss(likelihood=DMOL, bits=0)


@pytest.mark.parametrize("name", ["x", "recon_k", "mu", "logvar", "z_k", "prior_mu",
                                  "prior_logvar"])
def test_iwae_bound_validation_names_the_input(name):
    """validate=True: a non-finite value in one input is reported under that input's name
    and with its own count, not under the name of an internal density's argument, nor
    counted once per repeat over the K samples."""
    k, b, l = 3, 2, 4
    x, _ = make(b, 1, 2, 2, 3)
    ins = {"x": x, "recon_k": torch.stack([make(b, 1, 2, 2, 3)[1] for _ in range(k)]),
           "mu": torch.randn(b, l, dtype=F64), "logvar": torch.randn(b, l, dtype=F64),
           "z_k": torch.randn(k, b, l, dtype=F64), "prior_mu": torch.zeros(l, dtype=F64),
           "prior_logvar": torch.zeros(b, l, dtype=F64)}
    ins[name] = ins[name].clone()
    ins[name].view(-1)[:2] = float("nan")
    with pytest.raises(ValueError, match=rf"^{name} has 2 non-finite value"):
        fastvae.iwae_bound(ins["x"], ins["recon_k"], ins["mu"], ins["logvar"], ins["z_k"],
                           likelihood=DMOL, prior_mu=ins["prior_mu"],
                           prior_logvar=ins["prior_logvar"], validate=True)


def test_dtype_and_device_errors_name_the_callers_argument():
    """elbo's mixture parameters are ``recon``, iwae_bound's ``recon_k``: a device or
    grid-dtype error names them so, not as the density op's own ``params``."""
    x, p = make(2, 3, 2, 2, 2, torch.float32)
    mu, lv, z = _latents(2, 3, torch.float32)
    p_k = p.expand(2, *p.shape)
    for name, call in [
            ("recon", lambda x, p, pk: fastvae.elbo(x, p, mu, lv, likelihood=DMOL, bits=12)),
            ("recon_k", lambda x, p, pk: fastvae.iwae_bound(x, pk, mu, lv, z.expand(2, 2, 3),
                                                            likelihood=DMOL, bits=12)),
            ("params", lambda x, p, pk: fastvae.discretized_logistic_mixture_log_prob(
                x, p, bits=12))]:
        with pytest.raises(ValueError, match=rf"one device, got x on cpu, {name} on meta$"):
            call(x, p.to("meta"), p_k.to("meta"))
        with pytest.raises(TypeError, match=rf"pass x as float32 \({name} may stay 16-bit\)$"):
            call(x.half(), p.half(), p_k.half())
