"""What every host function of the Triton backend goes through: output allocation and
kernel launches (hooks: tests poison every output with NaN through ``alloc`` and count
launches through ``launch``; ``launch_planned`` goes through ``launch`` whenever it is
replaced), and the small argument helpers they share."""
from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from .. import mark_used
from . import _planned
from ._planned import Planned


def alloc(shape, dtype, device) -> Tensor:
    return torch.empty(shape, dtype=dtype, device=device)


_alloc = alloc
_CONTIGUOUS = torch.contiguous_format


# alloc_like's dtype for a contiguous t's own: the buffer is torch.empty_like(t) without
# keywords, parsed in ~0.15 us less than with them (its preserve_format copies a contiguous
# t's strides). A plan fixes it per layout (``_rows.gradient_dtypes``).
SAME = "same"


def alloc_like(t: Tensor, dtype=None) -> Tensor:
    """``alloc(t.shape, dtype or t.dtype, t.device)``, contiguous (``dtype`` :data:`SAME`:
    t's, t being contiguous). ``torch.empty_like`` parses its arguments in about half the
    time of ``torch.empty(shape, ...)`` (every call allocates its gradients); a replaced
    ``alloc`` (a test's hook) sees these too."""
    if alloc is not _alloc:
        return alloc(t.shape, t.dtype if dtype is None or dtype is SAME else dtype, t.device)
    if dtype is SAME:
        return torch.empty_like(t)
    return torch.empty_like(t, dtype=dtype, memory_format=_CONTIGUOUS)


# Compile options every kernel is built with, whatever the environment says. FMA fusion:
# the kernels' error bounds, their tests and the offline proxy's instruction counts assume
# it, and Triton 3.9 warns that its default turns to off in 3.10.
OPTIONS = {"enable_fp_fusion": True}


def launch(kernel, grid, **args):
    """``kernel[grid](**args, **OPTIONS)`` on the device of its tensors: Triton launches
    on the *current* CUDA device, and tensors on another one (a model moved to cuda:1
    without ``torch.cuda.set_device``) need it switched for the launch."""
    args.update(OPTIONS)
    dev = next((a.device for a in args.values() if isinstance(a, Tensor)), None)
    if dev is not None and dev.type == "cuda" and dev.index != torch.cuda.current_device():
        with torch.cuda.device(dev):
            return kernel[grid](**args)
    return kernel[grid](**args)


_triton_launch = launch


def launch_planned(p: Planned, **args):
    """``launch(p.kernel, p.grid, **p.fixed, **args)``, a None pointer replaced by the
    plan's dummy; a repeated call skips Triton's argument binding (``_planned``). Only
    when ``launch`` is this module's own: a test or the capture that replaces it sees
    every planned launch too."""
    if launch is _triton_launch and p.direct:
        return _planned.launch(p, args, launch)
    return launch(p.kernel, p.grid, **p.arguments(args))


@functools.lru_cache(maxsize=None)
def _dummy(dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.empty(1, dtype=dtype, device=device)


_dummies: dict = {}


def dummy(dtype: torch.dtype, device: torch.device) -> Tensor:
    """The stand-in for a pointer the flags never touch. It has the dtype the real
    tensor would have, so a launch without it compiles the same specialization as one
    with it (Triton specializes on pointer element types)."""
    t = _dummies.get((dtype, device))  # a torch.device or a string, as the caller has it
    if t is None:
        t = _dummies[(dtype, device)] = _dummy(dtype, torch.device(device))
    return t


PLANS_MAX = 256   # plans kept per host function; a workload with more rebuilds some

generation = 0    # changes whenever a kept plan may no longer be what plan_for would give


def plans_changed() -> None:
    """Say that plans kept outside a host's cache (``_kept.Kept``, the prepared functions'
    plans) must be looked up again: a cache was emptied, or what plans depend on besides
    their keys changed."""
    global generation
    generation += 1


class Plans(dict):
    """A host function's plans per key (:func:`plan_for`); emptying it (tests, code that
    edits the tile tables) also renews the plans prepared from it (:func:`plans_changed`)."""

    def clear(self) -> None:
        super().clear()
        plans_changed()


def plan_for(plans: dict, key, build):
    """``plans[key]``, built by ``build()`` the first time (a host function's planned
    launches per shapes, strides, dtypes and options; ``configs`` is read once per key, so
    code that edits the tile tables at run time clears the cache)."""
    plan = plans.get(key)
    if plan is None:
        if len(plans) >= PLANS_MAX:
            plans.clear()
        plan = plans[key] = build()
    return plan


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for host ints (``triton.cdiv`` is a constexpr function: several
    times slower per call on the host path)."""
    return -(-a // b)


_tickets: dict = {}
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
# device -> whether it is CUDA's: device.type builds a new string on every read, and every
# launch asks (a process sees a handful of devices; host code runs inside the custom ops,
# never traced by torch.compile, so the memo is no guard)
_cuda: dict = {}


def _stream(device: torch.device) -> int:
    cuda = _cuda.get(device)
    if cuda is None:
        cuda = _cuda[device] = device.type == "cuda"
    if not cuda:
        return 0
    if _raw_stream is not None:  # the handle alone, without building a Stream object
        return _raw_stream(torch.cuda.current_device() if device.index is None else device.index)
    return torch.cuda.current_stream(device).cuda_stream


def ticket(device: torch.device, n: int = 1) -> Tensor:
    """The int32 ticket counter of ``reduce.finish_by_ticket`` (``n`` of them, one per
    group of programs that folds its own partials, ``reduce.last_ticket``) for this device
    and stream: zero between launches (each group's last program resets its counter), so
    it is allocated once and kernels on one stream never share it concurrently. Nothing on
    the host reads or writes it, so a launch using it can be captured in a CUDA graph: a
    capture runs on its own stream, which gets its own counters (allocated, zeroed, by the
    first capture that needs them); replays of graphs captured on one stream must not
    overlap on two streams.
    Counters come in powers of two (the first ``n`` used): few buffers for many shapes."""
    if type(device) is not torch.device:
        device = torch.device(device)
    size = 1 if n <= 1 else 1 << (n - 1).bit_length()   # (the usual n = 1 computes nothing)
    key = (device, _stream(device), size)
    counter = _tickets.get(key)
    if counter is None:
        counter = _tickets[key] = torch.zeros(size, dtype=torch.int32, device=device)
    return counter


_scratch: dict = {}         # (device, stream, shape, dtype) -> a view of one of _scratch_bases
_scratch_bases: dict = {}   # (device, stream, size, dtype) -> the buffer, never freed
SCRATCH_VIEWS_MAX = 256     # views kept; dropping one frees nothing (its base holds the memory)


def scratch(shape: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A buffer only kernels use within one launch (per-program partial sums, written by
    every program before the last one reads them), kept, like :func:`ticket`'s counter, so
    a call allocates nothing for it and a CUDA graph captures the same buffer every replay
    uses. Launches on one stream run in order, so they never share it concurrently.

    Its memory is a buffer per (device, stream, dtype) and power of two (as the
    counters), never freed (a captured graph may write it): a shape keyed by the batch
    or latent size would otherwise keep one buffer per size ever seen. So every graph
    captured on one stream (``torch.cuda.graph``'s default capture stream is one for all)
    shares it, whatever its shapes, as it shares the counters: replays of any two of them
    must not overlap on two streams."""
    key = (device, _stream(device), shape, dtype)
    buf = _scratch.get(key)
    if buf is None:
        n = math.prod(shape)
        size = 1 << max(n - 1, 0).bit_length()
        base = _scratch_bases.get(key[:2] + (size, dtype))
        if base is None:
            base = _scratch_bases[key[:2] + (size, dtype)] = torch.empty(size, dtype=dtype,
                                                                         device=device)
        if len(_scratch) >= SCRATCH_VIEWS_MAX:
            _scratch.clear()
        buf = _scratch[key] = base[:n].view(shape)
    return buf


@functools.lru_cache(maxsize=None)
def sm_count(device: torch.device):
    """The SMs of a CUDA device, None for any other."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).multi_processor_count


def given(t, dtype, device) -> Tensor:
    """``t``, or the dummy of ``dtype`` where it is absent."""
    return dummy(dtype, device) if t is None else t


def rows(t: Tensor) -> Tensor:
    """A 2-D view the kernels can read: unit stride along the row (else a copy)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def vector_rows(x: Tensor, recon_k: Tensor) -> bool:
    """Whether a kernel that reads x's and recon_k's rows 16 bytes a lane gets 16-byte
    loads: both base pointers 16-byte aligned and their row strides multiples of 16
    elements (Triton specializes an int argument only on divisibility by 16). Else its
    loads compile to one element each (bf16: 8 loads where one was)."""
    return not ((x.data_ptr() | recon_k.data_ptr()) % 16
                or (x.stride(0) | recon_k.stride(0) | recon_k.stride(1)) % 16)


def rows_aligned(d: int, x: Tensor, recon_k: Tensor, obs=None) -> bool:
    """Whether the two-pass IWAE kernel's loads and stores can be 16 bytes wide:
    :func:`vector_rows`, and D (the gradients' row stride) and a tensor obs_logvar's row
    strides multiples of 16 elements, its base pointer 16-byte aligned. Else each element
    is its own load with its own 64-bit address, held across the samples' loop: at the
    full tile that spilled 8-28 bytes at 128-168 registers (D = 100, fp32, every
    likelihood, Triton 3.6 on sm_80 and sm_90), and where ptxas chose fewer registers,
    4-368 bytes (RESULTS.md, "The two-pass IWAE kernel on rows not aligned to 16")."""
    return not d % 16 and vector_rows(x, recon_k) and (obs is None or _rows_of_16(obs))


def _rows_of_16(t: Tensor) -> bool:
    """``t``'s base pointer 16-byte aligned and its row strides multiples of 16."""
    return not (t.data_ptr() % 16 or any(s % 16 for s in t.stride()[:-1]))


def latents_aligned(l: int, tensors, strides=()) -> bool:
    """Whether a kernel's latent rows load 16 bytes a lane: L and ``strides`` (row strides
    passed as integers) multiples of 16 elements, and each tensor's base pointer
    16-byte aligned and its row strides multiples of 16."""
    return not (l % 16 or any(s % 16 for s in strides)) and all(map(_rows_of_16, tensors))


def by_torch(fn, *args):
    """``fn(*args)``: a "torch" backend function computing a call this backend hands over
    (:func:`delegated`), recorded as the backend that ran (``fastvae.last_backend()``)."""
    mark_used("torch")
    return fn(*args)


def delegated(*ts) -> bool:
    """Whether the call goes to the "torch" backend instead: float64 inputs (the kernels
    compute in fp32 by design; fp64 callers such as gradcheck want fp64 math) and empty
    dimensions (nothing to launch)."""
    for t in ts:  # a loop, not any(genexpr): this runs on every call
        if t is not None and (t.dtype == torch.float64 or t.numel() == 0):
            return True
    return False

