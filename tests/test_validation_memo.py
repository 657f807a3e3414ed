"""The checks' memo: a call's structure is checked once per signature; a repeated call skips
the checks, one that differs in anything is checked again and refused as on its own."""
from __future__ import annotations


import pytest
import torch

import fastvae
from _validation import inputs


def test_a_passed_signature_skips_the_checks_and_nothing_else_does(monkeypatch):
    """fastvae.elbo checks a call's structure once per signature (shapes, dtypes, devices,
    options, numbers): a repeated training step skips the checks, a call that differs in
    any one of them is checked again, and with the same error as on its own."""
    from fastvae import functional as F
    from fastvae import validation as V
    monkeypatch.setattr(F, "_ELBO_CHECKED", V.Checked())
    x, r, mu, lv = inputs(b=5, d=6, l=3)
    good = dict(x=x, recon=r, mu=mu, logvar=lv, likelihood="gaussian", kl="mc", z=mu.clone(),
                beta=0.5, free_bits=0.0, obs_logvar=0.25, reduction="sum")
    first = fastvae.elbo(**good)
    checked = []
    real = V.check_latents
    monkeypatch.setattr(V, "check_latents", lambda *a, **k: checked.append(1) or real(*a, **k))
    assert torch.equal(fastvae.elbo(**good), first) and checked == []  # skipped
    x4 = torch.rand(5, 2, 3)  # another shape with the same D: checked once, then skipped
    fastvae.elbo(**{**good, "x": x4, "recon": r.reshape(5, 2, 3)})
    fastvae.elbo(**{**good, "x": x4, "recon": r.reshape(5, 2, 3)})
    assert checked == [1]
    bad = [
        ({"recon": torch.zeros(5, 7)}, ValueError, r"recon must have shape \(5, 6\)"),
        ({"x": x[:4], "recon": r[:4]}, ValueError, r"x must have the batch size of mu \(5\)"),
        ({"logvar": lv[:, :2]}, ValueError, r"logvar must have mu's shape"),
        ({"z": torch.zeros(5, 2)}, ValueError, r"z must have mu's shape"),
        ({"z": None}, ValueError, r"kl='mc' needs the sample z"),
        ({"kl": "analytic"}, ValueError, r"z is only used with kl='mc'"),
        ({"x": x.double().to(torch.int64)}, TypeError, r"x must be a floating-point tensor"),
        ({"mu": mu.to("meta")}, ValueError, r"all tensors must be on one device"),
        ({"z": mu.to("meta")}, ValueError, r"z on meta"),
        ({"beta": -1.0}, ValueError, r"beta must be >= 0.0"),
        ({"beta": float("nan")}, ValueError, r"beta must be finite"),
        ({"free_bits": -0.5}, ValueError, r"free_bits must be >= 0.0"),
        ({"obs_logvar": float("inf")}, ValueError, r"obs_logvar must be finite"),
        ({"likelihood": "bernoulli"}, ValueError, r"obs_logvar is only used with likelihood"),
        ({"likelihood": "bce"}, ValueError, r"likelihood must be one of"),
        ({"reduction": "avg"}, ValueError, r"reduction must be one of"),
        ({"estimator": "stl", "kl": "analytic", "z": None}, ValueError, r"estimator"),
        ({"bits": 5}, ValueError, r"bits is only used with likelihood="),
    ]
    for change, exc, msg in bad:
        with pytest.raises(exc, match=msg):
            fastvae.elbo(**{**good, **change})
        with pytest.raises(exc, match=msg):  # refused again: a failed check is not kept
            fastvae.elbo(**{**good, **change})
    assert torch.equal(fastvae.elbo(**good), first)


def test_a_passed_gaussian_signature_skips_the_checks_and_nothing_else_does(monkeypatch):
    """kl_normal and sample_with_kl share the memo: a repeated call (one group of a
    hierarchical VAE, every step) skips the checks and gives the same values; a call that
    differs in one shape, dtype, device or prior pattern is checked and refused as alone."""
    from fastvae import gaussians as G
    from fastvae import validation as V
    monkeypatch.setattr(G, "_CHECKED", V.Checked())
    mu, lv = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    pm, plv = torch.randn(2, 1, 3), torch.randn(4, 2, 3, 3)   # a broadcast row, a full map
    first = fastvae.kl_normal(mu, lv, pm, plv)
    checked = []
    real = V.check_same_device
    monkeypatch.setattr(V, "check_same_device",
                        lambda **k: checked.append(1) or real(**k))
    assert torch.equal(fastvae.kl_normal(mu, lv, pm, plv), first) and checked == []
    torch.manual_seed(0)
    z, kl = fastvae.sample_with_kl(mu, lv, pm, plv)
    assert torch.equal(kl, first) and z.shape == mu.shape and checked == []
    bad = [
        ((mu, lv[:, :1], pm, plv), ValueError, r"mu_q and logvar_q must share a shape"),
        ((mu, lv, torch.randn(2, 2, 3), plv), ValueError, r"mu_p of shape \(2, 2, 3\) does not "
                                                          r"broadcast to mu_q"),
        ((mu, lv, pm, plv[:2]), ValueError, r"logvar_p of shape \(2, 2, 3, 3\) does not"),
        ((mu, lv, pm.to(torch.int32), plv), TypeError, r"mu_p must be a floating-point"),
        ((mu, lv.to("meta"), pm, plv), ValueError, r"all tensors must be on one device"),
        ((mu, lv, pm, plv.to("meta")), ValueError, r"logvar_p on meta"),
        ((mu, lv, pm, plv.tolist()), TypeError, r"logvar_p must be a number or a tensor broadcastable to mu_q, got list"),
    ]
    for args, exc, msg in bad:
        for _ in range(2):  # refused again: a failed check is not kept
            with pytest.raises(exc, match=msg):
                fastvae.kl_normal(*args)
    assert len(checked) == 2 * 2  # the two device mismatches reach that check, both times
    assert torch.equal(fastvae.kl_normal(mu, lv, pm, plv), first)


def test_a_learned_prior_held_as_a_parameter_is_a_plain_tensor(monkeypatch):
    """nn.Parameter only marks a module's weight: a prior held as one is checked once per
    signature, takes the ops' plain autograd.Function (not the custom op's dispatch) and
    a sample_with_kl route, with the values of plain tensors."""
    from fastvae import gaussians as G
    from fastvae import validation as V
    monkeypatch.setattr(G, "_CHECKED", V.Checked())
    monkeypatch.setattr(G, "_ROUTES", V.Checked())
    mu, lv = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    pm, plv = torch.nn.Parameter(torch.randn(4, 6)), torch.nn.Parameter(torch.randn(4, 6))
    want = fastvae.kl_normal(mu, lv, pm.detach(), plv.detach(), backend="torch")
    got = fastvae.kl_normal(mu, lv, pm, plv, backend="torch")
    assert type(got.grad_fn).__name__ == "kl_normal_fwd_value_functionBackward"
    checked = []
    real = V.check_same_device
    monkeypatch.setattr(V, "check_same_device", lambda **k: checked.append(1) or real(**k))
    assert torch.equal(fastvae.kl_normal(mu, lv, pm, plv, backend="torch"), want)
    assert checked == []
    for _ in range(3):
        z, kl = fastvae.sample_with_kl(mu, lv, pm, plv, backend="torch")
    assert type(kl.grad_fn).__name__.endswith("_routeBackward")
    assert torch.equal(kl, want) and checked == []
    grads = torch.autograd.grad(kl.sum(), (pm, plv))
    assert all(g.shape == (4, 6) and torch.isfinite(g).all() for g in grads)
