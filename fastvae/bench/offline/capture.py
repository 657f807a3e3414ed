"""What the Triton JIT would compile for a real call, recorded with no GPU.

Inside :func:`capturing`, the public fastvae functions run on CPU tensors as if they were
CUDA ones: the "triton" backend accepts them, the host code picks its GPU tiles
(``configs.CONFIG_MODE = "gpu"``), and every ``_launch.launch`` goes, once per target
(sm_80, sm_90), into Triton's own ``JITFunction.run``. A stand-in driver tells the JIT
which target it runs on; the JIT binds the arguments with its own binder (pointer dtypes,
dummies included; integers equal to 1 made constants; divisibility by 16; constexprs),
and where it would compile, ``knobs.runtime.jit_cache_hook`` records the specialization
(Triton's serialized form, the one ``JITFunction.preload`` compiles) and cancels the
compile, so the launch ends there. No kernel runs and no tensor is read: inputs may be
``torch.empty`` of any size (pages never touched are never allocated).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from .proxy import H200

TARGETS = (80, 90)
# SMs of each target's GPU as this package models it (sm_90: the proxy's H200), what
# ``_launch.sm_count`` reports inside the capture so the host plans the GPU's grids (the
# scale kernel launches SCALE_PROGRAMS_PER_SM per SM). A target with no modelled GPU
# (sm_80: compiled, never judged for speed) reports None, the host's no-GPU defaults.
TARGET_SMS = {90: H200["sms"]}


@dataclasses.dataclass
class Launch:
    """One launch the host code made, as the JIT saw it on one target."""

    kernel: str         # "fastvae.kernels.elbo.elbo_rows_kernel"
    cc: int             # 80 or 90
    key: str            # the JIT's cache key: one compiled binary per (kernel, cc, key)
    spec: str           # Triton's serialized specialization (JSON; JITFunction.preload's input)
    grid: Tuple[int, ...]
    args: Dict[str, object]   # ints, floats, constexprs; tensors as "dtype[shape]"
    call: str = ""      # the catalog entry that made it

    @property
    def short(self) -> str:
        return self.kernel.rsplit(".", 1)[-1]

    def ident(self) -> Tuple[str, int, str]:
        return (self.kernel, self.cc, self.key)

    def options(self) -> dict:
        return json.loads(self.spec)["options"]

    def tile(self) -> tuple:
        """(kernel, its declared constexprs as (name, value) pairs, num_warps): the launch
        configuration the host chose, whatever the sizes' specialization."""
        import importlib
        module, name = self.kernel.rsplit(".", 1)
        declared = {p.name for p in getattr(importlib.import_module(module), name).params
                    if p.is_constexpr}
        cx = self.constexprs()
        return (self.short, tuple((k, cx[k]) for k in sorted(declared) if k in cx),
                self.options()["num_warps"])

    def constexprs(self) -> Dict[str, object]:
        """Every argument the JIT made a compile-time constant (constexprs and ints
        equal to 1), by name."""
        spec = json.loads(self.spec)
        names = list(spec["signature"])
        return {names[k[0]]: (v["constexpr"] if isinstance(v, dict) else v)
                for k, v in zip(spec["constant_keys"], spec["constant_vals"])}


class _Driver:
    """Stands in for Triton's CUDA driver, for what ``JITFunction.run`` asks before it
    compiles: the current device (numbered by its compute capability, so each target
    gets its own binder and caches), its stream and its target; ``sms``: its GPU's SM
    count for :func:`target_sm_count`."""

    def __init__(self, cc: int):
        self.cc = cc
        self.sms = TARGET_SMS.get(cc)

    def get_current_device(self) -> int:
        return self.cc

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget
        return GPUTarget("cuda", self.cc, 32)

    def is_active(self) -> bool:
        return True


def _describe(v) -> object:
    if isinstance(v, torch.Tensor):
        return f"{str(v.dtype).replace('torch.', '')}{list(v.shape)}"
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    return repr(v)


class _Seen:
    """What the JIT's cache holds, inside the capture, for a specialization already
    recorded: the JIT finds it, skips the binder's packing and "launches" it, which
    records the launch."""

    function = packed_metadata = None

    def __init__(self, rec: "Recorder", launch: Launch):
        self.rec, self.launch = rec, launch

    def launch_metadata(self, *args):
        return None

    def run(self, *args):
        self.rec._record(self.launch.kernel, self.launch.key, self.launch.spec)


class Recorder:
    """The launches recorded inside :func:`capturing`; ``label`` names the current call."""

    def __init__(self, targets):
        self.targets = tuple(targets)
        self.launches: List[Launch] = []
        self.label = ""
        self._pending: Optional[dict] = None
        self._replay: List[tuple] = []   # (kernel, grid, args, label) of each new one
        self._cached: List[tuple] = []   # (jit function, device) whose cache holds _Seen

    def distinct(self, cc: Optional[int] = None) -> List[Launch]:
        """One launch per distinct specialization (the first seen), in order."""
        seen, out = set(), []
        for la in self.launches:
            if (cc is None or la.cc == cc) and la.ident() not in seen:
                seen.add(la.ident())
                out.append(la)
        return out

    def _record(self, kernel: str, key: str, spec: str) -> Launch:
        p = self._pending
        la = Launch(kernel=kernel, cc=p["cc"], key=key, spec=spec, grid=p["grid"],
                    args=p["args"], call=self.label)
        self.launches.append(la)
        return la

    def _hook(self, *, key, repr, fn, compile, is_manual_warmup, already_compiled):
        p = self._pending
        if p is None:
            raise RuntimeError(f"{fn.module}.{fn.name}: launched outside _launch.launch; the "
                               "capture sees only launches that go through it")
        la = self._record(f"{fn.module}.{fn.name}", str(compile["key"]),
                          compile["specialization_data"])
        if p["cc"] == self.targets[0]:
            self._replay.append((p["kernel"], p["grid_arg"], p["raw"], self.label))
        # Triton's per-device cache (JITFunction.device_caches[device][0]): next time the
        # JIT finds the specialization there and "runs" it (_Seen.run records the launch).
        jf = fn.jit_function
        jf.device_caches[compile["device"]][0][key] = _Seen(self, la)
        self._cached.append((jf, compile["device"]))
        return True  # do not compile: the launch ends here

    def _launch_on(self, cc, real_launch, kernel, grid, args) -> None:
        from triton.runtime.driver import driver
        self._pending = dict(cc=cc, grid=_grid(grid, args), grid_arg=grid, kernel=kernel,
                             raw=args, args={k: _describe(v) for k, v in args.items()})
        driver.set_active(_Driver(cc))
        try:
            real_launch(kernel, grid, **args)
        finally:
            self._pending = None

    def _replay_other_targets(self, real_launch) -> None:
        """Bind each new specialization's launch again on the other targets (the binder
        is the same code; the options are the target's)."""
        label = self.label
        replay, self._replay = self._replay, []
        for cc in self.targets[1:]:
            for kernel, grid, args, self.label in replay:
                self._launch_on(cc, real_launch, kernel, grid, args)
        self.label = label

    def _forget(self) -> None:
        for jf, device in self._cached:
            jf.device_caches.pop(device, None)
        self._cached = []


def _grid(grid, args) -> Tuple[int, ...]:
    if callable(grid):
        grid = grid(args)
    return tuple(int(g) for g in grid)


class Interpreted(RuntimeError):
    """The kernels were imported under TRITON_INTERPRET=1: a setting to change, not a fault
    of the judge (its commands exit 2 with the line)."""


def _check_jit(kernel) -> None:
    from triton.runtime.jit import JITFunction
    if not isinstance(kernel, JITFunction):
        name = getattr(getattr(kernel, "fn", None), "__name__", None) or repr(kernel)
        raise Interpreted(
            f"{name} is not a JITFunction: the kernels were imported under "
            "TRITON_INTERPRET=1, so there is nothing the GPU JIT would compile; run without it")


@contextlib.contextmanager
def target_sm_count() -> Iterator[None]:
    """Inside the block, ``_launch.sm_count`` of a CPU tensor (the stand-in's device) is
    the active stand-in target's SM count: it is None for any CPU device otherwise, and
    the host would plan the grids of no GPU (4 scale programs, not 132 on an H200)."""
    from triton.runtime.driver import driver

    from fastvae.backends.triton_backend import _launch

    real = _launch.sm_count

    def sm_count(device):
        if device.type == "cuda":
            return real(device)
        return getattr(getattr(driver, "_active", None), "sms", None)

    _launch.sm_count = sm_count
    _launch.plans_changed()
    try:
        yield
    finally:
        _launch.sm_count = real
        _launch.plans_changed()


def _unkept(plans: dict, key, build):
    """``_launch.plan_for`` inside the capture: a fresh plan each call, none kept. A plan
    kept from outside was made for no GPU's SMs, and one made inside for the target's
    would outlive the capture in the CPU run's caches."""
    return build()


@contextlib.contextmanager
def capturing(targets=TARGETS) -> Iterator[Recorder]:
    """Record, instead of running, every Triton launch made inside the block (see the
    module's docstring). Each launch is bound on the first target; each new
    specialization is bound again on the others when the block ends. Restores every
    switch it turned on leaving the block."""
    import triton
    from triton.runtime.driver import driver

    from fastvae import _env, backends
    from fastvae.backends.triton_backend import _launch, configs

    backends.get("triton")
    rec = Recorder(targets)
    real_launch = _launch.launch

    def launch(kernel, grid, **args):
        _check_jit(kernel)
        rec._launch_on(rec.targets[0], real_launch, kernel, grid, args)

    saved = (_launch.launch, _launch.plan_for, _env.interpreting, configs.CONFIG_MODE,
             triton.knobs.runtime.jit_cache_hook, getattr(driver, "_active", None))
    _launch.launch = launch
    _launch.plan_for = _unkept
    _env.interpreting = lambda: True      # the "triton" backend takes the CPU tensors
    configs.CONFIG_MODE = "gpu"           # ... with the tiles it picks for a GPU
    triton.knobs.runtime.jit_cache_hook = rec._hook
    try:
        with target_sm_count():           # ... and the grids it plans for the target's SMs
            yield rec
            rec._replay_other_targets(real_launch)
    finally:
        rec._forget()
        (_launch.launch, _launch.plan_for, _env.interpreting, configs.CONFIG_MODE,
         triton.knobs.runtime.jit_cache_hook, active) = saved
        driver._active = active


@contextlib.contextmanager
def jit_target(cc: int):
    """The JIT's view of a device of compute capability ``cc`` (for ``preload``)."""
    from triton.runtime.driver import driver
    saved = getattr(driver, "_active", None)
    driver.set_active(_Driver(cc))
    try:
        yield
    finally:
        driver._active = saved
