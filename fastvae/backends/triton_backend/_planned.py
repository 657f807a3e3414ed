"""Planned launches: a kernel launch whose grid, integers, constexprs and options are fixed
per shape, launched on a repeated call through the compiled kernel Triton picked for it.

``kernel[grid](**args)`` (Triton's ``JITFunction.run``) does, on every launch, before the
launcher runs: its generated binder specializes every argument (53 for the ELBO row
kernel), a cache key is built from that and the options, and the compiled kernel looked up
(~7-14 us of host time per launch on this project's CPU; RESULTS.md). A :class:`Planned`
launch is built once per shape key by the host functions (``elbo._plan``), with everything
but the tensors and the Python floats fixed. Triton's choice of compiled kernel then
depends only on, per tensor argument, its dtype and whether ``data_ptr() % 16 == 0``
(floats are always ``fp32``, whatever the value), on the current device, on the global
knobs that enter its options (``debug``, the instrumentation mode) and on the kernel's
``debug`` flag. So :func:`launch` keys on exactly those: the first call with a key goes
through ``kernel[grid](**args)`` (Triton binds, compiles if needed, launches and returns
the compiled kernel), later calls with that key call the compiled kernel's launcher the
way ``JITFunction.run`` does, with the arguments in the order Triton's binder gives them.
``tests/test_planned_launch.py`` checks both claims against Triton's own binder, on Triton
3.6.0 (the GPU machines') and the latest.

Anything else takes Triton's path every time: a kernel that is not a plain
``JITFunction`` (the interpreter's), a callable grid, a kernel with pre-run hooks, a stage
inspection hook, tensors on another device than the current one (``_launch.launch``
switches it), an argument the plan does not expect, a changed global the kernel reads.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from ... import _env

try:
    from triton import knobs as _knobs
    from triton.knobs import HookChain as _HookChain
    from triton.runtime.driver import driver as _driver
    from triton.runtime.jit import JITFunction as _JITFunction
except ImportError:  # triton missing or too old: every launch goes through kernel[grid]
    _JITFunction = None

# FASTVAE_DIRECT_LAUNCH=0 sends every launch through kernel[grid], Triton's own path: the
# direct one is checked against Triton's binder on CPU (tests/test_planned_launch.py), and
# a GPU is what would show a launcher difference those checks cannot see.
ENABLED = _env.direct_launch()
_FLOAT = "fp32"   # the key of every Python float argument (Triton never specializes them)
_ABSENT = object()
_MAX_KEYS = 64    # specializations kept per plan (alignments x devices x knob states)


class Planned:
    """``kernel[grid](**fixed, **args)`` with ``fixed`` (ints, bools, constexprs, options)
    and ``grid`` chosen once per shape key; each call gives ``args``, tensors and floats.
    ``absent``: the stand-in tensor of each pointer argument a call may give as None (the
    plan's dummies: fixed objects, never written, so their key is fixed too). ``device``
    is the device of the plan's tensors."""

    __slots__ = ("kernel", "grid", "device", "fixed", "absent", "direct", "_call",
                 "_template", "_grid3", "_compiled", "_globals")

    def __init__(self, kernel, grid, device, fixed: dict, absent: Optional[dict] = None):
        self.kernel, self.grid, self.device = kernel, grid, device
        self.fixed, self.absent = fixed, absent or {}
        self._compiled: dict = {}
        self._globals = None   # _globals_unchanged's last verified state
        self.direct = (ENABLED and _JITFunction is not None and type(kernel) is _JITFunction
                       and type(grid) is tuple and 1 <= len(grid) <= 3)
        if not self.direct:
            return
        # the binder's bound arguments in the kernel's parameter order; every parameter
        # not fixed is given per call (a default left to Triton takes the slow path)
        self._template = [fixed.get(n, _ABSENT) for n in kernel.arg_names]
        self._call = tuple((n, i, self.absent.get(n)) for i, n in enumerate(kernel.arg_names)
                           if n not in fixed)
        self._grid3 = (grid + (1, 1))[:3]

    def arguments(self, args: dict) -> dict:
        """Every keyword argument of ``kernel[grid](...)`` for a call's ``args``."""
        absent = self.absent
        return {**self.fixed, **{k: absent[k] if v is None and k in absent else v
                                 for k, v in args.items()}}

    def __repr__(self):
        return f"Planned({getattr(self.kernel, '__name__', self.kernel)!r}, grid={self.grid})"


def knob_state(kernel):
    """What besides the arguments enters Triton's cache key for this kernel: its debug flag
    and the global knobs ``JITFunction.run`` adds to the options; None when Triton would
    run a hook of its own before the launch (then it must run every time)."""
    if kernel.pre_run_hooks or getattr(_knobs.runtime, "add_stages_inspection_hook", None):
        return None
    comp = _knobs.compilation
    return (kernel.debug, _knobs.runtime.debug, comp.instrumentation_mode,
            getattr(comp, "fpsan_homomorphic_casts", None))


def bind(p: Planned, args: dict):
    """(key, the arguments in the kernel's order) of a call of ``p``, or None when the call
    does not fit the plan (an unexpected or missing argument)."""
    if len(args) != len(p._call):
        return None
    vals = p._template.copy()
    key = []
    for name, i, stand_in in p._call:
        v = args.get(name, _ABSENT)
        if v is None and stand_in is not None:
            vals[i] = stand_in    # fixed with the plan: nothing to key on
            continue
        if v is _ABSENT:
            return None
        vals[i] = v
        if type(v) is float:
            key.append(_FLOAT)
        elif isinstance(v, Tensor):
            key.append((v.dtype, v.data_ptr() % 16 == 0))
        else:   # an int, a bool, None: the value decides (True and 1 are different keys)
            key.append((type(v), v))
    return key, vals


def launch(p: Planned, args: dict, slow):
    """Launch ``p`` with ``args``: through the compiled kernel Triton chose for the same key
    before, else through ``slow(kernel, grid, **p.arguments(args))`` (``_launch.launch``),
    remembering what it returns."""
    kernel = p.kernel
    knobs = knob_state(kernel)
    bound = bind(p, args) if knobs is not None else None
    if bound is None:
        return slow(kernel, p.grid, **p.arguments(args))
    key, vals = bound
    device = _driver.active.get_current_device()
    if p.device.type == "cuda" and p.device.index != device:
        return slow(kernel, p.grid, **p.arguments(args))
    key.append(device)
    key.append(knobs)
    key = tuple(key)
    compiled = p._compiled.get(key)
    if compiled is None or not _globals_unchanged(p):
        compiled = slow(kernel, p.grid, **p.arguments(args))
        # None: the compile was cancelled or deferred; a future: not resolved yet
        if compiled is not None and not hasattr(compiled, "result"):
            if len(p._compiled) >= _MAX_KEYS:
                p._compiled.clear()
            p._compiled[key] = compiled
        return compiled
    # what JITFunction.run does once it has found the compiled kernel; the launch metadata
    # is only ever handed to the launch hooks, so it is not built when none is registered
    stream = _driver.active.get_current_stream(device)
    g = p._grid3
    enter, leave = _knobs.runtime.launch_enter_hook, _knobs.runtime.launch_exit_hook
    meta = (None if _idle(enter) and _idle(leave)
            else compiled.launch_metadata(p.grid, stream, *vals))
    compiled.run(g[0], g[1], g[2], stream, compiled.function, compiled.packed_metadata, meta,
                 enter, leave, *vals)
    return compiled


def _idle(hook) -> bool:
    """Whether a launch hook calls nothing (Triton's HookChain with no hook added)."""
    return hook is None or (type(hook) is _HookChain and not hook.calls)


def _globals_unchanged(p: Planned) -> bool:
    """JITFunction.run's check that the globals ``p.kernel`` read when compiled still hold
    those values (else the slow path raises Triton's own error). Triton compares the
    values on every launch: ~0.4 us a global on this project's CPU (a ``tl.constexpr``'s
    ``!=`` builds constexprs), 11 globals for the ELBO row kernel. Here they are compared
    once, then a launch checks that each name still holds the very object it held then,
    and a constexpr the very ``.value``: a global rebound or changed in place since is
    compared by value again."""
    used = p.kernel.used_global_vals
    seen = p._globals
    if seen is not None and seen[0] is used:
        for globals_dict, name, obj, value in seen[1]:
            if (globals_dict.get(name, _ABSENT) is not obj
                    or getattr(obj, "value", _ABSENT) is not value):
                break
        else:
            return True
    for (name, _), (val, globals_dict) in used.items():
        if globals_dict.get(name, _ABSENT) != val:
            return False
    p._globals = (used, tuple(_held(g, name) for (name, _), (_, g) in used.items()))
    return True


def _held(globals_dict: dict, name: str) -> tuple:
    obj = globals_dict.get(name, _ABSENT)
    return globals_dict, name, obj, getattr(obj, "value", _ABSENT)
