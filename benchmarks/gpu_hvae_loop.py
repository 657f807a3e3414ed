"""Issue 11's GPU bar in one script (``benchmarks/gpu_session.sh`` runs it after the probe):
a VDVAE-like top-down pass of 75 latent groups at batch 16, each group drawing
``z = mu_q + sigma_q * eps`` and its KL to a learned prior, forward and backward, and
single groups at the CPU bar's shapes (B=32, 16x32x32) and (B=4096, L=64).

    python benchmarks/gpu_hvae_loop.py --out DIR [--budget-s 90]   # CUDA: DIR/hvae_loop.{json,md}
    python benchmarks/gpu_hvae_loop.py --smoke --out DIR           # CPU, tiny: the code paths

Groups: 16 latent channels at VDVAE ImageNet-64's decoder resolutions, 2, 3, 7, 15 and 31
groups at 1, 4, 8, 16 and 32 pixels, and 17 at 64 (VDVAE has 12 there; 17 makes the
issue's 75). Variants: ``eager`` (VDVAE's pattern, ``fastvae.bench.specs.sample_with_kl``),
``fastvae`` (``sample_with_kl``, backend triton), the eager and fastvae steps captured in a
CUDA graph, and on the loop ``compile`` (torch.compile of the group function, static
shapes) and ``compile-step-graphs`` (torch.compile of the whole step's forward,
``mode="reduce-overhead"``: CUDA graphs; its ``ms`` compares with the others' ``graph ms``).

Columns: ``ms`` = CUDA-event time per step over back-to-back steps (host included: at batch
16 the host is the bottleneck); ``host us`` = wall time to enqueue one step; ``graph ms`` =
replay of the step captured in a CUDA graph; ``graph x eager graph`` = eager's graph replay
over this row's (like for like: no host in either); ``graph x uncaptured eager`` = eager's
uncaptured ``ms`` over this row's graph replay (what capturing buys against eager as
written); ``launches/group`` = kernel launches per group
per step (fwd+bwd, torch.profiler), the issue asks 1 + 1. Under ``--smoke`` (CPU, batch 2)
``ms`` is ``cpu wall ms``, the wall time per step (the CPU has no events), and
``launches/group`` is "-" (the profiler counts CUDA kernels only: 0 would read as none).
Each fastvae step is checked first with the benchmark's own check: the KL and every
gradient against the float64 closed form of its own z.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import torch

import fastvae
from fastvae import options as o
from fastvae.bench.core import Case
from fastvae.bench.specs.sample_with_kl import NAMES, check, eager_sample_with_kl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_report import (add_out, device_for, failed, fmt, make_out, triton_version,  # noqa: E402
                        write_report)
from gpu_timing import graph_ms, host_us, kernel_times, timed_gpu  # noqa: E402

LOOP = [(1, 2), (4, 3), (8, 7), (16, 15), (32, 31), (64, 17)]   # (resolution, groups)
SMOKE_LOOP = [(1, 2), (4, 2)]
T0 = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def group_shapes(batch, loop):
    return [(batch, 16, r, r) for r, n in loop for _ in range(n)]


def make_groups(shapes, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    groups = []
    for s in shapes:
        def draw(scale=1.0):
            return (scale * torch.randn(s, device=device, generator=g)).requires_grad_()
        groups.append({"leaves": [draw(), draw(0.5), draw(), draw(0.5)],
                       "dz": torch.randn(s, device=device, generator=g),
                       "dkl": torch.randn(s[0], device=device, generator=g)})
    return groups


def make_step(groups, fn=None, forward_all=None):
    """One fwd+bwd over every group: the cotangents are fixed tensors, as a decoder's
    upstream gradient would be. ``fn`` runs one group; ``forward_all`` (a whole-step
    compile) takes every group's leaves at once and returns each group's (z, kl)."""
    cots = [c for gr in groups for c in (gr["dz"], gr["dkl"])]

    def step():
        for gr in groups:
            for t in gr["leaves"]:
                t.grad = None
        leaves = [gr["leaves"] for gr in groups]
        pairs = [fn(*ls) for ls in leaves] if forward_all is None else forward_all(leaves)
        outs = [t for pair in pairs for t in pair]
        torch.autograd.backward(outs, cots)
        return outs
    return step


def every_group(leaves):
    """The eager group function over every group: what a whole-step compile traces."""
    return [eager_sample_with_kl(*ls) for ls in leaves]


def compiled_variants(groups):
    """torch.compile as a user would apply it to the loop: the group function (static
    shapes: the loop's six are under the recompile limit, where the default would turn
    dynamic at the second), and the whole step's forward with CUDA graphs
    (``mode="reduce-overhead"``), the like-for-like baseline of fastvae's graph replay."""
    group = torch.compile(eager_sample_with_kl, dynamic=False)
    whole = torch.compile(every_group, mode="reduce-overhead", dynamic=False)
    # the like-for-like row first: the stage's time limit may cut the second compile
    return [("compile-step-graphs", make_step(groups, forward_all=whole)),
            ("compile", make_step(groups, group))]


def check_fastvae(groups, fn):
    """Each group through the benchmark's own check of sample_with_kl
    (``fastvae.bench.specs.sample_with_kl.check``): eps standard normal, the KL and every
    gradient the float64 closed form of its own z; raises AgreementError otherwise."""
    for gr in groups:
        for t in gr["leaves"]:
            t.grad = None
        z, kl = fn(*gr["leaves"])
        torch.autograd.backward([z, kl], [gr["dz"], gr["dkl"]])
        mu = gr["leaves"][0]
        inputs = dict(zip(NAMES, gr["leaves"]), dz=gr["dz"], dkl=gr["dkl"])
        case = Case("sample_with_kl", mu.shape[0], 0, mu[0].numel(), dtype=mu.dtype,
                    device=mu.device.type)
        check(case, inputs, (z.detach(), kl.detach(), *(t.grad for t in gr["leaves"])),
              f"fastvae, a {tuple(mu.shape)} group")


def launches(step, device, n_groups):
    ks = kernel_times(step, device)
    total = sum(c for c, _ in ks.values())
    names: dict = {}
    for k, (c, _) in ks.items():   # full names: torch's elementwise kernels share a prefix
        names[k[:160]] = names.get(k[:160], 0) + c / n_groups
    return total / n_groups, names


def measure(name, step, device, reps, n_groups, graph=True):
    for _ in range(3):
        step()
    row = {"variant": name,
           "ms": statistics.median(timed_gpu(step, device, reps) for _ in range(3)),
           "host_us": host_us(step, device, reps)}
    # None on the CPU: the profiler counts CUDA kernels only, and 0 would read as "none"
    row["launches_per_group"], row["kernels"] = (
        launches(step, device, n_groups) if device.type == "cuda" else (None, {}))
    if graph and device.type == "cuda":
        try:
            row["graph_ms"] = graph_ms(step, device, reps)
        except Exception as e:  # reported; the other variants still run
            row["graph_error"] = f"{type(e).__name__}: {e}"[:300]
    log(f"  {name}: {row['ms']:.3f} ms, host {row['host_us']:.0f} us, graph "
        f"{row.get('graph_ms', row.get('graph_error'))}, {_launches(row)} launches/group")
    return row


def run_case(label, shapes, device, backend, reps, budget_s, with_compile, cases,
             saved=lambda: None):
    """The case, appended to ``cases`` at once, ``saved()`` called after each row (a stage
    killed at its time limit keeps what it has measured)."""
    log(f"case {label}: {len(shapes)} group(s)")
    res = {"case": label, "groups": len(shapes), "shapes": sorted({str(s) for s in shapes}),
           "rows": []}
    cases.append(res)
    if time.monotonic() - T0 > budget_s:   # the check alone takes a while at 75 groups
        res["rows"].append({"variant": "all", "error": "skipped: budget spent"})
        return res
    groups = make_groups(shapes, device)

    def fused(*a):
        return fastvae.sample_with_kl(*a, backend=backend)
    check_fastvae(groups, fused)
    variants = [("eager", make_step(groups, eager_sample_with_kl)),
                (f"fastvae-{backend}", make_step(groups, fused))]
    if with_compile:
        variants += compiled_variants(groups)
    for name, step in variants:
        if time.monotonic() - T0 > budget_s:
            res["rows"].append({"variant": name, "error": "skipped: budget spent"})
            continue
        try:   # compile's rows are not captured again: one is graphs already
            res["rows"].append(measure(name, step, device, reps, len(shapes),
                                       graph=not name.startswith("compile")))
        except Exception as e:  # one failed variant must not lose the others
            res["rows"].append({"variant": name, "error": f"{type(e).__name__}: {e}"[:300]})
            log(f"  {name}: FAILED {res['rows'][-1]['error']}")
        ratios(res["rows"])
        saved()
    return res


def ratios(rows) -> None:
    eager = next((r for r in rows if r["variant"] == "eager" and "ms" in r), None)
    for r in rows:
        if eager and "ms" in r:
            r["x_eager"] = eager["ms"] / r["ms"]
            if r.get("graph_ms"):
                r["graph_x_uncaptured_eager"] = eager["ms"] / r["graph_ms"]
                if eager.get("graph_ms"):
                    r["graph_x_eager_graph"] = eager["graph_ms"] / r["graph_ms"]


def _launches(row) -> str:
    n = row.get("launches_per_group")
    return "-" if n is None else f"{n:.1f}"


def markdown(res):
    ms = "ms" if res.get("cuda") else "cpu wall ms"   # CUDA-event time only on CUDA
    out = [f"# sample_with_kl on the GPU (issue 11): {res['device']}, torch {res['torch']}, "
           f"triton {res['triton']}", ""]
    for c in res["cases"]:
        out += [f"## {c['case']}: {c['groups']} group(s), fastvae checked against the float64 "
                "closed forms", "",
                f"| variant | {ms} | x eager | host us | graph ms | graph x eager graph "
                "| graph x uncaptured eager | launches/group |",
                "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in c["rows"]:
            if "error" in r:
                out.append(f"| {r['variant']} | {r['error']} | | | | | | |")
                continue
            gs = " | ".join((fmt(r.get("graph_ms"), ".3f"),
                             fmt(r.get("graph_x_eager_graph"), ".2f"),
                             fmt(r.get("graph_x_uncaptured_eager"), ".2f")))
            out.append(f"| {r['variant']} | {r['ms']:.3f} | {fmt(r.get('x_eager'), '.2f')} | "
                       f"{r['host_us']:.0f} | {gs} | {_launches(r)} |")
        out.append("")
        for r in c["rows"]:
            if r.get("kernels"):
                out.append(f"- {r['variant']}, kernels per group: " + "; ".join(
                    f"{k[:90]} x{v:g}" for k, v in r["kernels"].items()))
        out.append("")
    return "\n".join(out)


def main(argv=None):
    p = o.Parser(description=__doc__.split("\n\n")[0])
    add_out(p)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, backend torch")
    p.add_argument("--budget-s", type=o.positive_float, default=90.0,
                   help="stop starting new variants after this many seconds")
    p.add_argument("--reps", type=o.count, default=20, help="steps per timing (back-to-back)")
    args = p.parse_args(argv)
    device = device_for("gpu_hvae_loop.py", args.smoke)
    if device is None:
        return 2
    cuda = device.type == "cuda"
    backend = "triton" if cuda else "torch"
    res = {"device": torch.cuda.get_device_name(device) if cuda else "cpu (smoke)",
           "torch": torch.__version__, "triton": triton_version(), "cuda": cuda, "cases": []}
    loop = SMOKE_LOOP if args.smoke else LOOP
    batch = 16 if cuda else 2
    cases = [(f"VDVAE-like loop, batch {batch}", group_shapes(batch, loop), cuda)]
    if cuda:  # before the loop, whose compile variant may take what is left of the budget
        cases = [("one group (32, 16, 32, 32)", [(32, 16, 32, 32)], False),
                 ("one group (4096, 64)", [(4096, 64)], False)] + cases
    make_out(p, args.out)

    def saved(quiet=True):
        write_report(args.out, "hvae_loop", res, markdown(res) + "".join(
            f"\nFAILED {f}" for f in res.get("failed", [])), quiet=quiet)
    for label, shapes, with_compile in cases:
        try:
            run_case(label, shapes, device, backend, args.reps, args.budget_s, with_compile,
                     res["cases"], saved)
        except Exception as e:   # (run_case saves after each row: this one's line too)
            log(f"case {label}: FAILED {type(e).__name__}: {e}")
            res.setdefault("failed", []).append(f"{label}: {type(e).__name__}: {e}"[:300])
            saved()
        if cuda:
            torch.cuda.empty_cache()
    saved(quiet=False)
    # a failed variant fails the stage, as in the probe and the tiles (a skipped one not)
    return 1 if res.get("failed") or any(failed(c["rows"]) for c in res["cases"]) else 0


if __name__ == "__main__":
    from fastvae.bench.extras import script_main
    sys.exit(script_main(main, "gpu_hvae_loop.py"))
