"""fastvae.elbo's numerics on every backend (the ``backend`` fixture) across dtypes: half
precision within 2x eager's error, low-precision inputs, mixed dtypes, autocast,
float64 promotion.
The rest of the ELBO's numerics: tests/test_elbo_numerics_*.py.
"""
from __future__ import annotations

import math

import pytest
import torch

import fastvae
import _formulas as F
from _compare import F64, TOL, assert_close, grads, leaf
from _elbo import make, make_like


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
