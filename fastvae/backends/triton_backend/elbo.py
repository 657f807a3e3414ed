"""Host side of the fused ELBO (``fastvae.kernels.elbo``): one row launch that also folds
the batch sum; free bits add one launch before it, a (D,) obs_logvar gradient one after."""
from __future__ import annotations

import torch
import triton

from fastvae.kernels import elbo as ke
from fastvae.kernels import reduce as kred
from fastvae.kernels._math import GOBS_NONE, GOBS_PARTIAL, GOBS_ROWS

from ..._dtypes import reduce_scale
from .. import torch_backend
from . import _launch, configs
from ._rows import gradient_buffers, likelihood_args, prior_args


def elbo_fwd(x, recon, mu, logvar, z, obs, prior_mu, prior_logvar, obs_scalar, likelihood, kl,
             beta, free_bits, reduction, scale, needs):
    """Same contract as the "torch" backend's: (value, gx, grecon, gmu, glogvar, gz, gobs,
    gprior_mu, gprior_logvar), the prior's per row."""
    if _launch.delegated(x, recon, mu, logvar, z, obs, prior_mu, prior_logvar):
        return torch_backend.elbo_fwd(x, recon, mu, logvar, z, obs, prior_mu, prior_logvar,
                                      obs_scalar, likelihood, kl, beta, free_bits, reduction,
                                      scale, needs)
    dev = x.device
    b, d = x.shape
    l = mu.shape[1]
    x, recon, mu, logvar = _launch.rows(x), _launch.rows(recon), _launch.rows(mu), _launch.rows(logvar)
    z = _launch.rows(z) if z is not None else None
    lik, obs_arg, stride_obs, obs_tensor = likelihood_args(likelihood, obs, x)
    pm, plv, stride_pm, stride_plv, prior = prior_args(prior_mu, prior_logvar, mu)
    reduce = reduction != "none"
    free = free_bits > 0
    mc = kl == "mc"
    c = scale * reduce_scale(b, reduction)
    block_b, block_d, block_l, warps = configs.elbo_config(b, d, l, x.element_size())
    programs = triton.cdiv(b, block_b)
    gobs_partial = bool(needs[5]) and obs_tensor and obs_arg.dim() == 1 and reduce
    gx, gr, gmu, glv, gz, gobs, gobs_partials, gpm, gplv = gradient_buffers(
        (x, recon, mu, logvar, z), needs, obs_tensor, gobs_partial, programs, obs_arg, dev,
        (pm, plv))
    int64 = configs.needs_int64(b * max(x.stride(0), recon.stride(0), stride_obs, d),
                                b * max(mu.stride(0), logvar.stride(0), l,
                                        z.stride(0) if z is not None else 0,
                                        stride_pm, stride_plv),
                                programs * max(d, l))
    f32 = torch.float32
    z_arg = _launch.given(z, mu.dtype, dev)
    stride_z = (z if z is not None else mu).stride(0)
    clamped = None
    if free:
        clamp_b, clamp_l, clamp_warps = configs.kl_clamp_config(l)
        clamp_programs = triton.cdiv(b, clamp_b)
        clamped = _launch.alloc((l,), torch.int32, dev)
        _launch.launch(
            ke.kl_clamp_kernel, (clamp_programs,),
            MU=mu, LV=logvar, Z=z_arg, PM=pm, PLV=plv,
            PARTIALS=_launch.alloc((clamp_programs, l), f32, dev), COUNTER=_launch.ticket(dev),
            CLAMPED=clamped, B=b, L=l,
            stride_mu=mu.stride(0), stride_lv=logvar.stride(0), stride_z=stride_z,
            stride_pm=stride_pm, stride_plv=stride_plv,
            free_bits=float(free_bits), KL_MC=mc, PRIOR=prior, INT64=int64,
            BLOCK_B=clamp_b, BLOCK_L=clamp_l, num_warps=clamp_warps)
    out = _launch.alloc(() if reduce else (b,), f32, dev)
    _launch.launch(
        ke.elbo_rows_kernel, (programs,),
        X=x, R=recon, OBS=obs_arg, MU=mu, LV=logvar, Z=z_arg, PM=pm, PLV=plv,
        CLAMPED=_launch.given(clamped, torch.int32, dev),
        ROW_VALUES=out,
        PARTIALS=_launch.alloc((programs,), f32, dev) if reduce else _launch.dummy(f32, dev),
        COUNTER=_launch.ticket(dev) if reduce else _launch.dummy(torch.int32, dev),
        GX=_launch.given(gx, x.dtype, dev), GR=_launch.given(gr, recon.dtype, dev),
        GOBS=gobs_partials if gobs_partial else _launch.given(gobs, obs_arg.dtype, dev),
        GMU=_launch.given(gmu, mu.dtype, dev), GLV=_launch.given(glv, logvar.dtype, dev),
        GZ=_launch.given(gz, mu.dtype, dev),
        GPM=_launch.given(gpm, pm.dtype, dev), GPLV=_launch.given(gplv, plv.dtype, dev),
        B=b, D=d, L=l,
        stride_x=x.stride(0), stride_r=recon.stride(0), stride_obs=stride_obs,
        stride_mu=mu.stride(0), stride_lv=logvar.stride(0), stride_z=stride_z,
        stride_pm=stride_pm, stride_plv=stride_plv,
        obs_scalar=float(obs_scalar), beta=float(beta), c=float(c), free_bits=float(free_bits),
        LIK=lik, KL_MC=mc, FREE_BITS=free, REDUCE=reduce,
        NEED_GX=gx is not None, NEED_GR=gr is not None,
        OBS_GRAD=(GOBS_PARTIAL if gobs_partial else GOBS_ROWS if gobs is not None
                  else GOBS_NONE).value,
        NEED_GMU=gmu is not None, NEED_GLV=glv is not None, NEED_GZ=gz is not None,
        PRIOR=prior, NEED_GPM=gpm is not None, NEED_GPLV=gplv is not None,
        INT64=int64, BLOCK_B=block_b, BLOCK_D=block_d, BLOCK_L=block_l,
        BLOCK_SUM=configs.ticket_sum_block(),
        num_warps=warps)
    if gobs_partial:
        fin_b, _, fin_d, fin_sum, fin_warps = configs.finish_config()
        _launch.launch(
            kred.finish_kernel, (triton.cdiv(d, fin_d),),
            ROW_VALUES=_launch.dummy(f32, dev), GOBS_PARTIALS=gobs_partials,
            OUT=_launch.dummy(f32, dev), GOBS=gobs, B=b, D=d, NPART=programs, c=1.0,
            SUM_ROWS=False, BLOCK_P=fin_b, BLOCK_D=fin_d, BLOCK_SUM=fin_sum,
            num_warps=fin_warps)
    return (out, *_launch.placeholders(x, gx, gr, gmu, glv, gz, gobs, gpm, gplv))
