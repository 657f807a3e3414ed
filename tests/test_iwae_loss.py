"""fastvae.IWAELoss: an nn.Module returning -L_K, value and gradient, on every backend (the
``backend`` fixture), with the sign inside the fused op: backward gets a grad_output of 1
and scales nothing, where ``-fastvae.iwae_bound(...)`` reads and writes every gradient
again."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fastvae
import _formulas as F
from _backends import case_dtype
from _compare import assert_close, grads, leaf
from fastvae.ops import _autograd

F64 = torch.float64


def make(k=3, b=5, d=11, l=3, dtype=F64):
    x = leaf(torch.rand(b, d, dtype=dtype))
    recon_k = leaf(torch.randn(k, b, d, dtype=dtype) * 2)
    mu, lv = leaf(torch.randn(b, l, dtype=dtype)), leaf(torch.randn(b, l, dtype=dtype) * 0.5)
    z_k = leaf(mu.detach() + torch.exp(0.5 * lv.detach()) * torch.randn(k, b, l, dtype=dtype))
    return x, recon_k, mu, lv, z_k


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "continuous_bernoulli"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("prior", [False, True])
def test_is_minus_the_bound_value_and_gradient(seed, backend, likelihood, reduction, prior):
    dt = case_dtype(backend)
    x, r, mu, lv, z = make(dtype=dt)
    obs = leaf(torch.randn(11, dtype=dt)) if likelihood == "gaussian" else 0.0
    pm, plv = ((leaf(torch.randn(3, dtype=dt)), leaf(torch.randn(5, 3, dtype=dt)))
               if prior else (None, None))
    loss_fn = fastvae.IWAELoss(likelihood=likelihood, reduction=reduction, backend=backend)
    assert isinstance(loss_fn, nn.Module)
    loss = loss_fn(x, r, mu, lv, z, obs_logvar=obs, prior_mu=pm, prior_logvar=plv)
    bound = fastvae.iwae_bound(x, r, mu, lv, z, likelihood=likelihood, obs_logvar=obs,
                               reduction=reduction, backend=backend, prior_mu=pm,
                               prior_logvar=plv)
    want = F.iwae(x, r, mu, lv, z, likelihood=likelihood, obs_logvar=obs, reduction=reduction,
                  prior_mu=pm, prior_logvar=plv)
    assert_close("-bound", loss, -bound, dt, rtol={F64: 1e-14}, scale=1.0)
    assert_close("-formula", loss, -want, dt, scale=100.0)
    ins = [x, r, mu, lv, z, obs if isinstance(obs, torch.Tensor) else None, pm, plv]
    w = torch.rand(loss.shape, dtype=F64) + 0.5
    for i, (g, e) in enumerate(zip(grads(loss, ins, w), grads(want, ins, w))):
        if e is not None:
            assert_close(f"grad {i}", g, -e, dt, scale=e.abs().max() + 1e-3)


@pytest.mark.parametrize("estimator", ["stl", "dreg"])
def test_estimators_are_the_bound_s_negated(seed, backend, estimator):
    """Through a decoder, as DReG needs: every parameter's gradient is minus the bound's."""
    dt = case_dtype(backend)
    x = torch.rand(4, 6, dtype=dt).round()
    enc = nn.Linear(6, 4).to(dt)
    dec = nn.Linear(2, 6).to(dt)

    def run(loss_of):
        torch.manual_seed(3)
        mu, lv = enc(x).chunk(2, dim=-1)
        z_k = fastvae.reparameterize(mu, lv, n_samples=5, backend=backend)
        loss = loss_of(x, dec(z_k), mu, lv, z_k)
        params = [*enc.parameters(), *dec.parameters()]
        return loss, torch.autograd.grad(loss, params)

    loss, got = run(fastvae.IWAELoss(estimator=estimator, backend=backend))
    neg, want = run(lambda *a: -fastvae.iwae_bound(*a, reduction="mean", estimator=estimator,
                                                   backend=backend))
    assert_close("value", loss, neg, dt, rtol={F64: 1e-14}, scale=1.0)
    for i, (g, e) in enumerate(zip(got, want)):
        assert_close(f"grad {i}", g, e, dt, scale=e.abs().max() + 1e-3)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_backward_gets_grad_output_one(seed, monkeypatch, reduction):
    """The reason the module exists: its op's backward is handed exactly 1 (the backends
    then scale nothing), -iwae_bound's is handed -1 (a pass over every gradient)."""
    seen = []
    real = _autograd.weigh_saved

    def spy(ctx, grad_out, row_dims):
        seen.append(float(grad_out))
        return real(ctx, grad_out, row_dims)

    monkeypatch.setattr(_autograd, "weigh_saved", spy)
    x, r, mu, lv, z = make(dtype=torch.float32)
    fastvae.IWAELoss(reduction=reduction, backend="torch")(x, r, mu, lv, z).backward()
    (-fastvae.iwae_bound(x, r, mu, lv, z, reduction=reduction, backend="torch")).backward()
    assert seen == [1.0, -1.0]


def test_trainer_s_objectives_hand_their_ops_grad_output_one(seed, monkeypatch):
    """fastvae train's ELBO and IWAE losses take the sign inside the op, as the modules do."""
    from fastvae import objectives
    from fastvae.models import VAE
    seen = []
    real = _autograd.weigh_saved
    monkeypatch.setattr(_autograd, "weigh_saved",
                        lambda ctx, g, dims: seen.append(float(g)) or real(ctx, g, dims))
    model = VAE((1, 4, 4), latent_dim=2, hidden=(8,))
    x = torch.rand(3, 1, 4, 4).round()
    base = dict(backend="torch", beta=1.0, kl="analytic", estimator="standard")
    for cfg in (dict(base), dict(base, objective="iwae", k=4), dict(base, k=3)):
        loss, _ = objectives.loss(model, model, x, cfg)
        loss.backward()
    assert seen == [1.0, 1.0, 1.0]


def test_constructor_and_repr():
    loss = fastvae.IWAELoss(likelihood="gaussian", reduction="sum", estimator="dreg")
    assert repr(loss) == "IWAELoss(likelihood='gaussian', reduction='sum', estimator='dreg')"
    assert "bits=8" in repr(fastvae.IWAELoss(likelihood="discretized_logistic_mixture"))
    for kw, exc, msg in [({"likelihood": "poisson"}, ValueError, "likelihood"),
                         ({"reduction": "max"}, ValueError, "reduction"),
                         ({"estimator": "reinforce"}, ValueError, "estimator"),
                         ({"backend": "cuda"}, ValueError, "backend"),
                         ({"bits": 5}, ValueError, "bits")]:
        with pytest.raises(exc, match=msg):
            fastvae.IWAELoss(**kw)


def test_discretized_logistic_mixture_is_the_bound_negated(seed):
    """Its bound is not one fused op: the sign is applied outside, same values."""
    k, b, m = 2, 3, 2
    x = torch.randint(0, 256, (b, 1, 2, 2)) / 255.0
    params = leaf(torch.randn(k, b, 3 * m, 2, 2))
    mu, lv = leaf(torch.randn(b, 2)), leaf(torch.randn(b, 2))
    z = leaf(torch.randn(k, b, 2))
    lik = "discretized_logistic_mixture"
    loss = fastvae.IWAELoss(likelihood=lik, backend="torch")(x, params, mu, lv, z)
    want = -fastvae.iwae_bound(x, params, mu, lv, z, likelihood=lik, reduction="mean",
                               backend="torch")
    assert torch.equal(loss, want)
    for g, e in zip(grads(loss, [params, mu, lv, z]), grads(want, [params, mu, lv, z])):
        assert torch.equal(g, e)
