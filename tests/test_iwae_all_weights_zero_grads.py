"""A row whose every log w is -inf in float32 has the bound -inf and no defined weight
(softmax: 0 / 0). It weighs 0 on every backend, as reference._softmax_weights does, so
it adds exactly 0 to every gradient, whatever the estimator and Triton kernel; the other
row's gradients are those of a float64 reference run on that row alone. A NaN log w
still makes its row's gradients NaN (no weight of a NaN sum is 0).

Row 0's samples are z_k = 1e30 from a wider q (logvar 2): the MC KL, 0.5 z^2 (1 - e^-2),
is past float32 (in float64 it is finite, which is why row 0 is held to 0, not to a
float64 run). tests/test_iwae_bound_past_float32.py::test_every_sample_of_weight_zero
checks values."""
import math

import pytest
import torch

import fastvae
from _backends import generator
from _compare import assert_close, grads, leaf
from _dmol import DMOL, make as make_dmol

ESTIMATORS = ["standard", "stl", "dreg"]
# (likelihood, K, D, x needs a gradient, the Triton row kernel): the pair kernel takes
# only a Bernoulli whose x needs none
ROUTES = [("gaussian", 2, 3, True, "iwae_bound_onepass_kernel"),
          ("gaussian", 12, 3, True, "iwae_bound_rows_kernel"),
          ("bernoulli", 5, 272, True, "iwae_bound_onepass_kernel"),
          ("bernoulli", 5, 272, False, "iwae_bound_pairs_kernel")]
NAMES = ("x", "recon_k", "mu", "logvar", "z_k")


def _latents(g, k, l=2):
    dev = g.device
    mu = torch.randn(2, l, generator=g, device=dev)
    lv = torch.randn(2, l, generator=g, device=dev) * 0.5
    z_k = mu + (0.5 * lv).exp() * torch.randn(k, 2, l, generator=g, device=dev)
    mu[0], lv[0], z_k[:, 0] = 0.0, 2.0, 1e30
    return mu, lv, z_k


SAMPLED = (False, True, False, False, True)   # recon_k and z_k: (K, B, ...)


def _row(t, r, sampled):
    """Row r of a (B, ...) or (K, B, ...) input or gradient, kept as a batch of one."""
    return t[:, r:r + 1] if sampled else t[r:r + 1]


def _check(value, inputs, want_fn):
    """Row 0: bound -inf, every gradient exactly 0; row 1: as the float64 reference."""
    assert value[0].item() == -math.inf
    got = grads(value, inputs)
    for name, t, sampled in zip(NAMES, got, SAMPLED):
        if t is not None:   # STL: no direct gradient w.r.t. mu, logvar (compared below)
            row0 = _row(t, 0, sampled)
            assert torch.equal(row0, torch.zeros_like(row0)), f"d/d{name} of the -inf row"
    one = [leaf(_row(t.detach(), 1, sampled).double(), t.requires_grad)
           for t, sampled in zip(inputs, SAMPLED)]
    want_v = want_fn(*one)
    assert_close("row 1's bound", value[1:].detach(), want_v.detach(), torch.float32)
    want = grads(want_v, one)
    for name, t, w, sampled in zip(NAMES, got, want, SAMPLED):
        assert_close(f"d/d{name} of row 1", None if t is None else _row(t, 1, sampled), w,
                     torch.float32)


@pytest.mark.parametrize("likelihood,k,d,x_grad,kernel", ROUTES)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_a_row_of_weight_zero_adds_zero_to_every_gradient(seed, backend, launches, estimator,
                                                          likelihood, k, d, x_grad, kernel):
    g = generator(seed)
    x = leaf(torch.rand(2, d, generator=g, device=g.device), x_grad)
    recon_k = leaf(torch.randn(k, 2, d, generator=g, device=g.device))
    mu, lv, z_k = (leaf(t) for t in _latents(g, k))
    obs = -1.0 if likelihood == "gaussian" else 0.0
    kw = dict(likelihood=likelihood, obs_logvar=obs, estimator=estimator, reduction="none")
    value = fastvae.iwae_bound(x, recon_k, mu, lv, z_k, backend=backend, **kw)
    if backend == "triton":
        assert kernel in launches, launches
    _check(value, [x, recon_k, mu, lv, z_k],
           lambda *one: fastvae.iwae_bound(*one, backend="reference", **kw))


@pytest.mark.parametrize("estimator", ["standard", "stl"])
def test_a_dmol_row_of_weight_zero_adds_zero_to_every_gradient(seed, backend, estimator):
    """The discretized logistic mixture's bound takes its logsumexp from
    reference.logsumexp: 0, not NaN, where every log w of a row is -inf."""
    k = 2
    x, _ = make_dmol(2, 1, 3, 2, 2, torch.float32)
    recon_k = leaf(torch.stack([make_dmol(2, 1, 3, 2, 2, torch.float32)[1] for _ in range(k)]))
    mu, lv, z_k = (leaf(t.cpu()) for t in _latents(generator(seed), k))
    dev = torch.get_default_device()
    inputs = [t.to(dev).detach().requires_grad_(t.requires_grad)
              for t in (x, recon_k, mu, lv, z_k)]
    inputs[0].requires_grad_(False)
    kw = dict(likelihood=DMOL, estimator=estimator, reduction="none")
    value = fastvae.iwae_bound(*inputs, backend=backend, **kw)
    _check(value, inputs, lambda *one: fastvae.iwae_bound(*one, backend="reference", **kw))


def test_a_nan_log_w_still_makes_its_row_nan(backend, launches):
    """A NaN in a row's recon_k: its bound and gradients NaN on every kernel (a NaN sum is
    not the 0 of an all -inf row), the other row's finite."""
    for likelihood, k, d, x_grad, kernel in ROUTES:
        torch.manual_seed(0)
        x = leaf(torch.rand(2, d), x_grad)
        recon = torch.randn(k, 2, d)
        recon[1, 0, 0] = math.nan
        recon_k = leaf(recon)
        mu, lv = leaf(torch.randn(2, 2)), leaf(torch.zeros(2, 2))
        z_k = leaf(mu.detach() + torch.randn(k, 2, 2))
        del launches[:]
        value = fastvae.iwae_bound(x, recon_k, mu, lv, z_k, likelihood=likelihood,
                                   obs_logvar=-1.0 if likelihood == "gaussian" else 0.0,
                                   reduction="none", backend=backend)
        if backend == "triton":
            assert kernel in launches, launches
        assert math.isnan(value[0].item()) and math.isfinite(value[1].item())
        gz = grads(value, [z_k])[0]
        assert gz[:, 0].isnan().all() and gz[:, 1].isfinite().all(), (likelihood, k, gz)
