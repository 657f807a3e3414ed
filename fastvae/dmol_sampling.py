"""Pictures from a discretized mixture of logistics: samples and the mixture's mean.

``params`` is the layout of :func:`fastvae.discretized_logistic_mixture_log_prob`:
``(B, 10*M, H, W)`` for RGB, ``(B, 3*M, H, W)`` for grayscale, channels-first.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import check_generator
from .validation import (check_bits, check_number, check_tensor, check_values, dmol_slots,
                         holds_grid, resolve_validate)

LOG_SCALE_MIN = -7.0


def _split(params: torch.Tensor, channels: int):
    """(logits (B, M, H, W), [(means, log_scales, coeffs or None) per channel])."""
    # checked before params' shape, which it decides: a bad one is named as itself (a
    # bool or float would otherwise pass ``in (1, 3)`` and fail later in range())
    channels = int(check_number("channels", channels, integer=True))
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (gray) or 3 (RGB), got {channels}")
    if params.dim() != 4 or params.shape[1] == 0 or params.shape[1] % dmol_slots(channels):
        raise ValueError(f"params must be (B, {dmol_slots(channels)}*M, H, W), M >= 1, for "
                         f"channels={channels}, got shape {tuple(params.shape)}")
    m = params.shape[1] // dmol_slots(channels)
    per = 3 if channels == 3 else 2
    chans = []
    for c in range(channels):
        base = m + per * m * c
        chans.append((params[:, base:base + m], params[:, base + m:base + 2 * m],
                      params[:, base + 2 * m:base + 3 * m] if per == 3 else None))
    return params[:, :m], chans


def _shift(chans, c: int, pick, y):
    """The autoregressive part of channel ``c``'s mean given earlier channels' ``y``:
    ``tanh(c0) y0`` for channel 1, ``tanh(c1) y0 + tanh(c2) y1`` for channel 2."""
    if c == 0:
        return 0.0
    if c == 1:
        return pick(torch.tanh(chans[0][2])) * y[0]
    return pick(torch.tanh(chans[1][2])) * y[0] + pick(torch.tanh(chans[2][2])) * y[1]


@torch.no_grad()
def dmol_sample(params: torch.Tensor, channels: int = 3, bits: int = 8,
                generator=None, validate=None) -> torch.Tensor:
    """Images ``(B, C, H, W)`` on the grid ``k / (2^bits - 1)`` drawn from the mixture:
    a component per pixel by Gumbel-max over the logits, then channel by channel a
    logistic draw ``mean + e^s log(u / (1 - u))`` (inversion), rounded to its bin (the
    edge bins take the tails, as the likelihood's do), each channel's mean shifted by
    the earlier channels' drawn values. Exactly the distribution whose log-probability
    :func:`fastvae.discretized_logistic_mixture_log_prob` computes. In params' dtype
    where it holds the grid (float16 up to 11 bits, bfloat16 up to 8), else float32.
    ``bits``: 1..16, None for 8, as in the likelihood. ``validate``: as in
    :func:`fastvae.elbo` (a NaN parameter would draw a NaN pixel, off the grid)."""
    bits = check_bits(bits)
    n = 2 ** bits - 1
    logits, chans = _split(check_tensor("params", params).float(), channels)
    check_generator(generator, params.device)
    check_values(resolve_validate(validate), params=params)
    rng = {} if generator is None else {"generator": generator}
    tiny = torch.finfo(torch.float32).tiny

    def uniform(like):
        u = torch.rand(like.shape, device=like.device, **rng)
        return u.clamp(tiny, 1.0 - 2 ** -24)

    gumbel = -torch.log(-torch.log(uniform(logits)))
    pick_index = (logits + gumbel).argmax(1, keepdim=True)

    def pick(t):
        return t.gather(1, pick_index)[:, 0]

    y, ks = [], []
    for c, (means, log_scales, _) in enumerate(chans):
        mean = pick(means) + _shift(chans, c, pick, y)
        u = uniform(mean)
        logit = torch.log(u) - torch.log1p(-u)
        # u = 1/2 (one draw in 2^24) is logit 0: the mean, not inf * 0 = NaN where the
        # scale overflows float32 (log-scale past 88.7)
        spread = torch.exp(pick(log_scales).clamp(min=LOG_SCALE_MIN)) * logit
        draw = mean + torch.where(logit == 0, 0.0, spread)
        k = torch.round((draw.clamp(-1.0, 1.0) + 1.0) * (n / 2.0))
        ks.append(k)
        y.append(2.0 * k / n - 1.0)
    # divided in the result's dtype: k / n rounded to float32, then widened, is off the
    # float64 grid by up to half a float32 ulp
    dtype = params.dtype if holds_grid(params.dtype, bits) else torch.float32
    return torch.stack(ks, 1).to(dtype) / n


# The channels' means under a component depend on the earlier channels' values (the
# autoregressive shift), not just on their means: they are averaged over the earlier
# channels' logistic at these many equal-weight quantile nodes each (QUANTILE_NODES^2
# evaluations for blue). 5 keeps the mean within MC noise of the sampler's where a
# linear shift of the earlier means was 0.08 off, at ~0.3 s for 32 RGB 32x32 images.
QUANTILE_NODES = 5
# Past this scale the logistic is flat across [-1, 1]: its mean there is taken at the
# midpoint, where the closed form would cancel to nothing in float32.
_FLAT_SCALE = 64.0


def _clamped_mean(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``E[clamp(loc + scale T, -1, 1)]``, T standard logistic: ``1 - int_{-1}^{1} F``,
    ``F`` the logistic CDF, in closed form. The discretized logistic's mean (the draw
    rounded to its bin, the edge bins taking the tails) is within half a bin of it,
    and closer for scales past a bin's width."""
    # beyond 50 scales outside [-1, 1] the mean is an edge to e^-50; the clamp keeps the
    # softplus arguments' difference out of float32 cancellation
    loc = torch.maximum(torch.minimum(loc, 1.0 + 50.0 * scale), -1.0 - 50.0 * scale)
    safe = scale.clamp(max=_FLAT_SCALE)
    area = safe * (F.softplus((1.0 - loc) / safe) - F.softplus((-1.0 - loc) / safe))
    flat = 2.0 * torch.sigmoid(-loc / scale)  # midpoint rule, error O(1 / scale^2)
    return 1.0 - torch.where(scale > _FLAT_SCALE, flat, area)


@torch.no_grad()
def dmol_mean(params: torch.Tensor, channels: int = 3, validate=None) -> torch.Tensor:
    """The picture of a DMoL decoder's output, ``(B, C, H, W)`` in [0, 1]: the mixture's
    mean, ``sum_m pi_m E[x_c | m]``, of the distribution :func:`dmol_sample` draws from.
    ``E[x_c | m]`` is the mean of the logistic clamped to [-1, 1] (within half a grid
    step of the discretized one's), for green and blue averaged over the earlier
    channels' values at :data:`QUANTILE_NODES` quantiles each, since their shift is
    taken at those values. Mean-sized rather than location-sized: a component located
    outside [-1, 1] counts as the edge value it puts its mass on. ``validate``: as in
    :func:`dmol_sample`."""
    logits, chans = _split(check_tensor("params", params).float(), channels)
    check_values(resolve_validate(validate), params=params)
    weights = torch.softmax(logits, 1)

    def scale(log_scales):
        return torch.exp(log_scales.clamp(min=LOG_SCALE_MIN))

    (m0, l0, c0) = chans[0]
    s0 = scale(l0)
    means = [_clamped_mean(m0, s0)]
    if channels == 3:
        (m1, l1, c1), (m2, l2, c2) = chans[1], chans[2]
        s1, s2 = scale(l1), scale(l2)
        a, b0, b1 = torch.tanh(c0), torch.tanh(c1), torch.tanh(c2)
        q = QUANTILE_NODES
        t = torch.logit((torch.arange(q, device=m0.device, dtype=m0.dtype) + 0.5) / q)
        green, blue = torch.zeros_like(m0), torch.zeros_like(m0)
        for tj in t:  # one red node at a time: memory of q, not q^2, copies
            y0 = (m0 + s0 * tj).clamp(-1.0, 1.0)
            loc1 = m1 + a * y0
            green += _clamped_mean(loc1, s1)
            y1 = (loc1[..., None] + s1[..., None] * t).clamp(-1.0, 1.0)
            blue += _clamped_mean((m2 + b0 * y0)[..., None] + b1[..., None] * y1,
                                  s2[..., None]).mean(-1)
        means += [green / q, blue / q]
    out = torch.stack([(weights * e).sum(1) for e in means], 1)
    return ((out + 1.0) / 2.0).clamp(0.0, 1.0).to(params.dtype)
