"""Host side of gaussian_log_prob: the ELBO row kernel with no latents (L = 0)."""
from __future__ import annotations

import torch

from fastvae.kernels import elbo as ke
from fastvae.kernels._math import GOBS_NONE, GOBS_ROWS

from ..._dtypes import saved_grad_dtype
from .. import torch_backend
from . import _launch, configs


def gaussian_log_prob_fwd(x, mean, logvar, logvar_scalar, needs):
    """Same contract as the "torch" backend's: (value, gx, gmean, glogvar)."""
    if _launch.delegated(x, mean, logvar):
        return _launch.by_torch(torch_backend.gaussian_log_prob_fwd, x, mean, logvar,
                                logvar_scalar, needs)
    dev = x.device
    n, d = x.shape
    x, mean = _launch.rows(x), _launch.rows(mean)
    lik, lv_arg, stride_lv, tensor_lv = _likelihood(logvar, x)
    block_b, block_d, block_l, warps = configs.elbo_config(
        n, d, 1, x.element_size(), lik,
        aligned=not (d | x.stride(0) | mean.stride(0) | stride_lv) % 16)
    out = _launch.alloc((n,), torch.float32, dev)
    gx = _launch.alloc(x.shape, saved_grad_dtype(x), dev) if needs[0] else None
    gm = _launch.alloc(mean.shape, saved_grad_dtype(mean), dev) if needs[1] else None
    glv = (_launch.alloc((n, d), saved_grad_dtype(lv_arg, (n, d)), dev)
           if (needs[2] and tensor_lv) else None)
    latent = _launch.dummy(x.dtype, dev)  # L = 0: the latent pointers are never read
    i32 = _launch.dummy(torch.int32, dev)
    _launch.launch(
        ke.elbo_rows_kernel, (_launch.cdiv(n, block_b),),
        X=x, R=mean, OBS=lv_arg, MU=latent, LV=latent, Z=latent, PM=latent, PLV=latent,
        CLAMPED=i32,
        ROW_VALUES=out, PARTIALS=_launch.dummy(torch.float32, dev), COUNTER=i32,
        GX=_launch.given(gx, saved_grad_dtype(x), dev),
        GR=_launch.given(gm, saved_grad_dtype(mean), dev),
        GOBS=_launch.given(glv, saved_grad_dtype(lv_arg, (n, d)), dev),
        GMU=latent, GLV=latent, GZ=latent, GPM=latent, GPLV=latent,
        B=n, D=d, L=0,
        stride_x=x.stride(0), stride_r=mean.stride(0), stride_obs=stride_lv,
        stride_mu=0, stride_lv=0, stride_z=0, stride_pm=0, stride_plv=0,
        obs_scalar=float(logvar_scalar), beta=0.0, c=1.0, free_bits=0.0,
        LIK=lik, KL_MC=False, FREE_BITS=False, REDUCE=False,
        NEED_GX=gx is not None, NEED_GR=gm is not None,
        OBS_GRAD=(GOBS_ROWS if glv is not None else GOBS_NONE).value,
        NEED_GMU=False, NEED_GLV=False, NEED_GZ=False,
        PRIOR=False, NEED_GPM=False, NEED_GPLV=False,
        INT64=configs.needs_int64(n * max(x.stride(0), mean.stride(0), stride_lv, d)),
        BLOCK_B=block_b, BLOCK_D=block_d, BLOCK_L=block_l, BLOCK_SUM=16,
        STAGES=1, num_warps=warps)   # its own use of the tiles: not what gpu_tiles.py times
    return out, gx, gm, glv


def _likelihood(logvar, x):
    """(LIK code, logvar as rows or the dummy, its row stride, whether it is a tensor)."""
    if logvar is None:
        return configs.GAUSSIAN_SCALAR, _launch.dummy(x.dtype, x.device), 0, False
    logvar = _launch.rows(logvar)
    return configs.GAUSSIAN_TENSOR, logvar, (0 if logvar.dim() == 1 else logvar.stride(0)), True
