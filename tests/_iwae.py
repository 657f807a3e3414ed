"""What the fastvae.iwae_bound test modules (test_iwae_bound*.py) share: inputs for every
likelihood and obs_logvar layout, optionally strided, and the check of values and every
gradient against the brute-force float64 logsumexp (test_triton_iwae_tiles.py uses them
too)."""
from __future__ import annotations

import math

import torch

import fastvae
import _formulas as F
from _backends import case_dtype
from _compare import TOL, assert_close, grads, leaf, oracle


LIKELIHOODS = ["bernoulli", "gaussian", "continuous_bernoulli"]
LIKES = ["bernoulli", "continuous_bernoulli", "gaussian", "gaussian_perdim", "gaussian_full"]
REDUCTIONS = ["none", "mean", "sum"]
F64 = torch.float64


# the Triton backend's IWAE row kernels, and the name each goes by in the tests
ROW_KERNELS = {"iwae_bound_onepass_kernel": "onepass", "iwae_bound_rows_kernel": "twopass",
               "iwae_bound_pairs_kernel": "pairs", "iwae_bound_row_warps_kernel": "row_warps",
               "iwae_bound_sample_warps_kernel": "sample_warps"}


def row_kernel(launches):
    """Which row kernel a call's ``launches`` (kernel names) ran: exactly one of them."""
    rows = [n for n in launches if n in ROW_KERNELS]
    assert len(rows) == 1, launches
    return ROW_KERNELS[rows[0]]


def make(k, b, data_shape, l, dtype=F64):
    x = torch.rand(b, *data_shape, dtype=dtype)
    recon_k = torch.randn(k, b, *data_shape, dtype=dtype) * 2
    mu = torch.randn(b, l, dtype=dtype)
    lv = torch.randn(b, l, dtype=dtype) * 0.5
    z_k = mu + torch.exp(0.5 * lv) * torch.randn(k, b, l, dtype=dtype)
    return [leaf(t) for t in (x, recon_k, mu, lv, z_k)]


def strided(t, pad=3, lead=1):
    """A leaf with the same values and a non-contiguous layout the kernels read in place:
    padded rows (row stride > width) and, for (K, B, n), the samples interleaved per row
    (strides (n + pad, K * (n + pad), 1)); a 2-D tensor's rows start ``lead`` elements into
    theirs; a (D,) tensor is a unit-stride slice of a wider one. pad = lead = 16: rows and
    base pointers 16-byte aligned (what the row- and sample-warp kernels are given)."""
    n = t.shape[-1]
    if t.dim() == 3:
        k, b = t.shape[:2]
        base = torch.zeros(b, k, n + pad, dtype=t.dtype)
        base[..., :n] = t.detach().transpose(0, 1)
        out = base.transpose(0, 1)[..., :n]
    else:
        base = torch.zeros(*t.shape[:-1], n + pad, dtype=t.dtype)
        base[..., lead:n + lead] = t.detach()
        out = base[..., lead:n + lead]
    out = out.detach().requires_grad_(t.requires_grad)
    assert t.dim() == 1 or not out.is_contiguous()
    return out


def make_like(k, b, d, l, like, dtype, noncontig=False):
    """Inputs for one of LIKES or "gaussian_samples" (x ~ N(0, 1) for the Gaussian ones;
    obs_logvar a float, a (D,), a (B, D) or, one per sample, a (K, B, D) tensor), optionally
    in strided layouts (``noncontig``: True, or "aligned" for 16-byte aligned rows)."""
    x, recon, mu, lv, z = make(k, b, (d,), l, dtype)
    if like.startswith("gaussian"):
        x = leaf(torch.randn(b, d, dtype=dtype))
    obs = leaf({"gaussian": 0.2, "gaussian_perdim": torch.randn(d, dtype=dtype) * 0.4,
                "gaussian_full": torch.randn(b, d, dtype=dtype) * 0.4,
                "gaussian_samples": torch.randn(k, b, d, dtype=dtype) * 0.4}.get(like, 0.0))
    ts = [x, recon, mu, lv, z] + ([obs] if isinstance(obs, torch.Tensor) else [])
    if noncontig:
        ts = [strided(t, *((16, 16) if noncontig == "aligned" else ())) for t in ts]
    obs = ts[5] if len(ts) > 5 else obs
    return ts[:5], obs, ("gaussian" if like.startswith("gaussian") else like)


def grad_rtol(d):
    """The gradients' rtol: their softmax weights are as exact as log w, a sum of ~D terms
    of size ~3 (fp32: good to ~4 eps * 3D, which for D ~ 1000 is 1e-3)."""
    return {torch.float32: max(TOL[torch.float32], 4 * torch.finfo(torch.float32).eps * 3 * d)}


def eager_fp32(ins, w=None, **opts):
    """The reference backend in float32 on the same inputs (value, gradients): the error
    any fp32 implementation shares (the "2x eager" allowance of _compare.assert_close)."""
    e_ins = [leaf(t.float()) if isinstance(t, torch.Tensor) else t for t in ins]
    obs = opts.pop("obs_logvar", 0.0)
    if isinstance(obs, torch.Tensor):
        obs = e_ins[5]
    value = fastvae.iwae_bound(*e_ins[:5], obs_logvar=obs, backend="reference", **opts)
    return value, grads(value, e_ins, w)


def check(backend, k, b, d, l, like, reduction, dtype=F64, noncontig=False):
    """Values and every gradient (rows weighted 0.5 .. 2) vs the float64 oracle. In low
    precision, twice the fp32 eager reference's error is allowed on top: the softmax
    weights amplify rounding of large log-weights in any fp32 implementation."""
    dt = case_dtype(backend, dtype)
    (x, recon, mu, lv, z), obs, likelihood = make_like(k, b, d, l, like, dt, noncontig)
    ins = [x, recon, mu, lv, z, obs if isinstance(obs, torch.Tensor) else None]
    opts = dict(likelihood=likelihood, obs_logvar=obs, reduction=reduction)
    got = fastvae.iwae_bound(x, recon, mu, lv, z, backend=backend, **opts)
    want = F.iwae(x, recon, mu, lv, z, **opts)
    w = torch.linspace(0.5, 2.0, b, dtype=F64) if got.dim() else None
    eager, eager_g = eager_fp32(ins, w, **opts) if dt != F64 else (None, [None] * 6)
    assert_close("bound", got, want, dt, eager=eager)
    for name, t, a, e, ee in zip(("x", "recon_k", "mu", "logvar", "z_k", "obs"), ins,
                                 grads(got, ins, w), grads(want, ins, w), eager_g):
        if t is not None:
            assert a.dtype == t.dtype, name
            assert_close(f"d/d{name}", a, e, dt, rtol=grad_rtol(d), eager=ee)
    return got


def check_weight_zero_and_nan_rows(launches, kernel, k, d, dtype=torch.bfloat16):
    """A Bernoulli IWAE call of 4 rows through ``kernel`` (as :func:`row_kernel` names it):
    row 0's every log w is -inf (z_k = 1e30 from a wider q: its MC KL past float32), so
    bound -inf and every gradient of it exactly 0; row 2 has a NaN logit, so its bound and
    gradients NaN; rows 1 and 3 as the float64 reference on that row alone."""
    b, l = 4, 3
    (x, recon, mu, lv, z), _, _ = make_like(k, b, d, l, "bernoulli", dtype)
    x = x.detach()
    with torch.no_grad():
        mu[0], lv[0], z[:, 0] = 0.0, 2.0, 1e30
        recon[1, 2, 5] = math.nan
    v = fastvae.iwae_bound(x, recon, mu, lv, z, reduction="none", backend="triton")
    assert row_kernel(launches) == kernel
    assert v[0].item() == -math.inf and math.isnan(v[2].item())
    g = grads(v[[0, 1, 3]], [recon, mu, lv, z])
    for name, t, sampled in zip(("recon_k", "mu", "logvar", "z_k"), g,
                                (True, False, False, True)):
        row0 = t[:, 0] if sampled else t[0]
        assert torch.equal(row0, torch.zeros_like(row0)), name
    gz = grads(v, [z])[0]
    assert gz[:, 2].isnan().all() and gz[:, [1, 3]].isfinite().all()
    for r in (1, 3):
        one = [leaf(t.detach()[:, r:r + 1] if t.dim() == 3 else t.detach()[r:r + 1])
               for t in (recon, mu, lv, z)]
        want = fastvae.iwae_bound(*oracle(x[r:r + 1], *one), reduction="none",
                                  backend="reference")
        assert_close(f"row {r}", v[r:r + 1], want, torch.float32, rtol=grad_rtol(d))
