"""Which of the catalog's specializations the CI compiles (``judge.compile_catalog`` with
``tier="ci"``): every one a benchmark-shape call (or a call at the edge of spilling,
``catalog.always_compiled_labels``) launches, and of the rest, a covering subset.

Each distinct specialization costs one to eight seconds of one core per target and Triton
version (the larger unrolled tiles the most), and CI runs on two cores. Past the benchmark
shapes, most of the catalog's calls (a switch turned on at an odd shape, in fp32 and in
bf16) launch specializations that differ from compiled ones only in a combination: the
same code (kernel, constexprs, warps) with the same arguments divisible by 16, and pointer
types the kernel is also compiled with. What is left out is that combination: a register
count that only a dtype mix of a code shape reaches. :func:`ci_selection` keeps, greedily
in capture order, launches until every one of these is compiled:

* each code shape: kernel, compile-time constants (the switches and the tile), warps;
* each code shape with each set of arguments divisible by 16 it was launched with (which
  loads the compiler may vectorize);
* each kernel with each pointer-type signature it was launched with (dtypes, dummies).

The "bench" and "full" tiers compile every specialization.

The bar cases' specializations (``judge.bar_calls``: what a GPU run times) compile for
every target under each Triton. The rest may compile for one target under each Triton
(``judge.compile_catalog``'s ``cover_target``; ``report.COVER_TARGETS``), each still under
both Tritons and for both targets: a spill that one target alone shows under one Triton
alone is what that leaves unchecked, outside the bar cases.
"""
from __future__ import annotations

import json
from typing import Callable, Iterable, List, Set, Tuple

from .compiler import divisible

Ident = Tuple[str, str]   # (kernel, the JIT's cache key): one per target


def features(launch) -> Set[tuple]:
    """What compiling ``launch`` checks that another launch may check as well."""
    spec = json.loads(launch.spec)
    # a register cap (register_caps.MAXNREG) compiles the same code to another allocation
    shape = (launch.kernel, tuple(sorted((k, repr(v)) for k, v in launch.constexprs().items())),
             spec["options"]["num_warps"], spec["options"].get("maxnreg"))
    return {("code", shape), ("alignment", shape, divisible(spec)),
            ("pointers", launch.kernel, tuple(spec["signature"].values()))}


def shape_id(launch) -> str:
    """The specialization apart from Triton's version and the target: one string for the
    same launch under every Triton (the JIT's key also holds options that differ)."""
    spec = json.loads(launch.spec)
    opt = spec["options"]
    # newer Tritons also list the constexprs' (empty) attributes
    attrs = [[k, v] for k, v in zip(spec["attrs_keys"], spec["attrs_vals"]) if v]
    return json.dumps([spec["name"], spec["signature"], spec["constant_keys"],
                       spec["constant_vals"], attrs, opt["num_warps"], opt.get("maxnreg")])


def kept(launches: Iterable, keep: Callable[[str], bool]) -> Set[Ident]:
    """The (kernel, key) of every launch a catalog call for which ``keep(label)`` holds
    made (first or not): what compiles for every target."""
    return {(la.kernel, la.key) for la in launches if keep(la.call)}


def ci_selection(launches: Iterable, keep: Callable[[str], bool]) -> Set[Ident]:
    """The (kernel, key) of the launches to compile: every one a catalog call for which
    ``keep(label)`` holds launched (first or not), then a cover of the others'
    :func:`features`."""
    launches = list(launches)
    first, chosen = {}, kept(launches, keep)
    for la in launches:
        first.setdefault((la.kernel, la.key), la)
    covered = set().union(*(features(first[i]) for i in chosen)) if chosen else set()
    rest: List[Tuple[Ident, Set[tuple]]] = [(i, features(la)) for i, la in first.items()
                                            if i not in chosen]
    while True:
        rest = [(i, f - covered) for i, f in rest]
        best = max(rest, key=lambda r: len(r[1]), default=None)
        if best is None or not best[1]:
            return chosen
        chosen.add(best[0])
        covered |= best[1]
