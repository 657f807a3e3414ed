"""Which backend runs: the argument, FASTVAE_BACKEND, auto; an unknown name refused, and a
Triton backend that cannot run says why."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

import fastvae
from _validation import inputs


@pytest.mark.parametrize("op", ["elbo", "kl", "gauss", "reparam", "iwae"])
def test_unknown_backend(op, monkeypatch):
    x, r, mu, lv = inputs()
    call = {"elbo": lambda **k: fastvae.elbo(x, r, mu, lv, **k),
            "kl": lambda **k: fastvae.kl_standard_normal(mu, lv, **k),
            "gauss": lambda **k: fastvae.gaussian_log_prob(x, r, 0.0, **k),
            "reparam": lambda **k: fastvae.reparameterize(mu, lv, **k),
            "iwae": lambda **k: fastvae.iwae_bound(x, r[None], mu, lv, mu[None], **k)}[op]
    with pytest.raises(ValueError, match=r"backend must be one of .*got 'gpu'"):
        call(backend="gpu")
    monkeypatch.setenv("FASTVAE_BACKEND", "fast")
    with pytest.raises(ValueError, match=r"FASTVAE_BACKEND must be one of .*got 'fast'"):
        call()
    assert call(backend="reference") is not None  # the argument overrides the variable


def test_triton_backend_on_cpu_tensors_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, r, mu, lv = inputs()
    if fastvae.triton_available():
        with pytest.raises(ValueError, match=r"backend='triton' needs CUDA tensors, got tensors on cpu"):
            fastvae.elbo(x, r, mu, lv, backend="triton")
    else:
        with pytest.raises(RuntimeError, match=r"needs the triton package"):
            fastvae.elbo(x, r, mu, lv, backend="triton")


@pytest.mark.parametrize("missing, says", [
    ("triton", "needs the triton package"),
    # an installed wheel shadowed by a source checkout, whose fastvae/ has no kernels
    ("fastvae.kernels", r"failed to import \(ModuleNotFoundError: No module named 'fastvae.kernels'\)"),
    # a triton installed but broken, or of another version
    ("triton.language", r"failed to import \(ModuleNotFoundError: No module named 'triton.language'\)"),
])
def test_a_triton_backend_that_does_not_import_says_why(missing, says, monkeypatch):
    from fastvae import backends

    def get(name):
        raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)
    monkeypatch.setattr(backends, "_triton_ok", None)
    monkeypatch.setattr(backends, "_triton_broken", None)
    monkeypatch.setattr(backends, "_broken_warned", False)
    monkeypatch.setattr(backends, "get", get)
    with pytest.raises(RuntimeError, match=says):
        backends.select("triton", torch.device("cpu"))
    cuda = torch.device("cuda")
    if missing == "triton":   # auto on CUDA tensors: the torch backend, as without a GPU
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert backends.select("auto", cuda) == "torch"
    else:                     # said once: auto would silently run the slower backend
        with pytest.warns(RuntimeWarning, match="failed to import.*run the torch backend") as w:
            assert backends.select("auto", cuda) == "torch"
        assert w[0].filename == __file__
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert backends.select("auto", cuda) == "torch"


def test_backend_selection(monkeypatch):
    monkeypatch.delenv("FASTVAE_BACKEND", raising=False)
    cpu = torch.device("cpu")
    assert fastvae.select_backend(None, cpu) == "torch"  # auto on CPU: the fused CPU path
    assert fastvae.select_backend("auto", cpu) == "torch"
    assert fastvae.select_backend("reference", cpu) == "reference"
    assert fastvae.select_backend(None, "cpu") == "torch"  # a device string, as torch takes
    with pytest.raises(TypeError, match=r"device must be a torch.device or a string .*got None"):
        fastvae.select_backend(None, None)
    with pytest.raises(TypeError, match=r"^select_backend\(\) missing 1 required"):
        fastvae.select_backend("auto")   # its own name, not an internal one
    x, r, mu, lv = inputs()
    fastvae.elbo(x, r, mu, lv)
    assert fastvae.last_backend() == "torch"
    fastvae.kl_standard_normal(mu, lv, backend="reference")
    assert fastvae.last_backend() == "reference"
    monkeypatch.setenv("FASTVAE_BACKEND", "")   # cleared for one command: unset
    assert fastvae.select_backend(None, cpu) == "torch"
    monkeypatch.setenv("FASTVAE_BACKEND", "reference")
    assert fastvae.select_backend(None, cpu) == "reference"
    fastvae.reparameterize(mu, lv)
    assert fastvae.last_backend() == "reference"
    fastvae.gaussian_log_prob(x, r, 0.0, backend="torch")  # the argument wins over the variable
    assert fastvae.last_backend() == "torch"
    monkeypatch.setenv("FASTVAE_BACKEND", "torch")
    fastvae.ELBOLoss()(x, r, mu, lv)
    assert fastvae.last_backend() == "torch"
    monkeypatch.setenv("FASTVAE_BACKEND", "auto")
    fastvae.iwae_bound(x, r[None], mu, lv, mu[None])
    assert fastvae.last_backend() == "torch"


def test_same_result_whatever_the_selection_route(monkeypatch):
    x, r, mu, lv = inputs(dtype=torch.float64)
    a = fastvae.elbo(x, r, mu, lv, backend="reference")
    monkeypatch.setenv("FASTVAE_BACKEND", "reference")
    b = fastvae.elbo(x, r, mu, lv)
    monkeypatch.setenv("FASTVAE_BACKEND", "torch")
    c = fastvae.elbo(x, r, mu, lv)
    assert torch.equal(a, b)
    assert math.isclose(a.item(), c.item(), rel_tol=1e-12)
