"""What a benchmark is made of: cases, variants, ops and the op registry.

Nothing here knows any particular op: a spec module in ``specs/`` builds an
:class:`Op` and :func:`register` puts it in :data:`OPS`, where the harness, the grids,
the CLI and the pytest suites find it by name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch

import fastvae

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
          "fp64": torch.float64}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
# Column order of the variants (plot legend, pytest ids). Some names have a role in
# the harness: "eager" is the reference of the agreement check and of the ratios; the
# torch.compile variants (COMPILED) get an extra warm-up (their first call compiles), an
# error row instead of an abort where torch.compile cannot build them, and the `x compile`
# column, taken against the faster of those that ran. "compile-eager-rng" (the samplers
# only) is "compile" with inductor drawing its noise through aten's RNG: on the CPU
# inductor's own RNG costs more than the math it fuses.
VARIANT_ORDER = ("eager", "distributions", "compile", "compile-eager-rng", "fastvae-torch",
                 "fastvae-aten", "fastvae-triton")
REFERENCE, COMPILE, COMPILE_EAGER_RNG = "eager", "compile", "compile-eager-rng"
COMPILED = (COMPILE, COMPILE_EAGER_RNG)


class AgreementError(AssertionError):
    """A variant's numbers disagree with the eager reference: its timing means nothing."""


@dataclass(frozen=True)
class Case:
    """One benchmark configuration: op, batch B, data dims D, latent dims L, samples K."""

    op: str
    batch: int
    dim: int
    latent: int
    k: int = 1
    dtype: torch.dtype = torch.float32
    device: str = "cpu"

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES.get(self.dtype, str(self.dtype))

    @property
    def shape(self) -> str:
        """``B=4096 D=784 L=32`` (+ `` K=16`` for ops with K; no D for ops without one)."""
        op = OPS[self.op]
        if op.label is not None:
            return op.label(self)
        d = f" D={self.dim}" if op.uses_dim else ""
        return f"B={self.batch}{d} L={self.latent}" + (f" K={self.k}" if op.uses_k else "")

    @property
    def id(self) -> str:
        """A pytest id: ``B4096-D784-L32[-K16]-fp32``."""
        return self.shape.replace("=", "").replace(" ", "-") + f"-{self.dtype_name}"

    def largest_elements(self) -> int:
        """Elements of the case's largest tensor (the memory it needs scales with it)."""
        return OPS[self.op].largest(self)


def _largest(case: Case) -> int:
    op = OPS[case.op]
    k = case.k if op.uses_k else 1
    return k * case.batch * (case.dim if op.uses_dim else case.latent)


@dataclass
class Variant:
    """How one implementation runs an op: ``build(case, inputs)`` returns ``step()``,
    a closure doing one timed unit of work and returning the tensors to check.

    A step may carry ``step.release()`` (free the previous call's gradients, so memory
    extras see one call alone) and ``step.check_step()`` (what the checked first call
    runs instead of ``step``, e.g. with the reference's noise)."""

    name: str
    build: Callable[[Case, dict], Callable[[], tuple]]
    cuda_only: bool = False
    cpu_only: bool = False


@dataclass
class Op:
    """One benchmarked op: everything the harness, grids and CLI need to know of it.

    ``make_inputs(case, generator)``: the inputs every variant shares (tensors drawn
    from ``generator`` on the CPU; the harness moves them to the case's device; an
    ``int`` under ``"seed"`` seeds torch before each checked first call).
    ``elements_moved(case)``: elements a fused implementation must read and write
    (the roofline's numerator), or None where the op is not memory-bound.
    ``k_values`` / ``k_flag``: ops with a sample axis K give its default values and
    the ``fastvae bench`` flag that overrides them (``"--k-iwae"``).
    ``grids``: shape lists per default grid (``quick``, ``cpu``, ``cuda``,
    ``quick_cuda``; an op absent from one is not run in it) and overrides of the
    pytest suites' grid (``suite_cpu``, ``suite_cuda``); see ``grids.py``.
    ``self_check(case, inputs, outputs, name)``: for ops whose variants cannot be
    compared with eager's (samplers on different RNG streams), checks one variant alone.
    ``needs(axis, value)``: where the op cannot run at every D or L, what it needs of
    ``axis`` (``"dim"`` or ``"latent"``) when ``value`` will not do (``"D = H*W (a
    square)"``), else None: the one statement of its sizes, which ``fastvae bench``
    checks --dim / --latent against before measuring anything.
    ``fused_fp32``: fastvae's variants compute in float32 whatever the inputs' dtype, so
    in bf16/fp16 their outputs are the float32 result rounded once; the agreement check
    holds them to that, not to eager's own (much larger) 16-bit error.
    """

    name: str
    make_inputs: Callable[[Case, torch.Generator], dict]
    variants: Dict[str, Variant]
    elements_moved: Optional[Callable[[Case], int]] = None
    uses_dim: bool = True
    k_values: Optional[Sequence[int]] = None
    k_flag: Optional[str] = None
    grids: Dict[str, dict] = field(default_factory=dict)
    self_check: Optional[Callable[[Case, dict, tuple, str], None]] = None
    largest: Callable[[Case], int] = _largest
    label: Optional[Callable[[Case], str]] = None   # the case's shape, where not B/D/L/K
    needs: Optional[Callable[[str, int], Optional[str]]] = None   # None: any size runs
    fused_fp32: bool = False

    @property
    def uses_k(self) -> bool:
        return self.k_values is not None

    def refuses(self, axis: str, value: int) -> Optional[str]:
        """What the op needs of ``axis`` ("dim" or "latent") where ``value`` will not do
        (:attr:`needs`), else None; an op without D takes any D."""
        if self.needs is None or (axis == "dim" and not self.uses_dim):
            return None
        return self.needs(axis, value)


OPS: Dict[str, Op] = {}


def register(*ops: Op) -> None:
    """Add ops to :data:`OPS` (in order: it is the order of the default tables)."""
    for op in ops:
        if op.name in OPS:
            raise ValueError(f"benchmark op {op.name!r} is registered twice")
        OPS[op.name] = op


def at_least_one(axis: str, value: int) -> Optional[str]:
    """An :attr:`Op.needs` for ops whose models have no zero-sized layer: D, L >= 1."""
    return None if value >= 1 else f"{'D' if axis == 'dim' else 'L'} >= 1"


def get_op(name: str) -> Op:
    if name not in OPS:
        raise ValueError(f"unknown op {name!r}; have {list(OPS)}")
    return OPS[name]


def variant_names(op: str, device: str = "cpu") -> List[str]:
    """The variants of ``op`` that can run on ``device`` (triton needs CUDA and triton;
    ``fastvae-aten``, the C kernel's fallback, is a CPU variant)."""
    cuda = torch.device(device).type == "cuda"
    return [n for n, v in OPS[op].variants.items()
            if not (v.cuda_only and not (cuda and fastvae.triton_available()))
            and not (v.cpu_only and cuda)]


def bytes_moved(case: Case) -> Optional[int]:
    """Bytes a fused implementation must read and write at the case's dtype (the op's
    ``elements_moved`` times the element size); None for ops without a roofline."""
    count = OPS[case.op].elements_moved
    if count is None:
        return None
    return count(case) * torch.tensor([], dtype=case.dtype).element_size()


# -- helpers for specs ---------------------------------------------------------------

def leaf(t: torch.Tensor, grad: bool) -> torch.Tensor:
    return t.detach().requires_grad_(grad)


def convert_inputs(inputs: dict, convert: Callable) -> dict:
    """``inputs`` with ``convert`` applied to every tensor (kept a leaf that requires
    grad as before) and every module; other values as they are."""
    out = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor):
            out[k] = leaf(convert(v.detach()), v.requires_grad)
        elif isinstance(v, torch.nn.Module):
            out[k] = convert(v)
        else:
            out[k] = v
    return out


def loss_step(loss_fn: Callable, inputs: dict, names: Sequence[str], backward: bool):
    """A step computing ``loss_fn(*inputs[names])``: with ``backward``, also its
    gradients w.r.t. the inputs that require them (returned after the loss, in order);
    without, under ``no_grad``."""
    args = [inputs[n] for n in names]
    leaves = [a for a in args if a.requires_grad]
    if not backward:
        def step():
            with torch.no_grad():
                return (loss_fn(*args),)
        return step

    def release():
        for t in leaves:
            t.grad = None

    def step():
        release()
        loss = loss_fn(*args)
        loss.backward()
        return (loss.detach(), *(t.grad for t in leaves))
    step.release = release
    return step
