"""Every error path: structural checks (always on) and value checks (validate= / set_validation).

Messages must name the argument and the shapes / dtypes / values seen.
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch

import fastvae

BACKENDS = ["torch", "reference"]


def inputs(b=3, d=4, l=2, dtype=torch.float32):
    return (torch.rand(b, d, dtype=dtype), torch.randn(b, d, dtype=dtype),
            torch.randn(b, l, dtype=dtype), torch.randn(b, l, dtype=dtype))


# -- option values --------------------------------------------------------------------

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


# -- kl='mc' and z ---------------------------------------------------------------------

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


# -- shapes, dtypes, devices -------------------------------------------------------------

def test_shape_mismatches_name_argument_and_shapes():
    x, r, mu, lv = inputs()
    with pytest.raises(ValueError, match=r"recon must have shape \(3, 4\) \(x's shape\), got \(3, 5\)"):
        fastvae.elbo(x, torch.zeros(3, 5), mu, lv)
    with pytest.raises(ValueError, match=r"recon must have shape \(3, 4\).*got \(12,\)"):
        fastvae.elbo(x, r.flatten(), mu, lv)
    with pytest.raises(ValueError, match=r"x must have the batch size of mu \(3\) as its first dim, got shape \(2, 4\)"):
        fastvae.elbo(x[:2], r[:2], mu, lv)
    with pytest.raises(ValueError, match=r"logvar must have mu's shape \(3, 2\), got \(3, 1\)"):
        fastvae.elbo(x, r, mu, lv[:, :1])
    with pytest.raises(ValueError, match=r"mu must be 2-D \(batch, latent\), got shape \(3, 2, 1\)"):
        fastvae.elbo(x, r, mu[..., None], lv[..., None])
    with pytest.raises(ValueError, match=r"mu must be 2-D .*got shape \(\)"):
        fastvae.elbo(x, r, torch.tensor(0.0), torch.tensor(0.0))
    with pytest.raises(ValueError, match=r"x must have the batch size of mu \(3\).*got shape \(\)"):
        fastvae.elbo(torch.tensor(0.5), torch.tensor(0.0), mu, lv)
    with pytest.raises(ValueError, match=r"mu and logvar must share a shape \(\*, L\), got \(3, 2\) and \(2, 3\)"):
        fastvae.kl_standard_normal(mu, lv.t())
    with pytest.raises(ValueError, match=r"mu and logvar must share a shape.*got \(\) and \(\)"):
        fastvae.kl_standard_normal(torch.tensor(0.0), torch.tensor(0.0))
    with pytest.raises(ValueError, match=r"x and mean must share a shape \(\*, D\), got \(3, 4\) and \(4,\)"):
        fastvae.gaussian_log_prob(x, r[0], 0.0)


@pytest.mark.parametrize("arg", ["x", "recon", "mu", "logvar"])
@pytest.mark.parametrize("bad", [torch.int64, torch.bool, torch.complex64])
def test_non_float_dtypes(arg, bad):
    ins = dict(zip(["x", "recon", "mu", "logvar"], inputs()))
    ins[arg] = ins[arg].to(bad)
    with pytest.raises(TypeError, match=rf"{arg} must be a floating-point tensor, got dtype {bad}"):
        fastvae.elbo(**ins)


@pytest.mark.parametrize("arg", ["x", "recon", "mu", "logvar"])
def test_non_tensors(arg):
    ins = dict(zip(["x", "recon", "mu", "logvar"], inputs()))
    ins[arg] = ins[arg].tolist()
    with pytest.raises(TypeError, match=rf"{arg} must be a torch.Tensor, got list"):
        fastvae.elbo(**ins)


@pytest.mark.parametrize("arg", ["x", "recon", "mu", "logvar"])
@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_sparse_tensors(arg, layout):
    """A sparse input is named, with the fix; after a dense call of the same shapes too
    (the passed signature must not let it through)."""
    ins = dict(zip(["x", "recon", "mu", "logvar"], inputs()))
    fastvae.elbo(**ins)
    ins[arg] = ins[arg].to_sparse() if layout == "coo" else ins[arg].to_sparse_csr()
    with pytest.raises(TypeError, match=rf"{arg} must be a dense tensor, got layout "
                                        rf"torch.sparse_{layout}; pass {arg}.to_dense\(\)"):
        fastvae.elbo(**ins)


def test_mixed_dtypes_are_allowed_in_the_loss_but_not_the_sampler():
    x, r, mu, lv = inputs()
    assert fastvae.elbo(x.half(), r.bfloat16(), mu, lv.double()).dtype == torch.float64
    with pytest.raises(TypeError, match=r"mu and logvar must share a dtype, got torch.float32 and torch.float16"):
        fastvae.reparameterize(mu, lv.half())


@pytest.mark.parametrize("which", ["x", "recon", "mu", "logvar"])
def test_device_mismatch(which):
    """Tensors on two devices (meta stands in for a GPU on this CPU-only machine)."""
    ins = dict(zip(["x", "recon", "mu", "logvar"], inputs()))
    ins[which] = ins[which].to("meta")
    with pytest.raises(ValueError, match=rf"all tensors must be on one device, got .*{which} on meta"):
        fastvae.elbo(**ins)
    x, r, mu, lv = inputs()
    with pytest.raises(ValueError, match=r"z on meta"):
        fastvae.elbo(x, r, mu, lv, kl="mc", z=mu.to("meta"))
    with pytest.raises(ValueError, match=r"obs_logvar on meta"):
        fastvae.elbo(x, r, mu, lv, likelihood="gaussian", obs_logvar=torch.zeros(4, device="meta"))
    with pytest.raises(ValueError, match=r"one device.*logvar on meta"):
        fastvae.kl_standard_normal(mu, lv.to("meta"))
    with pytest.raises(ValueError, match=r"one device.*mean on meta"):
        fastvae.gaussian_log_prob(x, r.to("meta"), 0.0)


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


# -- value checks ------------------------------------------------------------------------

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


@pytest.mark.parametrize("backend", BACKENDS)
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


@pytest.mark.parametrize("backend", BACKENDS)
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


# -- backend selection -----------------------------------------------------------------

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


@pytest.mark.parametrize("backend", BACKENDS)
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


# -- the checks' memo ---------------------------------------------------------------------

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


def test_a_nan_in_x_is_named_before_what_is_computed_from_it():
    """x is checked first: a model's recon and mu are NaN wherever x is, and the message
    names the data, the cause, rather than one of them."""
    x = torch.rand(2, 5)
    x[0, 1] = float("nan")
    nan = torch.full((2, 5), float("nan"))
    mu = torch.full((2, 3), float("nan"))
    with pytest.raises(ValueError, match=r"^x has 1 non-finite value"):
        fastvae.elbo(x, nan, mu, mu, validate=True)


@pytest.mark.parametrize("bad", [getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2")
                                 if hasattr(torch, n)])
def test_float8_is_refused_by_name(bad):
    """float8 is floating point to torch, but neither its random numbers nor its type
    promotion work: refused as a dtype up front on every op, not deep in a backend."""
    x, r, mu, lv = inputs()
    msg = rf"must be a floating-point tensor, got dtype {bad} \(fastvae takes float16"
    with pytest.raises(TypeError, match="recon " + msg):
        fastvae.elbo(x, r.to(bad), mu, lv)
    with pytest.raises(TypeError, match="mu " + msg):
        fastvae.reparameterize(mu.to(bad), lv)
    with pytest.raises(TypeError, match="mu_q " + msg):
        fastvae.sample_with_kl(mu.to(bad), lv)
    with pytest.raises(TypeError, match="z_k " + msg):
        fastvae.iwae_bound(x, r.expand(2, *r.shape), mu, lv, mu.expand(2, *mu.shape).to(bad))


def test_validation_passes_over_meta_tensors():
    """Shape inference on the meta device with validation on: no values to check."""
    M = lambda *s: torch.empty(*s, device="meta")   # noqa: E731
    assert fastvae.elbo(M(3, 4), M(3, 4), M(3, 2), M(3, 2), validate=True,
                        reduction="none").shape == (3,)
    assert fastvae.discretized_logistic_mixture_log_prob(M(2, 3, 4, 4), M(2, 20, 4, 4),
                                                         validate=True).shape == (2,)
    assert fastvae.sample_with_kl(M(3, 2), M(3, 2), M(3, 2), M(3, 2),
                                  validate=True)[1].shape == (3,)


def test_a_numpy_scalar_is_named_as_numpy_s():
    """numpy.bool's bare name is "bool": "expects a bool, got bool" said nothing."""
    np = pytest.importorskip("numpy")
    with pytest.raises(TypeError, match=r"expects a bool, got numpy\.bool"):
        fastvae.set_validation(np.bool_(True))
    x, r, mu, lv = inputs()
    with pytest.raises(TypeError, match=r"beta must be a real number, got numpy\.bool"):
        fastvae.elbo(x, r, mu, lv, beta=np.bool_(True))
