"""Host side of the discretized logistic mixture (``fastvae.kernels.
discretized_logistic_mixture_log_prob``): one launch; a sample's per-block partial sums
are added by torch (one reduction, fixed order)."""
from __future__ import annotations

import torch
import triton

from fastvae.kernels import discretized_logistic_mixture_log_prob as kd

from ..._dtypes import reduce_scale, saved_grad_dtype
from .. import torch_backend
from . import _launch, configs


def discretized_logistic_mixture_log_prob_fwd(x, params, bits, reduction, scale, needs):
    """Same contract as the "torch" backend's: (value, d value / d params). More than
    ``configs.DMOL_MAX_MIX`` components, or a sample of more than ``configs.DMOL_ROW_LIMIT``
    parameters, go to the "torch" backend too."""
    b, ch, h, w = x.shape
    hw = h * w
    s = 10 if ch == 3 else 3
    m = params.shape[1] // s
    if (_launch.delegated(x, params) or m > configs.DMOL_MAX_MIX
            or s * m * hw > configs.DMOL_ROW_LIMIT):
        return _launch.by_torch(torch_backend.discretized_logistic_mixture_log_prob_fwd,
                                x, params, bits, reduction, scale, needs)
    dev = x.device
    x3 = x.contiguous().view(b, ch, hw)
    p = params.contiguous()
    block_m, block_p, warps = configs.dmol_config(m, hw)
    n_blocks = triton.cdiv(hw, block_p)
    partials = _launch.alloc((b * n_blocks,), torch.float32, dev)
    g = _launch.alloc(params.shape, saved_grad_dtype(params), dev) if needs[0] else None
    c = scale * reduce_scale(b, reduction)
    # the row bases' (programs: b * n_blocks, a grid's x, fits int32)
    int64 = configs.needs_int64(b * x3.stride(0), b * p.stride(0))
    _launch.launch(
        kd.dmol_rows_kernel, (b * n_blocks,),
        X=x3, P=p, PARTIALS=partials, G=_launch.given(g, saved_grad_dtype(params), dev),
        n_pix=hw, n_mix=m, n_blocks=n_blocks, levels=float(2 ** bits - 1),
        stride_xb=x3.stride(0), stride_pb=p.stride(0), stride_gb=s * m * hw,
        c=float(c), C=ch, NEED_GRAD=g is not None, INT64=int64,
        BLOCK_M=block_m, BLOCK_P=block_p, num_warps=warps)
    rows = partials.view(b, n_blocks).sum(1)
    value = rows.mul_(scale) if reduction == "none" else rows.sum() * c
    return value, g
