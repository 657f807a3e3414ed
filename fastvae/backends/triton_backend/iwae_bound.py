"""Host side of the fused importance-weighted bound (``fastvae.kernels.iwae_bound``): the
row-warp or pair kernel for the Bernoulli where they apply, the one-pass kernel where a
row's K x D fits on chip, else the two-pass kernel; plus one finish launch for a mean/sum
reduction or a (D,) obs_logvar gradient."""
from __future__ import annotations

import math

import torch

from fastvae.kernels import iwae_bound as ki
from fastvae.kernels import iwae_bound_pairs as kp
from fastvae.kernels import iwae_bound_row_warps as kw
from fastvae.kernels import iwae_bound_sample_warps as ks
from fastvae.kernels import reduce as kred
from fastvae.kernels._math import GOBS_NONE, GOBS_PARTIAL, GOBS_ROWS, GOBS_SAMPLES

from ..._dtypes import reduce_scale
from ..._dtypes import saved_grad_dtype as saved
from .. import torch_backend
from . import _launch, configs, iwae_configs, register_caps
from ._rows import gradient_buffers, gradient_dtypes, likelihood_args, prior_args


def _span(t) -> int:
    """One past the largest element offset of ``t``."""
    span = 1
    for n, st in zip(t.shape, t.stride()):   # a loop, not sum(genexpr): six a call
        if n:
            span += (n - 1) * abs(st)
    return span


def _needs_int64(x, recon_k, mu, logvar, z_k, obs, k, b, d, l, b_pad, stride_pm,
                 stride_plv) -> bool:
    """Whether an offset of the two-pass kernel can pass int32: the inputs' spans (a
    prior's by its row strides, as the ELBO's), the (K, B, D) and (K, B, L) gradients, the
    (K, B_pad) scratch, the per-program partials."""
    return configs.needs_int64(*map(_span, (x, recon_k, mu, logvar, z_k, obs)),
                               k * b * d, k * b * l, k * b_pad, b_pad * d,
                               b * max(stride_pm, stride_plv))


_BF16_MMA: dict = {}


def _bf16_mma(device) -> bool:
    """Whether ``device`` has the bf16 ``mma`` (sm_80+) that the row- and sample-warp
    kernels unpack bf16 with; an older card takes the other kernels. Off CUDA (the
    interpreter) the kernels unpack without it."""
    if device.type != "cuda":
        return True
    got = _BF16_MMA.get(device.index)
    if got is None:
        got = _BF16_MMA[device.index] = torch.cuda.get_device_capability(device)[0] >= 8
    return got


def iwae_bound_fwd(x, recon_k, mu, logvar, z_k, obs, prior_mu, prior_logvar, obs_scalar,
                   likelihood, reduction, scale, needs, weights=False):
    """Same contract as the "torch" backend's: (value, gx, grecon_k, gmu, glogvar, gz_k, gobs,
    gprior_mu, gprior_logvar (the prior's per row), softmax weights (K, B) fp32 or empty)."""
    if _launch.delegated(x, recon_k, mu, logvar, z_k, obs, prior_mu, prior_logvar):
        return _launch.by_torch(torch_backend.iwae_bound_fwd, x, recon_k, mu, logvar, z_k, obs,
                                prior_mu, prior_logvar, obs_scalar, likelihood, reduction,
                                scale, needs, weights)
    dev = x.device
    k, b, d = recon_k.shape
    l = mu.shape[1]
    x, recon_k = _launch.rows(x), _launch.rows(recon_k)
    mu, logvar, z_k = _launch.rows(mu), _launch.rows(logvar), _launch.rows(z_k)
    lik, obs_arg, stride_obs, obs_tensor = likelihood_args(likelihood, obs, x)
    pm, plv, stride_pm, stride_plv, prior = prior_args(prior_mu, prior_logvar, mu)
    reduce = reduction != "none"
    # the gradients' factor, and the value's: per row where unreduced, else the finish's
    c = scale * reduce_scale(b, reduction)
    gobs_partial = bool(needs[5]) and obs_tensor and obs_arg.dim() == 1 and reduce
    per_sample = lik == configs.GAUSSIAN_SAMPLES   # (K, B, D): the two-pass kernel only
    per_column = bool(needs[0]) or bool(needs[5])
    gr_dtype = saved(recon_k)
    mma = (gr_dtype is torch.bfloat16 or recon_k.dtype is torch.bfloat16) and _bf16_mma(
        recon_k.device)
    int64 = None

    def needs_int64() -> bool:   # the pair kernel's and the warp kernels' offsets
        nonlocal int64
        if int64 is None:
            int64 = _needs_int64(x, recon_k, mu, logvar, z_k, obs_arg, k, b, d, l, b,
                                 stride_pm, stride_plv)
        return int64

    def warps_fit(config):
        """A warp kernel's config, or None where its loads would be an element each or its
        int32 offsets would overflow (the other kernels run those calls)."""
        if config is None or not _launch.vector_rows(x, recon_k) or needs_int64():
            return None
        return config

    row_warps = None if per_sample else warps_fit(iwae_configs.iwae_row_warps_config(
        b, k, d, l, lik, per_column, gr_dtype is torch.bfloat16 and mma, bool(needs[1])))
    pairs = (iwae_configs.iwae_pairs_config(b, k, d, l, lik, per_column,
                                            recon_k.element_size())
             if row_warps is None else None)
    by_rows = pairs is None and row_warps is None   # one-pass, sample-warp or two-pass
    aligned = (_launch.rows_aligned(d, x, recon_k, obs_arg if obs_tensor else None)
               if by_rows else None)
    onepass = (iwae_configs.iwae_onepass_config(b, k, d, l, lik, aligned)
               if by_rows and not per_sample else None)
    samples = (warps_fit(iwae_configs.iwae_sample_warps_config(
                   k, d, l, lik, per_column, recon_k.dtype is torch.bfloat16 and mma,
                   bool(needs[1])))
               if by_rows and onepass is None else None)
    if row_warps is not None:
        block_b, block_l, warps, row_pieces = row_warps
        block_d = 0
    elif pairs is not None:
        block_p, block_r, block_l, warps, pieces = pairs
        block_b, block_d = block_p // k, 0
    elif onepass is not None:
        block_b, block_k, block_d, block_l, warps = onepass
    elif samples is not None:
        block_k, block_s, block_l, warps, sample_pieces = samples
        block_b, block_d = 1, 0
    else:
        block_b, block_d, block_l, warps = iwae_configs.iwae_rows_config(
            b, d, l, recon_k.element_size(), lik, aligned)
    programs = _launch.cdiv(b, block_b)

    f32 = torch.float32
    out = _launch.alloc((b,) if not reduce else (), f32, dev)
    row_values = _launch.alloc((b,), f32, dev) if reduce else out
    # STL and DReG (``weights``) take no direct mu/logvar gradient, yet the kernel writes
    # one, into scratch dropped below: compiled without those gradients the kernels spill
    # on sm_80/sm_90 (ptxas, 12 of 43 shipped tiles, 4-16 bytes at 40-170 registers), and
    # they cost 2BL elements against recon_k's KBD. The prior's gradients are kept.
    dropped = bool(weights)
    kneeds = [*needs[:2], True, True, *needs[4:]] if dropped else needs
    inputs = (x, recon_k, mu, logvar, z_k)
    gx, gr, gmu, glv, gz, gobs, gobs_partials, gpm, gplv = gradient_buffers(
        inputs, gradient_dtypes(inputs, kneeds), kneeds, obs_tensor, gobs_partial, programs,
        obs_arg, dev, (pm, plv))
    # DReG's weights are written only where a gradient is: in the kernels' gradient pass.
    w_out = _launch.alloc((k, b), f32, dev) if weights else None
    args = dict(
        X=x, R=recon_k, OBS=obs_arg, MU=mu, LV=logvar, Z=z_k, PM=pm, PLV=plv,
        ROW_VALUES=row_values, WEIGHTS=_launch.given(w_out, f32, dev),
        GX=_launch.given(gx, saved(x), dev), GR=_launch.given(gr, gr_dtype, dev),
        GOBS=gobs_partials if gobs_partial else _launch.given(gobs, saved(obs_arg), dev),
        GMU=_launch.given(gmu, saved(mu), dev), GLV=_launch.given(glv, saved(logvar), dev),
        GZ=_launch.given(gz, saved(z_k), dev),
        GPM=_launch.given(gpm, saved(pm, mu.shape), dev),
        GPLV=_launch.given(gplv, saved(plv, mu.shape), dev),
        K=k, B=b, D=d, L=l,
        stride_x=x.stride(0), stride_rk=recon_k.stride(0), stride_rb=recon_k.stride(1),
        stride_obs=stride_obs, stride_mu=mu.stride(0), stride_lv=logvar.stride(0),
        stride_zk=z_k.stride(0), stride_zb=z_k.stride(1), stride_pm=stride_pm,
        stride_plv=stride_plv,
        obs_scalar=float(obs_scalar), c=float(c), row_scale=1.0 if reduce else float(scale),
        log_k=math.log(k),
        LIK=lik, NEED_GX=gx is not None, NEED_GR=gr is not None,
        OBS_GRAD=(GOBS_NONE if gobs is None else GOBS_PARTIAL if gobs_partial
                  else GOBS_SAMPLES if per_sample else GOBS_ROWS).value,
        NEED_GMU=gmu is not None, NEED_GLV=glv is not None, NEED_GZ=gz is not None,
        PRIOR=prior, NEED_GPM=gpm is not None, NEED_GPLV=gplv is not None,
        STORE_WEIGHTS=bool(weights),
        BLOCK_B=block_b, BLOCK_D=block_d, BLOCK_L=block_l, num_warps=warps)

    def launch_class() -> str:   # of a register cap (register_caps), where a kernel has one
        return register_caps.iwae_class(
            [g is not None for g in (gx, gr, gmu, glv, gz, gpm, gplv)],
            gobs_partial or gobs is not None)

    if row_warps is not None:  # one warp a row, its K samples in it: x read once a row
        for name in ("GX", "GOBS", "BLOCK_B", "BLOCK_D", "NEED_GX", "OBS_GRAD", "K"):
            del args[name]
        _launch.launch(kw.iwae_bound_row_warps_kernel, (programs,), BLOCK_K=k,
                       BLOCK_R=block_b,
                       **dict(zip(("BLOCK_V", "BLOCK_NC", "BLOCK_TAIL", "BLOCK_TV"),
                                  row_pieces)),
                       **args)
    elif pairs is not None:  # (row, sample) pairs on chip: one read, no K padding
        for name in ("GX", "GOBS", "BLOCK_B", "BLOCK_D", "NEED_GX", "OBS_GRAD"):
            del args[name]
        _launch.launch(kp.iwae_bound_pairs_kernel, (programs,), BLOCK_P=block_p,
                       BLOCK_R=block_r, k_magic=-(-(1 << 16) // k),
                       **dict(zip(("BLOCK_W", "BLOCK_NA", "BLOCK_NB", "BLOCK_TAIL"), pieces)),
                       **register_caps.iwae_pairs_maxnreg(
                           launch_class(), needs_int64(), recon_k.element_size(),
                           _launch.rows_aligned(d, x, recon_k), block_l),
                       INT64=needs_int64(), **args)
    elif onepass is not None:  # K x D on chip: one read of recon_k, no log-weight scratch
        _launch.launch(ki.iwae_bound_onepass_kernel, (programs,), BLOCK_K=block_k,
                       **register_caps.iwae_onepass_maxnreg(
                           launch_class(), aligned, lik, recon_k.element_size(),
                           block_b, block_k, block_d, block_l, warps),
                       **args)
    elif samples is not None:  # a program a row, a warp a sample: one read of recon_k
        for name in ("GX", "GOBS", "BLOCK_B", "BLOCK_D", "NEED_GX", "OBS_GRAD"):
            del args[name]
        _launch.launch(ks.iwae_bound_sample_warps_kernel, (programs,),
                       LOG_W=_launch.alloc((b, block_k), f32, dev), BLOCK_K=block_k,
                       BLOCK_S=block_s,
                       **dict(zip(("BLOCK_V", "BLOCK_NC", "BLOCK_TAIL"), sample_pieces)),
                       **register_caps.iwae_sample_warps_maxnreg(_launch.latents_aligned(
                           l, (mu, logvar, z_k, pm, plv), (stride_pm, stride_plv))),
                       **args)
    else:
        rows_int64 = _needs_int64(x, recon_k, mu, logvar, z_k, obs_arg, k, b, d, l,
                                  programs * block_b, stride_pm, stride_plv)
        _launch.launch(ki.iwae_bound_rows_kernel, (programs,),
                       LOG_W=_launch.alloc((k, programs * block_b), f32, dev),
                       stride_obk=obs_arg.stride(0) if per_sample else 0,
                       LOG_OF_PRODUCT=iwae_configs.iwae_rows_log_of_product(
                           d, block_d, recon_k.element_size(), lik),
                       K_BLOCK=iwae_configs.iwae_rows_k_block(),
                       **register_caps.iwae_rows_maxnreg(
                           launch_class(), aligned, rows_int64, prior, lik,
                           recon_k.element_size(),
                           block_b, block_d, block_l, warps),
                       INT64=rows_int64, **args)
    if reduce:
        fin_b, _, fin_d, fin_sum, fin_warps = configs.finish_config()
        grid = (1 + (_launch.cdiv(d, fin_d) if gobs_partial else 0),)
        _launch.launch(
            kred.finish_kernel, grid,
            ROW_VALUES=row_values, GOBS_PARTIALS=_launch.given(gobs_partials, f32, dev),
            OUT=out, GOBS=_launch.given(gobs, saved(obs_arg), dev),
            B=b, D=d, NPART=programs, c=float(c), SUM_ROWS=True,
            BLOCK_P=fin_b, BLOCK_D=fin_d, BLOCK_SUM=fin_sum, num_warps=fin_warps)
    if dropped:
        gmu = glv = None
    return out, gx, gr, gmu, glv, gz, gobs, gpm, gplv, (w_out if weights else None)
