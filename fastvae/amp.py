"""Mixed precision for training (``fastvae train --amp``): which autocast dtype, and
whether a gradient scaler runs; and what ``--compile`` needs (inductor's options, a C++
compiler on the CPU, DReG's compiled halves).

CUDA: bfloat16 autocast where the card computes in bfloat16 natively (compute capability
8.0 and up: A100, H100, H200, ...): bfloat16 has float32's exponent range, so gradients
do not underflow and no GradScaler runs (no scale bookkeeping, no inf checks that read
back to the host). Older cards: float16 autocast with a GradScaler.
CPU: bfloat16 autocast (what CPU autocast supports), no scaler: it runs, and is
usually slower than float32 on CPUs without bfloat16 units (the documented behaviour,
not an error, so a CPU smoke run of a GPU recipe works).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch


def amp_policy(enabled: bool, device: torch.device) -> Tuple[Optional[torch.dtype], bool]:
    """(autocast dtype, or None when off; whether a GradScaler runs) for ``device``."""
    if not isinstance(enabled, bool):
        raise TypeError(f"amp must be a bool, got {type(enabled).__name__}")
    if not enabled:
        return None, False
    device = torch.device(device)
    if device.type == "cuda":
        if bf16_native(device):
            return torch.bfloat16, False
        return torch.float16, True
    if device.type == "cpu":
        return torch.bfloat16, False
    raise ValueError(f"--amp runs on cuda or cpu devices, not {device.type}")


def compile_options(cfg: dict, device: torch.device) -> dict:
    """``torch.compile(options=...)`` for a training run: inductor settings that keep the
    step's gradients right.

    Under CPU bfloat16 autocast, inductor (torch 2.13's CPU code) computes the gradient
    through a chain of two nearest upsamplings wrong when it lays the convolutions out
    channels-last: the kernel that casts the second upsampling's input gradient to bfloat16
    reads its accumulation buffer before the scatter that fills it, so everything upstream
    of it gets a zero gradient. The hierarchical VAE's top-down path is that chain; with two
    stages or more, no latent group got a gradient and every KL stayed at 0, silently.
    ``layout_optimization=False`` keeps the graph in the model's own layout, where the same
    step is right (tests/test_amp.py holds the smallest graph that shows it).
    Eager, aot_eager, and inductor without autocast are right; inductor's CUDA code is not
    known to need it (tests/test_amp.py checks it on a GPU)."""
    if cfg.get("amp") and cfg.get("model") == "hvae" and torch.device(device).type == "cpu":
        return {"layout_optimization": False}
    return {}


def compiler_problem(cfg: dict, device: torch.device):
    """Why ``--compile`` cannot run on ``device``, or None: inductor's CPU code is C++, and
    without a working compiler the run would stop at its first step, after the untrained
    evaluation, with a traceback."""
    if not cfg.get("compile") or torch.device(device).type != "cpu":
        return None
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:   # another torch's layout: the step itself will say
        return None
    try:
        get_cpp_compiler()
    except Exception as e:   # InvalidCxxCompiler (its module moves between versions)
        from .error_lines import NO_COMPILER_FIX, no_compiler_why
        why = no_compiler_why(e) or f"{type(e).__name__}: {e}"
        return (f"--compile: torch.compile's CPU code needs a working C++ compiler ({why}); "
                f"{NO_COMPILER_FIX}, or train without --compile")
    return None


class CompiledHalves:
    """Calls of ``model`` with ``core``'s encoder and decoder compiled, for DReG under
    --compile: its hook on z_k must see the decoder's gradient into z_k, which a graph that
    samples and decodes keeps inside, so the two halves are compiled and the sample drawn
    between them. Only the training step calls through this: evaluation, the final
    estimate and the pictures call ``core`` eagerly, as every other run's do, instead of
    compiling a graph for each of their shapes and grad modes."""

    def __init__(self, model, core, options):
        self.module = model   # what evaluation._core unwraps, as DDP's
        self._core = core
        # the layers alone: the checks of encode, decode and decode_any stay eager, and
        # decode_any reaches the compiled decoder without checking z twice
        self._halves = {name: torch.compile(getattr(core, name), dynamic=False, options=options)
                        for name in ("_encode", "_decode")}

    def __call__(self, *args, **kwargs):
        vars(self._core).update(self._halves)   # instance attributes shadow the methods
        try:
            return self.module(*args, **kwargs)
        finally:
            for name in self._halves:
                del vars(self._core)[name]


def bf16_native(device: torch.device) -> bool:
    """Whether the CUDA device computes in bfloat16 natively (compute capability >= 8.0)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_capability(index)[0] >= 8


def describe(dtype: Optional[torch.dtype], scaler: bool) -> str:
    if dtype is None:
        return "off"
    return f"{str(dtype).replace('torch.', '')} autocast{' + GradScaler' if scaler else ''}"
