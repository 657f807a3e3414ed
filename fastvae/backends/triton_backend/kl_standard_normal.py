"""Host side of kl_standard_normal: the ELBO row kernel with no data columns (D = 0)."""
from __future__ import annotations

import torch
import triton

from fastvae.kernels import elbo as ke
from fastvae.kernels._math import GOBS_NONE

from .. import torch_backend
from . import _launch, configs


def kl_standard_normal_fwd(mu, logvar, needs):
    """Same contract as the "torch" backend's: (value, gmu, glogvar)."""
    if _launch.delegated(mu, logvar):
        return torch_backend.kl_standard_normal_fwd(mu, logvar, needs)
    dev = mu.device
    n, l = mu.shape
    mu, logvar = _launch.rows(mu), _launch.rows(logvar)
    block_b, block_d, block_l, warps = configs.elbo_config(n, 1, l, mu.element_size())
    out = _launch.alloc((n,), torch.float32, dev)
    gmu = _launch.alloc(mu.shape, mu.dtype, dev) if needs[0] else None
    glv = _launch.alloc(logvar.shape, logvar.dtype, dev) if needs[1] else None
    data = _launch.dummy(mu.dtype, dev)  # D = 0: the data pointers are never read
    i32 = _launch.dummy(torch.int32, dev)
    # beta = -1: the row value is +KL and the latent gradients d KL / d(mu, logvar) themselves.
    _launch.launch(
        ke.elbo_rows_kernel, (triton.cdiv(n, block_b),),
        X=data, R=data, OBS=data, MU=mu, LV=logvar, Z=data, CLAMPED=i32,
        ROW_VALUES=out, PARTIALS=_launch.dummy(torch.float32, dev), COUNTER=i32,
        GX=data, GR=data, GOBS=data,
        GMU=_launch.given(gmu, mu.dtype, dev), GLV=_launch.given(glv, logvar.dtype, dev),
        GZ=data,
        B=n, D=0, L=l,
        stride_x=0, stride_r=0, stride_obs=0,
        stride_mu=mu.stride(0), stride_lv=logvar.stride(0), stride_z=mu.stride(0),
        obs_scalar=0.0, beta=-1.0, c=1.0, free_bits=0.0,
        LIK=configs.BERNOULLI, KL_MC=False, FREE_BITS=False, REDUCE=False,
        NEED_GX=False, NEED_GR=False, OBS_GRAD=GOBS_NONE.value,
        NEED_GMU=gmu is not None, NEED_GLV=glv is not None, NEED_GZ=False,
        INT64=configs.needs_int64(n * max(mu.stride(0), logvar.stride(0), l)),
        BLOCK_B=block_b, BLOCK_D=block_d, BLOCK_L=block_l, BLOCK_SUM=16, num_warps=warps)
    return (out, *_launch.placeholders(mu, gmu, glv))
