"""A learned prior given in part: ``kl_normal`` and ``sample_with_kl`` read a prior mean
or log-variance of None as 0, so ``(mu_p, None)`` is N(mu_p, I) and ``(None, lv_p)`` is
N(0, e^lv_p), values and gradients as the float64 formula with that 0 written out."""
import pytest
import torch

import fastvae
from _backends import generator
from _compare import leaf
from fastvae import reference as R


@pytest.mark.parametrize("given", ["mean", "logvar"])
@pytest.mark.parametrize("op", ["kl_normal", "sample_with_kl"])
def test_a_missing_part_is_zero(backend, op, given):
    g = generator(5)   # on the default device: CUDA in a GPU session
    mu, lv, part = (torch.randn(6, 9, generator=g) for _ in range(3))
    leaves = [leaf(mu), leaf(lv), leaf(part)]
    pm, plv = (leaves[2], None) if given == "mean" else (None, leaves[2])
    if op == "kl_normal":
        kl = fastvae.kl_normal(leaves[0], leaves[1], pm, plv, backend=backend)
    else:
        _, kl = fastvae.sample_with_kl(leaves[0], leaves[1], pm, plv, backend=backend)
    got = torch.autograd.grad(kl.sum(), leaves)
    wide = [leaf(t.double()) for t in (mu, lv, part)]
    zero = torch.zeros((), dtype=torch.float64, device=mu.device)
    pm, plv = (wide[2], zero) if given == "mean" else (zero, wide[2])
    want_kl = R.kl_normal(wide[0], wide[1], pm, plv)
    want = torch.autograd.grad(want_kl.sum(), wide)
    torch.testing.assert_close(kl.double(), want_kl.detach(), rtol=1e-5, atol=1e-5)
    for a, w in zip(got, want):
        torch.testing.assert_close(a.double(), w, rtol=1e-5, atol=1e-5)
