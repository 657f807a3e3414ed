"""Reporting measured rows: the table (plain or markdown), the first-call table, the
environment header and the speed-up plot."""
from __future__ import annotations

import datetime
import math
import os
import platform
import shlex
import sys
from typing import Dict, List

import torch

import fastvae

from ..plots import save_figure
from .core import COMPILE, COMPILE_EAGER_RNG, COMPILED, REFERENCE, VARIANT_ORDER
from .specs._common import native_status
from .timing import is_cuda

# Memory in MiB (2**20 bytes, as the allocator counts), bandwidth in GB/s (1e9 bytes/s,
# as memory bandwidth is quoted): each unit named as it is.
COLUMNS = ("variant", "op", "shape", "dtype", "median ms", "x eager", "x compile",
           "peak MiB", "saved MiB", "kernels", "GB/s", "% roof")


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table_rows(rows: List[dict]) -> List[List[str]]:
    mib = 1 / 2**20
    out = []
    for r in rows:
        out.append([
            r["variant"], r["op"], r["shape"], r["dtype"], _fmt(r["median_ms"], ".3f"),
            _fmt(r["speedup_vs_eager"], ".2f"), _fmt(r["speedup_vs_compile"], ".2f"),
            _fmt(None if r["peak_extra_bytes"] is None else r["peak_extra_bytes"] * mib, ".1f"),
            _fmt(None if r["saved_bytes"] is None else r["saved_bytes"] * mib, ".1f"),
            _fmt(r["kernels"], "d"), _fmt(r["gbps"], ".1f"), _fmt(r["pct_roofline"], ".1f"),
        ])
    return out


def format_table(rows: List[dict], markdown: bool = False) -> str:
    """One table, a row per (case, variant): speed-ups are eager's (or the faster
    compiled variant's) median over this variant's median, so > 1 is faster."""
    body = table_rows(rows)
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |",
                 "|" + "|".join("---" if i < 4 else "---:" for i in range(len(COLUMNS))) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(c), *(len(r[i]) for r in body)) if body else len(c)
              for i, c in enumerate(COLUMNS)]

    def line(cells):
        return "  ".join(c.ljust(w) if i < 4 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(COLUMNS), line(["-" * w for w in widths])] + [line(r) for r in body])


def format_first_calls(rows: List[dict]) -> str:
    """The first calls the table leaves out of the medians: the compile time of the
    compiled variants, beside eager's first call."""
    lines = ["first call (torch.compile's compile; not in the medians):"]
    for r in rows:
        if r["variant"] in COMPILED:
            eager = next((q for q in rows if q["op"] == r["op"] and q["shape"] == r["shape"]
                          and q["dtype"] == r["dtype"] and q["variant"] == REFERENCE), None)
            lines.append(f"  {r['op']:<15} {r['shape']:<28} {r['dtype']}: {r['variant']} "
                         f"{r['first_call_ms'] / 1e3:.2f} s"
                         + (f" (eager first call {eager['first_call_ms']:.1f} ms)"
                            if eager else ""))
    return "\n".join(lines) if len(lines) > 1 else ""


def compile_note(rows: List[dict]) -> str:
    """What ``compile-eager-rng`` is, and what ``x compile`` was taken against, where a
    row of it was timed ('' otherwise)."""
    cases = {(r["op"], r["shape"], r["dtype"]): r.get("compile_baseline") for r in rows
             if r["variant"] == COMPILE_EAGER_RNG}
    if not cases:
        return ""
    stronger = sum(1 for base in cases.values() if base == COMPILE_EAGER_RNG)
    return (f"{COMPILE_EAGER_RNG}: torch.compile(eager, dynamic=False, options="
            "{'fallback_random': True}), inductor drawing the noise with aten's RNG, as eager "
            f"does, where {COMPILE} (the default) generates its own. x compile is against the "
            f"faster of the two: {COMPILE_EAGER_RNG} in {stronger} of {len(cases)} case(s).")


def processor_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str, argv=None) -> dict:
    """The run's machine and software, and its command (``argv``: the flags after
    ``fastvae bench``, as :func:`~.cli.main` was given them; None: this process's)."""
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "processor": processor_name(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "fastvae": fastvae.__version__,
        "device": device, "command": shlex.join(["fastvae", "bench"]
                                                    + (_bench_args() if argv is None else argv)),
    }
    if is_cuda(device):
        env["gpu"] = torch.cuda.get_device_name(device)
    else:  # whether fastvae-torch runs the compiled C row kernel or its aten fallback
        env["native_kernel"] = native_status()
    if hasattr(os, "getloadavg"):   # before the run: what else the machine was doing
        env["load_average"] = list(os.getloadavg())
    env["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "")
    return env


BUSY_LOAD = 1.0   # runnable threads besides the bench's own that make the CPU timings suspect


def busy_note(env: dict) -> str:
    """A warning for wall-clock CPU timings on a machine that was busy ('' otherwise): when
    the run started (``load_average``), or by its end (``load_average_end``, taken after the
    last case: its 1-minute figure less the bench's own torch threads, which were runnable
    throughout). Eager runs many small parallel ops, and each waits for every OpenMP thread
    to get a core back; the fused ops wait once. Measured on a 2-core machine under load:
    the same command gave fastvae-torch's ELBO 4.8x eager, then 0.4x."""
    load = env.get("load_average")
    end = env.get("load_average_end")
    if (not (load or end) or "gpu" in env or env.get("clock", "").startswith("cpu")
            or env.get("torch_threads", 1) < 2):
        return ""
    advice = ("torch's threads wait for busy cores, and wall-clock ratios to eager can be off "
              "several times over. Rerun on an idle machine, or with --threads 1 --cpu-time.")
    if load and load[0] >= BUSY_LOAD:
        return (f"NOTE: load average {load[0]:.1f} on {env['cpu_count']} cores before the "
                f"run: " + advice)
    others = end[0] - env["torch_threads"] if end else 0.0
    if others >= BUSY_LOAD:
        before = f" ({load[0]:.1f} before it)" if load else ""
        return (f"NOTE: load average {end[0]:.1f} on {env['cpu_count']} cores at the end of "
                f"the run{before}, about {others:.1f} besides the bench's "
                f"{env['torch_threads']} threads: " + advice)
    return ""


def header(env: dict) -> str:
    """The lines printed before the table: machine, software, roofline, clock."""
    head = (f"fastvae bench  {env['date']}  {env.get('gpu', env['processor'])}  "
            f"({env['cpu_count']} cores, {env['torch_threads']} threads)  torch {env['torch']}  "
            f"copy {env['copy_bandwidth_gbps']:.1f} GB/s "
            f"({env.get('copy_bandwidth_clock', 'wall clock')})  clock {env['clock']}")
    if "native_kernel" in env:
        head += f"\nC row kernel (fastvae-aten runs without it): {env['native_kernel']}"
    if env.get("omp_wait_policy"):
        head += f"\nOMP_WAIT_POLICY={env['omp_wait_policy']}"
    note = busy_note(env)
    return head + ("\n" + note if note else "")


def variant_color(variant: str) -> str:
    """The variant's colour in every panel (matplotlib's cycle restarts per axes, so a
    panel missing a variant would shift the others' colours)."""
    i = VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else len(VARIANT_ORDER)
    return f"C{i % 10}"


def plot(rows: List[dict], path: str) -> None:
    """Speed-up vs eager against batch size, a line per variant (one colour each across
    panels), a panel per (op, D, L, K, dtype); written atomically (the previous file stays
    whole if writing fails). ``rows`` must hold a timed row: an empty figure is refused."""
    if not rows:
        raise ValueError("no timed row to plot")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: Dict[tuple, List[dict]] = {}
    for r in rows:
        groups.setdefault((r["op"], r["dim"], r["latent"], r["k"], r["dtype"]), []).append(r)
    n = max(1, len(groups))
    cols = min(3, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.6 * nrows), squeeze=False)
    for ax, ((op, d, l, k, dt), rs) in zip(axes.flat, sorted(groups.items(), key=str)):
        for v in VARIANT_ORDER:
            pts = sorted((r["batch"], r["speedup_vs_eager"]) for r in rs if r["variant"] == v)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=v,
                        color=variant_color(v))
        ax.set_xscale("log", base=2)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        shape = rs[0]["shape"].split(" ", 1)[1]  # the case's shape without its B
        ax.set_title(f"{op} {shape} {dt}", fontsize=9)
        ax.set_xlabel("batch size B")
        ax.set_ylabel("speed-up vs eager")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _bench_args() -> list:
    """The flags after ``fastvae bench``: sys.argv holds ``bench`` first when the run came
    through the ``fastvae`` command (``fastvae bench``, ``python -m fastvae bench``), not
    through ``python -m fastvae.bench``."""
    args = sys.argv[1:]
    return args[1:] if args[:1] == ["bench"] else args
