"""Backward of the fused losses on the Triton backend: one launch, no host read."""
from __future__ import annotations

import torch

from fastvae.kernels import scale as ks

from ..._dtypes import grad_factor
from . import _launch, configs
from ._kept import Kept


def scale_saved_(grads, grad_out):
    """The saved gradients times the scalar ``grad_out``, in place (``fastvae.ops``).

    The kernel reads grad_out on the device and moves no gradient bytes when it is 1,
    so backward never waits for the GPU. Gradients the kernel does not take (float64
    from the delegation to the "torch" backend, a non-contiguous one) are scaled by
    torch, unconditionally, for the same reason.
    """
    live = [g for g in grads if g is not None and g.numel()]
    if not live:
        return grads
    return _run(_plan_of(live, grad_out.device), grads, live, grad_out)


def scale_prepare(grads):
    """``scale_saved_.prepare``: :func:`scale_saved_` for gradients laid out as ``grads``
    (sizes, dtypes, devices, None where absent) that keeps its plan
    (``fastvae.ops.Route``; looked up again as ``_kept.Kept`` says); None where there is
    nothing to scale."""
    slots = [i for i, g in enumerate(grads) if g is not None and g.numel()]
    if not slots:
        return None
    device = grads[slots[0]].device
    kept = Kept(lambda *args: _plan_of(*args))   # the module's, when it looks up

    def scale(grads, grad_out):
        if grad_out.device != device:
            return scale_saved_(grads, grad_out)
        live = [grads[i] for i in slots]
        return _run(kept.get(live, device), grads, live, grad_out)
    return scale


def _plan_of(live, device):
    # the SMs: the grid is per SM, and the offline proxy's stand-in reports a GPU's
    key = (device, configs.interpreter_tiles(), _launch.sm_count(device),
           *[(g.numel(), g.dtype, g.device, g.is_contiguous()) for g in live])
    return _launch.plan_for(_PLANS, key, lambda: _plan(live, device))


def _run(plan, grads, live, grad_out):
    if plan is _TORCH:
        return [None if g is None else g.mul_(grad_factor(g, grad_out)) for g in grads]
    _launch.launch_planned(plan, GO=grad_out.contiguous(), **dict(zip(_SLOT_NAMES, live)),
                           **_UNUSED[len(live)])
    return grads


_TORCH = "torch"    # the plan of gradients the kernel does not take
scale_saved_.prepare = scale_prepare
_PLANS = _launch.Plans()   # per key (_launch.plan_for)
_SLOT_NAMES = tuple(f"G{i}" for i in range(configs.SCALE_SLOTS))
# the slots past n live gradients, by n: None, the plan's stand-in (its size is 0)
_UNUSED = [dict.fromkeys(_SLOT_NAMES[n:]) for n in range(configs.SCALE_SLOTS + 1)]


def _plan(live, device):
    """The planned scale launch for these gradients, or ``_TORCH``; depends only on their
    sizes, dtypes and layout."""
    if (len(live) > configs.SCALE_SLOTS or device != live[0].device
            or any(g.dtype == torch.float64 or not g.is_contiguous() for g in live)):
        return _TORCH
    sizes = {f"N{i}": (live[i].numel() if i < len(live) else 0)
             for i in range(configs.SCALE_SLOTS)}
    block = configs.scale_block()
    blocks = _launch.cdiv(max(g.numel() for g in live), block)
    # an unused slot's pointer: live[0]'s dtype (as the slot held live[0] itself)
    stand_in = _launch.dummy(live[0].dtype, device)
    return _launch.Planned(ks.scale_grads_kernel, (min(blocks, _programs(device)),), device,
                           dict(**sizes, BLOCK=block, num_warps=configs.SCALE_WARPS),
                           {name: stand_in for name in _SLOT_NAMES[len(live):]})


def _programs(device: torch.device) -> int:
    """Programs of a scale launch: enough to keep every SM streaming when it scales."""
    sms = _launch.sm_count(device)
    return 4 if sms is None else configs.SCALE_PROGRAMS_PER_SM * sms
