"""IWAELoss with the discretized logistic mixture is minus the mean importance-weighted
bound, in value and in every gradient, as for the other likelihoods; and
estimator='dreg', whose gradient hook this likelihood does not build, is refused by name
(fastvae.iwae_bound's docstring)."""
import pytest
import torch

import fastvae
from _dmol import DMOL, make


def _inputs(b=3, k=2, l=4):
    torch.manual_seed(0)
    x, _ = make(b, 1, 3, 2, 2, torch.float32)
    pk = torch.stack([make(b, 1, 3, 2, 2, torch.float32)[1] for _ in range(k)])
    mu = torch.randn(b, l)
    lv = torch.randn(b, l) * 0.5
    zk = mu + torch.exp(0.5 * lv) * torch.randn(k, b, l)
    return x, pk, mu, lv, zk


def test_iwae_loss_is_minus_the_mean_bound(backend):
    x, *ins = _inputs()
    leaves = [t.clone().requires_grad_() for t in ins]
    loss = fastvae.IWAELoss(likelihood=DMOL, backend=backend)(x, *leaves)
    wide = [t.double().requires_grad_() for t in ins]
    bound = fastvae.iwae_bound(x.double(), *wide, likelihood=DMOL, reduction="mean",
                               backend="reference")
    torch.testing.assert_close(loss.double(), -bound.detach(), rtol=1e-5, atol=1e-5)
    for name, g, w in zip(("recon_k", "mu", "logvar", "z_k"), torch.autograd.grad(loss, leaves),
                          torch.autograd.grad(-bound, wide)):
        torch.testing.assert_close(g.double(), w, rtol=1e-3, atol=1e-4 * float(w.abs().max()),
                                   msg=lambda m, name=name: f"d loss / d {name}: {m}")


def test_dreg_is_refused_by_name():
    """By the function, and by the loss where it is made (as every setting of a loss is),
    not at its first forward."""
    x, pk, mu, lv, zk = _inputs()
    with pytest.raises(ValueError, match="estimator='dreg' is not available with likelihood="):
        fastvae.iwae_bound(x, pk, mu, lv, zk, likelihood=DMOL, estimator="dreg")
    with pytest.raises(ValueError, match="estimator='dreg' is not available with likelihood="):
        fastvae.IWAELoss(likelihood=DMOL, estimator="dreg")
