"""Host side of the fused ELBO (``fastvae.kernels.elbo``): one row launch that also folds
the batch sum; free bits add one launch before it, a (D,) obs_logvar gradient one after.

Everything a launch needs besides the tensors and the float arguments (tiles, grid,
strides, int32/int64 offsets, the constexpr switches) depends only on the shapes,
strides, dtypes, options and ``needs``: it is worked out once per such key
(:func:`_plan`) as planned launches (``_planned``: a repeated launch skips Triton's
argument binding), so a repeated call (a training step) does little more on the host
than allocate its outputs and launch.
"""
from __future__ import annotations

import torch

from fastvae.kernels import elbo as ke
from fastvae.kernels import reduce as kred
from fastvae.kernels._math import GOBS_NONE, GOBS_PARTIAL, GOBS_ROWS

from ..._dtypes import reduce_scale
from ..._dtypes import saved_grad_dtype as saved
from .. import torch_backend
from . import _launch, configs, register_caps
from ._kept import Kept
from ._rows import gradient_buffers, gradient_dtypes, likelihood_args, prior_args

_PLANS = _launch.Plans()   # per key (_launch.plan_for); configs' CONFIG_MODE is part of the key


def elbo_fwd(x, recon, mu, logvar, z, obs, prior_mu, prior_logvar, obs_scalar, likelihood, kl,
             beta, free_bits, reduction, scale, needs):
    """Same contract as the "torch" backend's: (value, gx, grecon, gmu, glogvar, gz, gobs,
    gprior_mu, gprior_logvar), the prior's per row."""
    plan = _plan_of(x, recon, mu, logvar, z, obs, prior_mu, prior_logvar, likelihood, kl,
                    free_bits, reduction, needs)
    if plan is _DELEGATE:
        return _launch.by_torch(torch_backend.elbo_fwd, x, recon, mu, logvar, z, obs, prior_mu,
                                prior_logvar, obs_scalar, likelihood, kl, beta, free_bits,
                                reduction, scale, needs)
    return _run(plan, x, recon, mu, logvar, z, obs, prior_mu, prior_logvar, obs_scalar, beta,
                free_bits, scale, needs)


def elbo_prepare(x, recon, mu, logvar, z, obs, prior_mu, prior_logvar, obs_scalar, likelihood,
                 kl, beta, free_bits, reduction, scale, needs):
    """``elbo_fwd.prepare``: :func:`elbo_fwd` for calls that differ from this one only in
    the values of x, recon, mu, logvar and z (the tensors' shapes, strides, dtypes and
    devices, ``needs`` and every other argument the same): a function of those five that
    keeps its plan instead of looking it up each call (``fastvae.ops.Route``; looked up
    again as ``_kept.Kept`` says); None where the "torch" backend computes."""
    rest = (obs, prior_mu, prior_logvar)
    options = (*rest, likelihood, kl, free_bits, reduction, needs)
    tail = (*rest, obs_scalar, beta, free_bits, scale, needs)
    kept = Kept(lambda *args: _plan_of(*args))   # the module's, when it looks up
    if kept.get(x, recon, mu, logvar, z, *options) is _DELEGATE:
        return None

    def run(x, recon, mu, logvar, z):
        plan = kept.get(x, recon, mu, logvar, z, *options)
        if plan is _DELEGATE:   # not for these shapes; only after a change of the tables
            return elbo_fwd(x, recon, mu, logvar, z, *rest, obs_scalar, likelihood, kl, beta,
                            free_bits, reduction, scale, needs)
        return _run(plan, x, recon, mu, logvar, z, *tail)
    return run


def _plan_of(x, recon, mu, logvar, z, obs, prior_mu, prior_logvar, likelihood, kl, free_bits,
             reduction, needs):
    free = free_bits > 0
    # the inputs as given: the plan says whether they go to the "torch" backend and whether
    # any needs a copy with unit stride along its rows
    key = (x.shape, x.stride(), x.dtype, recon.stride(), recon.dtype, mu.shape, mu.stride(),
           mu.dtype, logvar.stride(), logvar.dtype, _layout(z), _layout(obs),
           _layout(prior_mu), _layout(prior_logvar), x.device, likelihood, kl, free, reduction,
           tuple(needs), configs.interpreter_tiles())
    return _launch.plan_for(_PLANS, key, lambda: _plan_for_inputs(
        x, recon, mu, logvar, z, obs, prior_mu, prior_logvar, likelihood, kl, free, reduction,
        needs))


def _run(plan, x, recon, mu, logvar, z, obs, prior_mu, prior_logvar, obs_scalar, beta,
         free_bits, scale, needs):
    """:func:`elbo_fwd`'s launches for inputs of ``plan``."""
    if plan["copy"]:
        x, recon, mu, logvar, z = _rows_of(x, recon, mu, logvar, z)
    dev = x.device
    d = x.shape[1]
    f32 = torch.float32
    obs_arg = _launch.rows(obs) if plan["obs_tensor"] else None
    # the prior's tensors per call (a missing half is a zero row), its switches in the plan
    pm = plv = None
    if plan["prior"]:
        pm, plv, _, _, _ = prior_args(prior_mu, prior_logvar, mu)
    gx, gr, gmu, glv, gz, gobs, gobs_partials, gpm, gplv = gradient_buffers(
        (x, recon, mu, logvar, z), plan["grad_dtypes"], needs, plan["obs_tensor"],
        plan["gobs_partial"], plan["programs"], obs_arg, dev, (pm, plv))
    clamped = None
    if free_bits > 0:
        clamped = _launch.alloc((mu.shape[1],), torch.int32, dev)
        _launch.launch_planned(
            plan["clamp"], MU=mu, LV=logvar, Z=z, PM=pm, PLV=plv,
            PARTIALS=_launch.scratch(plan["clamp_partials"], f32, dev),
            COUNTER=_launch.ticket(dev), CLAMPED=clamped, free_bits=float(free_bits))
    reduce = plan["reduce"]
    out = _launch.alloc_like(plan["value_like"], _launch.SAME)
    # None: the plan's dummy of the dtype the tensor would have
    _launch.launch_planned(
        plan["rows"], X=x if d else None, R=recon if d else None, OBS=obs_arg, MU=mu, LV=logvar,
        Z=z, PM=pm, PLV=plv, CLAMPED=clamped, ROW_VALUES=out,
        PARTIALS=_launch.scratch(plan["grid"], f32, dev) if reduce else None,
        COUNTER=_launch.ticket(dev) if reduce else None,
        GX=gx if d else None, GR=gr if d else None,
        GOBS=gobs_partials if plan["gobs_partial"] else gobs, GMU=gmu, GLV=glv, GZ=gz,
        GPM=gpm, GPLV=gplv, obs_scalar=float(obs_scalar), beta=float(beta),
        c=float(scale * plan["reduce_scale"]), free_bits=float(free_bits))
    if plan["gobs_partial"]:
        _launch.launch_planned(plan["finish"], GOBS_PARTIALS=gobs_partials, GOBS=gobs, c=1.0)
    if beta == 0:   # no KL term (a warm-up from 0): its gradients are 0, also where the
        # kernel's 0 * an overflowed partial wrote NaN (a select there cost registers)
        for g in (gmu, glv, gz, gpm, gplv):
            if g is not None:
                g.zero_()
    return out, gx, gr, gmu, glv, gz, gobs, gpm, gplv


_DELEGATE = "torch"   # the plan of inputs the "torch" backend computes
elbo_fwd.prepare = elbo_prepare


def _layout(t):
    return None if t is None else (t.shape, t.stride(), t.dtype)


def _rows_of(*ts):
    return [None if t is None else _launch.rows(t) for t in ts]


def _plan_for_inputs(x, recon, mu, logvar, z, obs, prior_mu, prior_logvar, likelihood, kl,
                     free, reduction, needs):
    """:func:`_plan` for the inputs as given, or ``_DELEGATE``."""
    d = x.shape[1]
    # D = 0 (the latent part of a DMoL ELBO) runs here too: the row kernel's data loops are
    # empty and read no data pointer.
    if _launch.delegated(x if d else None, recon if d else None, mu, logvar, z, obs, prior_mu,
                         prior_logvar) or (d == 0 and torch.float64 in (x.dtype, recon.dtype)):
        return _DELEGATE
    rows = _rows_of(x, recon, mu, logvar, z)
    plan = _plan(*rows, obs, prior_mu, prior_logvar, likelihood, kl, free, reduction, needs)
    plan["copy"] = any(r is not t for r, t in zip(rows, (x, recon, mu, logvar, z)))
    return plan


def _plan(x, recon, mu, logvar, z, obs, prior_mu, prior_logvar, likelihood, kl, free,
          reduction, needs) -> dict:
    """The launch arguments of :func:`elbo_fwd` that are not tensors or floats, for these
    shapes, strides, dtypes and options."""
    b, d = x.shape
    l = mu.shape[1]
    lik, obs_arg, stride_obs, obs_tensor = likelihood_args(likelihood, obs, x)
    pm, plv, stride_pm, stride_plv, prior = prior_args(prior_mu, prior_logvar, mu)
    reduce = reduction != "none"
    mc = kl == "mc"
    # rows loaded 16 bytes at a time: the data's decide the tile (unaligned latents alone
    # keep the D = 784 tile the GPU timings chose), every row the register cap's class
    data_aligned = not (d | x.stride(0) | recon.stride(0) | stride_obs) % 16
    # every offset is below B times a row's span (a program's partials: programs <= B)
    int64 = configs.needs_int64(b * max(x.stride(0), recon.stride(0), stride_obs, d),
                                b * max(mu.stride(0), logvar.stride(0), l,
                                        z.stride(0) if z is not None else 0,
                                        stride_pm, stride_plv))
    block_b, block_d, block_l, warps = configs.elbo_config(b, d, l, x.element_size(), lik,
                                                           prior, data_aligned, int64)
    launch_class = register_caps.elbo_class(
        needs, bool(needs[5]) and obs_tensor,
        data_aligned and not (l | mu.stride(0) | logvar.stride(0)) % 16)
    programs = _launch.cdiv(b, block_b)
    gobs_partial = bool(needs[5]) and obs_tensor and obs_arg.dim() == 1 and reduce
    gobs_rows = bool(needs[5]) and obs_tensor and not gobs_partial
    stride_z = (z if z is not None else mu).stride(0)
    plan = {"programs": programs, "grid": (programs,), "reduce": reduce,
            "reduce_scale": reduce_scale(b, reduction), "gobs_partial": gobs_partial,
            "obs_tensor": obs_tensor, "prior": prior,
            "grad_dtypes": gradient_dtypes((x, recon, mu, logvar, z), needs)}
    dev = x.device
    # the value's layout, allocated per call as its empty_like: no shape, dtype or device
    # to parse (~0.3 us less than new_empty)
    plan["value_like"] = torch.empty(() if reduce else (b,), dtype=torch.float32, device=dev)

    def dummies(**dtypes):
        return {name: _launch.dummy(dt, dev) for name, dt in dtypes.items()}
    if free:
        clamp_b, clamp_l, clamp_warps = configs.kl_clamp_config(l)
        clamp_programs = _launch.cdiv(b, clamp_b)
        plan["clamp_partials"] = (clamp_programs, l)
        plan["clamp"] = _launch.Planned(
            ke.kl_clamp_kernel, (clamp_programs,), dev, dict(
                B=b, L=l, stride_mu=mu.stride(0), stride_lv=logvar.stride(0), stride_z=stride_z,
                stride_pm=stride_pm, stride_plv=stride_plv, KL_MC=mc, PRIOR=prior, INT64=int64,
                BLOCK_B=clamp_b, BLOCK_L=clamp_l, num_warps=clamp_warps),
            dummies(Z=mu.dtype, PM=pm.dtype, PLV=plv.dtype))
    plan["rows"] = _launch.Planned(ke.elbo_rows_kernel, (programs,), dev, dict(
        B=b, D=d, L=l,
        stride_x=x.stride(0), stride_r=recon.stride(0), stride_obs=stride_obs,
        stride_mu=mu.stride(0), stride_lv=logvar.stride(0), stride_z=stride_z,
        stride_pm=stride_pm, stride_plv=stride_plv,
        LIK=lik, KL_MC=mc, FREE_BITS=free, REDUCE=reduce,
        NEED_GX=bool(needs[0]) and d > 0, NEED_GR=bool(needs[1]) and d > 0,
        OBS_GRAD=(GOBS_PARTIAL if gobs_partial else GOBS_ROWS if gobs_rows
                  else GOBS_NONE).value,
        NEED_GMU=bool(needs[2]), NEED_GLV=bool(needs[3]), NEED_GZ=bool(needs[4]) and z is not None,
        PRIOR=prior, NEED_GPM=prior and bool(needs[6]), NEED_GPLV=prior and bool(needs[7]),
        INT64=int64, BLOCK_B=block_b, BLOCK_D=block_d, BLOCK_L=block_l,
        BLOCK_SUM=configs.ticket_sum_block(),
        STAGES=configs.elbo_stages(x.element_size(), lik, prior), num_warps=warps,
        **register_caps.elbo_rows_maxnreg(launch_class, prior, int64, lik, x.element_size(),
                                          block_b, block_d, block_l, warps)),
        # absent pointers: a dummy of the dtype the tensor would have (Triton specializes
        # on it), the gradients' as their buffers' (saved_grad_dtype), z's as mu's
        dummies(X=x.dtype, R=recon.dtype, OBS=obs_arg.dtype, Z=mu.dtype, PM=pm.dtype,
                PLV=plv.dtype, CLAMPED=torch.int32, PARTIALS=torch.float32,
                COUNTER=torch.int32, GX=saved(x), GR=saved(recon), GOBS=saved(obs_arg),
                GMU=saved(mu), GLV=saved(logvar), GZ=saved(mu), GPM=saved(pm, mu.shape),
                GPLV=saved(plv, mu.shape)))
    if gobs_partial:
        fin_b, _, fin_d, fin_sum, fin_warps = configs.finish_config()
        f32 = torch.float32
        plan["finish"] = _launch.Planned(
            kred.finish_kernel, (_launch.cdiv(d, fin_d),), dev, dict(
                B=b, D=d, NPART=programs, SUM_ROWS=False, BLOCK_P=fin_b, BLOCK_D=fin_d,
                BLOCK_SUM=fin_sum, num_warps=fin_warps,
                ROW_VALUES=_launch.dummy(f32, dev), OUT=_launch.dummy(f32, dev)))
    return plan
