"""Triton's launch path, up to the launcher, on a machine without a GPU.

Inside :func:`jit_no_gpu`, ``kernel[grid](**args)`` on CPU tensors goes through the real
``JITFunction.run`` (Triton's binder, cache key, cache lookup, ``launch_metadata``) on a
stand-in device of compute capability ``cc``; where it would compile, the specialization
gets a :class:`NoGPUKernel` in the JIT's own cache instead (that launch ends there, as a
cancelled compile), and every later launch of it "runs" that kernel: its launcher records
``((device, Triton's cache key), grid, arguments, launch metadata)`` instead of calling the driver. What this cannot
time: the C launcher (argument packing, ``cuLaunchKernel``).

Used by ``benchmarks/host_path.py`` (host cost of a step with Triton's Python included) and
``tests/test_planned_launch.py`` (a planned launch picks the kernel, and passes the
arguments, that ``kernel[grid](**args)`` does).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional

from .capture import _Driver, target_sm_count


def _kernel_class():
    from triton.compiler.compiler import CompiledKernel

    class NoGPUKernel:
        """A compiled kernel as the JIT's cache holds it, with Triton's own
        ``launch_metadata`` (run on every launch); its launcher records the launch."""

        launch_metadata = CompiledKernel.launch_metadata
        _init_handles = CompiledKernel._init_handles
        function = packed_metadata = src = None

        def __init__(self, key: tuple, name: str, runs: Optional[list]):
            self.key, self.name, self.runs = key, name, runs
            self.module = name   # loaded: _init_handles returns at once

        def run(self, g0, g1, g2, stream, function, packed_metadata, launch_metadata,
                enter_hook, exit_hook, *args):
            if self.runs is not None:
                self.runs.append((self.key, (g0, g1, g2), args, launch_metadata))

    return NoGPUKernel


@contextlib.contextmanager
def jit_no_gpu(cc: int = 90, record: bool = True) -> Iterator[List[tuple]]:
    """Yields the list of runs ``(key, grid, args, launch metadata)``, in order (none when ``record`` is
    false); the host sees the target's SM count (``capture.target_sm_count``). Restores
    Triton's driver and hook, and empties the caches it filled (not the host's plans)."""
    import triton
    from triton.runtime.driver import driver

    runs: List[tuple] = []
    kernel_class = _kernel_class()
    filled = []

    def hook(*, key, repr, fn, compile, is_manual_warmup, already_compiled):
        jf = fn.jit_function
        jf.cache_key  # as a compile would: it records the globals the kernel reads, which
        # every later launch checks (JITFunction.run, _planned) and so pays for
        jf.device_caches[compile["device"]][0][key] = kernel_class(
            (compile["device"], str(key)), fn.name, runs if record else None)
        filled.append((jf, compile["device"]))
        return True   # no compile: this launch ends here

    saved = (triton.knobs.runtime.jit_cache_hook, getattr(driver, "_active", None))
    driver.set_active(_Driver(cc))
    triton.knobs.runtime.jit_cache_hook = hook
    try:
        with target_sm_count():
            yield runs
    finally:
        for jf, device in filled:
            jf.device_caches.pop(device, None)
        triton.knobs.runtime.jit_cache_hook, driver._active = saved


def set_device(cc: int) -> None:
    """Inside :func:`jit_no_gpu`: make the stand-in current device one of capability ``cc``."""
    from triton.runtime.driver import driver
    driver.set_active(_Driver(cc))
