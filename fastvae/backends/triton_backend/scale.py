"""Backward of the fused losses on the Triton backend: one launch, no host read."""
from __future__ import annotations

import functools

import torch
import triton

from fastvae.kernels import scale as ks

from . import _launch, configs


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
    if (len(live) > configs.SCALE_SLOTS or grad_out.device != live[0].device
            or any(g.dtype == torch.float64 or not g.is_contiguous() for g in live)):
        return [None if g is None else g.mul_(grad_out) for g in grads]
    slots = {}
    for i in range(configs.SCALE_SLOTS):
        slots[f"G{i}"], slots[f"N{i}"] = (live[i], live[i].numel()) if i < len(live) else (live[0], 0)
    block = configs.scale_block()
    blocks = triton.cdiv(max(g.numel() for g in live), block)
    _launch.launch(ks.scale_grads_kernel, (min(blocks, _programs(grad_out.device)),),
                   GO=grad_out.contiguous(), **slots, NBLK=blocks, BLOCK=block,
                   num_warps=configs.SCALE_WARPS)
    return grads


@functools.lru_cache(maxsize=None)
def _programs(device: torch.device) -> int:
    """Programs of a scale launch: enough to keep every SM streaming when it scales."""
    if device.type != "cuda":
        return 4
    return configs.SCALE_PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
