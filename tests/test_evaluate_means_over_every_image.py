"""evaluation.evaluate's numbers are per-image means over every test image, whatever the
batching: the reconstruction term log p(x|z), the analytic KL, and the ELBO = rec - KL
(beta = 1). A decoder whose output ignores z makes log p(x|z) exact by hand."""
from __future__ import annotations

import math

import pytest
import torch

from fastvae.evaluation import evaluate
from fastvae.models import VAE

LOGITS = [-1.0, 0.5, 2.0, 0.0]


def _model():
    torch.manual_seed(0)
    core = VAE((1, 2, 2), latent_dim=2, hidden=(3,), likelihood="bernoulli")
    last = core.decoder[-1]
    with torch.no_grad():   # the decoder's output: these logits for every z
        last.weight.zero_()
        last.bias.copy_(torch.tensor(LOGITS))
    return core


@pytest.mark.parametrize("batch_size", [2, 512])
def test_evaluate_is_the_mean_over_every_image(batch_size):
    core = _model()
    x = torch.rand(5, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    got = evaluate(core, x, {"seed": 0, "backend": "torch"}, "cpu", batch_size=batch_size)
    # Bernoulli with logits l: sum_d x*l - softplus(l), in float64 by hand
    rec = sum(sum(xd * l - math.log1p(math.exp(l)) for xd, l in zip(img, LOGITS))
              for img in x.double().flatten(1).tolist()) / 5
    with torch.no_grad():
        mu, logvar = (t.double() for t in core.encode(x))
    kl = float((0.5 * (mu ** 2 + logvar.exp() - 1 - logvar)).sum()) / 5
    assert got["rec"] == pytest.approx(rec, rel=1e-5)
    assert got["kl"] == pytest.approx(kl, rel=1e-5)
    assert got["elbo"] == pytest.approx(rec - kl, rel=1e-5)
