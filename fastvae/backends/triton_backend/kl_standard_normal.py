"""Host side of kl_standard_normal and kl_normal: the ELBO row kernel with no data columns
(D = 0) and beta = -1, so the row value is +KL and the latent gradients are the KL's own."""
from __future__ import annotations

import torch

from fastvae.kernels import elbo as ke
from fastvae.kernels._math import GOBS_NONE

from ..._dtypes import kl_mean_grad_dtype, kl_saved_needs, saved_grad_dtype
from .. import torch_backend
from . import _launch, configs, register_caps
from ._rows import prior_args


def kl_standard_normal_fwd(mu, logvar, needs):
    """Same contract as the "torch" backend's: (value, gmu, glogvar)."""
    if _launch.delegated(mu, logvar):
        return _launch.by_torch(torch_backend.kl_standard_normal_fwd, mu, logvar, needs)
    return _kl_rows(mu, logvar, None, None, list(needs) + [False, False])[:3]


def kl_normal_fwd(mu_q, logvar_q, mu_p, logvar_p, needs):
    """Same contract as the "torch" backend's: (value, gmu_q, glogvar_q, glogvar_p), per
    row; gmu_q also where only mu_p needs a gradient (-gmu_q), so the kernel writes one
    mean gradient, in ``kl_mean_grad_dtype``."""
    if _launch.delegated(mu_q, logvar_q, mu_p, logvar_p):
        return _launch.by_torch(torch_backend.kl_normal_fwd, mu_q, logvar_q, mu_p, logvar_p, needs)
    mean, lv, plv = kl_saved_needs(needs)
    out, gmu, glv, _, gplv = _kl_rows(mu_q, logvar_q, mu_p, logvar_p, [mean, lv, False, plv],
                                      kl_mean_grad_dtype(mu_q, mu_p, needs[2]))
    return out, gmu, glv, gplv


def _kl_rows(mu, logvar, mu_p, logvar_p, needs, gmu_dtype=None):
    """The row kernel's KL; each gradient per row, in ``saved_grad_dtype`` (mu's in
    ``gmu_dtype`` where given)."""
    dev = mu.device
    n, l = mu.shape
    mu, logvar = _launch.rows(mu), _launch.rows(logvar)
    pm, plv, stride_pm, stride_plv, prior = prior_args(mu_p, logvar_p, mu)
    stride_mu, stride_lv = mu.stride(0), logvar.stride(0)
    int64 = configs.needs_int64(n * max(stride_mu, stride_lv, l, stride_pm, stride_plv))
    block_b, block_d, block_l, warps = configs.kl_config(n, l, mu.element_size(), prior,
                                                         stride_mu, stride_lv, int64)
    out = _launch.alloc((n,), torch.float32, dev)

    dtypes = [saved_grad_dtype(t, mu.shape) for t in (mu, logvar, pm, plv)]
    if gmu_dtype is not None:
        dtypes[0] = gmu_dtype
    grads = [_launch.alloc(mu.shape, dt, dev) if need else None
             for dt, need in zip(dtypes, needs)]
    gmu, glv, gpm, gplv = grads
    data = _launch.dummy(mu.dtype, dev)  # D = 0: the data pointers are never read
    i32 = _launch.dummy(torch.int32, dev)
    # beta = -1: the row value is +KL and the latent gradients d KL / d(mu, logvar) themselves.
    _launch.launch(
        ke.elbo_rows_kernel, (_launch.cdiv(n, block_b),),
        X=data, R=data, OBS=data, MU=mu, LV=logvar, Z=data, PM=pm, PLV=plv, CLAMPED=i32,
        ROW_VALUES=out, PARTIALS=_launch.dummy(torch.float32, dev), COUNTER=i32,
        GX=data, GR=data, GOBS=data,
        GMU=_launch.given(gmu, dtypes[0], dev), GLV=_launch.given(glv, dtypes[1], dev),
        GZ=data, GPM=_launch.given(gpm, dtypes[2], dev), GPLV=_launch.given(gplv, dtypes[3], dev),
        B=n, D=0, L=l,
        stride_x=0, stride_r=0, stride_obs=0,
        stride_mu=stride_mu, stride_lv=stride_lv, stride_z=stride_mu,
        stride_pm=stride_pm, stride_plv=stride_plv,
        obs_scalar=0.0, beta=-1.0, c=1.0, free_bits=0.0,
        LIK=configs.BERNOULLI, KL_MC=False, FREE_BITS=False, REDUCE=False,
        NEED_GX=False, NEED_GR=False, OBS_GRAD=GOBS_NONE.value,
        NEED_GMU=gmu is not None, NEED_GLV=glv is not None, NEED_GZ=False,
        PRIOR=prior, NEED_GPM=gpm is not None, NEED_GPLV=gplv is not None,
        INT64=int64,
        BLOCK_B=block_b, BLOCK_D=block_d, BLOCK_L=block_l, BLOCK_SUM=16, STAGES=1,  # no columns
        num_warps=warps, **register_caps.kl_rows_maxnreg(int64, prior, block_l, any(needs)))
    return (out, *grads)
