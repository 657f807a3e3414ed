"""The agreement check run before anything is timed: a fast wrong answer is not a result.

Every variant's outputs (the value and every gradient) are compared with ``eager``'s
by :func:`fastvae.testing.assert_close`, the rule the tests use; ops whose variants
cannot be compared (samplers on different RNG streams) check each variant alone with
their spec's ``self_check``. In bf16/fp16 the reference is eager run in fp32 instead,
see :func:`check_against_fp32`.
"""
from __future__ import annotations

import copy
import math
from typing import Dict, Optional

import torch

from .. import testing
from .._dtypes import SIXTEEN_BIT, in_float64
from .core import REFERENCE, AgreementError, Case, convert_inputs, get_op


def assert_agrees(what: str, got, want, dtype) -> None:
    """:func:`fastvae.testing.assert_close`, raising :class:`AgreementError`."""
    try:
        testing.assert_close(what, got, want, dtype)
    except AssertionError as e:
        raise AgreementError(str(e)) from None


def low_precision(dtype) -> bool:
    return dtype in SIXTEEN_BIT


def check_agreement(case: Case, inputs: dict, outputs: Dict[str, tuple],
                    reference: Optional[tuple] = None,
                    again: Optional[Dict[str, tuple]] = None) -> None:
    """Raise :class:`AgreementError` (the first variant's, in order) unless every variant
    matches ``eager`` (or passes the op's ``self_check``); see :func:`disagreements`."""
    bad = disagreements(case, inputs, outputs, reference, again)
    if bad:
        raise AgreementError(next(iter(bad.values())))


def disagreements(case: Case, inputs: dict, outputs: Dict[str, tuple],
                  reference: Optional[tuple] = None,
                  again: Optional[Dict[str, tuple]] = None) -> Dict[str, str]:
    """``{variant: why}`` for every variant that fails the check (empty: all agree), so a
    run can drop the variants that fail and still time the others.

    A sampler (an op with a ``self_check``) is checked on a later call too (``again``,
    after the warm-up): it must pass there as well and draw another sample (its first
    output), or a variant that kept its first noise would be timed without drawing any.

    In bf16/fp16, ``reference`` is eager run in fp32 on the same (upcast) inputs, and
    each variant's error against it may be at most twice eager's own same-dtype error
    (flash-attention's rule), or the dtype's tolerance if that is larger: eager in
    bf16 is itself far from exact (an IWAE's log-weights summed in bf16 are off by
    nats), so "close to eager" would be the wrong test.
    """
    op = get_op(case.op)
    bad: Dict[str, str] = {}
    for name, out in outputs.items():
        if name == REFERENCE and op.self_check is None and reference is None:
            continue   # eager against itself
        try:
            if op.self_check is not None:
                op.self_check(case, inputs, out, name)
                if again is not None:
                    later = again[name]
                    op.self_check(case, inputs, later, name)
                    if torch.equal(later[0], out[0]):
                        raise AgreementError(f"{name}: a later call drew the same sample as "
                                             "the first: noise must be drawn on every call")
            elif reference is not None:
                check_against_fp32(case, name, out, outputs[REFERENCE], reference)
            else:
                _check_against_eager(case, name, out, outputs[REFERENCE])
        except AgreementError as e:
            bad[name] = str(e)
    return bad


def _check_against_eager(case: Case, name: str, out: tuple, ref: tuple) -> None:
    _same_count(name, out, ref)
    for i, (g, w) in enumerate(zip(out, ref)):
        assert_agrees(f"{case.op} {case.shape} {case.dtype_name}: {name} vs eager, "
                      f"{_what(i)}", g, w, case.dtype)


def check_against_fp32(case: Case, name: str, out: tuple, eager: tuple,
                       reference: tuple) -> None:
    """Low precision: each output's relative L2 error against eager in fp32 may be at
    most ``max(2 x eager's own, the dtype's rtol)`` (norm-wise, since a bf16 training
    step's gradients scatter element by element through ReLUs and convolutions). Where
    the op says fastvae computes in fp32 (``Op.fused_fp32``), fastvae's variants may be
    off by the dtype's eps at most: one rounding of each output is half that. Eager's
    own error can be large (an IWAE's bf16 gradients are ~50% off), and twice it would
    pass a gradient halved."""
    floor = testing.tolerance(case.dtype)[0]
    fused = get_op(case.op).fused_fp32 and name.startswith("fastvae")
    _same_count(name, out, reference)
    for i, (g, w) in enumerate(zip(out, reference)):
        if fused:
            bound = torch.finfo(case.dtype).eps
            rule = (f"{bound:.4g} (one rounding to {case.dtype_name} of a result computed "
                    "in fp32)")
        else:
            eager_err = _rel_err(eager[i], w) if i < len(eager) else math.inf
            bound = max(2 * eager_err, floor)
            rule = f"max(2 x eager's own {case.dtype_name} error {eager_err:.4g}, {floor})"
        e = _rel_err(g, w)
        if e > bound:
            raise AgreementError(
                f"{case.op} {case.shape} {case.dtype_name}: {name}, {_what(i)}: relative "
                f"error {e:.4g} against eager in fp32, over {rule}")


def _rel_err(got, want) -> float:
    if got is None or want is None:
        return 0.0 if got is want else math.inf
    if tuple(got.shape) != tuple(want.shape):
        return math.inf
    g, w = in_float64(got), in_float64(want)
    if not torch.isfinite(g).all():
        return math.inf
    if not w.numel():
        return 0.0
    return (torch.linalg.vector_norm(g - w) / torch.linalg.vector_norm(w).clamp_min(1e-30)).item()


def _same_count(name: str, out: tuple, ref: tuple) -> None:
    if len(out) != len(ref):
        raise AgreementError(f"{name}: returned {len(out)} tensors, eager {len(ref)}")


def _what(i: int) -> str:
    return "loss" if i == 0 else f"gradient #{i}"


def upcast_inputs(inputs: dict) -> dict:
    """The inputs in fp32 (modules copied), for the fp32 reference."""
    return convert_inputs(inputs, lambda v: (
        copy.deepcopy(v) if isinstance(v, torch.nn.Module) else v).float())
