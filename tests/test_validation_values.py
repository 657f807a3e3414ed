"""Value checks (validate= / set_validation, off by default): x outside [0, 1], non-finite
inputs on every op, under torch.func transforms too; with them off, NaN flows through."""
from __future__ import annotations


import pytest
import torch

import fastvae
from _validation import inputs


BACKENDS = ["torch", "reference"]


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli"])
@pytest.mark.parametrize("bad", [-0.01, 1.5])
def test_x_outside_unit_interval(likelihood, bad, restore_validation):
    x, r, mu, lv = inputs()
    x[1, 2] = bad
    with pytest.raises(ValueError, match=rf"likelihood='{likelihood}' needs x in \[0, 1\], got values in"):
        fastvae.elbo(x, r, mu, lv, likelihood=likelihood, validate=True)
    with pytest.raises(ValueError, match=r"needs x in \[0, 1\]"):
        fastvae.iwae_bound(x, r[None], mu, lv, mu[None], likelihood=likelihood, validate=True)
    # off by default (it costs a pass over the data): no error, a finite number
    assert fastvae.get_validation() is False
    assert torch.isfinite(fastvae.elbo(x, r, mu, lv, likelihood=likelihood))
    # the global switch, and the per-call argument overriding it
    fastvae.set_validation(True)
    assert fastvae.get_validation() is True
    with pytest.raises(ValueError, match=r"needs x in \[0, 1\]"):
        fastvae.elbo(x, r, mu, lv, likelihood=likelihood)
    with pytest.raises(ValueError, match=r"needs x in \[0, 1\]"):
        fastvae.ELBOLoss(likelihood=likelihood)(x, r, mu, lv)
    assert torch.isfinite(fastvae.elbo(x, r, mu, lv, likelihood=likelihood, validate=False))
    # the Gaussian likelihood takes any real x
    assert torch.isfinite(fastvae.elbo(x * 10, r, mu, lv, likelihood="gaussian"))


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_value_checks_under_torch_func(backend, restore_validation):
    """The checks read the values every transform's wrappers hold: a vmap's batched
    tensor is no bool() (torch's "data-dependent control flow" error named nothing of
    fastvae, with or without a bad value)."""
    from torch.func import grad, vmap
    x, r, mu, lv = inputs()
    rs = torch.stack([r, r + 1])
    fastvae.set_validation(True)

    def f(r):
        return fastvae.elbo(x, r, mu, lv, backend=backend)
    assert vmap(f)(rs).shape == (2,)
    assert vmap(grad(f))(rs).shape == rs.shape
    rs[1, 2, 3] = float("nan")
    for transform in (vmap(f), vmap(grad(f))):
        with pytest.raises(ValueError, match=r"recon has 1 non-finite value\(s\)"):
            transform(rs)
    # functionalize: bool() reads its wrapper right, with the mutations still pending
    from torch.func import functionalize

    def mutated(r):
        r2 = r.clone()
        r2[0].fill_(float("nan"))
        return fastvae.elbo(x, r2, mu, lv, backend=backend)
    with pytest.raises(ValueError, match=r"recon has 4 non-finite value\(s\)"):
        functionalize(mutated)(r)
    xs = torch.stack([x, x * 2 + 0.5])   # the second sample's x leaves [0, 1]
    with pytest.raises(ValueError, match=r"needs x in \[0, 1\], got values in \[0\.\d+, 2\."):
        vmap(lambda x: fastvae.elbo(x, r, mu, lv, backend=backend))(xs)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("where", ["x", "recon", "mu", "logvar", "z", "obs_logvar"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_inputs(backend, where, bad, restore_validation):
    x, r, mu, lv = inputs()
    z = mu.clone()
    obs = torch.zeros(4)
    ins = dict(x=x, recon=r, mu=mu, logvar=lv, z=z, obs_logvar=obs)
    ins[where].view(-1)[1] = bad
    kw = dict(likelihood="gaussian", kl="mc", backend=backend)
    with pytest.raises(ValueError, match=rf"{where} has 1 non-finite value\(s\)"):
        fastvae.elbo(**ins, **kw, validate=True)
    fastvae.set_validation(True)
    with pytest.raises(ValueError, match=rf"{where} has 1 non-finite"):
        fastvae.elbo(**ins, **kw)


def test_non_finite_in_other_ops(restore_validation):
    x, r, mu, lv = inputs()
    lv[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"logvar has 1 non-finite"):
        fastvae.kl_standard_normal(mu, lv, validate=True)
    with pytest.raises(ValueError, match=r"logvar has 1 non-finite"):
        fastvae.iwae_bound(x, r[None], mu, lv, mu[None], validate=True)
    r[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"mean has 1 non-finite"):
        fastvae.gaussian_log_prob(x, r, 0.0, validate=True)
    with pytest.raises(ValueError, match=r"logvar has 4 non-finite"):
        fastvae.gaussian_log_prob(x, x, torch.full((4,), float("nan")), validate=True)
    x2, r2, mu2, lv2 = inputs()
    z_k = mu2[None].clone()
    z_k[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"z_k has 1 non-finite"):
        fastvae.iwae_bound(x2, r2[None], mu2, lv2, z_k, validate=True)
    # validation off: no error (NaN flows through like any torch op)
    assert torch.isnan(fastvae.kl_standard_normal(mu, lv)[0])


def test_validation_on_with_good_and_empty_inputs(restore_validation):
    fastvae.set_validation(True)
    x, r, mu, lv = inputs()
    assert torch.isfinite(fastvae.elbo(x, r, mu, lv))
    x[:] = 1.0
    x[0] = 0.0  # the closed interval's ends are fine
    assert torch.isfinite(fastvae.elbo(x, r, mu, lv, likelihood="continuous_bernoulli"))
    e = inputs(b=0)
    assert fastvae.elbo(*e).item() == 0.0


def test_set_validation_wants_a_bool(restore_validation):
    for bad in (1, "true", None):
        with pytest.raises(TypeError, match="set_validation expects a bool"):
            fastvae.set_validation(bad)
    assert fastvae.get_validation() is False


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_validation_off_means_no_value_errors_on_any_backend(backend, restore_validation):
    """With validation off, NaN flows through (like any torch op) on every backend; the
    reference must not raise torch.distributions' own argument errors instead."""
    x, r, mu, lv = inputs()
    lv[0, 0] = float("nan")
    assert torch.isnan(fastvae.elbo(x, r, mu, lv, backend=backend, reduction="none")[0])
    assert torch.isnan(fastvae.kl_standard_normal(mu, lv, backend=backend)[0])
    z = mu.clone()
    assert torch.isnan(fastvae.elbo(x, r, mu, lv, kl="mc", z=z, backend=backend, reduction="none")[0])
    r[0, 0] = float("nan")
    assert torch.isnan(fastvae.gaussian_log_prob(x, r, 0.0, backend=backend)[0])
    with pytest.raises(ValueError, match="(recon|logvar) has 1 non-finite"):
        fastvae.elbo(x, r, mu, lv, backend=backend, validate=True)


def test_a_nan_in_x_is_named_before_what_is_computed_from_it():
    """x is checked first: a model's recon and mu are NaN wherever x is, and the message
    names the data, the cause, rather than one of them."""
    x = torch.rand(2, 5)
    x[0, 1] = float("nan")
    nan = torch.full((2, 5), float("nan"))
    mu = torch.full((2, 3), float("nan"))
    with pytest.raises(ValueError, match=r"^x has 1 non-finite value"):
        fastvae.elbo(x, nan, mu, mu, validate=True)


def test_validation_inside_a_cuda_graph_capture_says_so(monkeypatch):
    """The checks read a value back to the host, which a capture cannot do: a CUDA tensor
    checked while its stream captures is refused in words (it was a CUDA error naming no
    cause). CPU work in a capture is not captured: checked as ever. (A CUDA tensor stood in
    for by a CPU one that says it is one; a capture by the query saying so.)"""
    from fastvae import value_checks

    class OnCuda(torch.Tensor):
        is_cuda = property(lambda self: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    with pytest.raises(RuntimeError, match=r"validate=True cannot run inside a CUDA graph "
                                           r"capture.*validate=False"):
        value_checks.check_values(True, x=torch.rand(3).as_subclass(OnCuda))
    value_checks.check_values(False, x=torch.rand(3).as_subclass(OnCuda))
    with pytest.raises(ValueError, match="non-finite"):
        value_checks.check_values(True, x=torch.tensor([float("nan")]))


def _broadcast_calls(bad):
    """(name, call) pairs whose input ``name`` is ``bad``, a tensor broadcast over the batch
    or the columns by the op (a (B, 1) column, a (1, *) row)."""
    x, r, mu, lv = inputs()
    col, row = bad((3, 1)), bad((1, 4))
    return [
        ("mu_p", lambda: fastvae.kl_normal(mu, lv, col, 0.0, validate=True)),
        ("logvar_p", lambda: fastvae.sample_with_kl(mu, lv, None, col, validate=True)),
        ("prior_mu", lambda: fastvae.elbo(x, r, mu, lv, prior_mu=col, validate=True)),
        ("prior_logvar", lambda: fastvae.iwae_bound(x, r[None], mu, lv, mu[None],
                                                    prior_logvar=col, validate=True)),
        ("obs_logvar", lambda: fastvae.elbo(x, r, mu, lv, likelihood="gaussian",
                                            obs_logvar=col, validate=True)),
        ("obs_logvar", lambda: fastvae.iwae_bound(x, r[None], mu, lv, mu[None],
                                                  likelihood="gaussian", obs_logvar=row,
                                                  validate=True)),
        ("logvar", lambda: fastvae.gaussian_log_prob(x, r, col, validate=True)),
    ]


@pytest.mark.parametrize("case", range(7))
def test_a_broadcast_input_counts_its_own_values(case):
    """A non-finite value in a prior, obs_logvar or logvar that the op broadcasts is counted
    once, as the caller passed it: a (B, 1) prior with 2 NaNs said "12 non-finite
    value(s)", its copies over the columns counted too (as iwae_bound's mixture path
    already counted each input's own)."""
    def bad(shape):
        t = torch.zeros(shape)
        t.view(-1)[:2] = float("nan")
        return t
    name, call = _broadcast_calls(bad)[case]
    with pytest.raises(ValueError, match=rf"^{name} has 2 non-finite value\(s\)"):
        call()
