"""A per-row loss (reduction="none") whose grad_output is 0 on a row whose saved partial
overflowed float32 (a Gaussian decoder at obs_logvar -100 missing x by 0.5: d/drecon =
(x - r) / var ~ 1e43) must give that row 0, as autograd of the reference does, not
0 * inf = NaN (ops/_autograd.weigh's where(w == 0, ...)). E.g. a masked loss
``(elbo(..., reduction="none") * mask).sum()``."""
import pytest
import torch

import fastvae
from _backends import BACKENDS


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("op", ["elbo", "iwae_bound"])
def test_masked_row_with_overflowed_partial_gets_zero_gradient(backend, op):
    torch.manual_seed(0)
    b, d, l, k = 2, 5, 3, 2
    x = torch.rand(b, d)
    mu, lv = torch.randn(b, l), torch.zeros(b, l)
    if op == "elbo":
        recon = x.clone()
        recon[0] += 0.5                          # row 0 misses x: its partial overflows
        recon.requires_grad_(True)
        v = fastvae.elbo(x, recon, mu, lv, likelihood="gaussian", obs_logvar=-100.0,
                         reduction="none", backend=backend)
    else:
        recon = x.expand(k, b, d).clone()
        recon[0, 0] += 0.5                       # one sample of row 0 misses x ...
        recon[1, 0] += 0.5                       # ... and the other too: all weight 0
        recon.requires_grad_(True)
        z = torch.randn(k, b, l)
        v = fastvae.iwae_bound(x, recon, mu, lv, z, likelihood="gaussian",
                               obs_logvar=-100.0, reduction="none", backend=backend)
    v.backward(torch.tensor([0.0, 1.0]))         # row 0 masked out
    g = recon.grad
    row0 = g[0] if op == "elbo" else g[:, 0]
    assert torch.equal(row0, torch.zeros_like(row0)), row0
    assert torch.isfinite(g).all()
