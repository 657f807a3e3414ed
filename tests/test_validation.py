"""Every error path: structural checks (always on) and value checks (validate= / set_validation).

Messages must name the argument and the shapes / dtypes / values seen. Here: option
values and numbers, kl='mc' and z. The tensors' checks: test_validation_tensors.py; value
checks: test_validation_values.py; the memo of passed checks: test_validation_memo.py; the
backend argument: test_backend_selection.py.
"""
from __future__ import annotations


import pytest
import torch

import fastvae
from _validation import inputs


@pytest.mark.parametrize("name,value", [("likelihood", "bce"), ("likelihood", "Bernoulli"),
                                        ("likelihood", None), ("kl", "MC"), ("kl", "exact"),
                                        ("reduction", "avg"), ("reduction", "batchmean")])
def test_unknown_option_values(name, value):
    x, r, mu, lv = inputs()
    with pytest.raises(ValueError, match=rf"{name} must be one of .*got {value!r}".replace("(", r"\(")):
        fastvae.elbo(x, r, mu, lv, **{name: value})
    if name != "kl":
        with pytest.raises(ValueError, match=f"{name} must be one of"):
            fastvae.iwae_bound(x, r[None], mu, lv, mu[None], **{name: value})
    with pytest.raises(ValueError, match=f"{name} must be one of"):
        fastvae.ELBOLoss(**{name: value})


@pytest.mark.parametrize("name,value,exc,msg", [
    ("beta", -0.1, ValueError, r"beta must be >= 0.0, got -0.1"),
    ("beta", float("nan"), ValueError, r"beta must be finite"),
    ("beta", float("inf"), ValueError, r"beta must be finite"),
    ("beta", "1", TypeError, r"beta must be a real number, got str"),
    ("beta", True, TypeError, r"beta must be a real number, got bool"),
    ("beta", None, TypeError, r"beta must be a real number, got NoneType"),
    ("beta", 1e39, ValueError, r"beta must be within float32's range \(\+-3.402e\+38\), got 1e\+39"),
    ("free_bits", -1.0, ValueError, r"free_bits must be >= 0.0, got -1.0"),
    ("free_bits", 1e300, ValueError, r"free_bits must be within float32's range"),
    ("free_bits", float("nan"), ValueError, r"free_bits must be finite"),
    ("free_bits", [0.1], TypeError, r"free_bits must be a real number, got list"),
    ("validate", "yes", TypeError, r"validate must be None or a bool, got str"),
    ("validate", 1, TypeError, r"validate must be None or a bool, got int"),
])
def test_bad_numbers(name, value, exc, msg):
    x, r, mu, lv = inputs()
    with pytest.raises(exc, match=msg):
        fastvae.elbo(x, r, mu, lv, **{name: value})
    if name in ("beta", "free_bits"):
        with pytest.raises(exc, match=msg):
            fastvae.ELBOLoss(**{name: value})


def test_bad_obs_logvar():
    x, r, mu, lv = inputs()
    with pytest.raises(ValueError, match=r"obs_logvar must be finite"):
        fastvae.elbo(x, r, mu, lv, likelihood="gaussian", obs_logvar=float("inf"))
    with pytest.raises(ValueError, match=r"obs_logvar must be within float32's range"):
        fastvae.elbo(x, r, mu, lv, likelihood="gaussian", obs_logvar=-1e39)
    with pytest.raises(ValueError, match=r"prior_logvar must be within float32's range"):
        fastvae.elbo(x, r, mu, lv, prior_logvar=1e39)
    with pytest.raises(ValueError, match=r"mu_p must be within float32's range"):
        fastvae.kl_normal(mu, lv, 1e39, 0.0)
    with pytest.raises(TypeError, match=r"obs_logvar must be a number or a tensor broadcastable to x, got str"):
        fastvae.elbo(x, r, mu, lv, likelihood="gaussian", obs_logvar="0")
    with pytest.raises(ValueError, match=r"obs_logvar of shape \(3,\) does not broadcast to x's shape \(3, 4\)"):
        fastvae.elbo(x, r, mu, lv, likelihood="gaussian", obs_logvar=torch.zeros(3))
    with pytest.raises(ValueError, match=r"obs_logvar of shape \(2, 3, 4\) does not broadcast"):
        fastvae.elbo(x, r, mu, lv, likelihood="gaussian", obs_logvar=torch.zeros(2, 3, 4))
    with pytest.raises(TypeError, match=r"obs_logvar must be a floating-point tensor, got dtype torch.int64"):
        fastvae.elbo(x, r, mu, lv, likelihood="gaussian", obs_logvar=torch.zeros(4, dtype=torch.long))
    for lik in ("bernoulli", "continuous_bernoulli"):
        with pytest.raises(ValueError, match=rf"obs_logvar is only used with likelihood='gaussian', not '{lik}'"):
            fastvae.elbo(x, r, mu, lv, likelihood=lik, obs_logvar=0.5)
        with pytest.raises(ValueError, match="obs_logvar is only used"):
            fastvae.elbo(x, r, mu, lv, likelihood=lik, obs_logvar=torch.zeros(4))
    with pytest.raises(ValueError, match=r"logvar of shape \(5,\) does not broadcast to x's shape \(3, 4\)"):
        fastvae.gaussian_log_prob(x, r, torch.zeros(5))


@pytest.mark.parametrize("lik", ["bernoulli", "gaussian", "continuous_bernoulli"])
def test_bits_only_with_dmol(lik):
    x, r, mu, lv = inputs()
    msg = rf"bits is only used with likelihood='discretized_logistic_mixture', not '{lik}'"
    with pytest.raises(ValueError, match=msg):
        fastvae.elbo(x, r, mu, lv, likelihood=lik, bits=8)
    with pytest.raises(ValueError, match=msg):
        fastvae.iwae_bound(x, r[None], mu, lv, mu[None], likelihood=lik, bits=4)
    with pytest.raises(ValueError, match=msg):
        fastvae.ELBOLoss(likelihood=lik, bits=8)
    assert " bits=" not in repr(fastvae.ELBOLoss(likelihood=lik))
    assert " bits=8" in repr(fastvae.ELBOLoss(likelihood="discretized_logistic_mixture"))


def test_mc_needs_z_and_analytic_refuses_it():
    x, r, mu, lv = inputs()
    with pytest.raises(ValueError, match=r"kl='mc' needs the sample z"):
        fastvae.elbo(x, r, mu, lv, kl="mc")
    with pytest.raises(ValueError, match=r"z is only used with kl='mc'"):
        fastvae.elbo(x, r, mu, lv, z=mu.clone())
    with pytest.raises(ValueError, match=r"z must have mu's shape \(3, 2\), got \(3, 3\)"):
        fastvae.elbo(x, r, mu, lv, kl="mc", z=torch.zeros(3, 3))
    with pytest.raises(TypeError, match=r"z must be a floating-point tensor, got dtype torch.int32"):
        fastvae.elbo(x, r, mu, lv, kl="mc", z=torch.zeros(3, 2, dtype=torch.int32))
    with pytest.raises(TypeError, match=r"z must be a torch.Tensor, got numpy.ndarray"):
        fastvae.elbo(x, r, mu, lv, kl="mc", z=mu.numpy())
    loss = fastvae.ELBOLoss(kl="mc")
    with pytest.raises(ValueError, match=r"kl='mc' needs the sample z"):
        loss(x, r, mu, lv)


def test_a_numpy_scalar_is_named_as_numpy_s():
    """numpy.bool's bare name is "bool": "expects a bool, got bool" said nothing."""
    np = pytest.importorskip("numpy")
    with pytest.raises(TypeError, match=r"expects a bool, got numpy\.bool"):
        fastvae.set_validation(np.bool_(True))
    x, r, mu, lv = inputs()
    with pytest.raises(TypeError, match=r"beta must be a real number, got numpy\.bool"):
        fastvae.elbo(x, r, mu, lv, beta=np.bool_(True))
