"""Running the judge under several Triton versions, and its tables."""
from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional, Sequence

from . import compiler
from .proxy import GUESSED

TRITON_GPU_MACHINES = "3.6.0"   # the Triton of the project's GPU machines
# The target each Triton compiles the CI tier for (``judge.compile_catalog``'s
# ``cover_target``): the GPU machines' own pair, and the other target under the latest,
# so that each specialization compiles under both Tritons and for both targets at half
# the cost of all four pairs (the bar cases' compile under all four).
COVER_TARGETS = {TRITON_GPU_MACHINES: 90, "latest": 80}


def pinned_triton() -> Optional[str]:
    """The folder holding Triton 3.6.0 (``./dev setup`` installs it in ``.triton36``;
    ``FASTVAE_TRITON36`` names another), or None where there is none."""
    path = os.environ.get("FASTVAE_TRITON36")
    if not path:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__)))))
        path = os.path.join(root, ".triton36")
    return path if os.path.isdir(os.path.join(path, "triton")) else None


def pinned_triton_missing() -> str:
    """Why :func:`pinned_triton` found none, naming the folder it looked in: the one the
    user gave in ``FASTVAE_TRITON36``, or ``.triton36``."""
    given = os.environ.get("FASTVAE_TRITON36")
    if given:
        return f"FASTVAE_TRITON36={given} holds no triton package"
    return "not found: ./dev setup installs it in .triton36"


def compile_versions(paths: Sequence[Optional[str]], workers: int, tier: str = "ci",
                     popen: Callable[..., subprocess.Popen] = subprocess.Popen,
                     cover_targets: Optional[Sequence[Optional[int]]] = None) -> List[dict]:
    """The catalog's ``tier`` compiled under each Triton (None: this interpreter's), side
    by side in child processes started with ``popen``; ``cover_targets``: each one's
    ``cover_target`` (None: every target). Each gets ``workers`` compile processes: the
    versions finish at different times, and a share of the cores fixed at the start would
    leave some idle after the first one is done."""
    args = ["compile", "--workers", str(max(1, workers)), "--tier", tier]
    covers = list(cover_targets) if cover_targets is not None else [None] * len(paths)
    if len(covers) != len(paths):
        raise ValueError(f"{len(paths)} Tritons but {len(covers)} cover targets")
    with ThreadPoolExecutor(max_workers=len(paths)) as ex:
        return list(ex.map(lambda p, c: compiler.run_version(
            p, args + ([] if c is None else ["--cover-target", str(c)]), popen=popen),
            paths, covers))


def _selected(run: dict) -> str:
    captured = run.get("captured", run["specializations"])
    return "" if captured == run["specializations"] else \
        f" compiled of {captured} captured (fastvae.bench.offline.selection)"


def _cover(run: dict) -> str:
    cc = run.get("cover_target")
    if cc is None:
        return ""
    alone = len({r["key"] for r in run["results"] if not r["every_target"]})
    return f", all but the bar cases' ({alone}) for sm_{cc} alone"


def _failing(results: Sequence[dict]) -> List[dict]:
    """The compiles that failed or spilled."""
    return [r for r in results if "error" in r or r.get("spill_stores")]


def compile_summary(run: dict) -> str:
    res = run["results"]
    bad = _failing(res)
    secs = run["seconds"]
    return (f"Triton {run['triton']['version']}: {run['calls']} calls, {run['launches']} launches, "
            f"{run['specializations']} distinct specializations "
            f"({', '.join(f'{k} {v}' for k, v in sorted(run['per_kernel'].items()))})"
            f"{_selected(run)}{_cover(run)}; "
            f"{len(res)} compiles, {len(bad)} failing or spilling; capture "
            f"{secs['capture']:.0f} s, compile {secs['compile']:.0f} s (wall), "
            f"{secs.get('cpu', float('nan')):.0f} CPU s{_per_cap(run)}")


def _per_cap(run: dict) -> str:
    """A line a register cap where the run compiled under several (``--maxnreg``):
    compiles, how many fail or spill, and the registers they used."""
    caps = run.get("caps") or [compiler.OWN_CAP]
    if caps == [compiler.OWN_CAP]:
        return ""
    lines = []
    for cap in caps:
        res = [r for r in run["results"] if r.get("cap", compiler.OWN_CAP) == cap]
        regs = sorted(r["regs"] for r in res if r.get("regs"))
        used = f", {regs[0]}-{regs[-1]} registers" if regs else ""
        lines.append(f"\n  maxnreg {'none' if cap is None else cap}: {len(res)} compiles, "
                     f"{len(_failing(res))} failing or spilling{used}")
    return "".join(lines)


def compile_table(runs: Sequence[dict]) -> str:
    lines = ["| Triton | kernel [constexprs, warps] (pointer types) | sm | regs | spill st/ld (B) "
             "| stack (B) | shared (B) | ld.global v4/v2/all | widest / allowed (B) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        v = run["triton"]["version"]
        for r in sorted(run["results"], key=lambda r: (r["name"], r["cc"])):
            if "error" in r:
                lines.append(f"| {v} | {r['name']} | {r['cc']} | build error | | | | | |")
                continue
            lines.append(
                f"| {v} | {r['name']} | {r['cc']} | {r['regs']} | {r['spill_stores']}/"
                f"{r['spill_loads']} | {r.get('stack', '?')} | {r['shared']} | {r['ld_v4']}/"
                f"{r['ld_v2']}/{r['ld_all']} | {r['ld_widest']} / {r['ld_allowed']} |")
    return "\n".join(lines + [""] + [compile_summary(r) for r in runs])


def proxy_run(triton_path: Optional[str] = None, ops=None, dtypes=None, shapes=None) -> dict:
    """The proxy under the GPU machines' Triton (``triton_path``, default
    :func:`pinned_triton`), in a child process; under this one where none is installed
    (the table says which). ``shapes``: (B, D, L, K) in place of the bar shapes."""
    path = triton_path or pinned_triton()
    args = ["proxy", "--here"]
    if ops:
        args += ["--ops", ",".join(ops)]
    if dtypes:
        args += ["--dtype", ",".join(dtypes)]
    for shape in shapes or ():
        args += ["--shape", ",".join(str(n) for n in shape)]
    return compiler.run_version(path, args)


def _range(pair, fmt="{:.0f}") -> str:
    """``static`` or, where the cheapest path is shorter, ``static (cheapest)``."""
    lo, hi = pair
    return fmt.format(hi) if abs(hi - lo) <= 0.005 * max(abs(hi), 1e-9) else \
        f"{fmt.format(hi)} ({fmt.format(lo)})"


def proxy_table(out: dict) -> str:
    """One row per launch: the hot loop's instructions, instructions per element of the
    largest tensor, issue and MUFU time; a row per case with the totals beside the
    memory floor."""
    gpu = out["gpu"]
    head = (f"Speed proxy: SASS of Triton {out['triton']['version']} for sm_90; {gpu['name']} "
            f"issue {gpu['sms']} SMs x {gpu['schedulers']} x {gpu['clock_hz'] / 1e9:.2f} GHz, "
            f"MUFU {gpu['mufu_per_sm_cycle']}/SM/cycle, memory {gpu['copy_bytes_per_s'] / 1e12:.1f}"
            " TB/s.\nCounts are static: every instruction of a loop's body issues on each pass (predicated "
            "ones too); in parentheses, the cheapest path where a branch can skip code (a "
            "masked-out row, grad_output == 1). issue/memory <= 50% is the target.\n"
            "insns/elem: the hot loop's per element of the largest tensor; kernel: every region's "
            "(a two-pass kernel's both passes, code outside loops).\n"
            "occupancy: programs that fit on an SM at once (warps resident at this grid). bound: "
            "max(memory, compute), compute being each launch's issue or MUFU time, whichever is "
            "longer; their sum where the main launch has one program resident per SM (its loads "
            "and arithmetic cannot overlap another program's; so too a grid of fewer programs "
            "than SMs). A bound's first figure adds the bytes backward's scale pass moves "
            "at grad_output != 1 (a loss written -op(...)): every saved gradient read and "
            "written again; in parentheses, without it (grad_output == 1, as the bench's loss "
            "modules). % roof: the memory floor over the bound, an upper "
            "estimate (latency and re-read data are not in it).")
    if out["triton"]["version"] != TRITON_GPU_MACHINES:
        head += (f"\nNOTE: these counts are Triton {out['triton']['version']}'s, not "
                 f"{TRITON_GPU_MACHINES}'s (the GPU machines')"
                 + (f" ({pinned_triton_missing()})." if pinned_triton() is None else "."))
    cols = ("case", "kernel", "grid x warps", "regs", "occupancy", "hot loop insns",
            "insns/elem", "kernel insns/elem", "issue us", "MUFU us", "memory us", "issue/memory", "bound us",
            "% roof")
    rows, guessed = [], []
    for c in out["cases"]:
        case = f"{c['op']} {c['shape']} {c['dtype']}"
        tot = [0.0, 0.0]
        mtot = [0.0, 0.0]
        for la in c["launches"]:
            tot = [tot[0] + la["issue_us"][0], tot[1] + la["issue_us"][1]]
            mtot = [mtot[0] + la["mufu_us"][0], mtot[1] + la["mufu_us"][1]]
            mem = c["memory_us"]
            guesses = [n for n in la["notes"] if GUESSED in n]
            if guesses:
                guessed.append(f"  * {la['kernel']} ({c['op']} {c['dtype']}): "
                               + "; ".join(guesses))
            rows.append([case, la["kernel"] + (" *" if guesses else ""),
                         f"{la['grid'][0]} x {la['warps']}", str(la["regs"]),
                         f"{la['programs_per_sm']} ({la['warps_per_sm']}w)",
                         _range((la["hot_shortest"], la["hot_static"])),
                         _range(la["per_element"], "{:.1f}"),
                         _range(la["kernel_per_element"], "{:.1f}"),
                         _range(la["issue_us"], "{:.1f}"),
                         _range(la["mufu_us"], "{:.1f}"), "", _range(
                             [u / mem * 100 for u in la["issue_us"]], "{:.0f}%") if mem else "-",
                         "", ""])
            case = ""
        mem = c["memory_us"]
        bound = c["bound_us"]
        ktot = [sum(la["kernel_per_element"][i] for la in c["launches"]) for i in (0, 1)]
        rows.append(["", "(all launches)", "", "", "", "", "", _range(ktot, "{:.1f}"),
                     _range(tot, "{:.1f}"),
                     _range(mtot, "{:.1f}"), f"{mem:.1f}" if mem else "-",
                     _range([u / mem * 100 for u in tot], "{:.0f}%") if mem else "-",
                     _range(bound, "{:.1f}") + ("" if c["overlap"] else " (no overlap)"),
                     _range([mem / b * 100 for b in bound], "{:.0f}%")
                     if mem and all(bound) else "-"])
    widths = [max(len(col), *(len(r[i]) for r in rows)) for i, col in enumerate(cols)]
    fmt = lambda cells: "  ".join(x.ljust(w) if i < 2 else x.rjust(w)  # noqa: E731
                                  for i, (x, w) in enumerate(zip(cells, widths)))
    foot = ["* a loop whose trip count the source did not give: counted once per program, "
            "which over- or under-counts it (the JSON's notes hold every note):", *guessed]
    return "\n".join([head, fmt(cols), fmt(["-" * w for w in widths]), *map(fmt, rows),
                      *(foot if guessed else [])])
