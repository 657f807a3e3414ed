"""An edge bin held with certainty by a component whose mean lies far beyond it (a
diverged decoder's mean ~1e36 below the bottom bin or above the top one): its mass is 1,
so its value and every gradient are 0, as the float64 formula's. Fused, u = (y - mean
+- h) e^-s overflowed to inf and d/dlog_scale's ``u sigmoid(-u)`` was inf * 0 = NaN
(also below the clamp, where the mask multiplied the NaN by 0), and the C kernel's
sigmoid, floored at e^-87, gave ``u e^-87``: -4.9 at a mean of -3e38.
"""
from __future__ import annotations

import pytest
import torch

from _compare import assert_close, grads, leaf
from _dmol import OP


@pytest.mark.parametrize("c", [1, 3])
def test_an_edge_bin_held_by_a_far_mean_has_zero_gradients(backend, cpu_path, c):
    m, per = 2, (3 if c == 3 else 2)
    for edge, sign in ((0.0, -1.0), (1.0, 1.0)):
        for far, log_scale in ((1e30, 0.0), (1e36, 0.0), (3e38, 0.0), (1e36, -7.0),
                               (1e36, -6.9), (1e36, -8.0)):
            x = torch.full((2, c, 1, 1), edge)
            p = torch.zeros(2, (1 + per * c) * m, 1, 1)
            p[:, :m] = torch.tensor([0.5, -0.25]).view(m, 1, 1)
            for ch in range(c):   # component 0 far beyond the edge in every channel
                base = m + per * m * ch
                p[:, base] = sign * far
                p[:, base + m] = log_scale
                p[:, base + 1] = 0.3 * sign          # component 1 near it
                p[:, base + m + 1] = -2.0
            p[1, :m] = torch.tensor([0.0, -1e4]).view(m, 1, 1)   # sample 1: component 0 alone
            q, q64 = leaf(p), leaf(p.double())
            got, want = OP(x, q, backend=backend), OP(x.double(), q64, backend="reference")
            what = f"mean {sign * far:g}, log-scale {log_scale} at x = {edge}"
            assert_close(f"log p, {what}", got, want, torch.float32, scale=want.abs() + 1)
            g, e = grads(got, [q])[0], grads(want, [q64])[0]
            assert torch.isfinite(g).all(), (what, g.flatten().tolist())
            assert_close(f"d log p / d params, {what}", g, e, torch.float32,
                         scale=e.abs().max() + 1e-3)
