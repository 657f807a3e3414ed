"""The discretized logistic mixture's IWAE bound repeats the latents' parameters over the
K samples; a 16-bit mu's gradient is summed over its copies in float32 and rounded to
float16 once, so one sample's term past float16's range does not overflow a sum that
fits. Here two samples of equal weight 1/2 (identical decoder outputs, q = p = N(0, 1):
log w_k = log p(x|z_k)) at z - mu = 140000 and -130000 give d bound / d mu =
1/2 (-140000 + 130000) = -5000, one term alone -70000 (float16 ends at 65504)."""
import torch

import fastvae
from _dmol import DMOL


def test_a_float16_mean_gradient_summed_over_samples_fits(backend):
    x = torch.zeros(1, 1, 1, 1)
    pk = torch.zeros(2, 1, 3, 1, 1)
    zk = torch.tensor([140000.0, -130000.0]).view(2, 1, 1)
    lv = torch.zeros(1, 1, dtype=torch.float16)
    grads = []
    for dtype in (torch.float16, torch.float64):
        mu = torch.zeros(1, 1, dtype=dtype, requires_grad=True)
        if dtype == torch.float16:   # only the latents' parameters are 16-bit
            v = fastvae.iwae_bound(x, pk, mu, lv, zk, likelihood=DMOL, backend=backend)
        else:
            v = fastvae.iwae_bound(x.double(), pk.double(), mu, lv.double(), zk.double(),
                                   likelihood=DMOL, backend="reference")
        (g,) = torch.autograd.grad(v.sum(), [mu])
        grads.append(g)
    got, want = grads
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.double(), want, rtol=1e-3, atol=0)
