"""fastvae.discretized_logistic_mixture_log_prob on every backend (the ``backend`` fixture)
at parameters far from the data: logits far from zero or from each other, a pixel of no
float32 mass, NaN inputs, components of no mass, responsibilities far from the data;
log p and its gradients those of the float64 reference, on the "torch" backend's C
kernel and its aten fallback too (``cpu_path``).

The op's values and gradients over its options:
tests/test_discretized_logistic_mixture_log_prob.py."""
from __future__ import annotations

import pytest
import torch

from _compare import assert_close, grads, leaf
from _dmol import OP, make, slots


@pytest.mark.parametrize("c", [1, 3])
def test_logits_far_from_zero_or_from_each_other_keep_log_p(seed, backend, c):
    """log_softmax is shift-invariant, so log p must not round to the logits' magnitude:
    every logit shifted, one logit far below the others, one at -inf (a component
    switched off; validation off). The fused backends, in float32."""
    if backend == "reference":
        pytest.skip("the reference is the float64 oracle here")
    x, p = make(3, c, 2, 2, 4)
    x, p = x.float(), p.float()
    cases = []
    for shift in (1e3, 1e5, -1e6):
        q = p.clone()
        q[:, :4] += shift
        cases.append(q)
    for low in (-1e4, -1e6, float("-inf")):
        for m in (0, 2):
            q = p.clone()
            q[:, m] = low
            cases.append(q)
    for q in cases:
        q32, q64 = leaf(q), leaf(q.double())   # the same inputs
        got = OP(x, q32, backend=backend, validate=False)
        want = OP(x.double(), q64, backend="reference", validate=False)
        what = f"logits {q[0, :4, 0, 0].tolist()}"
        assert_close(f"log p, {what}", got, want, torch.float32, scale=want.abs().max())
        e = grads(want, [q64])[0]
        assert_close(f"d log p / d params, {what}", grads(got, [q32])[0], e, torch.float32,
                     scale=e.abs().max() + 1e-3)


def test_a_pixel_of_no_float32_mass_has_log_p_minus_inf(backend, cpu_path):
    """A mean past ~3e35 puts every component's log mass of a pixel below float32's
    range: log p is -inf on every path, as the reference's, not -inf - -inf = NaN from
    the logsumexp's shift (a docstring reviewer's find). The other pixel stays exact."""
    x = torch.full((2, 1, 1, 1), 128 / 255)
    p = torch.tensor([[0.0, 1e36, -7.0], [0.0, 0.5, -1.0]]).reshape(2, 3, 1, 1)
    for m in (1, 3):   # one component, and the same pixel under three
        q = p.repeat_interleave(m, dim=1) if m > 1 else p
        got = OP(x, q, backend=backend)
        assert got[0].item() == float("-inf")
        assert OP(x, q, backend="reference")[0].item() == float("-inf")   # in float32
        want = OP(x.double(), q.double(), backend="reference")
        assert_close("the finite pixel", got[1:], want[1:], torch.float32,
                     scale=want[1:].abs())


@pytest.mark.parametrize("c", [1, 3])
def test_a_nan_input_gives_nan_on_every_path(backend, cpu_path, c):
    """With validation off a NaN in x or in a parameter is the caller's, as in eager: its
    sample's log p is NaN on every path (clamping the bin dropped a NaN x, and the
    logsumexp's max a NaN mass, into finite or -inf values); the others stay exact."""
    m = 2
    x, p = make(5, c, 2, 2, m, torch.float32)
    want = OP(x, p, backend="reference")
    x[0, c - 1, 1, 0] = float("nan")
    last = 1 + (3 if c == 3 else 2) * (c - 1)     # the last channel's means: slot * m
    for b, slot in ((1, 1), (2, last * m + 1), (3, (last + 1) * m + 1)):   # logit, mean,
        p[b, slot, 0, 1] = float("nan")                                     # log-scale
    got = OP(x, p, backend=backend)
    assert got[:4].isnan().all(), got
    assert_close("the other sample", got[4:], want[4:], torch.float32, scale=want[4:].abs())


@pytest.mark.parametrize("channels", [1, 3])
def test_a_component_of_no_mass_adds_no_gradient(backend, cpu_path, channels):
    """A component whose mean is far from the pixel (1e30 to 1e38 on the [-1, 1] scale,
    what only a diverged network gives) has responsibility 0: its parameters' gradients are
    0, as the reference's, not e^-87 or 0 times its partials (which overflow to inf or NaN
    past ~3e35): a review's find. The live component's gradients stay the reference's."""
    x = torch.full((1, channels, 1, 1), 128 / 255)
    m = 2
    for far, log_scale in ((1e30, -7.0), (3e35, -7.0), (4e35, -7.0), (1e38, 0.0)):
        p = torch.zeros(1, slots(channels) * m, 1, 1)
        per = 3 if channels == 3 else 2
        for ch in range(channels):   # component 0 far off in every channel, 1 at the pixel
            base = m + per * m * ch
            p[0, base] = far
            p[0, base + m] = log_scale
        q = leaf(p)
        got = grads(OP(x, q, backend=backend), [q])[0]
        r = leaf(p)
        want = grads(OP(x, r, backend="reference"), [r])[0]
        assert torch.isfinite(got).all(), (far, got.flatten().tolist())
        dead = [m + per * m * ch + j for ch in range(channels) for j in (0, m)]
        dead += [(3 + 3 * ch) * m for ch in range(3)] if channels == 3 else []   # coefficients
        assert (got[0, dead] == 0).all(), (far, got.flatten().tolist())
        assert_close(f"gradients, the far mean {far:g}", got, want, torch.float32,
                     scale=want.abs().max())


def test_responsibilities_sum_to_one_far_from_the_data(seed, backend, cpu_path):
    """M identical components each take 1/M of a pixel however unlikely the pixel: the
    logits' gradient (responsibility minus softmax(logits)) is 0, and the components'
    gradients add up to the one component's of M = 1. Here each component's
    log-probability is -3000 to -6600 (means toward the far edge, the narrowest scale),
    where responsibilities taken as exp(lp - the rounded logsumexp) are all off by up to
    exp(ulp(6600)) ~ 1 + 5e-4 in float32."""
    x = torch.zeros(2, 3, 16, 16)
    means = torch.ones(2, 3, 16, 16)     # sample 0 at the far edge, sample 1 toward it
    means[1] = 0.5 + 0.5 * torch.rand(3, 16, 16)

    def params(m):
        p = torch.zeros(2, slots(3) * m, 16, 16)
        for ch in range(3):
            base = m + 3 * m * ch
            p[:, base:base + m] = means[:, ch:ch + 1]
            p[:, base + m:base + 2 * m] = -7.0  # the clamp's log-scale
        return leaf(p)
    one, four = params(1), params(4)
    got = OP(x, four, backend=backend)
    assert got.max() < -3000 * 256
    (g1,), (g4,) = grads(OP(x, one, backend=backend), [one]), grads(got, [four])
    assert g4[:, :4].abs().max() < 1e-7, g4[:, :4].abs().max()
    for ch in range(3):   # the means' and log-scales' gradients, summed over components
        for j in (0, 1):
            a = 1 + 3 * ch + j
            b = 4 + 12 * ch + 4 * j
            assert_close(f"channel {ch} slot {j}", g4[:, b:b + 4].sum(1), g1[:, a],
                         torch.float32, rtol=1e-6)
