"""Per-kernel probe for one GPU session (``benchmarks/gpu_session.sh`` runs it after the
bar stage): for each fused op at the bar shapes, the GPU time of each kernel it
launches, the GPU time per step, the host time to enqueue one step, the bytes it must
move as a % of the copy bandwidth measured here, and a CUDA-graph replay of the ELBO step
(GPU time without the host in the way).

    python benchmarks/gpu_probe.py --out DIR [--budget-s 120]   # CUDA: DIR/probe.{json,md}
    python benchmarks/gpu_probe.py --ncu-target                 # 2 ELBO steps per dtype, for ncu
    python benchmarks/gpu_probe.py --ncu-target iwae            # 2 IWAE K=5 steps (fp32), for ncu
    python benchmarks/gpu_probe.py --smoke --out DIR            # CPU, tiny shapes: the code paths
    python benchmarks/gpu_probe.py --host-profile --out DIR     # where the host time goes
    python benchmarks/gpu_probe.py --captured-bar --out DIR     # the bar, CUDA graphs

Columns: ``gpu ms`` = CUDA-event time per step over back-to-back steps (L2 warm; under
``--smoke``, ``cpu wall ms``: wall time per step, the CPU having no events);
``host us`` = median wall time of the Python call that enqueues one step (fwd+bwd);
``% roof`` = bytes the fused op must move (``fastvae.bench.core.bytes_moved``) over
``gpu ms``, against the device-to-device copy bandwidth; ``kernels`` = each kernel's
device time per step (torch.profiler), so the row kernel's share is visible.

``--captured-bar``: the bar's cases (ELBO at B=65536, D=784, L=64, fp32 and bf16, for eager
(pytorch/examples' loss), ``torch.compile`` of it and fastvae; reparameterize at B=65536,
L=64, K=1 and 16, fp32, eager and fastvae), each variant's fwd+bwd step built and checked
against eager by ``fastvae.bench.prepare`` as the bar stage does, then captured in a CUDA
graph and replayed back-to-back: GPU time with no host in the way, for every variant
alike, beside the uncaptured bar -> captured_bar.{md,json}.

The parts beside it: gpu_steps.py (the steps timed, the shapes), gpu_timing.py (events,
profiler, CUDA graphs, copy bandwidth), gpu_report.py (the log and report files, shared
with gpu_tiles.py and gpu_hvae_loop.py), gpu_captured_bar.py and gpu_host_profile.py.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import torch

from fastvae import options as o
from fastvae.bench.core import bytes_moved

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_captured_bar import captured_bar, captured_markdown  # noqa: E402
from gpu_host_profile import host_profile  # noqa: E402
from gpu_report import (add_out, T0, device_for, environment, failed, fmt, log,  # noqa: E402
                        make_out, write_report)
from gpu_steps import BAR, DTYPES, SMOKE, elbo_step, iwae_step, reparam_step  # noqa: E402
from gpu_timing import copy_bandwidth, graph_ms, host_us, kernel_times, timed_gpu  # noqa: E402


def probe_case(name, make, device, bw, reps, with_graph):
    step, case = make()
    for _ in range(3):  # compile and warm up
        step()
    gpu = statistics.median(timed_gpu(step, device, reps) for _ in range(3))
    host = host_us(step, device, reps)
    kernels = kernel_times(step, device)
    nbytes = bytes_moved(case)
    row = {"case": name, "gpu_ms": gpu, "host_us": host, "bytes": nbytes,
           "gbps": nbytes / (gpu / 1e3) / 1e9 if nbytes else None,
           "pct_roof": 100 * nbytes / (gpu / 1e3) / bw if nbytes and bw else None,
           "kernels": {k: {"per_step": c, "us": us} for k, (c, us) in kernels.items()}}
    if with_graph:
        try:
            row["graph_ms"] = graph_ms(step, device, reps)
        except Exception as e:  # reported, the other cases still run
            row["graph_error"] = f"{type(e).__name__}: {e}"[:300]
    del step
    return row


def cases(shape, device, backend, smoke):
    out = []
    for dt in ("fp32", "bf16"):
        out.append((f"elbo {dt}", lambda dt=dt: elbo_step(shape, DTYPES[dt], device, backend), True))
    for k in (1, 16):
        out.append((f"reparameterize K={k} fp32",
                    lambda k=k: reparam_step(shape, k, torch.float32, device, backend), False))
    for k in ((5,) if smoke else (5, 50)):
        out.append((f"iwae K={k} fp32",
                    lambda k=k: iwae_step(shape, k, torch.float32, device, backend), False))
    if not smoke:
        # Two 8-warp programs of the pair kernel fit an SM (RESULTS.md, "two programs an
        # SM"); one of 16 warps gives each scheduler as many warps, in one program.
        out.append(("iwae K=5 fp32, pair kernel at 16 warps", with_config(
            "IWAE_PAIRS_WARPS", 16, lambda: iwae_step(shape, 5, torch.float32, device, backend)),
            False))
        # The bench's IWAE batch: the sample-warp kernel (one read of recon_k; its sweep's
        # re-read of d/drecon_k is off DRAM only where L2 holds it, which the offline proxy
        # cannot tell) against the two-pass kernel it replaced there.
        def k50_bf16():
            return iwae_step(BENCH_IWAE, 50, torch.bfloat16, device, backend)
        name = f"iwae K=50 bf16 B={BENCH_IWAE['batch']}"
        out.append((name, k50_bf16, False))
        out.append((f"{name}, two-pass kernel", with_config(
            "SAMPLE_WARPS_LIMITS", (65, 64, 512, 784, 32), k50_bf16), False))
        # fp32 training at 64 latents takes the pair kernel's register cap: no spill, one
        # program an SM, where ptxas aims at two and spills 4-8 bytes in some launches
        # (RESULTS.md, "The pair IWAE kernel's launch classes"): which costs less?
        def k5_l64():
            return iwae_step(dict(BENCH_IWAE, latent=64), 5, torch.float32, device, backend)
        out.append(("iwae K=5 fp32 L=64 B=4096 (pair kernel, capped)", k5_l64, False))
        out.append(("iwae K=5 fp32 L=64 B=4096, pair kernel uncapped", with_config(
            "iwae_pairs_maxnreg", lambda *a: {}, k5_l64, module="register_caps"), False))
    return out


BENCH_IWAE = dict(batch=4096, dim=784, latent=32)   # fastvae bench's IWAE shape on CUDA


def with_config(name, value, make, module="iwae_configs"):
    """``make``'s step with ``<module>.<name>`` (a tile table or rule of the Triton
    backend's, by default its IWAE kernels') set to ``value`` while it runs."""
    import importlib
    module = importlib.import_module(f"fastvae.backends.triton_backend.{module}")

    def wrapped():
        step, case = make()

        def run():
            saved = getattr(module, name)
            setattr(module, name, value)
            try:
                return step()
            finally:
                setattr(module, name, saved)
        return run, case
    return wrapped


def markdown(res):
    lines = [f"# fastvae per-kernel probe: {res['device']}, torch {res['torch']}, "
             f"triton {res['triton']}, backend {res['backend']}",
             f"shape {res['shape']}; copy bandwidth {res['copy_gbps']:.0f} GB/s "
             f"(read + write of a {res['copy_bytes'] >> 20} MiB device copy)", "",
             f"| case | {'gpu' if res['cuda'] else 'cpu wall'} ms | graph ms | host us | GB/s "
             "| % roof | kernels (us per step, launches) |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"| {r['case']} | FAILED: {r['error']} | | | | | |")
            continue
        ks = "; ".join(f"{k[:40]} {v['us']:.1f} x{v['per_step']:g}"
                       for k, v in list(r["kernels"].items())[:6])
        lines.append(f"| {r['case']} | {r['gpu_ms']:.3f} | {fmt(r.get('graph_ms'), '.3f')} | "
                     f"{r['host_us']:.0f} | {fmt(r['gbps'], '.0f')} | {fmt(r['pct_roof'], '.0f')} "
                     f"| {ks} |")
    return "\n".join(lines)


def main(argv=None):
    p = o.Parser(description=__doc__.split("\n\n")[0])
    add_out(p)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, backend torch")
    p.add_argument("--ncu-target", nargs="?", const="elbo", choices=("elbo", "iwae"),
                   help="run 2 fwd+bwd steps at the bar shape, nothing else: ELBO (the "
                        "default; per dtype) or IWAE K=5 fp32")
    p.add_argument("--host-profile", action="store_true",
                   help="only the host-time profile of small fused calls -> host_profile.txt")
    p.add_argument("--captured-bar", action="store_true",
                   help="only the bar's cases (ELBO, reparameterize) with every variant "
                        "captured in a CUDA graph -> captured_bar.md, .json")
    p.add_argument("--budget-s", type=o.positive_float, default=150.0,
                   help="stop starting new cases after this many seconds")
    p.add_argument("--reps", type=o.count, default=20, help="steps per timing (back-to-back)")
    args = p.parse_args(argv)
    device = device_for("gpu_probe.py", args.smoke)
    if device is None:
        return 2
    cuda = device.type == "cuda"
    backend = "triton" if cuda else "torch"
    shape = SMOKE if args.smoke else BAR
    if args.ncu_target == "iwae":
        step, _ = iwae_step(shape, 5, torch.float32, device, backend)
        for _ in range(2):
            step()
    elif args.ncu_target:
        for dt in DTYPES:
            step, _ = elbo_step(shape, DTYPES[dt], device, backend)
            for _ in range(2):
                step()
    if args.ncu_target:
        if cuda:
            torch.cuda.synchronize()
        return 0
    make_out(p, args.out)
    if args.host_profile:
        host_profile(device, backend, args.out)
        return 0
    bw_bytes = (64 << 20) if args.smoke else (1 << 30)
    bw = copy_bandwidth(device, bw_bytes)
    log(f"copy bandwidth {bw / 1e9:.0f} GB/s")
    res = environment(device, shape, bw, backend=backend, copy_bytes=bw_bytes, rows=[])
    if args.captured_bar:
        captured_bar(device, bw, args.reps, args.budget_s, args.smoke, res["rows"],
                     lambda: write_report(args.out, "captured_bar", res,
                                          captured_markdown(res), quiet=True))
        write_report(args.out, "captured_bar", res, captured_markdown(res))
        return 1 if failed(res["rows"]) else 0
    for name, make, with_graph in cases(shape, device, backend, args.smoke):
        if time.monotonic() - T0 > args.budget_s:
            res["rows"].append({"case": name, "error": "skipped: probe budget spent"})
            continue
        try:
            res["rows"].append(probe_case(name, make, device, bw, args.reps, with_graph))
            r = res["rows"][-1]
            log(f"case {name}: {'gpu' if cuda else 'cpu wall'} {r['gpu_ms']:.3f} ms, "
                f"host {r['host_us']:.0f} us"
                + (f", {r['pct_roof']:.0f}% roof" if r["pct_roof"] else ""))
        except Exception as e:  # one failed case must not lose the others
            res["rows"].append({"case": name, "error": f"{type(e).__name__}: {e}"[:300]})
            log(f"case {name}: FAILED {res['rows'][-1]['error']}")
        if cuda:
            torch.cuda.empty_cache()
    write_report(args.out, "probe", res, markdown(res))
    return 1 if failed(res["rows"]) else 0


if __name__ == "__main__":
    from fastvae.bench.extras import script_main
    sys.exit(script_main(main, "gpu_probe.py"))
