"""The offline judge's two jobs, each run under one Triton (this interpreter's; another
version through ``compiler.run_version``):

* :func:`compile_catalog`: the specializations the catalog's calls make the JIT build
  (for the "ci" tier, those ``selection.ci_selection`` keeps), compiled once per target
  (or the "ci" tier's cover for one target), with the compiler's report;
* :func:`proxy_cases`: the speed proxy for benchmark cases (sm_90).
"""
from __future__ import annotations

import collections
import math
import os
import time
from typing import Dict, List, Optional, Sequence

import torch

from . import capture, catalog, catalog_classes, compiler, selection
from . import proxy as P

# The issue's bar shapes: (op, B, D, L, K) x dtypes.
BAR = (("elbo", 65536, 784, 64, 1), ("reparameterize", 65536, 784, 64, 1),
       ("reparameterize", 65536, 784, 64, 16), ("iwae", 4096, 784, 32, 5),
       ("iwae", 4096, 784, 32, 50))
BAR_DTYPES = ("fp32", "bf16")


class NoCalls(ValueError):
    """A filter of the catalog's calls that keeps none."""


def compile_catalog(workers: int = 1, tier: str = "ci", targets=capture.TARGETS,
                    kernels: Optional[Sequence[str]] = None,
                    cover_target: Optional[int] = None,
                    calls_with: Sequence[str] = (),
                    caps: Sequence = (compiler.OWN_CAP,)) -> dict:
    """Capture the catalog's ``tier`` and the bar cases (:func:`bar_calls`) under this
    Triton, compile each distinct specialization (the "ci" tier: each one
    ``selection.ci_selection`` keeps) for each target, only those of ``kernels`` (names)
    where given; a JSON-able report. With ``cover_target`` (the "ci" tier), the
    specializations no bar case launches compile for that target alone. ``calls_with``:
    only the calls (the bar cases' too) whose label holds each of these words. ``caps``:
    each specialization compiles once under each register cap given (an int, None for
    none, ``compiler.OWN_CAP`` for the one its launch chose): a cap search, rerunnable."""
    if not caps:
        raise ValueError("caps: give at least one register cap (compiler.OWN_CAP: each "
                         "launch's own)")
    if cover_target is not None and (tier != "ci" or cover_target not in targets):
        raise ValueError(f"cover_target {cover_target} needs the ci tier and one of {targets}")
    t0 = time.perf_counter()
    cpu0 = _cpu_seconds()
    bars = bar_calls()
    entries = [(label, call) for label, call in catalog_classes.tier_calls(tier) + bars
               if all(word in label.split() for word in calls_with)]
    if not entries:
        raise NoCalls(f"no call of the {tier} tier (or bar case) has each of "
                      f"{', '.join(calls_with)} in its label")
    with capture.capturing(targets) as rec:
        catalog.record(rec, entries)
    t1 = time.perf_counter()
    captured = rec.distinct()
    distinct = captured
    everywhere = {(la.kernel, la.key) for la in captured}
    if tier == "ci":   # the benchmark shapes' specializations and a cover of the rest
        bar_labels = {label for label, _ in bars}
        keep = (catalog.always_compiled_labels() | bar_labels).__contains__
        chosen = selection.ci_selection(rec.launches, keep)
        everywhere = selection.kept(rec.launches, bar_labels.__contains__)
        distinct = [la for la in captured if (la.kernel, la.key) in chosen and (
            cover_target is None or la.cc == cover_target or (la.kernel, la.key) in everywhere)]
    if kernels:
        distinct = [la for la in distinct if la.short in kernels]
    compiled = [(la, cap) for la in distinct for cap in caps]
    jobs = [(compiler.with_maxnreg(la.spec, cap), la.cc, False) for la, cap in compiled]
    # a launch's own cap may be one of those given: that job compiles once (a second
    # compile would come from the worker's cache, with no ptxas report to read)
    once = list(dict.fromkeys(jobs))
    done = dict(zip(once, compiler.compile_all(once, workers)))
    results = [dict(done[j]) for j in jobs]
    t2 = time.perf_counter()
    for (la, cap), r in zip(compiled, results):
        r["cap"] = cap
        r["call"] = la.call
        r["kernel"] = la.short
        r["key"] = la.key
        r["shape"] = selection.shape_id(la)
        r["every_target"] = (la.kernel, la.key) in everywhere
    launched = sorted({la.kernel for la in rec.launches})
    idents = {(la.kernel, la.key): la.short for la in distinct}
    per_kernel = collections.Counter(idents.values())
    return dict(triton=compiler.triton_version(), tier=tier, calls=len(entries), caps=list(caps),
                launches=len(rec.launches), targets=list(targets), cover_target=cover_target,
                specializations=len(idents),
                captured=len({(la.kernel, la.key) for la in captured
                              if not kernels or la.short in kernels}),
                per_kernel=dict(per_kernel),
                kernels_launched=launched, results=results,
                tiles=sorted({la.tile() for la in distinct}, key=repr),
                layouts=sorted({catalog.layout_of(la) for la in distinct}, key=repr),
                seconds=dict(capture=t1 - t0, compile=t2 - t1, cpu=_cpu_seconds() - cpu0))


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (ptxas, the workers): the
    cost on a loaded machine, where wall time says little."""
    import resource
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def _stand_in(case, seed: int = 0) -> dict:
    """The benchmark's inputs for ``case``, as ``torch.empty`` on the CPU (drawn on the
    meta device first: nothing is computed, shapes, dtypes and grads are the spec's)."""
    from fastvae.bench.core import Case, convert_inputs, get_op
    op = get_op(case.op)
    meta = Case(case.op, case.batch, case.dim, case.latent, case.k, case.dtype, "meta")
    inputs = op.make_inputs(meta, torch.Generator().manual_seed(seed))
    return convert_inputs(inputs, lambda t: torch.empty(t.shape, dtype=t.dtype)
                          if t.device.type == "meta" else t)


def capture_case(case, variant: str = "fastvae-triton", cc: int = 90) -> List[capture.Launch]:
    """The launches of one step (forward and backward) of ``variant`` on ``case``."""
    label, step = _case_call(case, variant)
    with capture.capturing((cc,)) as rec:
        rec.label = label
        step()
    return rec.launches


def _case_call(case, variant: str = "fastvae-triton"):
    """(label, a zero-argument step: forward and backward of ``variant`` on ``case``)."""
    from fastvae.bench.core import get_op
    op = get_op(case.op)
    return (f"{case.op} {case.shape} {case.dtype_name}",
            lambda: op.variants[variant].build(case, _stand_in(case))())


def bar_calls():
    """The bar cases (``BAR`` x ``BAR_DTYPES``) as catalog calls: what the GPU runs time.
    Their specializations compile for every target under each Triton (the "ci" tier's
    other benchmark-shape calls compile for its cover target alone)."""
    return [(f"bar {label}", step) for label, step in map(_case_call, bar_cases())]


def proxy_cases(cases: Sequence, gpu=P.H200) -> dict:
    """The proxy for each case: per launch the compiled kernel's counts, and per case the
    issue, MUFU and memory times (JSON-able)."""
    compiled: Dict[tuple, dict] = {}
    out: List[dict] = []
    # An empty Triton cache of its own: a cached kernel skips ptxas and its -v report.
    import shutil
    import tempfile
    saved = os.environ.get("TRITON_CACHE_DIR")
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastvae-proxy-")
    try:
        return _proxy_cases(cases, gpu, compiled, out)
    finally:
        shutil.rmtree(os.environ["TRITON_CACHE_DIR"], ignore_errors=True)
        if saved is None:
            os.environ.pop("TRITON_CACHE_DIR")
        else:
            os.environ["TRITON_CACHE_DIR"] = saved


def _proxy_cases(cases, gpu, compiled, out) -> dict:
    from fastvae.bench.core import bytes_moved, get_op
    for case in cases:
        launches = capture_case(case)
        rows = []
        for la in launches:
            if la.ident() not in compiled:
                compiled[la.ident()] = compiler.compile_one(la.spec, la.cc, sass=True)
            comp = compiled[la.ident()]
            if "error" in comp:
                raise RuntimeError(f"{comp['name']}: {comp['error']}")
            warps = la.options()["num_warps"]
            args = {k: v for k, v in la.args.items()}
            args.update(la.constexprs())
            lc = P.count_launch(P.jit_function(la.kernel), comp["sass"], args, la.grid, warps)
            lo, hi = lc.warp_insns()
            mlo, mhi = lc.mufu_warp_insns()
            hot = lc.hot()
            elements = get_op(case.op).largest(case)
            fit = P.programs_per_sm(comp["regs"], warps, comp["shared"], gpu)
            programs = math.prod(la.grid)
            # what the grid puts on an SM at once: a grid of fewer programs than SMs runs
            # one a SM however many would fit
            resident = min(fit, -(-programs // gpu["sms"]))
            rows.append(dict(
                kernel=la.short, name=comp["name"], grid=list(la.grid), warps=warps,
                regs=comp["regs"], spills=comp["spill_stores"],
                hot=hot.where, hot_static=hot.static, hot_shortest=hot.shortest,
                hot_executions=list(hot.executions),
                per_element=[hot.shortest * hot.executions[0] * warps * 32 / elements,
                             hot.static * hot.executions[1] * warps * 32 / elements],
                kernel_per_element=[lo * 32 / elements, hi * 32 / elements],
                warp_insns=[lo, hi], mufu_warp_insns=[mlo, mhi],
                issue_us=[P.issue_seconds(lo, gpu) * 1e6, P.issue_seconds(hi, gpu) * 1e6],
                mufu_us=[P.mufu_seconds(mlo, gpu) * 1e6, P.mufu_seconds(mhi, gpu) * 1e6],
                shared=comp["shared"], programs_per_sm=fit, resident_per_sm=resident,
                warps_per_sm=resident * warps,
                waves=programs / (gpu["sms"] * fit) if fit else None,
                regions=[vars(r) for r in lc.regions], notes=lc.notes,
                scale_bytes=_scale_pass_bytes(la)))
        nbytes = bytes_moved(case)
        memory_s = P.memory_seconds(nbytes, gpu) if nbytes else 0.0
        # at grad_output != 1 (the "hi" path) backward's scale pass reads and writes
        # every saved gradient once more: bytes beyond the op's floor
        scale_s = P.memory_seconds(sum(r["scale_bytes"] for r in rows), gpu)
        main = max(rows, key=lambda r: r["issue_us"][0])   # the launch that dominates
        # each launch's arithmetic: its issue time, or its MUFU time where the special-
        # function units, not the schedulers, are the narrower pipe
        compute = [sum(max(r["issue_us"][i], r["mufu_us"][i]) for r in rows) / 1e6
                   for i in (0, 1)]
        bound = [P.launch_seconds(memory_s + (scale_s if i else 0.0), compute[i],
                                  main["resident_per_sm"]) * 1e6 for i in (0, 1)]
        out.append(dict(op=case.op, shape=case.shape, dtype=case.dtype_name,
                        elements=get_op(case.op).largest(case), bytes=nbytes,
                        memory_us=P.memory_seconds(nbytes, gpu) * 1e6 if nbytes else None,
                        bound_us=bound, overlap=main["resident_per_sm"] > 1,
                        scale_us=scale_s * 1e6,
                        launches=rows))
    return dict(triton=compiler.triton_version(), gpu=gpu, cases=out)


def _scale_pass_bytes(la) -> int:
    """Bytes ``scale_grads_kernel`` moves when grad_output != 1: each gradient slot read
    and written once (tensors are recorded as ``"dtype[shape]"``, sizes as ``N0``..)."""
    if la.short != "scale_grads_kernel":
        return 0
    args = {**la.args, **la.constexprs()}
    total = 0
    for i in range(6):
        n, g = args.get(f"N{i}", 0), args.get(f"G{i}")
        if n and isinstance(g, str):
            total += 2 * int(n) * getattr(torch, g.split("[", 1)[0]).itemsize
    return total


def bar_cases(dtypes: Sequence[str] = BAR_DTYPES, only: Optional[Sequence[str]] = None,
              shapes: Optional[Sequence[tuple]] = None):
    """The proxy's cases: the bar's (those of the ops in ``only``), or each op of ``only``
    at each (B, D, L, K) of ``shapes``."""
    from fastvae.bench.core import DTYPES, Case
    rows = BAR if not shapes else [(op, *shape) for op in only for shape in shapes]
    return [Case(op, b, d, l, k, DTYPES[dt], "cpu") for op, b, d, l, k in rows for dt in dtypes
            if only is None or op in only]


def shape_problem(ops: Sequence[str], shapes: Sequence[tuple]) -> Optional[str]:
    """Why an op of ``ops`` cannot run at a (B, D, L, K) of ``shapes`` (a K other than 1
    for an op without samples, or a size its spec refuses); None where all can."""
    from fastvae.bench.core import get_op
    for b, d, l, k in shapes:
        for name in ops:
            op = get_op(name)
            if k != 1 and not op.uses_k:
                return f"{name} takes no K, got {b},{d},{l},{k}"
            for axis, v in (("dim", d), ("latent", l)):
                why = op.refuses(axis, v)
                if why:
                    return f"{name} needs {why}, got {b},{d},{l},{k}"
    return None


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))
