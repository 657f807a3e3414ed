"""log p(x|z) per row with its gradients written in place, chunk of rows by chunk of rows.

Shared by the ELBO and the IWAE bound. Eager autograd keeps several B x D tensors alive
(the BCE's intermediates, then the gradient); here the only B x D tensors are the
gradients returned. Everything else is a temporary of one row chunk, ``CHUNK_ELEMS``
elements, sized to stay in a core's L2 cache (smaller chunks pay per-op overhead,
larger ones fall out of cache; the sweep is in benchmarks/RESULTS_elbo_cpu.md).
The Bernoulli term of float32 rows runs in the compiled kernel of ``native`` when it
is available: one pass, no temporaries, so no chunking either.
"""
from __future__ import annotations

import torch

from ..._dtypes import saved_grad_dtype, widest
from . import native
from . import terms

CHUNK_ELEMS = 1 << 17


def row_chunks(batch: int, d: int):
    rows = max(1, CHUNK_ELEMS // max(d, 1))
    return [(i, min(i + rows, batch)) for i in range(0, batch, rows)]


def grad_buffer(t, need: bool, shape=None):
    """The output t's gradient is written into, in ``shape`` (default t's) and the dtype
    of ``saved_grad_dtype``, or None when not needed."""
    if not need or t is None:
        return None
    dtype = saved_grad_dtype(t, shape)
    if shape is None and dtype == t.dtype:
        return t.new_empty(t.shape)  # new_empty: a fifth of the cost
    return t.new_empty(t.shape if shape is None else shape, dtype=dtype)


def grad_out(g, like, need: bool, shape=None):
    """A gradient output of input ``like`` in ``shape`` (default like's; a copy where ``g``
    is a broadcast view) and the dtype of ``saved_grad_dtype``, or None when not needed
    (``fastvae.ops`` gives a custom op its placeholder)."""
    if not need or g is None:
        return None
    dtype = saved_grad_dtype(like, shape)
    if shape is not None and g.shape != shape:
        return g.expand(shape).to(dtype, copy=True)
    return g.to(dtype)


def _bernoulli_chunk(x, logits, g, c: float, rows):
    """rows = sum_d x*l - softplus(l); g (if given) = c * (x - sigmoid(l)).

    x, logits: one chunk in the compute dtype. The compiled kernel (float32) does it
    in one pass; otherwise aten ops over the chunk, with one chunk-sized temporary.
    """
    if (logits.dtype == torch.float32 and logits.is_cpu and x.is_cpu
            and native.load() is not None):
        # rows at any stride (0: one x for every sample), elements contiguous in a row: a
        # broadcast or sliced input is read in place, not copied to (B, D)
        x = x if x.stride(-1) == 1 else x.contiguous()
        logits = logits if logits.stride(-1) == 1 else logits.contiguous()
        direct = g is None or (g.dtype == torch.float32 and g.is_contiguous())
        out = g if direct else torch.empty_like(logits)
        native.bernoulli_rows(x, logits, out, c, rows)
        if not direct:
            g.copy_(out)
        return
    s = torch.sigmoid(logits)
    if g is not None:
        if c == -1.0:      # -ELBO (ELBOLoss): one pass, straight into g
            torch.sub(s, x, out=g)
        elif c == 1.0:
            torch.sub(x, s, out=g)
        else:
            torch.mul(x - s, c, out=g)
    # softplus(l) = relu(l) + log1p(e), e = exp(-|l|), and -log1p(e) = log sigmoid(|l|)
    # = log(0.5 + |s - 0.5|): the sigmoid we already have, one log instead of
    # softplus's exp + log1p. The log's argument is in [0.5, 1], so the error is
    # absolute, below 1e-7 per element, like fp32 rounding of the value. float64 keeps
    # log1p: there the tests ask for full precision.
    if s.dtype == torch.float64:
        t = torch.log1p(torch.exp(-logits.abs())).neg_()
    else:
        t = s.sub_(0.5).abs_().add_(0.5).log_()
    t.addcmul_(x, logits).sub_(logits.clamp(min=0))
    torch.sum(t, -1, out=rows)


def log_px_rows(x, recon, likelihood, obs, c, dtype, g_x, g_r, g_obs):
    """log p(x|z) per row (in ``dtype``); writes the c-scaled gradients into the given
    outputs (None where not needed). g_obs is (D,) (summed over rows) or (B, D)."""
    batch, d = x.shape
    rows = torch.empty(batch, dtype=dtype, device=x.device)
    if likelihood == "bernoulli":
        if (dtype == torch.float32 and native.usable(x, recon) and native.load() is not None
                and (g_r is None or g_r.dtype == torch.float32)):
            chunks = [(0, batch)]  # the kernel makes no temporaries: no need to chunk
        else:
            chunks = row_chunks(batch, d)
        for i, j in chunks:
            rs = recon[i:j].to(dtype)
            _bernoulli_chunk(x[i:j].to(dtype), rs, None if g_r is None else g_r[i:j], c,
                             rows[i:j])
            if g_x is not None:  # d/dx of x*l is the logits
                torch.mul(rs, c, out=g_x[i:j])
        return rows
    obs_rows = isinstance(obs, torch.Tensor) and obs.dim() == 2
    if isinstance(obs, torch.Tensor) and not obs_rows:
        obs = obs.to(dtype)
    # A (D,) gradient is summed over rows chunk after chunk, in a fixed order, in float64
    # where the device has it: hundreds of chunks' sums added in float32 drift ~10x past
    # eager's error.
    g_obs_sum = None
    if g_obs is not None and g_obs.dim() == 1:
        g_obs_sum = torch.zeros(d, dtype=widest(x.device), device=x.device)
    for i, j in row_chunks(batch, d):
        xs, rs = x[i:j].to(dtype), recon[i:j].to(dtype)
        o = obs[i:j].to(dtype) if obs_rows else obs
        value, g, g_o = terms.log_likelihood(xs, rs, likelihood, o)
        rows[i:j] = value
        if g_r is not None:
            torch.mul(g, c, out=g_r[i:j])
        if g_x is not None:  # d/dx: the logits (continuous Bernoulli), -(x - m) / var (Gaussian)
            torch.mul(g if likelihood == "gaussian" else rs,
                      -c if likelihood == "gaussian" else c, out=g_x[i:j])
        if g_obs_sum is not None:
            g_obs_sum.add_(g_o.sum(0), alpha=c)
        elif g_obs is not None:
            torch.mul(g_o, c, out=g_obs[i:j])
    if g_obs_sum is not None:
        g_obs.copy_(g_obs_sum)
    return rows
