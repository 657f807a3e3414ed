"""A machine-independent speed proxy: the issue time of a launch's SASS beside the memory
floor of the bytes its op must move (benchmarks/ROOFLINE.md shows the arithmetic).

For a benchmark case, the ``fastvae-triton`` variant's step (forward and backward) runs
under the capture on ``torch.empty`` stand-ins of its inputs; each launch is compiled
as the JIT would build it for sm_90, disassembled, and read:

* regions (``sass.regions``): each loop's body and the code outside loops, with their
  instruction counts (every instruction, and the cheapest path);
* executions (``trips.executions``): each loop's body runs as often as its ``for``
  statement's range says with this launch's arguments, summed over enclosing loops
  and programs; the code outside loops once per program;
* dynamic warp-instructions = warps per program x sum over regions of instructions x
  executions; issue time = that / (SMs x schedulers x clock), one warp-instruction per
  scheduler per cycle (H200: 132 x 4 x 1.98e9 per second);
* MUFU time: the MUFU (special-function) warp-instructions likewise, at 16 results per
  SM per cycle, i.e. 8 scheduler cycles a warp-instruction;
* memory time: ``bench.bytes_moved(case)`` / 4.3 TB/s (the issue's figure for the H200's
  copy bandwidth; the one H200 run here measured 4.075: the higher figure is the stricter);
* occupancy: programs (and warps) resident on an SM, from the registers, warps and shared
  memory the compiler reports and the SM's limits, and no more than the grid puts on an
  SM (a grid of fewer programs than SMs runs one a SM). At one program per SM a program's
  loads and its arithmetic cannot overlap with another program's, so such a launch takes
  at least memory + compute time (issue or MUFU, whichever is longer), not the larger of
  the two (``launch_seconds``). At grad_output != 1 backward's scale pass moves every
  saved gradient again: the ``hi`` bound adds those bytes. The
  floor is the op's bytes: a kernel that reads its data twice (IWAE's two-pass kernel,
  recon_k) or waits on latency at low occupancy is slower than this bound says.

Each count is a range, ``lo`` (cheapest paths; ``if``s on loaded values not taken) to
``hi`` (every instruction of each region; such ``if``s taken). With compile-time flags
the two meet; runtime ``flags`` branches keep them apart.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Dict, List, Optional, Sequence

from . import sass as S
from . import trips

# H200 SXM: SMs, warp schedulers per SM, boost clock, copy bandwidth (see above), MUFU
# results per SM per cycle (CUDA C++ Programming Guide, arithmetic instruction
# throughput, compute capability 9.0).
# Occupancy limits per SM (CUDA occupancy calculator, compute capability 9.0): 64K
# registers allocated per warp in units of 256, 64 warps, 32 programs, 228 KB of shared
# memory of which each program also reserves 1 KB.
H200 = dict(name="H200", sms=132, schedulers=4, clock_hz=1.98e9, copy_bytes_per_s=4.3e12,
            mufu_per_sm_cycle=16, regs_per_sm=65536, reg_unit=256, warps_per_sm=64,
            programs_per_sm=32, shared_per_sm=233472, shared_reserved=1024)

GUESSED = "counted once per program"   # the note of a loop whose passes are not known


def issue_seconds(warp_insns: float, gpu=H200) -> float:
    """Time to issue ``warp_insns`` warp-instructions at one per scheduler per cycle."""
    return warp_insns / (gpu["sms"] * gpu["schedulers"] * gpu["clock_hz"])


def mufu_seconds(mufu_warp_insns: float, gpu=H200) -> float:
    """Time the special-function units need for ``mufu_warp_insns`` (32 lanes each)."""
    return mufu_warp_insns * 32 / (gpu["sms"] * gpu["mufu_per_sm_cycle"] * gpu["clock_hz"])


def memory_seconds(nbytes: float, gpu=H200) -> float:
    return nbytes / gpu["copy_bytes_per_s"]


def programs_per_sm(regs: int, warps: int, shared: int, gpu=H200) -> int:
    """Programs of ``warps`` warps at ``regs`` registers a thread and ``shared`` bytes of
    shared memory that fit on one SM at once."""
    unit = gpu["reg_unit"]
    regs_per_warp = -(-regs * 32 // unit) * unit
    fit = [gpu["programs_per_sm"], gpu["warps_per_sm"] // warps,
           gpu["regs_per_sm"] // (regs_per_warp * warps)]
    if shared:
        fit.append(gpu["shared_per_sm"] // (shared + gpu["shared_reserved"]))
    return min(fit)


def launch_seconds(memory_s: float, issue_s: float, programs: int) -> float:
    """A launch's lower bound: the larger of its memory and issue times where programs
    on an SM overlap each other's loads and arithmetic, their sum where one program
    runs alone."""
    return memory_s + issue_s if programs <= 1 else max(memory_s, issue_s)


@dataclasses.dataclass
class RegionCount:
    where: str                      # "outside loops" or "for at elbo.py:52 (depth 0)"
    static: int
    shortest: int
    mufu_static: int
    mufu_shortest: int
    executions: tuple               # (lo, hi) body runs over the launch (per warp)


@dataclasses.dataclass
class LaunchCount:
    kernel: str
    grid: tuple
    warps: int
    regions: List[RegionCount]
    notes: List[str]

    def warp_insns(self) -> tuple:
        lo = sum(r.shortest * r.executions[0] for r in self.regions) * self.warps
        hi = sum(r.static * r.executions[1] for r in self.regions) * self.warps
        return lo, hi

    def mufu_warp_insns(self) -> tuple:
        lo = sum(r.mufu_shortest * r.executions[0] for r in self.regions) * self.warps
        hi = sum(r.mufu_static * r.executions[1] for r in self.regions) * self.warps
        return lo, hi

    def hot(self) -> RegionCount:
        """The region with the most instructions issued (at ``hi``)."""
        return max(self.regions, key=lambda r: r.static * r.executions[1])


def _for_line(kernel, region: S.Region, file_line) -> Optional[tuple]:
    """The (file, line) of the region's ``for`` statement: its backward branch's line, or
    else the first of its lines that holds a ``for``."""
    candidates = [region.back_line] + sorted(region.lines, key=lambda k: -region.lines[k])
    for c in candidates:
        if c and c[0] and file_line(c[0], c[1]):
            return c
    return None


def count_launch(kernel, sass_text: str, args: Dict[str, object], grid: Sequence[int],
                 num_warps: int) -> LaunchCount:
    """The region counts and executions of one launch of ``kernel`` (its JITFunction)
    whose compiled SASS is ``sass_text``."""
    import ast

    insns = S.parse(sass_text)
    loops, regions = S.regions(insns)
    programs = math.prod(grid)
    notes: List[str] = []
    out: List[RegionCount] = []

    def is_for(file, line):
        try:
            tree = trips._tree(file)[0]
        except OSError:
            return False
        return any(isinstance(n, ast.For) and n.lineno == line for n in ast.walk(tree))

    seen_for: Dict[tuple, int] = {}
    for r in regions:
        if r.loop is None:
            out.append(RegionCount("outside loops", r.static, r.shortest, r.mufu_static,
                                   r.mufu_shortest, (programs, programs)))
            continue
        where = _for_line(kernel, r, is_for)
        depth = loops[r.loop].depth
        if where is None:
            notes.append(f"SASS loop {r.loop}: no for statement in its line info; {GUESSED}")
            execs = (programs, programs)
            label = f"loop {r.loop} (no source line)"
        else:
            got, why = trips.executions(kernel, where[0], where[1], args, tuple(grid))
            notes += [n for n in why if n not in notes]
            if got is None:
                notes.append(f"{where[0].rsplit('/', 1)[-1]}:{where[1]}: trip count unknown; "
                             f"{GUESSED}")
                got = (programs, programs)
            execs = got
            label = f"for at {where[0].rsplit('/', 1)[-1]}:{where[1]} (depth {depth})"
            seen_for[where] = seen_for.get(where, 0) + 1
            if seen_for[where] == 2:
                notes.append(f"{label}: several SASS loops (unrolled or versioned) share this "
                             "for; each counted at its full trip count (an overestimate)")
        out.append(RegionCount(label, r.static, r.shortest, r.mufu_static, r.mufu_shortest,
                               execs))
    return LaunchCount(kernel.fn.__name__, tuple(grid), num_warps, out, notes)


def jit_function(name: str):
    module, attr = name.rsplit(".", 1)
    return getattr(importlib.import_module(module), attr)
