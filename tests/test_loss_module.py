"""fastvae.ELBOLoss: an nn.Module returning -ELBO, value and gradient, on every backend
(the ``backend`` fixture; on "triton" the loss's sign rides into the fused op)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fastvae
import _formulas as F
from _backends import case_dtype
from _compare import assert_close, grads, leaf

F64 = torch.float64


def make(b=5, d=11, l=3, dtype=F64):
    return [leaf(t) for t in (torch.rand(b, d, dtype=dtype), torch.randn(b, d, dtype=dtype) * 2,
                                torch.randn(b, l, dtype=dtype), torch.randn(b, l, dtype=dtype),
                                torch.randn(b, l, dtype=dtype))]


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "continuous_bernoulli"])
@pytest.mark.parametrize("kl", ["analytic", "mc"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_is_minus_elbo_value_and_gradient(seed, backend, likelihood, kl, reduction):
    dt = case_dtype(backend)
    x, r, mu, lv, z = make(dtype=dt)
    zz = z if kl == "mc" else None
    obs = leaf(torch.randn(11, dtype=dt)) if likelihood == "gaussian" else 0.0
    loss_fn = fastvae.ELBOLoss(likelihood=likelihood, kl=kl, beta=0.8, free_bits=0.05,
                               reduction=reduction, backend=backend)
    assert isinstance(loss_fn, nn.Module)
    loss = loss_fn(x, r, mu, lv, z=zz, obs_logvar=obs)
    el = fastvae.elbo(x, r, mu, lv, likelihood=likelihood, kl=kl, z=zz, beta=0.8, free_bits=0.05,
                      obs_logvar=obs, reduction=reduction, backend=backend)
    want = F.elbo(x, r, mu, lv, likelihood=likelihood, kl=kl, z=zz, beta=0.8, free_bits=0.05,
                  obs_logvar=obs, reduction=reduction)
    assert_close("-elbo", loss, -el, dt, rtol={F64: 1e-14}, scale=1.0)
    assert_close("-formula", loss, -want, dt, scale=100.0)
    ins = [x, r, mu, lv, zz, obs if isinstance(obs, torch.Tensor) else None]
    w = torch.rand(loss.shape, dtype=F64) + 0.5
    for i, (g, e) in enumerate(zip(grads(loss, ins, w), grads(want, ins, w))):
        if e is not None:
            assert_close(f"grad {i}", g, -e, dt, scale=e.abs().max() + 1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_sum_is_pytorch_examples_loss_function(seed, backend, dtype):
    dt = case_dtype(backend, dtype)
    x, r, mu, lv, _ = make(64, 784, 20, dtype=dt)
    loss = fastvae.ELBOLoss(reduction="sum", backend=backend)(x, r, mu, lv)
    e = [leaf(t) for t in (r, mu, lv)]
    want = F.examples_loss_function(e[0], x, e[1], e[2])
    rtol = {F64: 1e-12, torch.float32: 2e-6}
    assert_close("value", loss, want, dt, rtol=rtol)
    loss.backward()
    want.backward()
    for a, b, name in zip((r, mu, lv), e, ("recon", "mu", "logvar")):
        assert_close(f"d/d{name}", a.grad, b.grad, dt, rtol=rtol,
                     scale=b.grad.abs().max().clamp(min=1))


def test_plain_backward_like_a_torch_loss(seed):
    """loss.backward() with the implicit grad_output of 1, repeated steps, zero_grad between."""
    enc, dec = nn.Linear(8, 4), nn.Linear(2, 8)
    opt = torch.optim.SGD([*enc.parameters(), *dec.parameters()], lr=0.1)
    loss_fn = fastvae.ELBOLoss()
    x = torch.rand(16, 8)
    losses = []
    for _ in range(30):
        mu, lv = enc(x).chunk(2, -1)
        z = fastvae.reparameterize(mu, lv)
        loss = loss_fn(x, dec(z), mu, lv)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]  # it trains
    # and the gradients equal the reference backend's on the same z
    mu, lv = enc(x).chunk(2, -1)
    z = fastvae.reparameterize(mu, lv).detach()
    grads = []
    for backend in ("torch", "reference"):
        enc.zero_grad()
        dec.zero_grad()
        mu, lv = enc(x).chunk(2, -1)
        fastvae.ELBOLoss(backend=backend)(x, dec(z), mu, lv).backward()
        grads.append([p.grad.clone() for p in (*enc.parameters(), *dec.parameters())])
    for a, b in zip(*grads):
        assert_close("parameter gradient, torch vs reference", a, b, torch.float32, rtol=1e-5,
                     scale=0.1)


def test_half_inputs_give_fp32_loss(seed):
    x, r, mu, lv, _ = (leaf(t.to(torch.bfloat16)) for t in make())
    loss = fastvae.ELBOLoss()(x, r, mu, lv)
    assert loss.dtype == torch.float32
    loss.backward()
    assert r.grad.dtype == torch.bfloat16


def test_constructor_and_repr():
    m = fastvae.ELBOLoss(likelihood="gaussian", kl="mc", beta=4, free_bits=0.5, reduction="sum")
    assert m.beta == 4.0 and isinstance(m.beta, float) and m.free_bits == 0.5
    r = repr(m)
    for part in ("likelihood='gaussian'", "kl='mc'", "beta=4.0", "free_bits=0.5", "reduction='sum'"):
        assert part in r
    assert list(m.parameters()) == []  # no state of its own
    with pytest.raises(ValueError, match="kl must be one of"):
        fastvae.ELBOLoss(kl="sampled")


@pytest.mark.parametrize("kw,exc,msg", [
    (dict(backend="gpu"), ValueError, "backend must be one of"),
    (dict(backend=5), ValueError, "backend must be one of"),
    (dict(validate="yes"), TypeError, "validate must be None or a bool, got str"),
    (dict(validate=1), TypeError, "validate must be None or a bool, got int")])
def test_constructor_checks_backend_and_validate_as_the_call_does(kw, exc, msg):
    """Where the loss is made, not at its first forward, with fastvae.elbo's message."""
    with pytest.raises(exc, match=msg) as made:
        fastvae.ELBOLoss(**kw)
    x, r, mu, lv, _ = (t.detach() for t in make())
    with pytest.raises(exc) as called:
        fastvae.elbo(x, r, mu, lv, **kw)
    assert str(made.value) == str(called.value)
    for good in (dict(backend=None, validate=None), dict(backend="reference", validate=True)):
        fastvae.ELBOLoss(**good)(x, r, mu, lv)


def test_per_call_validate_setting(restore_validation):
    x, r, mu, lv, _ = make()
    x = x.detach().clone()
    x[0, 0] = 2.0
    with pytest.raises(ValueError, match=r"needs x in \[0, 1\]"):
        fastvae.ELBOLoss(validate=True)(x, r, mu, lv)
    fastvae.set_validation(True)
    assert torch.isfinite(fastvae.ELBOLoss(validate=False)(x, r, mu, lv))


def test_the_value_path_keeps_no_placeholders(seed, backend, monkeypatch):
    """ELBOLoss, sample_with_kl and the other value-and-gradients ops return values only:
    the gradients they drop are never turned into the custom op's empty placeholders (a
    call allocates none), while a call of the custom op itself still gets them (its
    outputs may not be None)."""
    if backend == "reference":
        pytest.skip("the reference has no fused op")
    from fastvae.ops import _autograd as A
    dt = case_dtype(backend)
    x, r, mu, lv, _ = make(dtype=dt)
    filled = []
    real = A.filled
    monkeypatch.setattr(A, "filled", lambda outs, like: filled.append(1) or real(outs, like))
    loss = fastvae.ELBOLoss(reduction="sum", backend=backend)(x, r, mu, lv)
    loss.backward()
    z, kl = fastvae.sample_with_kl(mu, lv, torch.zeros_like(mu), lv.detach(), backend=backend)
    (z.sum() + kl.sum()).backward()
    fastvae.kl_normal(mu, lv, 0.5, lv.detach(), backend=backend).sum().backward()
    fastvae.kl_standard_normal(mu, lv, backend=backend).sum().backward()
    fastvae.gaussian_log_prob(x.detach(), r, 0.3, backend=backend).sum().backward()
    px = torch.randint(0, 256, (2, 3, 2, 2)).to(dt) / 127.5 - 1
    params = leaf(torch.randn(2, 30, 2, 2, dtype=dt))
    fastvae.discretized_logistic_mixture_log_prob(px, params, backend=backend).sum().backward()
    assert filled == []
    assert params.grad is not None
    assert r.grad is not None and mu.grad is not None and x.grad is not None
    import importlib
    elbo_op = importlib.import_module("fastvae.ops.elbo")
    out = elbo_op._elbo_op(x.detach(), r.detach(), mu.detach(), lv.detach(), None, None, None,
                           None, 0.0, "bernoulli", "analytic", 1.0, 0.0, "sum", 1.0, "standard",
                           [False] * 8, backend)
    assert filled == [1] and all(t.numel() == 0 for t in out[1:])


def test_every_op_takes_inference_tensors(seed, backend):
    """Inference tensors have no version counter, which the ops' higher-order support reads:
    every fused op runs inside ``torch.inference_mode()`` with the reference's values, and
    an inference tensor (a prior made there) passed beside inputs that need gradients
    gives the reference's gradients."""
    dt = case_dtype(backend)
    with torch.inference_mode():
        x, r, mu, lv, z = (t.detach().clone() for t in make(dtype=dt))
        px = torch.randint(0, 256, (2, 3, 2, 2)).to(dt) / 127.5 - 1
        params = torch.randn(2, 30, 2, 2, dtype=dt)
        prior = torch.randn(mu.shape[1], dtype=dt)
        calls = {
            "elbo": lambda b: fastvae.elbo(x, r, mu, lv, prior_mu=prior, backend=b),
            "iwae": lambda b: fastvae.iwae_bound(x, r[None], mu, lv, z[None], backend=b),
            "kl_normal": lambda b: fastvae.kl_normal(mu, lv, prior, 0.5, backend=b),
            "kl_standard_normal": lambda b: fastvae.kl_standard_normal(mu, lv, backend=b),
            "gaussian_log_prob": lambda b: fastvae.gaussian_log_prob(x, r, 0.3, backend=b),
            "dmol": lambda b: fastvae.discretized_logistic_mixture_log_prob(px, params,
                                                                             backend=b),
            "sample_with_kl": lambda b: fastvae.sample_with_kl(mu, lv, prior, 0.5, backend=b)[1],
        }
        for name, call in calls.items():
            got = call(backend)
            assert got.is_inference(), name
            assert_close(name, got, call("reference"), dt, scale=10.0)
    mu_g, lv_g = leaf(mu.clone()), leaf(lv.clone())
    for b in (backend, "reference"):
        for t in (mu_g, lv_g):
            t.grad = None
        fastvae.kl_normal(mu_g, lv_g, prior, 0.5, backend=b).sum().backward()
        (fastvae.elbo(x.clone(), r.clone(), mu_g, lv_g, prior_mu=prior, backend=b)
         + fastvae.sample_with_kl(mu_g, lv_g, prior, 0.5, backend=b)[1].sum()).backward()
        if b == backend:
            got = (mu_g.grad, lv_g.grad)
    assert_close("dmu", got[0], mu_g.grad, dt, scale=10.0)
    assert_close("dlogvar", got[1], lv_g.grad, dt, scale=10.0)
