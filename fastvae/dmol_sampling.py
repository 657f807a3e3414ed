"""Pictures from a discretized mixture of logistics: samples and the mixture's mean.

``params`` is the layout of :func:`fastvae.discretized_logistic_mixture_log_prob`:
``(B, 10*M, H, W)`` for RGB, ``(B, 3*M, H, W)`` for grayscale, channels-first.
"""
from __future__ import annotations

import torch

from .validation import check_bits, check_tensor, dmol_slots, holds_grid

LOG_SCALE_MIN = -7.0


def _split(params: torch.Tensor, channels: int):
    """(logits (B, M, H, W), [(means, log_scales, coeffs or None) per channel])."""
    if (channels not in (1, 3) or params.dim() != 4 or params.shape[1] == 0
            or params.shape[1] % dmol_slots(channels)):
        raise ValueError(f"params must be (B, {dmol_slots(channels)}*M, H, W), M >= 1, for "
                         f"channels={channels} (1 or 3), got shape {tuple(params.shape)}")
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
                generator=None) -> torch.Tensor:
    """Images ``(B, C, H, W)`` on the grid ``k / (2^bits - 1)`` drawn from the mixture:
    a component per pixel by Gumbel-max over the logits, then channel by channel a
    logistic draw ``mean + e^s log(u / (1 - u))`` (inversion), rounded to its bin (the
    edge bins take the tails, as the likelihood's do), each channel's mean shifted by
    the earlier channels' drawn values. Exactly the distribution whose log-probability
    :func:`fastvae.discretized_logistic_mixture_log_prob` computes. In params' dtype
    where it holds the grid (float16 up to 11 bits, bfloat16 up to 8), else float32."""
    bits = check_bits(bits)
    n = 2 ** bits - 1
    logits, chans = _split(check_tensor("params", params).float(), channels)
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
        draw = mean + torch.exp(pick(log_scales).clamp(min=LOG_SCALE_MIN)) * (
            torch.log(u) - torch.log1p(-u))
        k = torch.round((draw.clamp(-1.0, 1.0) + 1.0) * (n / 2.0))
        ks.append(k)
        y.append(2.0 * k / n - 1.0)
    return (torch.stack(ks, 1) / n).to(params.dtype if holds_grid(params.dtype, bits)
                                       else torch.float32)


@torch.no_grad()
def dmol_mean(params: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """The picture of a DMoL decoder's output, ``(B, C, H, W)`` in [0, 1]: per channel the
    mixture-weighted component location, each component's autoregressive shift taken at
    the earlier channels' locations, clamped to [-1, 1] (the logistic's mean without its
    discretization, the usual choice for reconstructions)."""
    logits, chans = _split(check_tensor("params", params).float(), channels)
    weights = torch.softmax(logits, 1)
    locs, out = [], []
    for c, (means, _, _) in enumerate(chans):
        loc = means + _shift(chans, c, lambda t: t, locs)
        locs.append(loc)
        out.append((weights * loc).sum(1).clamp(-1.0, 1.0))
    return ((torch.stack(out, 1) + 1.0) / 2.0).to(params.dtype)
