"""Pictures from a discretized mixture of logistics (fastvae.dmol_sampling, exported by
fastvae.models): draws follow the log-probability of every value, the mean is the mean of
those draws, and what cannot be drawn (integer params, no component, a grid the
params' dtype cannot hold) is refused or drawn in float32."""
from __future__ import annotations

import math

import pytest
import torch

from _compare import assert_close
from _dmol import F64, OP, all_values, extreme_params


@pytest.mark.parametrize("c,bits", [(1, 3), (3, 1)])
def test_samples_follow_the_likelihood(c, bits):
    """Frequencies of 40000 draws at one pixel (Gumbel-max over components, logistic
    inversion, autoregressive over channels) match exp(log p) of every value within 5
    standard errors, with sharp, wide and clamped components."""
    from fastvae.models import dmol_sample
    g = torch.Generator().manual_seed(11 * c + bits)
    m, draws = 4, 40000
    p = extreme_params(c, m, g, F64)
    per = 3 if c == 3 else 2
    for ch in range(c):  # scales from the clamp to wide, means near the grid
        base = m + per * m * ch
        p[0, base + m:base + 2 * m, 0, 0] = torch.tensor([-9.0, -2.0, -0.5, 1.0])
        p[0, base:base + m, 0, 0] = torch.rand(m, generator=g, dtype=F64) * 1.6 - 0.8
    values = all_values(c, bits, F64)
    prob = OP(values, p.expand(len(values), -1, -1, -1), bits=bits, backend="torch").exp()
    x = dmol_sample(p.float().expand(draws, -1, -1, -1), channels=c, bits=bits, generator=g)
    n = 2 ** bits - 1
    k = torch.round(x.double() * n).long().view(draws, c)
    index = k[:, 0] if c == 1 else (k[:, 0] * (n + 1) + k[:, 1]) * (n + 1) + k[:, 2]
    freq = torch.bincount(index, minlength=len(values)).double() / draws
    se = (prob * (1 - prob) / draws).sqrt()
    assert bool(((freq - prob).abs() <= 5 * se + 1e-4).all()), (freq, prob)


def test_mean_of_sharp_components_is_their_location_held_to_the_grid():
    from fastvae.dmol_sampling import LOG_SCALE_MIN
    from fastvae.models import dmol_mean
    q = torch.full((30,), LOG_SCALE_MIN)  # M = 3, RGB, one pixel, sharp components
    q[:3] = torch.tensor([0.0, 20.0, -20.0])               # component 1 only
    q[3:6] = q[12:15] = q[21:24] = 0.0
    q[9:12] = q[27:30] = 0.0                               # no shift ...
    q[3 + 1], q[12 + 1], q[21 + 1] = 0.5, -0.2, 3.0        # its means per channel
    q[9 + 1] = 1.0                        # ... but tanh(1) of y0 into channel 1
    p = q.view(1, 30, 1, 1)
    want = torch.tensor([0.5, -0.2 + math.tanh(1.0) * 0.5, 1.0])  # channel 2 at its edge
    got = dmol_mean(p, 3)[0, :, 0, 0]
    assert float((got - (want + 1) / 2).abs().max()) < 1e-5
    gray = torch.tensor([0.0, 0.0, -0.3, 0.9, LOG_SCALE_MIN, LOG_SCALE_MIN]).view(1, 6, 1, 1)
    assert abs(dmol_mean(gray, 1).item() - (0.5 * (-0.3 + 0.9) + 1) / 2) < 1e-5


def test_clamped_logistic_mean_is_the_discretized_mean_within_half_a_bin():
    """The closed form against the discretized logistic's mean summed over all 256 bins
    (bin probabilities times bin values, the edge bins taking the tails), for sharp to
    flat scales and locations far outside [-1, 1]."""
    from fastvae.dmol_sampling import _clamped_mean
    n = 255
    loc = torch.linspace(-40.0, 40.0, 161, dtype=F64).view(-1, 1)
    loc = torch.cat([loc, torch.linspace(-1.2, 1.2, 241, dtype=F64).view(-1, 1)])
    scale = torch.exp(torch.linspace(-7.0, 40.0, 48, dtype=F64)).view(1, -1)
    edges = (torch.arange(1, n + 1, dtype=F64) * 2 - 1) / n - 1   # between bins k-1 and k
    cdf = torch.sigmoid((edges - loc[..., None]) / scale[..., None])
    cdf = torch.cat([torch.zeros_like(cdf[..., :1]), cdf, torch.ones_like(cdf[..., :1])], -1)
    values = torch.arange(n + 1, dtype=F64) * 2 / n - 1
    exact = ((cdf[..., 1:] - cdf[..., :-1]) * values).sum(-1)
    got = _clamped_mean(loc.float(), scale.float()).double()
    assert bool(torch.isfinite(got).all())
    assert float((got - exact).abs().max()) <= 1 / n


@pytest.mark.parametrize("c", [1, 3])
def test_mean_is_the_mean_of_the_samplers_draws(c):
    """dmol_mean against the mean of 20000 draws of dmol_sample, per pixel, within 5
    standard errors and a fifth of a grey level, with component locations where trained
    decoders put them ([-3.3, 3.1], far past the grid) and scales from sharp to wide.
    The weighted raw locations, clamped only at the end, missed by 0.33 (gray) and 0.64
    (RGB) here: grey data came out tinted."""
    from fastvae.models import dmol_mean, dmol_sample
    g = torch.Generator().manual_seed(3 + c)
    m, draws = 5, 20000
    per = 3 if c == 3 else 2
    p = torch.randn(1, (10 if c == 3 else 3) * m, 4, 4, generator=g) * 2
    for ch in range(c):
        base = m + per * m * ch
        p[:, base:base + m] = torch.rand(1, m, 4, 4, generator=g) * 6.4 - 3.3
        p[:, base + m:base + 2 * m] = torch.rand(1, m, 4, 4, generator=g) * 5 - 5
    x = dmol_sample(p.expand(draws, -1, -1, -1), channels=c, generator=g).double()
    se = x.std(0) / math.sqrt(draws)
    err = (dmol_mean(p, c)[0].double() - x.mean(0)).abs()
    assert bool((err <= 5 * se + 0.2 / 255).all()), (err.max(), (err / se).max())


def test_pictures_refuse_what_they_cannot_draw_and_keep_the_grid():
    from fastvae.models import dmol_mean, dmol_sample
    for fn in (dmol_sample, dmol_mean):
        with pytest.raises(TypeError, match="params must be a floating-point tensor"):
            fn(torch.zeros(1, 10, 2, 2, dtype=torch.long))
        with pytest.raises(ValueError, match=r"M >= 1"):
            fn(torch.zeros(1, 0, 2, 2))
    # float16 holds an 11-bit grid, not a 12-bit one: there the samples are float32
    for bits, dtype in ((11, torch.float16), (12, torch.float32), (8, torch.bfloat16),
                        (9, torch.float32)):
        half = torch.float16 if bits >= 11 else torch.bfloat16
        x = dmol_sample(torch.randn(4, 30, 3, 3).to(half), bits=bits,
                        generator=torch.Generator().manual_seed(bits))
        n = 2 ** bits - 1
        k = torch.round(x.double() * n)
        assert x.dtype == dtype and torch.equal(x, (k / n).to(dtype))   # k / n, rounded
    x = dmol_sample(torch.randn(4, 30, 3, 3, dtype=torch.float64), bits=16,
                    generator=torch.Generator().manual_seed(0))   # k / n in float64
    k = torch.round(x * 65535)
    assert x.dtype == torch.float64 and torch.equal(x, k / 65535)


@pytest.mark.parametrize("channels,error,text", [
    (2, ValueError, r"channels must be 1 \(gray\) or 3 \(RGB\), got 2"),
    (True, TypeError, "channels must be an int, got bool"),
    (3.0, TypeError, "channels must be an int, got float"),
])
def test_pictures_name_a_bad_channel_count(channels, error, text):
    """channels decides params' layout, so a bad one is named itself, not as a params
    shape (a bool passed ``in (1, 3)`` as gray; a float failed inside range())."""
    from fastvae.models import dmol_mean, dmol_sample
    for fn in (dmol_sample, dmol_mean):
        with pytest.raises(error, match=text):
            fn(torch.zeros(1, 30, 2, 2), channels=channels)


def test_sample_names_a_generator_that_is_not_one():
    from fastvae.models import dmol_sample
    with pytest.raises(TypeError, match="generator must be a torch.Generator, got int"):
        dmol_sample(torch.zeros(1, 30, 2, 2), generator=0)


def test_pictures_check_values_as_the_likelihood_does():
    """validate=True (or the global switch) refuses a non-finite parameter, as the
    likelihood does, instead of drawing a NaN pixel off the grid; off, nothing is read."""
    import fastvae
    from fastvae.models import dmol_mean, dmol_sample
    p = torch.randn(1, 3, 2, 2)
    p[0, 1, 0, 0] = float("nan")
    for fn in (dmol_sample, dmol_mean):
        with pytest.raises(ValueError, match=r"^params has 1 non-finite value"):
            fn(p, channels=1, validate=True)
        before = fastvae.get_validation()
        fastvae.set_validation(True)
        try:
            with pytest.raises(ValueError, match=r"^params has 1 non-finite value"):
                fn(p, channels=1)
        finally:
            fastvae.set_validation(before)
        assert fn(p, channels=1, validate=False).shape == (1, 1, 2, 2)
