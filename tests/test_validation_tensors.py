"""Structural checks on the tensors (always on): shapes, dtypes, layouts and devices; the
message names the argument and what it saw."""
from __future__ import annotations


import pytest
import torch

import fastvae
from _validation import inputs


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
