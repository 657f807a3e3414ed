"""The discretized mixture of logistics on the "torch" backend: the log-likelihood and its
gradient w.r.t. the parameters in one pass, chunk of pixels by chunk of pixels.

Eager autograd keeps ~25 tensors of shape B x C x M x H x W for backward; here the only
tensor of the parameters' size is the returned gradient, and every B x C x M x H x W
quantity exists for one chunk at a time (``CHUNK_ELEMS`` parameters' worth of pixels,
so the chunk's ~20 temporaries take a few MB). The per-element math is
``terms.logistic_bin``.
"""
from __future__ import annotations

import torch

from ..._dtypes import reduce_scale, result_dtype
from . import terms

# 2^17 as the row chunks of rows.py: ~90 aten ops a chunk, so at 2^14 their per-op cost
# made the fused path 4x slower than eager at B=16 3x32x32 M=10; at 2^17 it is about even.
CHUNK_ELEMS = 1 << 17
LOG_SCALE_MIN = -7.0


def slots(channels: int) -> int:
    """Parameter slots per component: logit + (mean, log-scale, coeff) per channel for RGB,
    logit + (mean, log-scale) for grayscale."""
    return 10 if channels == 3 else 3


def pixel_chunks(batch: int, hw: int, per_pixel: int):
    """(b0, b1, p0, p1) chunks: whole samples while one sample's parameters fit
    ``CHUNK_ELEMS``, else pixel ranges of one sample (in order: a row's sum is the same
    whatever the chunking... of the same shape)."""
    per_row = max(hw * per_pixel, 1)
    if per_row <= CHUNK_ELEMS:
        rows = CHUNK_ELEMS // per_row
        return [(i, min(i + rows, batch), 0, hw) for i in range(0, batch, rows)]
    pix = max(1, CHUNK_ELEMS // per_pixel)
    return [(i, i + 1, p, min(p + pix, hw)) for i in range(batch) for p in range(0, hw, pix)]


def _chunk(xs, ps, n: int, c: float, g):
    """Per-sample log p of one chunk; writes ``c`` times d log p / d params into ``g``.

    xs ``(nb, C, P)``, ps ``(nb, S, M, P)`` in the compute dtype; g a ``(nb, S, M, P)``
    view of the gradient output, or None.
    """
    channels = xs.shape[1]
    per = 3 if channels == 3 else 2
    k = torch.floor(xs * n + 0.5).clamp_(0, n)            # the bin decides the edges
    y = (k * (2.0 / n) - 1.0).unsqueeze(2)                 # (nb, C, 1, P), on the grid
    logits, raw_ls = ps[:, 0], ps[:, 2::per]
    mean = ps[:, 1::per]
    if channels == 3:
        t = torch.tanh(ps[:, 3::3])
        mean = mean.clone()
        mean[:, 1].addcmul_(t[:, 0], y[:, 0])
        mean[:, 2].addcmul_(t[:, 1], y[:, 0]).addcmul_(t[:, 2], y[:, 1])
    k = k.unsqueeze(2)
    value, d_mean, d_ls = terms.logistic_bin(y, mean, raw_ls.clamp(min=LOG_SCALE_MIN), k == 0,
                                             k == n, 1.0 / n)
    lp = torch.log_softmax(logits, 1).add_(value.sum(1))  # (nb, M, P)
    lse = torch.logsumexp(lp, 1)                          # (nb, P)
    if g is not None:
        r = lp.sub_(lse.unsqueeze(1)).exp_()              # responsibilities
        g[:, 0] = (r - torch.softmax(logits, 1)).mul_(c)
        w = r.mul_(c).unsqueeze(1)
        g_mean = d_mean.mul_(w)
        g[:, 1::per] = g_mean
        g[:, 2::per] = d_ls.mul_(w).mul_(raw_ls >= LOG_SCALE_MIN)
        if channels == 3:  # through m1 = mean1 + tanh(c0) y0, m2 = mean2 + tanh(c1) y0 + tanh(c2) y1
            dt = 1.0 - t * t
            g[:, 3] = g_mean[:, 1] * y[:, 0] * dt[:, 0]
            g[:, 6] = g_mean[:, 2] * y[:, 0] * dt[:, 1]
            g[:, 9] = g_mean[:, 2] * y[:, 1] * dt[:, 2]
    return lse.sum(-1)


def discretized_logistic_mixture_log_prob_fwd(x, params, bits: int, reduction: str,
                                              scale: float, needs):
    """``scale`` times the per-sample log p (reduced unless "none") and its gradient
    w.r.t. params (for "none": of each row's own value)."""
    dtype = result_dtype(x, params)
    batch, channels, h, w = x.shape
    hw, s = h * w, slots(channels)
    m = params.shape[1] // s
    n = 2 ** bits - 1
    c = scale * reduce_scale(batch, reduction)
    rows = torch.zeros(batch, dtype=dtype, device=x.device)
    g = None
    if needs[0]:
        g = torch.empty(params.shape, dtype=params.dtype, device=params.device)
    xv, pv = x.reshape(batch, channels, hw), params.reshape(batch, s, m, hw)
    gv = None if g is None else g.view(batch, s, m, hw)
    for b0, b1, p0, p1 in pixel_chunks(batch, hw, s * m):
        rows[b0:b1] += _chunk(xv[b0:b1, :, p0:p1].to(dtype), pv[b0:b1, :, :, p0:p1].to(dtype),
                              n, c, None if gv is None else gv[b0:b1, :, :, p0:p1])
    value = rows.mul_(scale) if reduction == "none" else rows.sum() * c
    return value, (g if g is not None else params.new_empty(0))
