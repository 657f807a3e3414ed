"""``python -m fastvae.bench.offline``: the offline judge from the command line.

    compile [--tier ci|bench|full|classes] [--kernel NAME,...] [--calls WORD,...]
            [--workers N] [--cover-target CC] [--maxnreg CAP,...] [--json FILE]
        capture the catalog under this Triton and compile its specializations for
        sm_80 and sm_90 (the report: registers, spills, loads; --json writes it all),
        with --kernel only those of the kernels named (e.g. iwae_bound_onepass_kernel),
        with --calls only the calls whose label holds each word (e.g. fp16,INT64);
        "ci" is what tests/test_kernels_compile.py compiles (fastvae.bench.offline.
        selection: the benchmark shapes' and a cover of the rest), "bench" every
        specialization of every semantic combination at the benchmark shapes, "full"
        those and the odd shapes (hours), "classes" each op's launch classes
        (catalog_classes: a spill audit, one --kernel at a time); every tier adds the
        bar cases (judge.BAR); --cover-target 80|90 compiles the ci tier's specializations past
        the bar cases' for that target alone, as CI does; --maxnreg compiles each
        specialization under each register cap given (a number of registers a thread,
        "none", or "own": the cap its launch chose), e.g. --maxnreg own,none,80,96: a
        cap search, the summary a line a cap
    table [--tier ci|bench|full|classes] [--triton PATH ...] [--workers N]
        the compile report as markdown, under this Triton and each folder given
        (e.g. .triton36): what benchmarks/RESULTS.md quotes
    proxy [--ops elbo,iwae,reparameterize] [--dtype fp32,bf16] [--shape B,D,L[,K] ...]
          [--triton PATH] [--json FILE]
        the speed proxy at the bar shapes (sm_90; under the Triton in PATH, default
        .triton36 when present): what ``fastvae bench --proxy`` prints; with --shape,
        each op of --ops at each shape given instead (K: samples, for iwae and
        reparameterize)
"""
from __future__ import annotations

import os
import sys
import warnings

from ... import options as o
from ...checkpoint import write_json
from . import capture, catalog, catalog_classes, compiler, judge, report


def _triton_folder(path):
    """A folder holding a ``triton`` package (what ``./dev setup`` puts in .triton36)."""
    if not os.path.isdir(os.path.join(path, "triton")):
        raise o.BadValue(f"{path} holds no triton package (a folder made by pip install "
                         "--target, e.g. .triton36)")
    return path


def main(argv=None) -> int:
    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
    p = o.Parser(prog="python -m fastvae.bench.offline",
                 description="the offline judge of the Triton kernels")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compile")
    c.add_argument("--tier", choices=catalog_classes.TIERS, default="ci")
    c.add_argument("--kernel", type=o.names_from(_kernel_names), default=None)
    c.add_argument("--calls", type=_words, default=())
    c.add_argument("--workers", type=o.processes, default=judge.default_workers())
    c.add_argument("--cover-target", type=_target, default=None,
                   help="with --tier ci: compile the specializations no bar case "
                        "launches for this target alone (80 or 90)")
    c.add_argument("--maxnreg", type=_caps, default=[compiler.OWN_CAP],
                   help="register caps to compile each specialization under, e.g. "
                        "own,none,80,96 (own: its launch's)")
    c.add_argument("--json", type=o.file_to_write, default=None)
    t = sub.add_parser("table")
    t.add_argument("--triton", type=_triton_folder, action="append", default=[])
    t.add_argument("--workers", type=o.processes, default=judge.default_workers())
    t.add_argument("--tier", choices=catalog_classes.TIERS, default="ci")
    x = sub.add_parser("proxy")
    x.add_argument("--ops", type=o.names_from(sorted({b[0] for b in judge.BAR})), default=None)
    x.add_argument("--dtype", type=o.names_from(judge.BAR_DTYPES), default=list(judge.BAR_DTYPES))
    x.add_argument("--shape", type=_shape, action="append", default=None,
                   help="B,D,L or B,D,L,K in place of the bar shapes (repeatable; needs --ops)")
    x.add_argument("--triton", type=_triton_folder, default=None)
    x.add_argument("--here", action="store_true", help="run under this interpreter's Triton")
    x.add_argument("--json", type=o.file_to_write, default=None)
    args = p.parse_args(argv)
    if args.cmd == "proxy" and args.here and args.triton is not None:
        x.error("--here runs this interpreter's Triton, --triton another's; give one")
    if args.cmd == "compile" and args.cover_target is not None and args.tier != "ci":
        c.error("argument --cover-target: the cover is the ci tier's; the others compile "
                "every specialization for every target")
    if args.cmd == "proxy" and args.shape:
        if not args.ops:
            x.error("argument --shape: name the ops to run at it with --ops")
        problem = judge.shape_problem(args.ops, args.shape)
        if problem:
            x.error(f"argument --shape: {problem}")
    try:
        return _run(args)
    except (compiler.ToolMissing, compiler.JudgeFailed, capture.Interpreted,
            judge.NoCalls) as e:
        print(f"python -m fastvae.bench.offline: error: {e}", file=sys.stderr)
        return 2


def _kernel_names() -> list:
    """The kernels of ``fastvae.kernels`` by name (``iwae_bound_onepass_kernel``)."""
    try:
        names = [k.rsplit(".", 1)[-1] for k in catalog.kernels()]
    except ImportError:
        raise o.BadValue("no Triton here to list the kernels (pip install triton, or "
                         "./dev setup)") from None
    if not names:   # interpreted kernels are no JITFunctions: "unknown X; have " said nothing
        raise o.BadValue("no kernel to compile: they were imported under TRITON_INTERPRET=1, "
                         "which interprets them; run without it")
    return names


def _words(value) -> tuple:
    """Words of a call's label, comma-separated (``fp16,INT64``, ``K=5``)."""
    words = tuple(w.strip() for w in str(value).split(",") if w.strip())
    if not words:
        raise o.BadValue(f"must name words of a call's label, e.g. fp16,INT64; got {value!r}")
    return words


MIN_CAP, MAX_CAP = 16, 255   # registers a thread that ptxas can be held to


def _caps(value) -> list:
    """Register caps, comma-separated: numbers of registers a thread (16 to 255),
    ``none`` (uncapped) or ``own`` (each launch's own); a repeat is dropped."""
    caps = []
    for word in (w.strip() for w in str(value).split(",") if w.strip()):
        if word == compiler.OWN_CAP:
            cap = word
        elif word == "none":
            cap = None
        else:
            try:
                cap = int(word)
            except ValueError:
                raise o.BadValue(f"must be register counts, none or own, got {word!r}") from None
            if not MIN_CAP <= cap <= MAX_CAP:
                raise o.BadValue(f"a cap must be {MIN_CAP} to {MAX_CAP} registers, got {cap}")
        if cap not in caps:
            caps.append(cap)
    if not caps:
        raise o.BadValue(f"must name register caps (e.g. own,none,80,96), got {value!r}")
    return caps


def _target(value) -> int:
    """A compile target, 80 or 90 (sm_80, sm_90)."""
    if str(value).strip() not in ("80", "90"):
        raise o.BadValue(f"must be 80 or 90 (sm_80, sm_90), got {value!r}")
    return int(value)


def _shape(value) -> tuple:
    """``B,D,L`` or ``B,D,L,K``: positive integers, K 1 unless given."""
    parts = value.split(",") if isinstance(value, str) else []
    if len(parts) not in (3, 4):
        raise o.BadValue(f"must be B,D,L or B,D,L,K (e.g. 65536,64,8,5), got {value!r}")
    sizes = [o.positive_int(p.strip()) for p in parts]
    return tuple(sizes + [1] * (4 - len(sizes)))


def _run(args) -> int:
    if args.cmd != "proxy" or args.here:   # the work runs under this interpreter's Triton
        try:
            import triton  # noqa: F401
        except ImportError:
            raise compiler.ToolMissing("no Triton here (pip install triton, or ./dev setup; "
                                       "proxy without --here runs under .triton36)") from None
    if args.cmd == "compile":
        out = judge.compile_catalog(workers=args.workers, tier=args.tier, kernels=args.kernel,
                                    cover_target=args.cover_target, calls_with=args.calls,
                                    caps=args.maxnreg)
        print(report.compile_summary(out), file=sys.stderr)
    elif args.cmd == "table":
        runs = report.compile_versions([None, *args.triton], workers=args.workers,
                                       tier=args.tier)
        print(report.compile_table(runs))
        return 0
    else:
        if args.here:
            out = judge.proxy_cases(judge.bar_cases(args.dtype, args.ops, args.shape))
        else:
            out = report.proxy_run(args.triton, args.ops, args.dtype, args.shape)
        print(report.proxy_table(out))
    if args.json:  # atomic: a failed write keeps the last file whole
        write_json(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
