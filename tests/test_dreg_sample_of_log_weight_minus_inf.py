"""One sample of a row with log w = -inf (a Gaussian decoder missing x by 1e18 at
obs_logvar -9: ((x - r) e^4.5)^2 overflows float32) has weight exactly 0 and must add
nothing: every gradient equals that of the bound over the other samples (whose softmax
weights are the same). With estimator="dreg" the reference's surrogate
sum_k w~_k log w_k would be 0 * -inf = NaN for that sample and the row's gradients
silently 0 (reference.iwae_bound_surrogate guards it with where(zero, 0, log_w)); the
suite has no DReG case of a -inf log w next to finite ones."""
import pytest
import torch

import fastvae
from _backends import BACKENDS


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("estimator", ["standard", "stl", "dreg"])
def test_a_minus_inf_sample_adds_nothing(backend, estimator):
    torch.manual_seed(0)
    k, b, d, l = 3, 2, 4, 3
    x = torch.rand(b, d)
    recon0 = x + 0.01 * torch.randn(k, b, d)
    recon0[0, 0] += 1e18                              # sample 0 of row 0: log w = -inf
    mu0, lv0 = 0.1 * torch.randn(b, l), torch.full((b, l), -4.0)
    eps = torch.randn(k, b, l)

    def run(keep):
        recon = recon0[keep].clone().requires_grad_(True)
        mu, lv = mu0.clone().requires_grad_(True), lv0.clone().requires_grad_(True)
        z_k = mu + torch.exp(0.5 * lv) * eps[keep]    # the decoder does not read z_k here
        v = fastvae.iwae_bound(x, recon, mu, lv, z_k, likelihood="gaussian", obs_logvar=-9.0,
                               estimator=estimator, reduction="none", backend=backend)
        return (v, *torch.autograd.grad(v.sum(), (recon, mu, lv)))

    v_all, gr_all, gm_all, gl_all = run([0, 1, 2])
    v_12, gr_12, gm_12, gl_12 = run([1, 2])
    assert torch.isfinite(v_all).all()
    for g in (gr_all, gm_all, gl_all):
        assert torch.isfinite(g).all()
    assert torch.equal(gr_all[0, 0], torch.zeros(d))
    torch.testing.assert_close(gm_all[0], gm_12[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gl_all[0], gl_12[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gr_all[1:, 0], gr_12[:, 0], rtol=1e-4, atol=1e-5)
