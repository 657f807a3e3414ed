"""``fastvae bench``: its flags, and the run that measures a grid and prints the table."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from typing import List

import torch

from .. import error_lines as el
from .. import options as o
from ..checkpoint import write_json
from .core import DTYPES, OPS, VARIANT_ORDER, variant_names
from .grids import (dtype_problem, grid_from_args, k_dest, max_elements_of, ops_of,
                    quick_ops, quick_shapes, size_problem)
from .harness import run_case
from .report import (busy_note, compile_note, environment, format_first_calls,
                     format_table, header, plot)
from .timing import check_cpu_time, copy_bandwidth, is_cuda

DESCRIPTION = "Benchmark the fused VAE ops against eager PyTorch and torch.compile."


# Flag values are checked as argparse parses them: a bad one is a one-line usage error
# naming the flag, before minutes of measuring, not a traceback from deep in a spec.
def _max_elements(s: str) -> int:
    n = o.non_negative_int(s)
    if n < 1:   # no case fits under 0 (nor is 0 "no limit": nothing ever said so)
        raise o.BadValue(f"must be at least 1, got {n}: it is the most elements a case's "
                         "largest tensor may hold, so 0 would skip every case")
    return n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``fastvae bench`` flags (an op with a sample axis K adds its ``k_flag``)."""
    parser.add_argument("--quick", action="store_true",
                        help=f"a small subset (on the CPU: {quick_shapes()}; on a GPU, each "
                             "spec's quick_cuda grid): under 2 minutes on 2 CPU cores")
    parser.add_argument("--ops", type=o.names_from(OPS), default=None,
                        help=f"comma list of {','.join(OPS)} (default: all; with --quick, "
                             f"{quick_ops()})")
    parser.add_argument("--variants", type=o.names_from(VARIANT_ORDER), default=None,
                        help=f"comma list of {','.join(VARIANT_ORDER)} (default: every one "
                             "that runs on the device; eager always runs)")
    parser.add_argument("--batch", type=o.positive_ints, default=None,
                        help="batch sizes for every op (default: per op, the grids of its "
                             "spec in fastvae/bench/specs/)")
    parser.add_argument("--dim", type=o.positive_ints, default=None,
                        help="data dims D for every op (default: per op, 784 and/or 3072); "
                             "dmol: pixels per channel H*W of its 3-channel images")
    parser.add_argument("--latent", type=o.positive_ints, default=None,
                        help="latent dims L for every op (default: per op, as --dim); dmol: "
                             "the mixture's components M")
    for op in OPS.values():
        if op.k_flag:
            parser.add_argument(op.k_flag, type=o.positive_ints, default=None,
                                help=f"samples for {op.name} (default "
                                     f"{','.join(map(str, op.k_values))})")
    parser.add_argument("--dtype", type=o.names_from(DTYPES), default=None,
                        help="comma list of fp32 (CPU default), bf16, fp16, fp64 (GPU "
                             "default fp32,bf16); bf16/fp16 are checked against eager in fp32")
    parser.add_argument("--device", type=o.device, default="auto",
                        help=f"{o.DEVICES} (default: auto)")
    parser.add_argument("--threads", type=o.positive_threads, default=None,
                        help="torch.set_num_threads for the run (default: torch's, one per core)")
    parser.add_argument("--reps", type=o.positive_int, default=None,
                        help="most interleaved rounds (default 15, quick 9); --budget lowers "
                             "them on big shapes, to no fewer than 5 or --reps")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time the calling thread's CPU time (time.thread_time) instead of "
                             "the wall clock: robust to other processes on a shared machine; "
                             "CPU only, needs --threads 1")
    parser.add_argument("--warm-l2", action="store_true",
                        help="GPU: time back-to-back calls with L2 left warm instead of "
                             "flushing it before each call (the default; CPU runs never flush)")
    parser.add_argument("--budget", type=o.positive_float, default=None,
                        help="seconds of timed calls per variant per case; fewer rounds on big "
                             "shapes, never under 5 unless --reps asks for fewer (default 1.5, "
                             "quick 0.5)")
    parser.add_argument("--max-elements", type=_max_elements, default=None,
                        help="skip cases whose largest tensor has more elements, at least 1 "
                             "(default 2**27 on CPU, 2**29 on CUDA)")
    parser.add_argument("--no-extras", action="store_true",
                        help="skip memory, saved-bytes and kernel measurements")
    parser.add_argument("--gpu-train-step", action="store_true",
                        help="the large-batch GPU training step: train_mlp and train_conv at "
                             f"B={GPU_TRAIN_BATCH}, D=784 on CUDA (dtypes as --dtype); without "
                             "CUDA it says so and measures nothing (exit status 2)")
    # --json and --plot are written after the whole run: checked now, or it would be lost
    parser.add_argument("--json", metavar="FILE", type=o.file_to_write, default=None,
                        help="write rows and environment (sizes in bytes: peak_extra_bytes, "
                             "saved_bytes, bytes_moved; the table shows MiB, 2**20 bytes, "
                             "and GB/s, 1e9 bytes/s); written also when no case was measured "
                             "(no rows, the skipped cases listed; exit status 2); default: none")
    parser.add_argument("--plot", metavar="FILE", type=o.file_to_write, default=None,
                        help="speed-up vs batch size, a line per variant in one colour across "
                             "panels (matplotlib; the format follows the suffix: "
                             f"{', '.join(PLOT_SUFFIXES)}); not written when nothing was timed "
                             "(default: none)")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--proxy", action="store_true",
                        help="no timing, no GPU: the offline speed proxy of the Triton kernels at "
                             "the bar shapes (ELBO B=65536 D=784 L=64; IWAE B=4096 K=5,50; "
                             "reparameterize B=65536 L=64 K=1,16): each launch compiled for "
                             "sm_90 under Triton 3.6.0 (.triton36, from ./dev setup), the static "
                             "SASS instructions of its hot loop per data element, the issue-time "
                             "lower bound beside the H200's memory floor (4.3 TB/s) and their "
                             "ratio (benchmarks/ROOFLINE.md). Honours --ops (elbo, iwae, "
                             "reparameterize), --dtype (default fp32,bf16) and --json; other flags are refused")


class NothingMeasured(Exception):
    """Every case of the grid was skipped: the run has no row to print or plot."""


def run(args: argparse.Namespace) -> int:
    """``fastvae bench``: run the chosen grid, print the table, write JSON / plot.
    Returns the exit status: 0; 1 when a variant disagreed with eager (its case's other
    variants, and every other case, are still timed, printed and written), or when
    torch.compile could not build a compiled variant (likewise); 2 when the
    grid asked for needs CUDA and there is none, or when no case was measured (the JSON
    is still written, its rows empty and its skipped list saying why; no figure is)."""
    if getattr(args, "gpu_train_step", False):
        why = gpu_train_step_unavailable(args.device)
        if why:
            print(f"fastvae bench --gpu-train-step: skipped, {why}", file=sys.stderr)
            return 2
        args.ops = list(GPU_TRAIN_OPS)
        args.batch, args.dim = [GPU_TRAIN_BATCH], [784]
        args.device = "cuda" if args.device == "auto" else args.device
    if args.proxy:
        return run_proxy(args)
    try:
        rows = measure_grid(args)
    except NothingMeasured as e:
        print(f"fastvae bench: error: {e}", file=sys.stderr)
        return 2
    failed = [r for r in rows if r.get("error")]
    if failed:
        wrong = [r for r in failed if r["error_kind"] == "disagrees"]
        unbuilt = [r for r in failed if r["error_kind"] == "not built"]
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} variant(s) disagreed with eager and were not timed: "
                         + "; ".join(f"{r['variant']} on {r['op']} {r['shape']} {r['dtype']}"
                                     for r in wrong))
        if unbuilt:   # every case's compile fails alike (no C++ compiler): say it once
            names = list(dict.fromkeys(r["variant"] for r in unbuilt))
            parts.append("; ".join(
                f"{next(r['error'] for r in unbuilt if r['variant'] == n)} on "
                f"{sum(r['variant'] == n for r in unbuilt)} case(s)" for n in names)
                + f"; --variants without {', '.join(names)} times the others alone")
        print("fastvae bench: error: " + "; ".join(parts)
              + ("; nothing was timed, so no figure was written"
                 if args.plot and len(failed) == len(rows) else ""), file=sys.stderr)
        return 1
    return 0


GPU_TRAIN_BATCH = 65536
GPU_TRAIN_OPS = ("train_mlp", "train_conv")


def gpu_train_step_unavailable(device: str) -> str:
    """Why the large-batch GPU training-step case cannot run here ('' when it can)."""
    if device not in ("auto", "cuda") and not str(device).startswith("cuda:"):
        return f"it runs on CUDA only, not --device {device}"
    if not torch.cuda.is_available():
        return ("no CUDA device (torch.cuda.is_available() is False): a B=65536 Conv step "
                "is minutes on a CPU")
    return ""


def run_proxy(args: argparse.Namespace) -> int:
    """``fastvae bench --proxy``: the offline speed proxy's table (and JSON)."""
    from .offline import judge, report
    ops = [op for op in (args.ops or [b[0] for b in judge.BAR])]
    unknown = sorted(set(ops) - {b[0] for b in judge.BAR})
    if unknown:
        print(f"fastvae bench --proxy: no bar shape for {unknown}; the proxy covers "
              f"{sorted({b[0] for b in judge.BAR})}", file=sys.stderr)
        return 2
    out = report.proxy_run(ops=ops, dtypes=args.dtype or list(judge.BAR_DTYPES))
    print(report.proxy_table(out))
    if args.json:
        out.pop("stderr", None)
        write_json(out, args.json)
    return 0


def measure_grid(args: argparse.Namespace) -> List[dict]:
    """What :func:`run` does, returning the rows; :class:`NothingMeasured` (after the
    JSON is written) when every case was skipped. On ``cuda:N`` that device is the
    current one throughout: whatever asks for "the current device" (a stream, an event,
    a synchronize) means the one the case runs on."""
    device = o.auto_device(args.device)
    with torch.cuda.device(device) if is_cuda(device) else contextlib.nullcontext():
        return _measure_grid(args, device)


def _measure_grid(args: argparse.Namespace, device: str) -> List[dict]:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.cpu_time:
        check_cpu_time(device)
    skipped: list = []
    grid = grid_from_args(args, device, skipped)
    reps = args.reps if args.reps is not None else (9 if args.quick else 15)
    budget = args.budget if args.budget is not None else (0.5 if args.quick else 1.5)
    warm_l2 = args.warm_l2
    env = environment(device, getattr(args, "argv", None))
    # The rows' clock: a CPU-time rate over a wall-clock bandwidth would skew % roof.
    bw = copy_bandwidth(device, clock=time.thread_time if args.cpu_time else time.perf_counter)
    env["copy_bandwidth_gbps"] = bw / 1e9
    env["clock"] = "cpu (thread_time)" if args.cpu_time else "wall"
    env["copy_bandwidth_clock"] = "thread CPU time" if args.cpu_time else "wall clock"
    if is_cuda(device):
        # flushed: each call between CUDA events, as triton.testing.do_bench (the host's
        # enqueue while the flush runs is not in the span)
        env["clock"] = ("wall, L2 warm" if warm_l2 else
                        "GPU (CUDA events around each call), L2 flushed before each call")
    print(header(env), flush=True)
    rows: List[dict] = []
    t0 = time.perf_counter()
    unavailable: dict = {}
    for i, case in enumerate(grid):
        names = None
        if args.variants:
            have = variant_names(case.op, device)
            names = [n for n in args.variants if n in have]
            for n in args.variants:
                if n not in have:
                    unavailable.setdefault(n, set()).add(case.op)
        print(f"[{i + 1}/{len(grid)}] {case.op} {case.shape} {case.dtype_name} ...",
              file=sys.stderr, flush=True)
        # A variant that disagrees gets an error row; the case's others are still timed.
        rows += run_case(case, names, reps=reps, budget_s=budget, with_extras=not args.no_extras,
                         bandwidth=bw, cpu_time=args.cpu_time, flush_l2=not warm_l2,
                         drop_disagreeing=True)
    env["wall_s"] = time.perf_counter() - t0
    # the header judged the load before the run; other jobs may have started since
    started_busy = bool(busy_note(env))
    if hasattr(os, "getloadavg"):
        env["load_average_end"] = list(os.getloadavg())
    timed_rows = [r for r in rows if not r.get("error")]
    print(format_table(timed_rows, markdown=args.markdown))
    if compile_note(timed_rows):
        print(compile_note(timed_rows))
    if not started_busy and busy_note(env):
        print(busy_note(env))
    for r in rows:
        if r.get("error"):
            print("not timed, " + ("disagrees with eager: " if r["error_kind"] == "disagrees"
                                   else "not built: ") + r["error"])
    first = format_first_calls(timed_rows)
    if first:
        print(first)
    if unavailable:
        print(f"not run (no such variant of the op on {device}): "
              + "; ".join(f"{n} for {', '.join(sorted(ops))}"
                          for n, ops in unavailable.items()))
    if skipped:
        print("skipped (largest tensor over --max-elements): "
              + "; ".join(f"{c.op} {c.shape}" for c in skipped))
    print(f"speed-ups are eager's (the faster compiled variant's) median over the variant's; "
          f"{len(grid)} cases in {env['wall_s']:.0f} s")
    if args.json:  # atomic: a failed write keeps the last run's file whole
        write_json({"environment": env, "rows": rows,
                    "skipped": [dict(dataclasses.asdict(c), dtype=c.dtype_name)
                                for c in skipped]}, args.json)
    if args.plot and timed_rows:   # an empty figure would pass for a result
        plot(timed_rows, args.plot)
    if not rows:
        why = (f"every case's largest tensor is over --max-elements "
               f"{max_elements_of(args, device)}: raise it or pick "
               "smaller shapes" if skipped else "the grid is empty")
        raise NothingMeasured(f"no case was measured ({why})"
                              + ("; no figure was written" if args.plot else ""))
    return rows


# What matplotlib's Agg canvas writes, by suffix (a short fixed list: importing matplotlib
# to ask it would slow every parse).
PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".eps", ".ps")


# What --proxy honours (argparse dests); it compiles fixed bar shapes and times nothing.
PROXY_FLAGS = ("proxy", "ops", "dtype", "json")


def _flags_given(parser: argparse.ArgumentParser, args, which) -> list:
    """The flags (each by its last spelling) whose dest passes ``which`` and whose value
    is not the default: what the command line set."""
    return [a.option_strings[-1] for a in parser._actions
            if a.option_strings and which(a.dest)
            and getattr(args, a.dest, a.default) != a.default]


def _refuse_k_flags_of_ops_not_run(parser: argparse.ArgumentParser, args, ops) -> None:
    """--k-iwae without iwae among the ops would be a run that looks as if it honoured it."""
    for name, op in OPS.items():
        if op.k_flag and name not in ops and getattr(args, k_dest(op.k_flag)) is not None:
            fix = ("drop it" if args.gpu_train_step else f"drop it or add {name} to --ops")
            parser.error(f"argument {op.k_flag}: sets K of {name}, which this run does not "
                         f"run (ops: {', '.join(ops)}); {fix}")


def _refuse_what_the_proxy_ignores(parser: argparse.ArgumentParser, args) -> None:
    """A flag the proxy would silently drop (--batch, --markdown, --cpu-time...) is a
    usage error, not a run that looks as if it honoured it."""
    if args.plot:  # speed-ups against batch size: the proxy times nothing
        parser.error("argument --plot: --proxy times nothing, so there is no speed-up to plot; "
                     "drop one of them")
    given = _flags_given(parser, args, lambda dest: dest not in PROXY_FLAGS + ("help",))
    if given:
        parser.error(f"argument{'s' if len(given) > 1 else ''} {', '.join(given)}: --proxy "
                     f"does not honour {'them' if len(given) > 1 else 'it'} (it compiles the "
                     f"bar shapes and times nothing; it takes --ops, --dtype and --json); drop "
                     f"{'them' if len(given) > 1 else 'it'} or --proxy")


def main(argv=None) -> int:
    parser = o.Parser(prog="fastvae bench", description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.argv = None if argv is None else [str(a) for a in argv]   # the JSON's command
    if args.proxy:
        _refuse_what_the_proxy_ignores(parser, args)
    if args.gpu_train_step:   # its cases are fixed: a flag it would override is refused
        given = _flags_given(parser, args, lambda dest: dest in ("ops", "batch", "dim"))
        if given:
            parser.error(f"argument {', '.join(given)}: --gpu-train-step runs "
                         f"{' and '.join(GPU_TRAIN_OPS)} at B={GPU_TRAIN_BATCH}, D=784; drop "
                         f"{', '.join(given)} or --gpu-train-step")
    try:   # train's and eval's own check of --device
        o.resolve_device(args.device)
    except ValueError as e:
        parser.error(f"argument {e}")
    device = o.auto_device(args.device)
    # Sizes an op cannot take would end the run at its first case, minutes in.
    problem = None if args.proxy else (size_problem(
        GPU_TRAIN_OPS if args.gpu_train_step else ops_of(args, device),
        [784] if args.gpu_train_step else args.dim, args.latent)
        or dtype_problem(args.dtype, device))
    if problem:
        parser.error(f"argument {problem}")
    if not args.proxy:
        _refuse_k_flags_of_ops_not_run(
            parser, args, GPU_TRAIN_OPS if args.gpu_train_step else ops_of(args, device))
    if args.cpu_time:
        threads = args.threads or torch.get_num_threads()
        if torch.device(device).type != "cpu" or threads != 1:
            parser.error(f"--cpu-time times the calling thread: it needs device cpu and "
                         f"--threads 1 (have {device}, {threads} threads)")
    if args.plot and args.json and os.path.abspath(args.plot) == os.path.abspath(args.json):
        parser.error(f"arguments --json, --plot: both name {args.plot}, and the figure would "
                     "replace the JSON; give each its own file")
    if args.plot and os.path.splitext(args.plot)[1].lower() not in PLOT_SUFFIXES:
        parser.error(f"argument --plot: the figure's format follows its suffix, one of "
                     f"{', '.join(PLOT_SUFFIXES)}; got {args.plot!r}")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("argument --plot: needs matplotlib (pip install matplotlib, or the "
                         "package's [train] extra)")
    if args.proxy:
        from .offline.judge import BAR_DTYPES
        wrong = [d for d in args.dtype or () if d not in BAR_DTYPES]
        if wrong:
            parser.error(f"argument --dtype: the proxy judges {', '.join(BAR_DTYPES)}, not "
                         f"{', '.join(wrong)}")
    try:
        return run(args)
    except OSError as e:  # the table is printed; the file system refused --json or --plot
        print(f"fastvae bench: error: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, MemoryError) as e:
        from .offline.compiler import JudgeFailed, ToolMissing
        if isinstance(e, (JudgeFailed, ToolMissing)):   # an installation to mend
            print(f"fastvae bench: error: {e}", file=sys.stderr)
            return 2
        line = (el.out_of_memory_line("fastvae bench", e, "try smaller sizes or --max-elements")
                or el.disk_full_line("fastvae bench", e,
                                     "free space there, or --variants without compile"))
        if line is None:
            raise
        print(line, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastvae bench: interrupted; --json and --plot files are written only at the end, "
              "so none was", file=sys.stderr)
        return 130
