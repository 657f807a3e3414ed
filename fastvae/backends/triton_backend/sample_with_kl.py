"""Host side of sample_with_kl (``fastvae.kernels.sample_with_kl``): ``noise`` is
``reparameterize``'s one-element int64 Philox seed, one launch forward, one backward,
each over (row block, column chunk) programs (``configs.sample_with_kl_config``).

Where ``reparameterize_noise`` handed the draw to the "torch" backend (float64 or empty
inputs: its noise is eps itself), both directions go there too. A float64 prior beside a
narrower posterior keeps the seed (drawn from mu): z and dz's terms come from Philox as
everywhere, the KL and its gradients from the torch backend's float64 math (the kernels'
is float32).
"""
from __future__ import annotations

import torch

from fastvae.kernels import reparameterize as kr
from fastvae.kernels import sample_with_kl as ks

from ..._dtypes import (kl_bwd_sources, kl_mean_grad_dtype, kl_saved_needs, result_dtype,
                        saved_grad_dtype, widened)
from .. import torch_backend
from ..torch_backend.reparameterize import seeded
from . import _launch, configs
from ._kept import Kept
from ._rows import prior_args
from .reparameterize import reparameterize_fwd, reparameterize_std_eps


# Planned launches per (shapes, strides, dtypes, prior pattern, needs, device) key: a
# repeated call (every group of every step of a hierarchical VAE) skips Triton's binder.
_PLANS = _launch.Plans()


def sample_with_kl_fwd(mu, logvar, prior_mu, prior_logvar, noise, needs):
    """Same contract as the "torch" backend's: (z, kl, dKL/dmu_q, dKL/dlogvar_q,
    dKL/dlogvar_p), the gradients per ``needs`` (dKL/dmu_q also for mu_p)."""
    if not seeded(noise):
        return _launch.by_torch(torch_backend.sample_with_kl_fwd, mu, logvar, prior_mu,
                                prior_logvar, noise, needs)
    if _launch.delegated(prior_mu, prior_logvar):  # float64 (an empty one: mu is empty too)
        return (reparameterize_fwd(mu, logvar, noise, 0),
                *torch_backend.kl_normal_fwd(mu, logvar, prior_mu, prior_logvar, needs))
    mu, logvar = _launch.rows(mu), _launch.rows(logvar)
    prior = prior_args(prior_mu, prior_logvar, mu)
    return _fwd_run(_fwd_plan_of(mu, logvar, prior, prior_mu, prior_logvar, needs), mu, logvar,
                    prior, noise)


def sample_with_kl_prepare(mu, logvar, prior_mu, prior_logvar, needs):
    """``sample_with_kl_fwd.prepare``: :func:`sample_with_kl_fwd` for calls that differ
    from this one only in the tensors' values (their shapes, strides, dtypes and devices
    and ``needs`` the same; the noise a seed, as :func:`reparameterize_noise` draws for
    such ``mu``), keeping its plan (``fastvae.ops.Route``; looked up again as
    ``_kept.Kept`` says); None where the "torch" backend computes."""
    if _launch.delegated(mu) or _launch.delegated(prior_mu, prior_logvar):
        return None
    kept = Kept(lambda *args: _fwd_plan_of(*args))   # the module's, when it looks up

    def run(mu, logvar, prior_mu, prior_logvar, noise):
        mu, logvar = _launch.rows(mu), _launch.rows(logvar)
        prior = prior_args(prior_mu, prior_logvar, mu)
        return _fwd_run(kept.get(mu, logvar, prior, prior_mu, prior_logvar, needs), mu,
                        logvar, prior, noise)
    return run


def _fwd_plan_of(mu, logvar, prior, prior_mu, prior_logvar, needs):
    """The planned launch and the outputs' dtypes of rows ``mu``, ``logvar`` and the
    kernel's ``prior`` (``prior_args``)."""
    pm, plv, stride_pm, stride_plv, has_prior = prior
    dev = mu.device
    kl_dtype = result_dtype(mu, logvar, prior_mu, prior_logvar)
    # the priors' ranks: a shared (N,) row and a stride-0 (B, N) one launch alike, but the
    # first's gradients are saved wider (saved_grad_dtype), and the plan holds the dtypes
    key = (mu.shape, mu.stride(0), mu.dtype, logvar.stride(0), logvar.dtype, has_prior,
           pm.dtype, pm.dim(), stride_pm, plv.dtype, plv.dim(), stride_plv, kl_dtype,
           tuple(needs), dev, configs.interpreter_tiles(),
           _launch.sm_count(dev))   # the grid depends on the SMs
    return _launch.plan_for(_PLANS, key, lambda: dict(
        _fwd_plan(mu, logvar, pm, plv, stride_pm, stride_plv, has_prior, needs), kl=kl_dtype,
        gmu=(kl_mean_grad_dtype(mu, prior_mu, needs[2]) if kl_saved_needs(needs)[0] else None),
        glv=saved_grad_dtype(logvar, mu.shape) if needs[1] else None,
        gplv=saved_grad_dtype(plv, mu.shape) if needs[3] else None))


def _fwd_run(plan, mu, logvar, prior, noise):
    """:func:`sample_with_kl_fwd`'s outputs and launch for inputs of ``plan``."""
    dev = mu.device
    z = _launch.alloc_like(mu)
    kl = _launch.alloc((mu.shape[0],), plan["kl"], dev)
    gmu, glv, gplv = [None if plan[g] is None else _launch.alloc_like(mu, plan[g])
                      for g in ("gmu", "glv", "gplv")]
    split = plan["split"]
    _launch.launch_planned(
        plan["launch"], MU=mu, LV=logvar, PM=prior[0], PLV=prior[1], SEED=noise, Z=z, KL=kl,
        GMU=gmu, GLV=glv, GPLV=gplv,
        PARTIALS=_launch.scratch(plan["partials"], torch.float32, dev) if split else None,
        COUNTER=_launch.ticket(dev, plan["row_blocks"]) if split else None)
    return z, kl, gmu, glv, gplv


sample_with_kl_fwd.prepare = sample_with_kl_prepare


def _fwd_plan(mu, logvar, pm, plv, stride_pm, stride_plv, prior, needs) -> dict:
    dev = mu.device
    b, n = mu.shape
    block_b, block_n, chunk, chunks, warps = configs.sample_with_kl_config(
        b, n, _launch.sm_count(dev))
    row_blocks = _launch.cdiv(b, block_b)
    f32 = torch.float32
    # an absent gradient's pointer: the dtype the present one would have (one specialization)
    dummies = {"GMU": _launch.dummy(saved_grad_dtype(mu), dev),
               "GLV": _launch.dummy(saved_grad_dtype(logvar, mu.shape), dev),
               "GPLV": _launch.dummy(saved_grad_dtype(plv, mu.shape), dev),
               "PARTIALS": _launch.dummy(f32, dev),
               "COUNTER": _launch.dummy(torch.int32, dev)}
    launch = _launch.Planned(ks.sample_with_kl_fwd_kernel, (row_blocks, chunks), dev, dict(
        B=b, N=n, CHUNK=chunk, stride_mu=mu.stride(0), stride_lv=logvar.stride(0),
        stride_pm=stride_pm, stride_plv=stride_plv, PRIOR=prior,
        NEED_GMU=bool(kl_saved_needs(needs)[0]), NEED_GLV=bool(needs[1]),
        NEED_GPLV=bool(needs[3]), SPLIT=chunks > 1, BLOCK_B=block_b, BLOCK_N=block_n,
        BLOCK_P=configs.sample_with_kl_sum_block(), Q=kr.Q, num_warps=warps), dummies)
    return {"launch": launch, "split": chunks > 1, "partials": (chunks, b),
            "row_blocks": row_blocks}


def sample_with_kl_bwd(dz, g_kl, logvar, noise, g_mu, g_lv, g_plv, needs, reuse_saved=False):
    """(dmu_q, dlogvar_q, dmu_p, dlogvar_p) per row, (B, N) each or None where not needed;
    eps regenerated from the seed. ``logvar`` is the posterior's log-variance where
    dlogvar_q is needed, else any (B, N) tensor of the call (for the shape).
    ``reuse_saved`` (the saved gradients may be overwritten): dmu_q, dlogvar_q and
    dlogvar_p are written over the saved gradient each is made from (same dtype, same
    rows; each element read before it is written by the same thread), so a call
    allocates only dmu_p."""
    if (not seeded(noise)) if noise is not None else _launch.delegated(logvar):
        return torch_backend.sample_with_kl_bwd(dz, g_kl, logvar, noise, g_mu, g_lv, g_plv,
                                                needs, reuse_saved)
    saved = [g if g is not None and g.numel() else None for g in (g_mu, g_lv, g_plv)]
    if _launch.delegated(*saved):
        # a float64 saved gradient with a seed: only sample_with_kl_fwd's float64-prior path
        # makes one (a float64 posterior draws eps itself, and goes to "torch" above)
        return _bwd_wide(dz, g_kl, logvar, noise, saved, needs)
    dev = logvar.device
    lv = _launch.rows(logvar)
    dz = None if dz is None else dz.contiguous()
    g_kl = None if g_kl is None else g_kl.contiguous()
    key = (lv.shape, lv.stride(0), lv.dtype, None if dz is None else dz.dtype,
           None if g_kl is None else g_kl.dtype, tuple(None if g is None else g.dtype
                                                       for g in saved),
           tuple(needs), dev, configs.interpreter_tiles(), _launch.sm_count(dev))
    plan = _launch.plan_for(_PLANS, key, lambda: _bwd_plan(lv, dz, g_kl, needs))
    over = (saved[0], saved[1], None, saved[2]) if reuse_saved else (None,) * 4
    outs = [None if not need else o if o is not None and o.is_contiguous() else
            _launch.alloc_like(lv, s.dtype)
            for need, s, o in zip(needs, kl_bwd_sources(*saved), over)]
    dmu, dlv, dpm, dplv = outs
    _launch.launch_planned(
        plan, DZ=dz, GKL=g_kl, LV=lv, SEED=noise,
        GMU=saved[0], GLV=saved[1], GPLV=saved[2], DMU=dmu, DLV=dlv, DPM=dpm, DPLV=dplv)
    return tuple(outs)


def _bwd_wide(dz, g_kl, logvar, noise, saved, needs):
    """The backward beside a float64 prior: the KL's terms in aten, dz's added, eps drawn
    again by Philox; summed in float32 at least and rounded to each output's dtype (the
    saved gradient's it is made from, float64 for the prior's) once, as the kernel does."""
    outs = list(torch_backend.sample_with_kl_bwd(None, g_kl, logvar, None,
                                                 *[widened(g) for g in saved], needs))
    if dz is not None:
        if needs[0]:
            outs[0].add_(dz)
        if needs[1]:
            outs[1].add_(reparameterize_std_eps(widened(logvar), noise, 0).mul_(dz).mul_(0.5))
    return tuple(o if o is None or o.dtype == s.dtype else o.to(s.dtype)
                 for o, s in zip(outs, kl_bwd_sources(*saved)))


def _bwd_plan(lv, dz, g_kl, needs):
    dev = lv.device
    b, n = lv.shape
    like = lv.dtype
    block_b, block_n, chunk, chunks, warps = configs.sample_with_kl_config(
        b, n, _launch.sm_count(dev))
    dummies = {name: _launch.dummy(like, dev) for name in
               ("DZ", "GMU", "GLV", "GPLV", "DMU", "DLV", "DPM", "DPLV")}
    dummies["GKL"] = _launch.dummy(torch.float32, dev)
    dummies["SEED"] = _launch.dummy(torch.int64, dev)
    return _launch.Planned(ks.sample_with_kl_bwd_kernel, (_launch.cdiv(b, block_b), chunks),
                           dev, dict(
        B=b, N=n, CHUNK=chunk, stride_lv=lv.stride(0),
        HAS_DZ=dz is not None, HAS_GKL=g_kl is not None, NEED_GMU=bool(needs[0]),
        NEED_GLV=bool(needs[1]), NEED_GPM=bool(needs[2]), NEED_GPLV=bool(needs[3]),
        SPLIT=chunks > 1, BLOCK_B=block_b, BLOCK_N=block_n, Q=kr.Q, num_warps=warps),
        dummies)


def _saved(g, dtype, device):
    """A saved gradient, or the dummy where the forward left a placeholder."""
    return g if g is not None and g.numel() else _launch.dummy(dtype, device)
