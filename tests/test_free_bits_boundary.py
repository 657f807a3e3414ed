"""Free bits at the boundary: a latent whose batch-mean KL *equals* free_bits is not
"below" it (functional.elbo's docstring, reference._free_bits: ``mean < free_bits``), so
it keeps its per-sample KL and its gradient. Every number here is exact in binary:
lv = 0 gives 0.5 * (mu^2 - 1) + exp(-log 2) = 0.5 mu^2 (exp(-log 2) rounds to 0.5 in
float32 and float64), so with mu = [0, 2] the per-sample KLs are [0, 2], their mean 1."""
import pytest
import torch

import fastvae
from _backends import BACKENDS


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("kl", ["analytic", "mc"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_free_bits_mean_equal_to_threshold_is_not_clamped(backend, kl, dtype):
    x = torch.zeros(2, 3, dtype=dtype)
    recon = torch.zeros(2, 3, dtype=dtype)
    mu = torch.tensor([[0.0], [2.0]], dtype=dtype, requires_grad=True)
    lv = torch.zeros(2, 1, dtype=dtype, requires_grad=True)
    z = mu.detach().clone().requires_grad_(True) if kl == "mc" else None  # z = mu: t = 0
    log_px = -3 * torch.log(torch.tensor(2.0, dtype=torch.float64))  # 3 logits of 0
    got = fastvae.elbo(x, recon, mu, lv, kl=kl, z=z, free_bits=1.0, reduction="none",
                       backend=backend)
    want = log_px - torch.tensor([0.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-6)
    # not clamped: the KL's gradient reaches the latents (clamped: exactly 0)
    got.sum().backward()
    g = (mu.grad if kl == "analytic" else z.grad).flatten()
    assert g[1] != 0, f"the latent at the threshold passed no gradient: {g}"
