"""The discretized mixture of logistics on the "torch" backend: the log-likelihood and its
gradient w.r.t. the parameters in one pass.

float32 math (float32, float16 and bfloat16 parameters) runs in the C kernel
``dmol_rows.c`` where the library builds (``native``): one read of the parameters, one
write of the gradient, threads over blocks of ``PIXEL_BLOCK`` pixels; 16-bit parameters
are upcast ``NATIVE_CHUNK`` elements' worth of samples at a time. Elsewhere (float64,
``FASTVAE_NATIVE=0``, no compiler) the same math runs as aten ops, chunk of pixels by
chunk of pixels:

Eager autograd keeps ~25 tensors of shape B x C x M x H x W for backward; here the only
tensor of the parameters' size is the returned gradient, and every B x C x M x H x W
quantity exists for one chunk at a time (``CHUNK_ELEMS`` parameters' worth of pixels,
so the chunk's ~20 temporaries take a few MB). The per-element math is
``terms.logistic_bin``.
"""
from __future__ import annotations

import ctypes
from typing import Optional

import torch

from ..._dtypes import reduce_scale, result_dtype, saved_grad_dtype
from . import native, terms

# 2^17 as the row chunks of rows.py: ~90 aten ops a chunk, so at 2^14 their per-op cost
# made the fused path 4x slower than eager at B=16 3x32x32 M=10; at 2^17 it is about even.
CHUNK_ELEMS = 1 << 17
LOG_SCALE_MIN = -7.0
# The C kernel's unit of work: a block of pixels of one sample, summed by one thread in a
# fixed order (the same bits for any thread count); 2048 pixels of RGB M=10 are 800 KB of
# parameters, enough to amortize a thread's start, small enough to balance 2+ threads.
PIXEL_BLOCK = 2048
NATIVE_CHUNK = 1 << 20   # 16-bit parameters upcast to float32 this many elements at a time
_I64, _PTR = ctypes.c_int64, ctypes.c_void_p
_NATIVE_ARGS = [_I64] * 8 + [_PTR, _I64, _PTR, _I64, _PTR, _I64, ctypes.c_float, _PTR,
                             ctypes.c_int]


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
        # the responsibilities normalized on their own, not exp(lp - lse): at large |lp|
        # the rounded lse would scale them all by exp(its rounding error)
        r = torch.softmax(lp, 1)
        g[:, 0] = (r - torch.softmax(logits, 1)).mul_(c)
        w = r.mul_(c).unsqueeze(1)
        # a component of responsibility 0 adds 0, not 0 * its partials (inf or NaN where
        # its mean is ~1e35 away)
        off = w == 0
        g_mean = d_mean.mul_(w).masked_fill_(off, 0.0)
        g[:, 1::per] = g_mean
        g[:, 2::per] = d_ls.mul_(w).mul_(raw_ls >= LOG_SCALE_MIN).masked_fill_(off, 0.0)
        if channels == 3:  # through m1 = mean1 + tanh(c0) y0, m2 = mean2 + tanh(c1) y0 + tanh(c2) y1
            dt = 1.0 - t * t
            g[:, 3] = g_mean[:, 1] * y[:, 0] * dt[:, 0]
            g[:, 6] = g_mean[:, 2] * y[:, 0] * dt[:, 1]
            g[:, 9] = g_mean[:, 2] * y[:, 1] * dt[:, 2]
    return lse.sum(-1)


def native_kernel():
    """The C entry point ``fastvae_dmol_rows``, or None where the library is unavailable."""
    return native.symbol("fastvae_dmol_rows", _NATIVE_ARGS)


def native_rows(fn, x, params, g, bits: int, c: float, threads: Optional[int] = None):
    """Per-sample log p (float32, (B,)) of contiguous float32 ``x`` (B, C, H, W) and
    contiguous float32 ``params``; ``g`` (params' shape, float32, contiguous, or None)
    gets ``c`` * d log p / d params. ``threads``: see ``native.for_rows``."""
    batch, channels = x.shape[:2]
    hw = x.shape[2] * x.shape[3]
    m = params.shape[1] // slots(channels)
    nblk = -(-hw // PIXEL_BLOCK)
    units = batch * nblk
    partial = torch.empty(units, dtype=torch.float32, device=x.device)
    xp, pp, op = x.data_ptr(), params.data_ptr(), partial.data_ptr()
    gp = None if g is None else g.data_ptr()
    sx, sp = channels * hw, params.shape[1] * hw

    def block(u0, count, nthreads):
        err = fn(u0, count, nblk, PIXEL_BLOCK, hw, channels, m, bits, xp, sx, pp, sp, gp, sp,
                 c, op + 4 * u0, nthreads)
        if err == -2:
            raise MemoryError("fastvae: the DMoL kernel could not allocate its work buffer")
        if err != 0:
            raise ValueError(f"fastvae: the DMoL kernel rejected its arguments ({err})")

    native.for_rows(units, params.numel(), block, threads)
    cols = partial.view(batch, nblk)
    rows = cols[:, 0].clone()
    for j in range(1, nblk):  # in order: the sum does not depend on torch's reductions
        rows += cols[:, j]
    return rows


def _native_fwd(fn, x, params, g, bits: int, c: float):
    """native_rows over the whole batch (float32 parameters) or over chunks of samples
    upcast to float32 (16-bit ones, the gradient rounded once into g's dtype)."""
    xf = x.to(torch.float32).contiguous()
    if params.dtype == torch.float32:
        return native_rows(fn, xf, params.contiguous(), g, bits, c)
    per_sample = max(params[0].numel(), 1)
    step = max(1, NATIVE_CHUNK // per_sample)
    out = []
    # a float32 gradient (float16 params': saved_grad_dtype) takes the rows in place
    in_place = g is not None and g.dtype == torch.float32
    for b0 in range(0, x.shape[0], step):
        pc = params[b0:b0 + step].to(torch.float32).contiguous()
        gc = None if g is None else g[b0:b0 + step] if in_place else torch.empty_like(pc)
        out.append(native_rows(fn, xf[b0:b0 + step], pc, gc, bits, c))
        if g is not None and not in_place:
            g[b0:b0 + step].copy_(gc)
    return torch.cat(out)


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
    g = None
    if needs[0]:
        g = torch.empty(params.shape, dtype=saved_grad_dtype(params), device=params.device)
    fn = None
    if dtype == torch.float32 and params.device.type == "cpu" and x.numel() > 0:
        fn = native_kernel()
    if fn is not None:
        rows = _native_fwd(fn, x, params, g, bits, c)
        value = rows.mul_(scale) if reduction == "none" else rows.sum() * c
        return value, g
    rows = torch.zeros(batch, dtype=dtype, device=x.device)
    xv, pv = x.reshape(batch, channels, hw), params.reshape(batch, s, m, hw)
    gv = None if g is None else g.view(batch, s, m, hw)
    for b0, b1, p0, p1 in pixel_chunks(batch, hw, s * m):
        rows[b0:b1] += _chunk(xv[b0:b1, :, p0:p1].to(dtype), pv[b0:b1, :, :, p0:p1].to(dtype),
                              n, c, None if gv is None else gv[b0:b1, :, :, p0:p1])
    value = rows.mul_(scale) if reduction == "none" else rows.sum() * c
    return value, g
