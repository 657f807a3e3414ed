"""What the ELBO test modules share: the options they sweep, fresh inputs, and the check
of fastvae.elbo's value and gradients against the float64 formulas of tests/_formulas.py."""
import torch

import fastvae
import _formulas as F
from _compare import F64, assert_close, grads, leaf

LIKELIHOODS = ["bernoulli", "gaussian", "continuous_bernoulli"]
REDUCTIONS = ["mean", "sum", "none"]


def make(b, data_shape, l, dtype=F64, spread=1.0):
    """Fresh inputs: x in [0, 1] (valid for every likelihood), logits/means, latents, z."""
    x = torch.rand(b, *data_shape, dtype=dtype)
    recon = torch.randn(b, *data_shape, dtype=dtype) * 2 * spread
    mu = torch.randn(b, l, dtype=dtype) * spread
    lv = torch.randn(b, l, dtype=dtype) * spread
    z = mu + torch.exp(0.5 * lv) * torch.randn(b, l, dtype=dtype)
    return x, recon, mu, lv, z


def check_against_formula(x, recon, mu, lv, z, backend, rtol=None, weight=None, **opts):
    """Value and every input's gradient (under a random cotangent) vs the formula, at the
    inputs' dtype's tolerance (``rtol``: the check's own, see _compare.tolerance)."""
    dt = recon.dtype
    obs = opts.get("obs_logvar", 0.0)
    ins = [x, recon, mu, lv, z, obs if isinstance(obs, torch.Tensor) else None]
    got = fastvae.elbo(x, recon, mu, lv, z=z, backend=backend, **opts)
    want = F.elbo(x, recon, mu, lv, z=z, **opts)
    assert got.shape == want.shape
    # the summed terms' size: a sum can cancel far below it
    scale = F.elbo(x.abs(), recon.abs(), mu.abs(), lv.abs(), z=None if z is None else z.abs(),
                   **{**opts, "beta": abs(opts.get("beta", 1.0)), "kl": "analytic"}).abs().detach()
    assert_close("value", got, want, dt, rtol=rtol, scale=scale + 1)
    w = torch.rand(got.shape, dtype=F64) + 0.5 if weight is None else weight
    names = ["x", "recon", "mu", "logvar", "z", "obs_logvar"]
    for g, e, t, name in zip(grads(got, ins, w), grads(want, ins, w), ins, names):
        if e is None:
            continue
        assert g is not None and g.shape == e.shape and g.dtype == t.dtype, name
        assert_close(f"d elbo / d {name}", g, e, dt, rtol=rtol, scale=e.abs().max() + 1e-3)
    return got


LIKES = ["bernoulli", "continuous_bernoulli", "gaussian", "gaussian_perdim", "gaussian_full"]


def make_like(b, d, l, like, dtype):
    """Inputs for one of LIKES: x ~ N(0, 1) for the Gaussian ones, obs_logvar a float,
    a (D,) or a (B, D) tensor."""
    x, recon, mu, lv, z = make(b, (d,), l, dtype)
    if like.startswith("gaussian"):
        x = torch.randn(b, d, dtype=dtype)
    obs = {"gaussian": 0.3, "gaussian_perdim": torch.randn(d, dtype=dtype) * 0.5,
           "gaussian_full": torch.randn(b, d, dtype=dtype) * 0.5}.get(like, 0.0)
    likelihood = "gaussian" if like.startswith("gaussian") else like
    return [leaf(t) for t in (x, recon * 1.5, mu, lv * 0.7, z)], leaf(obs), likelihood


def free_bits_inputs(b=6, l=6, dtype=F64):
    """Latents whose per-dim batch-mean KL is far from free_bits=0.5: dims 0,2,4 ~ 0.05 nats
    (clamped), dims 1,3,5 ~ 2+ nats (free)."""
    mu = torch.randn(b, l, dtype=dtype) * 0.1
    lv = torch.randn(b, l, dtype=dtype) * 0.1
    mu[:, 1::2] = 2.0 + torch.rand(b, l // 2, dtype=dtype)
    return mu, lv
