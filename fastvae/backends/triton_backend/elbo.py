"""Host side of the fused ELBO (``fastvae.kernels.elbo``): one row launch, plus one finish
launch for a batch reduction or free bits."""
from __future__ import annotations

import torch
import triton

from fastvae.kernels import elbo as ke
from fastvae.kernels import reduce as kred
from fastvae.kernels._math import KL_MC, PRIOR, STORE_KL

from ..._dtypes import reduce_scale
from .. import torch_backend
from . import _launch, configs
from ._rows import gradient_buffers, gradient_flags, likelihood_args, prior_args


def elbo_fwd(x, recon, mu, logvar, z, obs, prior_mu, prior_logvar, obs_scalar, likelihood, kl,
             beta, free_bits, reduction, scale, needs):
    """Same contract as the "torch" backend's: (value, gx, grecon, gmu, glogvar, gz, gobs,
    gprior_mu, gprior_logvar)."""
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
    pm, plv, stride_pm, stride_plv = prior_args(prior_mu, prior_logvar, mu)
    reduce = reduction != "none"
    free = free_bits > 0
    c = scale * reduce_scale(b, reduction)
    block_b, block_d, block_l, warps = configs.row_config(b, d, l, "elbo", lik)
    programs = triton.cdiv(b, block_b)
    finish = reduce or free
    gobs_partial = bool(needs[5]) and obs_tensor and obs_arg.dim() == 1 and reduce

    f32 = torch.float32
    out = _launch.alloc((b,) if not reduce else (), f32, dev)
    row_values = _launch.alloc((b,), f32, dev) if finish else out
    kl_latent = _launch.alloc((b, l), f32, dev) if free else None
    gx, gr, gmu, glv, gz, gobs, gobs_partials, gpm, gplv = gradient_buffers(
        (x, recon, mu, logvar, z), needs, obs_tensor, gobs_partial, programs, obs_arg, dev,
        (pm, plv))
    flags = (gradient_flags(gx, gr, gmu, glv, gz, gobs, gobs_partial, gpm, gplv)
             | _launch.flag_bits((KL_MC, kl == "mc"), (STORE_KL, free),
                                 (PRIOR, prior_mu is not None or prior_logvar is not None)))
    _launch.launch(
        ke.elbo_rows_kernel, (programs,),
        X=x, R=recon, OBS=obs_arg, MU=mu, LV=logvar, Z=_launch.given(z, mu.dtype, dev),
        PM=pm, PLV=plv,
        ROW_VALUES=row_values, KL_LATENT=_launch.given(kl_latent, f32, dev),
        GX=_launch.given(gx, x.dtype, dev), GR=_launch.given(gr, recon.dtype, dev),
        GOBS=gobs_partials if gobs_partial else _launch.given(gobs, obs_arg.dtype, dev),
        GMU=_launch.given(gmu, mu.dtype, dev), GLV=_launch.given(glv, logvar.dtype, dev),
        GZ=_launch.given(gz, mu.dtype, dev), GPM=_launch.given(gpm, pm.dtype, dev),
        GPLV=_launch.given(gplv, plv.dtype, dev),
        B=b, D=d, L=l,
        stride_x=x.stride(0), stride_r=recon.stride(0), stride_obs=stride_obs,
        stride_mu=mu.stride(0), stride_lv=logvar.stride(0),
        stride_z=(z if z is not None else mu).stride(0),  # the same specialization either way
        stride_pm=stride_pm, stride_plv=stride_plv,
        obs_scalar=float(obs_scalar), beta=float(beta), c=float(c),
        row_scale=1.0 if finish else float(c), flags=flags,
        LIK=lik, BLOCK_B=block_b, BLOCK_D=block_d, BLOCK_L=block_l, num_warps=warps)
    if finish:
        fin_b, fin_l, fin_d, fin_sum, fin_warps = configs.finish_config()
        grid = (1 + (triton.cdiv(d, fin_d) if gobs_partial else 0),)
        partials = _launch.given(gobs_partials, f32, dev)
        obs_grad = _launch.given(gobs, obs_arg.dtype, dev)
        if free:
            _launch.launch(
                ke.elbo_free_bits_kernel, grid,
                ROW_VALUES=row_values, KL_LATENT=kl_latent, GOBS_PARTIALS=partials,
                CLAMPED=_launch.alloc((l,), torch.int32, dev), OUT=out,
                GMU=_launch.given(gmu, mu.dtype, dev), GLV=_launch.given(glv, logvar.dtype, dev),
                GZ=_launch.given(gz, mu.dtype, dev), GPM=_launch.given(gpm, pm.dtype, dev),
                GPLV=_launch.given(gplv, plv.dtype, dev), GOBS=obs_grad,
                B=b, L=l, D=d, NPART=programs,
                beta=float(beta), free_bits=float(free_bits), c=float(c), reduce=int(reduce),
                flags=flags, BLOCK_B=fin_b, BLOCK_L=fin_l, BLOCK_D=fin_d, num_warps=fin_warps)
        else:
            _launch.launch(
                kred.finish_kernel, grid,
                ROW_VALUES=row_values, GOBS_PARTIALS=partials, OUT=out, GOBS=obs_grad,
                B=b, D=d, NPART=programs, c=float(c),
                BLOCK_P=fin_b, BLOCK_D=fin_d, BLOCK_SUM=fin_sum, num_warps=fin_warps)
    return (out, *_launch.placeholders(x, gx, gr, gmu, glv, gz, gobs, gpm, gplv))
