"""Running a case: build every variant on shared inputs, check they agree, time them
interleaved, and measure the extras; and the same for one pytest-benchmark test.

Nothing here knows any particular op: it takes the op's :class:`~.core.Op` from the
registry by the case's name.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .check import check_agreement, disagreements, low_precision, upcast_inputs
from .core import (COMPILED, REFERENCE, Case, Op, Variant, bytes_moved, convert_inputs,
                   get_op, variant_names)
from .extras import extras, saved_bytes
from .timing import (check_cpu_time, inner_calls, is_cuda, l2_flusher, time_interleaved,
                     timed)


@dataclass
class Prepared:
    """A case with its inputs, one built step per variant, warmed up and checked;
    ``failed``: the variants dropped for disagreeing, with the check's message;
    ``unbuilt``: the torch.compile variants it could not build (no C++ compiler, an
    inductor option this torch lacks);
    ``warm_s``: each variant's fastest warm-up call, which :func:`measure` sizes its rounds
    by together with one more call (one call alone can land on another job's burst)."""

    case: Case
    inputs: dict
    steps: Dict[str, Callable]
    first_call_s: Dict[str, float]
    failed: Dict[str, str] = field(default_factory=dict)
    unbuilt: Dict[str, str] = field(default_factory=dict)
    warm_s: Dict[str, float] = field(default_factory=dict)


def _detached(out) -> tuple:
    return tuple(None if t is None else t.detach().clone() for t in out)


def prepare(case: Case, variants: Optional[Sequence[str]] = None, *, seed: int = 0,
            extra_variants: Optional[Dict[str, Variant]] = None, warmup: int = 1,
            check: bool = True, drop_disagreeing: bool = False) -> Prepared:
    """Build every variant's step on shared inputs, time the first call (the compile
    of the :data:`~.core.COMPILED` variants), warm up, and check agreement (raises
    :class:`~.core.AgreementError`; with ``drop_disagreeing``, leaves the variants that
    fail out of ``steps`` and names them in ``failed`` instead, so a run of many cases
    still times the rest; so too a compiled variant torch.compile cannot build).

    ``extra_variants`` adds variants beyond the op's (tests inject a wrong one).
    ``eager`` always runs: it is the reference of the check and of the ratios.
    """
    op = get_op(case.op)
    names = variant_names(case.op, case.device) if variants is None else list(variants)
    table = dict(op.variants, **(extra_variants or {}))
    names = [REFERENCE] + [n for n in names if n != REFERENCE] + [
        n for n in (extra_variants or {}) if n not in names]
    for n in names:
        if n not in table:
            raise ValueError(f"unknown variant {n!r} for op {case.op!r}; have {sorted(table)}")
    inputs = make_inputs(op, case, seed)
    unbuilt: Dict[str, str] = {}

    def unless_unbuildable(n, make):
        """``make()``; where it fails to compile variant ``n`` (no C++ compiler, say), None
        and the reason in ``unbuilt``: the case's other variants still run."""
        try:
            return make()
        except Exception as e:
            why = _compile_failed(n, e) if drop_disagreeing else None
            if why is None:
                raise
            unbuilt[n] = why
            return None

    steps = {n: unless_unbuildable(n, lambda: table[n].build(case, inputs)) for n in names}
    first, outputs, again, warm = {}, {}, {}, {}
    for n in names:
        if n in unbuilt:
            del steps[n]
            continue
        # The first call is checked: every variant starts from the same inputs (and, for
        # training steps, the same weights and the same seed, hence the same noise).
        torch.manual_seed(inputs.get("seed", seed))
        called = unless_unbuildable(
            n, lambda: timed(getattr(steps[n], "check_step", steps[n]), case.device))
        if called is None:
            del steps[n]
            continue
        first[n], out = called
        if check:  # keep a copy: later calls of the same step may reuse the buffers
            outputs[n] = _detached(out)
        del out
        # A call of over a second is its own warm-up (caches and allocator are hot
        # after it); a compiled variant's first call compiles, so it always gets one more.
        slow = first[n] > 1.0 and n not in COMPILED
        for _ in range(0 if slow else warmup):
            warm[n] = min(warm.get(n, math.inf), timed(steps[n], case.device)[0])
        if check and op.self_check is not None:   # a sampler: a later call draws anew
            again[n] = _detached(steps[n]())
    failed: Dict[str, str] = {}
    if check:
        reference = None
        if low_precision(case.dtype) and op.self_check is None:
            ref_case = dataclasses.replace(case, dtype=torch.float32)
            ref_step = table[REFERENCE].build(ref_case, upcast_inputs(inputs))
            torch.manual_seed(inputs.get("seed", seed))
            reference = _detached(ref_step())
            del ref_step
        try:
            if drop_disagreeing:
                failed = disagreements(case, inputs, outputs, reference, again)
            else:
                check_agreement(case, inputs, outputs, reference, again)
        finally:
            outputs.clear()
            again.clear()
    for n in failed:
        del steps[n], first[n]
        warm.pop(n, None)
    return Prepared(case, inputs, steps, first, failed, unbuilt, warm)


def _compile_failed(name: str, e: Exception) -> Optional[str]:
    """Why ``torch.compile`` could not build variant ``name`` (its first call compiles),
    or None for any other variant or error (out of memory ends the run with its line)."""
    if name not in COMPILED or isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        return None
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (f"{name}: torch.compile could not build it ({type(e).__name__}: "
            f"{lines[0] if lines else 'no message'})")


def make_inputs(op: Op, case: Case, seed: int) -> dict:
    """The op's inputs, drawn on a CPU generator seeded with ``seed`` and then moved to
    the case's device: identical data on any device."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    if case.device == "cpu":
        return op.make_inputs(case, gen)
    inputs = op.make_inputs(dataclasses.replace(case, device="cpu"), gen)
    return convert_inputs(inputs, lambda v: v.to(case.device))


def measure(prepared: Prepared, *, reps: int = 10, budget_s: float = 1.0, min_reps: int = 5,
            with_extras: bool = True, bandwidth: Optional[float] = None,
            cpu_time: bool = False, flush_l2: bool = True) -> List[dict]:
    """Time the prepared variants interleaved and return one row per variant.

    The number of rounds is ``reps``, lowered towards ``min_reps`` (or ``reps`` where
    that is fewer) so that each variant's timed calls take about ``budget_s`` (big shapes
    on 2 cores).
    ``cpu_time``: time the calling thread's CPU time, not the wall clock.
    ``flush_l2``: on a GPU, evict L2 before every timed call (see ``timing.py``);
    the CPU is never flushed."""
    case, steps = prepared.case, prepared.steps
    if not steps:   # every variant disagreed (drop_disagreeing): nothing to time
        return []
    # Sized from warm calls only: a first call (Triton's JIT, compile's tracing, the
    # allocator's first pages) can be many times slower, and would size too few rounds.
    # The faster of two warm calls of each (this one and prepare's warm-up): on a shared
    # machine one call can land on another job's burst (a 0.5 ms step measured 0.3 s),
    # which alone cut --reps 9 --budget 3 to 5 rounds.
    slowest = max(min(timed(step, case.device)[0], prepared.warm_s.get(n, math.inf))
                  for n, step in steps.items())
    inner = inner_calls(case.device, slowest)
    rounds = max(min(min_reps, reps), min(reps, int(budget_s / max(slowest * inner, 1e-6))))
    if cpu_time:
        check_cpu_time(case.device)
    flush = l2_flusher(case.device) if flush_l2 else None
    times = time_interleaved(steps, case.device, rounds,
                             time.thread_time if cpu_time else time.perf_counter, inner, flush)
    del flush
    med = {n: statistics.median(ts) for n, ts in times.items()}
    # `x compile` is against the stronger torch.compile baseline that ran: "ahead of
    # compile" must hold against compile-eager-rng too where that one is faster.
    compiled = min((n for n in COMPILED if n in med), key=med.get, default=None)
    moved = bytes_moved(case)
    flushed = is_cuda(case.device) and flush_l2
    rows = []
    for n in steps:
        row = {
            "op": case.op, "variant": n, "batch": case.batch, "dim": case.dim,
            "latent": case.latent, "k": case.k if get_op(case.op).uses_k else None,
            "dtype": case.dtype_name, "device": case.device, "shape": case.shape,
            "median_ms": med[n] * 1e3, "rounds": rounds, "calls_per_sample": inner,
            "clock": "cpu" if cpu_time else "cuda events" if flushed else "wall",
            "l2_flushed": flushed,
            "min_ms": min(times[n]) * 1e3, "max_ms": max(times[n]) * 1e3,
            "first_call_ms": prepared.first_call_s[n] * 1e3,
            "speedup_vs_eager": med[REFERENCE] / med[n] if REFERENCE in med else None,
            "speedup_vs_compile": med[compiled] / med[n] if compiled else None,
            "compile_baseline": compiled,
            # The same ratio taken within each round, then the median: variants that
            # ran back to back share the machine's load, so this one is steadier.
            "paired_speedup_vs_eager": _paired(times, REFERENCE, n),
            "paired_speedup_vs_compile": _paired(times, compiled, n),
            "times_ms": [t * 1e3 for t in times[n]],
            "peak_extra_bytes": None, "saved_bytes": None, "kernels": None,
            "bytes_moved": moved, "gbps": None, "pct_roofline": None, "error": None,
            "error_kind": None,
        }
        if moved is not None:
            row["gbps"] = moved / med[n] / 1e9
            if bandwidth:
                row["pct_roofline"] = 100.0 * moved / med[n] / bandwidth
        if with_extras:
            row["peak_extra_bytes"], row["saved_bytes"], row["kernels"] = extras(
                steps[n], case.device)
        rows.append(row)
    return rows


def _paired(times: Dict[str, List[float]], base: Optional[str], n: str) -> Optional[float]:
    if base not in times:
        return None
    return statistics.median(b / t for b, t in zip(times[base], times[n]))


def run_case(case: Case, variants=None, **kw) -> List[dict]:
    """prepare + measure, freeing the case's tensors before returning. With
    ``drop_disagreeing``, a variant that fails the check gets a row of its own holding
    the check's message under ``"error"`` (and no timings) instead of raising; so does a
    compiled variant torch.compile could not build."""
    prep_kw = {k: kw.pop(k) for k in ("seed", "extra_variants", "warmup", "check",
                                      "drop_disagreeing") if k in kw}
    prepared = prepare(case, variants, **prep_kw)
    try:
        return (measure(prepared, **kw)
                + [error_row(case, n, why) for n, why in prepared.failed.items()]
                + [error_row(case, n, why, "not built") for n, why in prepared.unbuilt.items()])
    finally:
        del prepared


def error_row(case: Case, variant: str, why: str, kind: str = "disagrees") -> dict:
    """The row of a variant that was not timed: the case's keys, ``"error"`` and
    ``"error_kind"`` ("disagrees" with eager, or "not built"), no numbers."""
    return {"op": case.op, "variant": variant, "batch": case.batch, "dim": case.dim,
            "latent": case.latent, "k": case.k if get_op(case.op).uses_k else None,
            "dtype": case.dtype_name, "device": case.device, "shape": case.shape,
            "error": why, "error_kind": kind}


def run_suite(path: str) -> None:
    """``python benchmarks/bench_<op>.py [pytest's flags]``: the suite in ``path`` under
    pytest, which a pytest-benchmark module needs (as a plain script it would only define
    its test, print nothing and exit 0)."""
    import sys

    import pytest
    raise SystemExit(pytest.main([path, *sys.argv[1:]]))


def run_benchmark(benchmark, prepared: Prepared, variant: str, budget_s: float = 2.0) -> None:
    """Time one prepared variant with pytest-benchmark's ``benchmark`` fixture.

    The case was warmed up and checked by :func:`prepare` (an
    :class:`~.core.AgreementError` fails the fixture, hence every variant of the case).
    Rounds: about ``budget_s`` of calls, at least 3, at most 20. On a GPU a round is up
    to 10 back-to-back calls and one sync (``calls_per_round`` in ``extra_info``), like
    :func:`measure`'s samples, but L2 is not flushed: pytest-benchmark times the whole
    round with its own clock, so a flush could not be left out of it
    (``extra_info["l2"]`` says so; ``fastvae bench`` reports flushed times)."""
    import pytest

    if variant not in prepared.steps:
        pytest.skip(f"{variant} does not run on {prepared.case.device}")
    case = prepared.case
    benchmark.group = f"{case.op} {case.shape} {case.dtype_name} {case.device}"
    first = prepared.first_call_s[variant]
    benchmark.extra_info.update(
        op=case.op, shape=case.shape, dtype=case.dtype_name, first_call_ms=first * 1e3,
        bytes_moved=bytes_moved(case), saved_bytes=saved_bytes(prepared.steps[variant]))
    step, inner = prepared.steps[variant], 1
    # sized as measure() sizes its rounds: the faster of this warm call and prepare's
    warm = min(timed(step, case.device)[0], prepared.warm_s.get(variant, math.inf))
    if is_cuda(case.device):
        inner = inner_calls(case.device, warm)
        calls = itertools.count(1)
        benchmark.extra_info["l2"] = "warm"

        def step():  # noqa: F811 - as measure()'s samples: `inner` calls, then one sync
            out = prepared.steps[variant]()
            if next(calls) % inner == 0:
                torch.cuda.synchronize(case.device)
            return out
    benchmark.extra_info["calls_per_round"] = inner
    rounds = max(3, min(20, int(budget_s / max(warm * inner, 1e-6))))
    benchmark.pedantic(step, rounds=rounds, iterations=inner, warmup_rounds=1)
