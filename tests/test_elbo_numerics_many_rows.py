"""fastvae.elbo's numerics on every backend (the ``backend`` fixture) at many rows: B * D
past the "torch" backend's row chunk, also on its aten path (``cpu_path``), full and
half precision inputs.
The rest of the ELBO's numerics: tests/test_elbo_numerics_*.py.
"""
from __future__ import annotations

import pytest
import torch

import fastvae
import _formulas as F
from _backends import bounded, case_dtype
from _compare import F64, assert_close, grads, leaf
from _elbo import LIKELIHOODS, make


def _rows_past_a_chunk(d):
    """B past one row chunk of the "torch" backend (then a ragged tail), where it chunks."""
    from fastvae.backends.torch_backend.rows import CHUNK_ELEMS
    return CHUNK_ELEMS // d + 5


@pytest.mark.parametrize("dtype,layout", [(torch.float32, "contiguous"),
                                          (torch.float32, "strided"), (F64, "contiguous")])
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_many_rows(seed, backend, cpu_path, dtype, likelihood, layout):
    """B * D past the "torch" backend's row chunk, values and gradients vs the formula,
    per-row and summed, both obs_logvar layouts."""
    if cpu_path == "aten" and likelihood != "bernoulli":
        pytest.skip("only the Bernoulli term has a compiled kernel: the aten path is the same")
    dt = case_dtype(backend, dtype)
    b, d, l = bounded(b=_rows_past_a_chunk(1003), d=1003, l=4)
    x, recon, mu, lv, z = make(b, (d,), l, dtype=dt)
    if layout == "strided":
        x = torch.rand(d, b, dtype=dt).t()
        recon = (torch.randn(b, 2 * d, dtype=dt) * 2)[:, ::2]
    for reduction, obs_kind in [("none", "(D,)"), ("sum", "full")]:
        xs, rs, ms, ls = (leaf(t) for t in (x, recon, mu, lv))
        obs = 0.0
        if likelihood == "gaussian":
            obs = leaf((torch.randn(d) if obs_kind == "(D,)" else torch.randn(b, d)).to(dt) * 0.3)
        got = fastvae.elbo(xs, rs, ms, ls, likelihood=likelihood, obs_logvar=obs,
                           reduction=reduction, backend=backend)
        want = F.elbo(xs, rs, ms, ls, likelihood=likelihood, obs_logvar=obs, reduction=reduction)
        assert got.dtype == dt
        scale = 3.0 * d * (b if reduction == "sum" else 1)
        assert_close(f"value {reduction}", got, want, dt, scale=scale)
        ins = [xs, rs, ms, ls] + ([obs] if isinstance(obs, torch.Tensor) else [])
        w = torch.rand(got.shape, dtype=F64) + 0.5
        for g, e, name in zip(grads(got, ins, w), grads(want, ins, w),
                              ["x", "recon", "mu", "logvar", "obs"]):
            assert g.dtype == dt
            assert_close(f"d/d{name} {reduction}", g, e, dt, scale=e.abs().max() + 1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_many_rows_half(seed, backend, cpu_path, dtype):
    b, d, l = bounded(b=_rows_past_a_chunk(1003), d=1003, l=4)
    x, recon, mu, lv, _ = (t.to(dtype) for t in make(b, (d,), l, dtype=torch.float32))
    for likelihood in LIKELIHOODS:
        rs = leaf(recon)
        got = fastvae.elbo(x, rs, mu, lv, likelihood=likelihood, reduction="none", backend=backend)
        r64 = leaf(recon.double())  # exact gradient: fp64 all the way, no rounding to dtype
        want = F.elbo(x, r64, mu, lv, likelihood=likelihood, reduction="none")
        assert got.dtype == torch.float32
        assert_close(likelihood, got, want, torch.float32, scale=3.0 * d)  # fp32 math on half data
        got.sum().backward()
        (e,) = grads(want, [r64])
        assert rs.grad.dtype == dtype
        # fp32 math (x - sigmoid(l) cancels: up to ~1e-6 absolute), then one rounding to
        # the half dtype (half an ulp relative)
        rtol = torch.finfo(dtype).eps
        assert_close(f"d/drecon {likelihood}", rs.grad, e, dtype, rtol=rtol, scale=4e-6 / rtol)
