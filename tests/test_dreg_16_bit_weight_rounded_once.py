"""DReG's second weight on a 16-bit z_k, on every backend: the hook multiplies the
gradient reaching z_k by w~ in float32 and rounds the product once.

The hook cast the float32 weights to z_k's dtype before the product: a second rounding
(and in float16 a weight below 6e-5 kept only its subnormal bits), so z_k's gradient lay
up to 1.2 ulp off the exact product of the gradient the hook receives and w~ (one
rounding: 0.5), and up to 1.7 ulp off the float64 DReG gradient where the standard
estimator's is within 0.5.

Log-weights spread over tens of nats: w~ runs from about 1 down to 1e-9 within a row.
"""
from __future__ import annotations

import pytest
import torch

import fastvae
from fastvae import reference
from _compare import ulp16

F64 = torch.float64
B, L, D, K = 16, 6, 12, 5


def _inputs(dtype):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B, D, generator=g, device="cpu")
    mu = 0.5 * torch.randn(B, L, generator=g, device="cpu")
    lv = 0.3 * torch.randn(B, L, generator=g, device="cpu")
    z_k = mu + torch.exp(0.5 * lv) * torch.randn(K, B, L, generator=g, device="cpu")
    # sample k's reconstruction is off by sqrt(10 k / D) everywhere: log w_k drops ~5 k nats
    shift = (10.0 * torch.arange(K, dtype=F64, device="cpu") / D).sqrt().reshape(K, 1, 1)
    recon_k = x + 0.3 * torch.randn(K, B, D, generator=g, device="cpu") + shift.float()
    dev = torch.empty(0).device
    return [t.to(dev, dtype) for t in (x, recon_k, mu, lv, z_k)]


def _dreg(x, recon_k, mu, lv, z_k, backend, scale):
    z = z_k.detach().clone().requires_grad_(True)
    seen = []
    z.register_hook(seen.append)    # registered first: runs before DReG's, sees its input
    v = fastvae.iwae_bound(x, recon_k, mu, lv, z, likelihood="gaussian", reduction="sum",
                           estimator="dreg", backend=backend)
    v.backward(torch.tensor(scale, dtype=v.dtype, device=v.device))
    return z.grad, seen[0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scale", [1.0, 2.0 ** 12])   # 2**12: a loss scale, as a GradScaler's
def test_dreg_16_bit_z_gradient_rounded_once(backend, dtype, scale):
    ins = _inputs(dtype)
    got, received = _dreg(*ins, backend, scale)
    assert got.dtype == dtype and received.dtype == dtype
    wide = [t.detach().to(F64) for t in ins]
    _, w = reference.iwae_bound_surrogate(*wide, 0.0, likelihood="gaussian", reduction="sum",
                                          estimator="dreg")
    assert w.min() < 1e-7 < 0.5 < w.max()   # spread wide: w~^2 under 16-bit's reach, and ~1
    # one rounding of (received) * w~: half an ulp, plus the float32 weight's own error
    exact = received.to(F64) * w.unsqueeze(-1)
    err = ((got.to(F64) - exact).abs() / ulp16(exact, dtype)).max().item()
    assert err <= 0.5 + 2.0 ** -8, f"{err:.3f} ulp off one rounding of the hook's product"

    # against the float64 DReG gradient of the same 16-bit inputs: half an ulp (the one
    # rounding) plus w~ times the received gradient's own error, float64's received one
    # being the exact gradient the hook weighs
    want, received_exact = _dreg(*wide, "reference", scale)
    own = (received.to(F64) - received_exact).abs() * w.unsqueeze(-1)
    err = ((got.to(F64) - want).abs() - own) / ulp16(want, dtype)
    assert err.max().item() <= 0.5 + 2.0 ** -8, f"{err.max().item():.3f} ulp off float64"
