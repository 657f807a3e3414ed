"""Host side of sample_with_kl (``fastvae.kernels.sample_with_kl``): ``noise`` is
``reparameterize``'s one-element int64 Philox seed, one launch forward, one backward,
each over (row block, column chunk) programs (``configs.sample_with_kl_config``).

Where ``reparameterize_noise`` handed the draw to the "torch" backend (float64 or empty
inputs: its noise is eps itself), both directions go there too.
"""
from __future__ import annotations

import torch

from fastvae.kernels import reparameterize as kr
from fastvae.kernels import sample_with_kl as ks

from ..._dtypes import result_dtype
from .. import torch_backend
from ..torch_backend.reparameterize import seeded
from . import _launch, configs
from ._rows import prior_args


def sample_with_kl_fwd(mu, logvar, prior_mu, prior_logvar, noise, needs):
    """Same contract as the "torch" backend's: (z, kl, dKL/dmu_q, dKL/dlogvar_q,
    dKL/dlogvar_p), the gradients per ``needs`` (dKL/dmu_q also for mu_p)."""
    if not seeded(noise):
        return torch_backend.sample_with_kl_fwd(mu, logvar, prior_mu, prior_logvar, noise, needs)
    dev = mu.device
    b, n = mu.shape
    mu, logvar = _launch.rows(mu), _launch.rows(logvar)
    pm, plv, stride_pm, stride_plv, prior = prior_args(prior_mu, prior_logvar, mu)
    z = _launch.alloc(mu.shape, mu.dtype, dev)
    kl = _launch.alloc((b,), result_dtype(mu, logvar, prior_mu, prior_logvar), dev)
    gmu = _launch.alloc(mu.shape, mu.dtype, dev) if needs[0] or needs[2] else None
    glv = _launch.alloc(mu.shape, logvar.dtype, dev) if needs[1] else None
    gplv = _launch.alloc(mu.shape, plv.dtype, dev) if needs[3] else None
    block_b, block_n, chunk, chunks, warps = configs.sample_with_kl_config(
        b, n, _launch.sm_count(dev))
    row_blocks = _launch.cdiv(b, block_b)
    split = chunks > 1
    f32 = torch.float32
    _launch.launch(
        ks.sample_with_kl_fwd_kernel, (row_blocks, chunks),
        MU=mu, LV=logvar, PM=pm, PLV=plv, SEED=noise, Z=z, KL=kl,
        GMU=_launch.given(gmu, mu.dtype, dev), GLV=_launch.given(glv, logvar.dtype, dev),
        GPLV=_launch.given(gplv, plv.dtype, dev),
        PARTIALS=_launch.scratch((chunks, b), f32, dev) if split else _launch.dummy(f32, dev),
        COUNTER=(_launch.ticket(dev, row_blocks) if split
                 else _launch.dummy(torch.int32, dev)),
        B=b, N=n, CHUNK=chunk, stride_mu=mu.stride(0), stride_lv=logvar.stride(0),
        stride_pm=stride_pm, stride_plv=stride_plv, PRIOR=prior, NEED_GMU=gmu is not None,
        NEED_GLV=glv is not None, NEED_GPLV=gplv is not None, SPLIT=split,
        BLOCK_B=block_b, BLOCK_N=block_n, BLOCK_P=configs.sample_with_kl_sum_block(), Q=kr.Q,
        num_warps=warps)
    return (z, kl, *_launch.placeholders(mu, gmu, glv, gplv))


def sample_with_kl_bwd(dz, g_kl, logvar, noise, g_mu, g_lv, g_plv, needs, reuse_saved=False):
    """(dmu_q, dlogvar_q, dmu_p, dlogvar_p) per row, (B, N) each or an empty placeholder;
    eps regenerated from the seed. ``logvar`` is the posterior's log-variance where
    dlogvar_q is needed, else any (B, N) tensor of the call (for the shape).
    ``reuse_saved`` (the saved gradients may be overwritten) serves the torch backend's
    CPU pass, where it saves memory traffic; the kernel here writes new buffers."""
    if (not seeded(noise)) if noise is not None else _launch.delegated(logvar):
        return torch_backend.sample_with_kl_bwd(dz, g_kl, logvar, noise, g_mu, g_lv, g_plv,
                                                needs, reuse_saved)
    dev = logvar.device
    b, n = logvar.shape
    outs = [_launch.alloc(logvar.shape, logvar.dtype, dev) if need else None for need in needs]
    dmu, dlv, dpm, dplv = outs
    f32 = torch.float32
    like = logvar.dtype
    block_b, block_n, chunk, chunks, warps = configs.sample_with_kl_config(
        b, n, _launch.sm_count(dev))
    _launch.launch(
        ks.sample_with_kl_bwd_kernel, (_launch.cdiv(b, block_b), chunks),
        DZ=_launch.given(None if dz is None else dz.contiguous(), like, dev),
        GKL=_launch.given(None if g_kl is None else g_kl.contiguous(), f32, dev),
        LV=_launch.rows(logvar),
        SEED=_launch.given(noise, torch.int64, dev),
        GMU=_saved(g_mu, like, dev), GLV=_saved(g_lv, like, dev), GPLV=_saved(g_plv, like, dev),
        DMU=_launch.given(dmu, like, dev), DLV=_launch.given(dlv, like, dev),
        DPM=_launch.given(dpm, like, dev), DPLV=_launch.given(dplv, like, dev),
        B=b, N=n, CHUNK=chunk, stride_lv=_launch.rows(logvar).stride(0),
        HAS_DZ=dz is not None, HAS_GKL=g_kl is not None, NEED_GMU=dmu is not None,
        NEED_GLV=dlv is not None, NEED_GPM=dpm is not None, NEED_GPLV=dplv is not None,
        SPLIT=chunks > 1,
        BLOCK_B=block_b, BLOCK_N=block_n, Q=kr.Q, num_warps=warps)
    return tuple(logvar.new_empty(0) if o is None else o for o in outs)


def _saved(g, dtype, device):
    """A saved gradient, or the dummy where the forward left a placeholder."""
    return g if g is not None and g.numel() else _launch.dummy(dtype, device)
