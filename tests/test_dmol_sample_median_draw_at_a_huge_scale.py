"""dmol_sample's logistic inversion at u = 1/2 (torch.rand's 0.5, one draw in 2^24,
about one pixel in every 170 batches of 32 RGB 32x32 images): the logistic's median, the
mean, also where the scale e^s overflows float32 (log-scale past 88.7), not inf * 0 = NaN
in that pixel and in every later channel shifted by it."""
from __future__ import annotations

import torch

from fastvae.dmol_sampling import dmol_sample


def test_a_median_draw_is_the_mean_at_any_scale(monkeypatch):
    real_rand = torch.rand
    monkeypatch.setattr(torch, "rand", lambda *a, **k: real_rand(*a, **k).fill_(0.5))
    m = 1
    p = torch.zeros(1, 10 * m, 1, 1)
    for ch, mean in enumerate((0.3, -0.2, 0.6)):
        p[0, 1 + 3 * ch] = mean
        p[0, 2 + 3 * ch] = 100.0   # e^100: inf in float32
    x = dmol_sample(p, channels=3)
    want = torch.round((torch.tensor([0.3, -0.2, 0.6]) + 1) * 127.5) / 255
    assert torch.equal(x.view(-1), want), x.view(-1).tolist()
