"""float32 x whose elements are not contiguous within a row (a column slice x[:, ::2], a
transposed x.T) on the "torch" backend: native.usable refuses them, the rows are then
chunked, and _bernoulli_chunk must copy such an x before the C kernel (it reads rows
of contiguous elements). tests/test_layout.py and test_shared_inputs.py cover strided
recon and stride-0 x rows, not x with a column stride != 1. Exact oracle: float64."""
import pytest
import torch
import torch.nn.functional as F

import fastvae
from _backends import BACKENDS


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("layout", ["every_other_column", "transposed"])
def test_bernoulli_x_with_a_column_stride(backend, layout):
    torch.manual_seed(0)
    b, d, l = 6, 37, 3
    if layout == "every_other_column":
        x = torch.rand(b, 2 * d)[:, ::2]
    else:
        x = torch.rand(d, b).T
    assert x.stride(1) != 1
    recon = torch.randn(b, d, requires_grad=True)
    mu, lv = torch.randn(b, l), torch.randn(b, l)
    got = fastvae.elbo(x, recon, mu, lv, reduction="none", backend=backend)
    want = (-F.binary_cross_entropy_with_logits(recon.double(), x.double(), reduction="none")
            .sum(-1) - 0.5 * (mu.double() ** 2 + lv.double().exp() - 1 - lv.double()).sum(-1))
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-5, atol=1e-5)
    (g,) = torch.autograd.grad(got.sum(), recon)
    torch.testing.assert_close(g.double(), x.double() - torch.sigmoid(recon.double()).detach(),
                               rtol=1e-5, atol=1e-6)
