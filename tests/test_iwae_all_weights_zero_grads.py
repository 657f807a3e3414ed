"""A row whose every log w is -inf in float32 has the bound -inf and no defined weight
(softmax: 0 / 0). It weighs 0 on every backend, as reference._softmax_weights does, so
it adds exactly 0 to every gradient, whatever the estimator and Triton kernel; the other
row's gradients are those of a float64 reference run on that row alone.

Row 0's samples are z_k = 1e30 from a wider q (logvar 2): the MC KL, 0.5 z^2 (1 - e^-2),
is past float32 (in float64 it is finite, which is why row 0 is held to 0, not to a
float64 run). tests/test_iwae_bound.py::test_every_sample_of_weight_zero checks values."""
import math

import pytest
import torch

import fastvae
from _backends import generator
from _compare import assert_close, grads, leaf

ESTIMATORS = ["standard", "stl", "dreg"]
# one-pass kernel, two-pass kernel (K past the one-pass limit), pair kernel (long Bernoulli)
ROUTES = [("gaussian", 2, 3), ("gaussian", 12, 3), ("bernoulli", 5, 272)]


def _inputs(seed, k, d, l=2):
    g = generator(seed)
    dev = g.device
    x = torch.rand(2, d, generator=g, device=dev)
    recon_k = torch.randn(k, 2, d, generator=g, device=dev)
    mu = torch.randn(2, l, generator=g, device=dev)
    lv = torch.randn(2, l, generator=g, device=dev) * 0.5
    z_k = mu + (0.5 * lv).exp() * torch.randn(k, 2, l, generator=g, device=dev)
    mu[0], lv[0], z_k[:, 0] = 0.0, 2.0, 1e30
    return x, recon_k, mu, lv, z_k


@pytest.mark.parametrize("likelihood,k,d", ROUTES)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_a_row_of_weight_zero_adds_zero_to_every_gradient(seed, backend, estimator,
                                                          likelihood, k, d):
    x, recon_k, mu, lv, z_k = (leaf(t) for t in _inputs(seed, k, d))
    obs = -1.0 if likelihood == "gaussian" else 0.0
    value = fastvae.iwae_bound(x, recon_k, mu, lv, z_k, likelihood=likelihood,
                               obs_logvar=obs, estimator=estimator, reduction="none",
                               backend=backend)
    assert value[0].item() == -math.inf
    got = grads(value, [x, recon_k, mu, lv, z_k])
    names = ("x", "recon_k", "mu", "logvar", "z_k")
    row = [lambda t, r=r: t[r] for r in (0, 1)]            # (B, n) inputs
    row_k = [lambda t, r=r: t[:, r] for r in (0, 1)]       # (K, B, n) inputs
    picks = [row, row_k, row, row, row_k]
    for name, t, pick in zip(names, got, picks):
        if t is None:   # STL: no direct gradient w.r.t. mu, logvar (checked below)
            continue
        assert torch.equal(pick[0](t), torch.zeros_like(pick[0](t))), (
            f"d/d{name} of the -inf row: {pick[0](t)}")

    one = [leaf(pick[1](t).detach().double().unsqueeze(1 if pick is row_k else 0))
           for t, pick in zip((x, recon_k, mu, lv, z_k), picks)]
    want_v = fastvae.iwae_bound(*one, likelihood=likelihood, obs_logvar=obs,
                                estimator=estimator, reduction="none", backend="reference")
    assert_close("row 1's bound", value[1:].detach(), want_v.detach(), torch.float32)
    want = grads(want_v, one)
    for name, t, pick, w in zip(names, got, picks, want):
        assert_close(f"d/d{name} of row 1",
                     None if t is None else pick[1](t).unsqueeze(1 if pick is row_k else 0),
                     w, torch.float32)
