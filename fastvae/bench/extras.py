"""Machine-independent measures of one untimed call: peak extra memory, bytes saved
for backward, and the number of kernels (passes over memory); and what the standalone
scripts under benchmarks/ share around their work (a quiet fd 2, their exit on Ctrl-C)."""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Dict, Optional, Tuple

import torch

from ..backends.torch_backend.native import PASS_EVENT
from .timing import is_cuda, sync


@contextlib.contextmanager
def count_saved():
    """Yields a dict whose ``"bytes"`` becomes the size of the distinct storages
    autograd saves for backward inside the block (``saved_tensors_hooks``), inputs
    included (the benchmarks hold theirs anyway)."""
    storages: Dict[Tuple[int, str], int] = {}
    result = {"bytes": 0}

    def pack(t):
        s = t.untyped_storage()
        storages[(s.data_ptr(), str(t.device))] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield result
    result["bytes"] = sum(storages.values())


def saved_bytes(step: Callable) -> int:
    """Bytes of the distinct storages autograd saves for backward during ``step``."""
    with count_saved() as saved:
        step()
    return saved["bytes"]


# Aten ops that move no data (views, metadata, allocation): not counted as kernels.
_NON_COMPUTE = {"aten::" + n for n in (
    "view", "reshape", "_reshape_alias", "as_strided", "expand", "expand_as", "unsqueeze",
    "squeeze", "select", "slice", "t", "transpose", "permute", "alias", "detach", "detach_",
    "empty", "empty_like", "empty_strided", "to", "result_type", "lift_fresh", "chunk",
    "split", "unbind", "narrow", "_unsafe_view", "flatten", "numpy_T", "resize_",
    "set_", "is_nonzero", "item", "_local_scalar_dense", "contiguous")}


def extras(step: Callable, device: str) -> Tuple[Optional[int], int, Optional[int]]:
    """(peak extra bytes allocated during ``step``, bytes saved for backward, kernels).

    The previous call's gradients are freed first (``step.release``), so the peak
    counts everything the step allocates and holds at once, its new gradients
    included. CUDA: ``max_memory_allocated`` above the start, and kernel launches
    seen by the profiler. CPU: the running sum of the allocator's events under the
    profiler (it sees inductor's buffers, unlike a dispatch mode), and the leaf aten
    ops that do work plus inductor's C++ kernels and fastvae's C passes. One profiled
    call (plus one on CUDA).
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = is_cuda(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    # Free the previous call's gradients first: frees inside the window of memory
    # allocated before it would otherwise offset (some of) the new allocations.
    release = getattr(step, "release", lambda: None)
    peak = None
    if cuda:
        release()
        torch.cuda.synchronize(device)   # "cuda:1": that device's, not the current one's
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    release()
    sync(device)
    with quiet_stderr(), profile(activities=activities, profile_memory=not cuda) as prof:
        with count_saved() as saved:
            step()
        sync(device)
    if cuda:
        kernels = sum(1 for e in prof.profiler.kineto_results.events()
                      if e.device_type() == torch.autograd.DeviceType.CUDA)
        return peak, saved["bytes"], kernels
    mem = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                 key=lambda e: e.start_ns())
    cur = peak = 0
    for e in mem:
        cur += e.nbytes()
        peak = max(peak, cur)
    kernels = 0
    for e in prof.events():
        name = e.name
        if ("cpp_fused" in name or "cpp_kernel" in name   # inductor's, graph_0_cpp_fused_*
                or name == PASS_EVENT):                     # fastvae's C kernels'
            kernels += 1
        elif (name.startswith("aten::") and name not in _NON_COMPUTE
              and not any(c.name.startswith("aten::") for c in e.cpu_children)):
            kernels += 1
    return peak, saved["bytes"], kernels


@contextlib.contextmanager
def quiet_stderr():
    """Silence the profiler's C++ chatter on fd 2 (it bypasses sys.stderr)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), fd)
    try:
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def script_main(main: Callable[[], object], name: str) -> int:
    """A standalone benchmark script's exit status: ``main()``'s where it returns an int
    (anything else, such as the numbers a test reads, is success), or 130 after Ctrl-C with
    one line where Python would print a traceback. Every file these scripts write is
    written whole (``fastvae.checkpoint.write_json``, ``save_figure``), so an interrupted
    run leaves the last complete file or none."""
    try:
        status = main()
        return status if type(status) is int else 0
    except KeyboardInterrupt:
        print(f"{name}: interrupted; nothing it writes is left half-written",
              file=sys.stderr)
        return 130
