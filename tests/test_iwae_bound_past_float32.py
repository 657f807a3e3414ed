"""fastvae.iwae_bound on every backend (the ``backend`` fixture) where a sample's log w,
or its gradients' partials, pass float32's range: samples far from both means, samples
and reconstructions of weight 0, rows whose every weight is 0, a log w of +inf; the
bound and gradients those of float64 (or its limit), the row's other samples untouched.

The op's values and gradients over its options: tests/test_iwae_bound.py."""
from __future__ import annotations

import math

import pytest
import torch

import fastvae
import _formulas as F
from _compare import assert_close, assert_close_past_range, grads, leaf
from _iwae import F64, make


@pytest.mark.parametrize("prior", ["standard", "learned"])
def test_a_sample_far_from_both_means(seed, backend, prior):
    """A latent where q is the prior, its sample 1e20 away (z^2 and the standardized
    sample's square t^2 both overflow float32): log q - log p is 0 there, and the bound
    is finite, as in float64; log w as a difference of those squares was inf - inf = NaN
    on every backend. The far rows' K samples are otherwise equal (weights 1/K), so that
    logvar's gradient there, w * (t^2 - 1) / 2 ~ 1.7e39 in float64, overflows float32 as
    the kernels' w * inf does: at a far smaller weight float64 would fit and they would
    still give inf (0 at a weight of exactly 0: test_a_far_sample_of_weight_zero), a limit
    of samples no draw from q makes."""
    dt = torch.float32
    k, b, l = 3, 2, 3
    x, recon_k, mu, lv, z_k = (t.detach().float() for t in make(k, b, (5,), l, F64))
    pm, plv = (torch.randn(b, l) * 0.3, torch.randn(b, l) * 0.3) if prior == "learned" else (
        torch.zeros(b, l), torch.zeros(b, l))
    for i, j, kk, far in ((0, 0, 0, 1e20), (1, 2, 2, -6e19)):
        recon_k[:, i], z_k[:, i] = recon_k[0, i].clone(), z_k[0, i].clone()
        mu[i, j], lv[i, j], z_k[kk, i, j] = pm[i, j], plv[i, j], far
    ins = [leaf(t) for t in (x, recon_k, mu, lv, z_k, pm, plv)]
    priors = (ins[5], ins[6]) if prior == "learned" else (None, None)
    got = fastvae.iwae_bound(*ins[:5], prior_mu=priors[0], prior_logvar=priors[1],
                             backend=backend)
    want_ins = [leaf(t.double()) for t in ins]
    want = F.iwae(*want_ins[:5], prior_mu=want_ins[5] if prior == "learned" else None,
                  prior_logvar=want_ins[6] if prior == "learned" else None)
    assert_close("bound", got, want, dt)
    used = range(1, 7 if prior == "learned" else 5)
    for i, g, e in zip(used, grads(got, [ins[i] for i in used]),
                       grads(want, [want_ins[i] for i in used])):
        assert_close_past_range(f"grad {i}", g, e, dt)


# (K, D): the Triton backend's one-pass, (row, sample)-pair and two-pass kernels
FAR_SHAPES = [(3, 5), (3, 300), (12, 5)]


@pytest.mark.parametrize("k,d", FAR_SHAPES)
@pytest.mark.parametrize("prior", ["standard", "learned"])
def test_a_far_sample_of_weight_zero(seed, backend, prior, k, d):
    """A sample 2^66 from the prior's mean and 2^66 - 2^44 from q's (values exact in
    float32): its log w, about -2^109, is finite (it was inf - inf = NaN) and its weight
    0. Its log-variances' partials, (t^2 - 1) / 2 and the prior's, overflow float32: the
    gradients take its weight's 0 for them, as float64 does, where 0 * inf had made them
    NaN. Every sample of that row has log w ~ -2^87 (mu is 2^44): the weights still sum
    to 1 (the two-pass kernel's exp(log w - lse), lse rounded to the max, summed to K)."""
    dt = torch.float32
    b, l = 2, 3
    x, recon_k, mu, lv, z_k = (t.detach().float() for t in make(k, b, (d,), l, F64))
    pm, plv = (torch.randn(b, l) * 0.3, torch.randn(b, l) * 0.3) if prior == "learned" else (
        torch.zeros(b, l), torch.zeros(b, l))
    pm[0, 1] = plv[0, 1] = lv[0, 1] = 0.0
    mu[0, 1] = 2.0 ** 44
    z_k[:, 0, 1] = mu[0, 1] + torch.randn(k)   # the other samples near q's mean
    z_k[1, 0, 1] = 2.0 ** 66
    # x takes no gradient: d/dx keeps the pair kernel out
    ins = [leaf(t, requires_grad=i > 0) for i, t in enumerate((x, recon_k, mu, lv, z_k, pm, plv))]
    priors = (ins[5], ins[6]) if prior == "learned" else (None, None)
    got = fastvae.iwae_bound(*ins[:5], prior_mu=priors[0], prior_logvar=priors[1],
                             backend=backend)
    want_ins = [leaf(t.double(), t.requires_grad) for t in ins]
    want = F.iwae(*want_ins[:5], prior_mu=want_ins[5] if prior == "learned" else None,
                  prior_logvar=want_ins[6] if prior == "learned" else None)
    assert_close("bound", got, want, dt, scale=0.0)
    used = range(1, 7 if prior == "learned" else 5)
    for i, g, e in zip(used, grads(got, [ins[i] for i in used]),
                       grads(want, [want_ins[i] for i in used])):
        assert_close_past_range(f"grad {i}", g, e, dt)
    assert float(grads(got, [ins[4]])[0][1, 0].abs().max()) == 0.0   # the weight 0


def test_a_sample_of_log_w_past_float32_leaves_the_rows_other_samples_alone(seed, backend):
    """q narrower than the prior, a sample 1e20 away: log p - log q ~ 3e39 passes float32's
    largest, so that sample's log w is +inf and its weight (float64: 1) NaN in float32. The
    row's other samples weigh 0, as in float64, and the other row is untouched; the torch
    backend's softmax shifted by the +inf max and made the whole row NaN."""
    k, b, l = 3, 2, 2
    x, recon_k, mu, lv, z_k = (t.detach().float() for t in make(k, b, (4,), l, F64))
    lv.fill_(-0.5)
    z_k[0, 0, 0] = 1e20
    ins = [leaf(t, requires_grad=i in (1, 4)) for i, t in enumerate((x, recon_k, mu, lv, z_k))]
    got = fastvae.iwae_bound(*ins, backend=backend)
    assert got[0] == float("inf") and got[1].isfinite()
    want_ins = [leaf(t.double(), t.requires_grad) for t in ins]
    want = F.iwae(*want_ins)
    assert_close("the finite row", got[1], want[1], torch.float32)
    for name, g, e in zip(("recon_k", "z_k"), grads(got, [ins[1], ins[4]]),
                          grads(want, [want_ins[1], want_ins[4]])):
        assert g[0, 0].isnan().all(), name   # the sample of weight 1 in float64
        assert (g[1:, 0] == 0).all(), f"{name}: the row's other samples"
        assert_close(f"{name}, the other row", g[:, 1], e[:, 1], torch.float32)


def test_torch_func_grad_of_a_sample_of_weight_zero(seed):
    """torch.func runs the reference math: at a sample of weight 0 whose (x - r)^2
    overflows, its gradients are the eager op's, 0 there (NaN before), every input's."""
    b, d, l, k = 2, 5, 3, 3
    x, _, mu, lv, z_k = (t.detach().float() for t in make(k, b, (d,), l, F64))
    recon_k = x + 1e-19 * torch.randn(k, b, d)
    recon_k[1, 0, 2] = x[0, 2] + 1e30
    olv = torch.full((d,), -80.0)

    def bound(*ins):
        return fastvae.iwae_bound(x, *ins[:4], likelihood="gaussian", obs_logvar=ins[4],
                                  reduction="sum", backend="torch")
    ins = [leaf(t) for t in (recon_k, mu, lv, z_k, olv)]
    want = grads(bound(*ins), ins)
    got = torch.func.grad(bound, argnums=tuple(range(5)))(recon_k, mu, lv, z_k, olv)
    for i, (g, e) in enumerate(zip(got, want)):
        assert torch.isfinite(g).all(), i
        assert_close(f"grad {i}", g, e, torch.float32, scale=e.abs().max() + 1e-3)
    assert float(got[0][1, 0].abs().max()) == 0.0


@pytest.mark.parametrize("likelihood,k,d", [("gaussian", 2, 3), ("gaussian", 12, 3),
                                             ("bernoulli", 5, 272)])  # one pass, two, pairs
@pytest.mark.parametrize("estimator", ["standard", "stl", "dreg"])
def test_every_sample_of_weight_zero(seed, backend, estimator, likelihood, k, d):
    """Every log w of a row -inf in float32: a Gaussian decoder at obs_logvar -100 that
    misses x (float64: about -1e42), or every z_k 1e30 from a wider q's mean (the MC KL
    past float32). The bound is -inf whatever the estimator and kernel: the Triton
    kernels' logsumexp shifted by the max, -inf - -inf = NaN, and the reference's DReG
    surrogate weighed the row by softmax's NaN."""
    b, l = 2, 2
    x, recon_k, mu, lv, z_k = (t.detach().float() for t in make(k, b, (d,), l, F64))
    if likelihood == "gaussian":
        recon_k = x + 0.5 + torch.rand(k, b, d)
    else:
        mu, lv, z_k = torch.zeros(b, l), torch.full((b, l), 2.0), torch.full((k, b, l), 1e30)
    got = fastvae.iwae_bound(x, recon_k, mu, lv, z_k, likelihood=likelihood,
                             obs_logvar=-100.0 if likelihood == "gaussian" else 0.0,
                             estimator=estimator, backend=backend)
    assert got.tolist() == [-math.inf] * b


@pytest.mark.parametrize("likelihood,k,d", [("gaussian", 2, 3), ("gaussian", 12, 3),
                                             ("bernoulli", 5, 272)])  # one pass, two, pairs
@pytest.mark.parametrize("estimator", ["standard", "stl", "dreg"])
def test_a_sample_whose_log_w_is_past_float32_above(seed, backend, estimator, likelihood, k, d):
    """Row 0's log q of sample 0 is -inf in float32 (a latent at logvar -100 that z_0 misses
    by 1: float64 log w about 3e43), so its log w is +inf: the bound is +inf, as the
    reference's, whatever the estimator and kernel (the Triton kernels' logsumexp shifted
    by the max, inf - inf = NaN); row 1 is untouched."""
    b, l = 2, 2
    x, recon_k, mu, lv, z_k = (t.detach().float() for t in make(k, b, (d,), l, F64))
    lv[0, 0] = -100.0
    z_k[:, 0, 0] = mu[0, 0]
    z_k[0, 0, 0] += 1.0
    obs = 0.0 if likelihood == "bernoulli" else -1.0
    got = fastvae.iwae_bound(x, recon_k, mu, lv, z_k, likelihood=likelihood, obs_logvar=obs,
                             estimator=estimator, backend=backend)
    want = fastvae.iwae_bound(x.double(), recon_k.double(), mu.double(), lv.double(),
                              z_k.double(), likelihood=likelihood, obs_logvar=obs,
                              backend="reference")
    assert got[0].item() == math.inf and want[0].item() > 1e43
    assert math.isclose(got[1].item(), want[1].item(), rel_tol=1e-4, abs_tol=1e-3)


@pytest.mark.parametrize("k", [3, 12])   # the one-pass and two-pass kernels
@pytest.mark.parametrize("obs", ["scalar", "perdim", "full"])
@pytest.mark.parametrize("miss", [1e4, 1e30])
def test_a_far_reconstruction_of_weight_zero(seed, backend, obs, k, miss):
    """A Gaussian decoder at a vanishing variance (obs_logvar -80) whose sample 1 misses
    one pixel by 1e4: its (x - r) / var overflows float32 and its log w is -inf (float64:
    -3e42), weight 0; by 1e30, (x - r)^2 overflows on its own. Its d/drecon, d/dx and
    d/dobs_logvar are the weight's 0, as in float64, where 0 * inf had made them NaN (the
    reference backend's autograd, at 1e30)."""
    dt = torch.float32
    b, d, l = 2, 5, 3
    x, _, mu, lv, z_k = (t.detach().float() for t in make(k, b, (d,), l, F64))
    recon_k = x + 1e-19 * torch.randn(k, b, d)   # the others close: log w moderate
    recon_k[1, 0, 2] = x[0, 2] + miss
    olv = {"scalar": -80.0, "perdim": torch.full((d,), -80.0),
           "full": torch.full((b, d), -80.0)}[obs]
    ins = [leaf(t) for t in (x, recon_k, mu, lv, z_k, olv)]
    got = fastvae.iwae_bound(*ins[:5], likelihood="gaussian", obs_logvar=ins[5],
                             backend=backend)
    want_ins = [leaf(t.double()) if isinstance(t, torch.Tensor) else t for t in ins]
    want = F.iwae(*want_ins[:5], likelihood="gaussian", obs_logvar=want_ins[5])
    assert_close("bound", got, want, dt, scale=0.0)
    used = range(6) if obs != "scalar" else range(5)
    for i, g, e in zip(used, grads(got, [ins[i] for i in used]),
                       grads(want, [want_ins[i] for i in used])):
        assert_close_past_range(f"grad {i}", g, e, dt)
    assert float(grads(got, [ins[1]])[0][1, 0].abs().max()) == 0.0   # the weight 0
