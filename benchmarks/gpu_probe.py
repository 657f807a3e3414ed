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
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

import fastvae
from fastvae import options as o
from fastvae.bench.core import Case, bytes_moved
from fastvae.checkpoint import atomic_write, write_json

BAR = dict(batch=65536, dim=784, latent=64)
SMOKE = dict(batch=64, dim=784, latent=16)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def log(msg):
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


T0 = time.monotonic()


def fmt(v, spec=""):
    """A table cell: ``v`` formatted, "-" for None."""
    return "-" if v is None else format(v, spec)


def device_for(script: str, smoke: bool):
    """The device a script measures on: CUDA, or the CPU under ``--smoke``; None (after a
    one-line reason) when neither."""
    if torch.cuda.is_available() and not smoke:
        return torch.device("cuda")
    if smoke:
        return torch.device("cpu")
    print(f"{script}: no CUDA device (torch.cuda.is_available() is False); --smoke exercises "
          "the code paths on CPU", file=sys.stderr)
    return None


def environment(device, shape, bw, **extra) -> dict:
    """The head of a report: card (or "cpu (smoke)"), versions, shape, copy bandwidth."""
    cuda = device.type == "cuda"
    return {"device": torch.cuda.get_device_name(device) if cuda else "cpu (smoke)",
            "torch": torch.__version__, "triton": triton_version(), **extra, "shape": shape,
            "copy_gbps": bw / 1e9, "cuda": cuda}


def write_report(out_dir: str, name: str, res: dict, md: str, quiet: bool = False) -> None:
    """``name``.json and ``name``.md in ``out_dir``, the table printed unless ``quiet``
    (a partial report, rewritten after each row: each file is replaced whole, so a run
    killed at its time limit leaves the last complete one)."""
    write_json(res, os.path.join(out_dir, f"{name}.json"))
    data = (md + "\n").encode()
    atomic_write(os.path.join(out_dir, f"{name}.md"), lambda f: f.write(data))
    if not quiet:
        print(md)


def failed(rows) -> bool:
    """Whether a row failed (a row skipped for the budget did not)."""
    return any("error" in r and not r["error"].startswith("skipped") for r in rows)


def elbo_step(shape, dtype, device, backend):
    """(step, case): ELBOLoss(sum) fwd+bwd on fixed inputs; ``step.leaves`` holds the
    tensors whose gradients each step writes (recon, mu, logvar)."""
    b, d, l = shape["batch"], shape["dim"], shape["latent"]
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(b, d, device=device, generator=g).to(dtype)
    leaves = [torch.randn(b, d, device=device, generator=g).to(dtype).requires_grad_(),
              torch.randn(b, l, device=device, generator=g).to(dtype).requires_grad_(),
              (0.1 * torch.randn(b, l, device=device, generator=g)).to(dtype).requires_grad_()]
    loss_fn = fastvae.ELBOLoss(reduction="sum", backend=backend)

    def step():
        for t in leaves:
            t.grad = None
        loss = loss_fn(x, *leaves)
        loss.backward()
        return loss
    step.leaves = leaves
    return step, Case("elbo", b, d, l, dtype=dtype, device=device.type)


def iwae_step(shape, k, dtype, device, backend):
    b, d, l = shape["batch"], shape["dim"], shape["latent"]
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(b, d, device=device, generator=g).to(dtype)
    leaves = [torch.randn(k, b, d, device=device, generator=g).to(dtype).requires_grad_(),
              torch.randn(b, l, device=device, generator=g).to(dtype).requires_grad_(),
              (0.1 * torch.randn(b, l, device=device, generator=g)).to(dtype).requires_grad_(),
              torch.randn(k, b, l, device=device, generator=g).to(dtype).requires_grad_()]

    def step():
        for t in leaves:
            t.grad = None
        r, mu, lv, z = leaves
        out = fastvae.iwae_bound(x, r, mu, lv, z, reduction="sum", backend=backend)
        out.backward()
        return out
    return step, Case("iwae", b, d, l, k=k, dtype=dtype, device=device.type)


def reparam_step(shape, k, dtype, device, backend):
    b, l = shape["batch"], shape["latent"]
    mu = torch.randn(b, l, device=device, dtype=dtype).requires_grad_()
    lv = (0.1 * torch.randn(b, l, device=device)).to(dtype).requires_grad_()
    dz = torch.ones((k, b, l) if k > 1 else (b, l), device=device, dtype=dtype)

    def step():
        mu.grad = lv.grad = None
        z = fastvae.reparameterize(mu, lv, n_samples=k if k > 1 else None, backend=backend)
        z.backward(dz)
        return z
    return step, Case("reparameterize", b, 0, l, k=k, dtype=dtype, device=device.type)


def copy_bandwidth(device, nbytes):
    a = torch.empty(nbytes // 4, device=device)
    b = torch.empty_like(a)
    times = [timed_gpu(lambda: b.copy_(a), device, 1) for _ in range(7)]
    del a, b
    return 2 * nbytes / (statistics.median(times) / 1e3)


def timed_gpu(fn, device, n):
    """ms per call over ``n`` back-to-back calls (CUDA events; wall clock on CPU)."""
    if device.type != "cuda":
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t) / n * 1e3
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(n):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / n


def host_us(fn, device, n):
    """Median wall time of the call itself (enqueue only on CUDA), synced between calls."""
    out = []
    for _ in range(n):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e6)
    return statistics.median(out)


def kernel_times(fn, device, steps=3):
    """{kernel name: (launches per step, device us per step)} from torch.profiler."""
    if device.type != "cuda":
        return {}
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    out = {}
    for e in prof.key_averages():
        dev_us = getattr(e, "device_time_total", None)
        if dev_us is None:
            dev_us = getattr(e, "cuda_time_total", 0)
        if dev_us and e.count:
            out[e.key] = (e.count / steps, dev_us / steps)
    return dict(sorted(out.items(), key=lambda kv: -kv[1][1]))


def graph_ms(step, device, n):
    """GPU ms per replay of ``step`` captured in a CUDA graph (None off CUDA)."""
    if device.type != "cuda":
        return None
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    ms = timed_gpu(graph.replay, device, n)
    del graph
    return ms


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
        from fastvae.backends.triton_backend import configs
        # Two 8-warp programs of the pair kernel fit an SM (RESULTS.md, "two programs an
        # SM"); one of 16 warps gives each scheduler as many warps, in one program.
        out.append(("iwae K=5 fp32, pair kernel at 16 warps", with_config(
            "IWAE_PAIRS_WARPS", 16, lambda: iwae_step(shape, 5, torch.float32, device, backend)),
            False))
        # The bench's IWAE batch: the two-pass kernel's 16-bit tile, 4 warps (two programs
        # an SM) against the 8-warp one it replaced (one program an SM at this grid).
        def k50_bf16():
            return iwae_step(BENCH_IWAE, 50, torch.bfloat16, device, backend)
        name = f"iwae K=50 bf16 B={BENCH_IWAE['batch']}"
        out.append((name, k50_bf16, False))
        out.append((f"{name}, two-pass at 8 warps", with_config(
            "IWAE_ROWS_TILE", {**configs.IWAE_ROWS_TILE, 2: (2048, 8)}, k50_bf16), False))
    return out


BENCH_IWAE = dict(batch=4096, dim=784, latent=32)   # fastvae bench's IWAE shape on CUDA


def with_config(name, value, make):
    """``make``'s step with ``configs.<name>`` (a tile table of the Triton backend) set to
    ``value`` while it runs."""
    from fastvae.backends.triton_backend import configs

    def wrapped():
        step, case = make()

        def run():
            saved = getattr(configs, name)
            setattr(configs, name, value)
            try:
                return step()
            finally:
                setattr(configs, name, saved)
        return run, case
    return wrapped


HOST_SHAPE = dict(batch=64, dim=784, latent=16)   # small: the GPU never holds the host up


def swk_step(device, backend):
    """One sample_with_kl group fwd+bwd at batch 16 (the VDVAE loop's smallest groups)."""
    g = torch.Generator(device=device).manual_seed(0)
    leaves = [torch.randn(16, 16, 8, 8, device=device, generator=g).requires_grad_()
              for _ in range(4)]
    dz = torch.randn(16, 16, 8, 8, device=device, generator=g)
    dkl = torch.randn(16, device=device, generator=g)

    def step():
        for t in leaves:
            t.grad = None
        z, kl = fastvae.sample_with_kl(*leaves, backend=backend)
        torch.autograd.backward([z, kl], [dz, dkl])
        return z
    return step


def host_profile(device, backend, out_dir, calls=300):
    """Per fused call (fwd+bwd at small shapes): median host time, and a cProfile of
    ``calls`` calls (functions by own time and by cumulative time) -> host_profile.txt."""
    import cProfile
    import io
    import pstats
    steps = [("ELBOLoss fp32", elbo_step(HOST_SHAPE, torch.float32, device, backend)[0]),
             ("reparameterize K=1", reparam_step(HOST_SHAPE, 1, torch.float32, device,
                                                 backend)[0]),
             ("sample_with_kl (16,16,8,8)", swk_step(device, backend))]
    text = []
    for name, step in steps:
        for _ in range(5):
            step()
        us = host_us(step, device, 100)
        prof = cProfile.Profile()
        if device.type == "cuda":
            torch.cuda.synchronize()
        prof.enable()
        for _ in range(calls):
            step()
        prof.disable()
        if device.type == "cuda":
            torch.cuda.synchronize()
        buf = io.StringIO()
        st = pstats.Stats(prof, stream=buf)
        st.sort_stats("tottime").print_stats(25)
        st.sort_stats("cumulative").print_stats(30)
        text.append(f"## {name}: host {us:.0f} us per fwd+bwd (median of 100, synced between "
                    f"calls); cProfile of {calls} calls below\n{buf.getvalue()}")
        log(f"host {name}: {us:.0f} us")
        # after each step, whole (temp file and rename): a stage killed at its limit keeps
        # the steps it profiled, where open("w") would leave it truncated mid-write
        data = "\n".join(text).encode()
        atomic_write(os.path.join(out_dir, "host_profile.txt"), lambda f: f.write(data))


def captured_cases(shape, device, smoke):
    """(case, variants) of ``--captured-bar``: the issue's bar cases, ELBO fp32 and bf16
    against eager and compile, reparameterize K=1 and 16 fp32 against eager."""
    b, d, l = shape["batch"], shape["dim"], shape["latent"]
    fused = "fastvae-torch" if smoke else "fastvae-triton"
    out = [(Case("elbo", b, d, l, dtype=dtype, device=device.type),
            ("eager",) + (() if smoke else ("compile",)) + (fused,))
           for dtype in DTYPES.values()]
    out += [(Case("reparameterize", b, 0, l, k=k, device=device.type), ("eager", fused))
            for k in (1, 16)]
    return out


def captured_bar(device, bw, reps, budget_s, smoke, rows, saved=lambda: None):
    """Append the rows of ``--captured-bar`` to ``rows``: per case and variant, ms per
    graph replay (None off CUDA), % of the copy roofline and the ratios to eager's and
    compile's replays; ``saved()`` after each case (a killed stage keeps what it has)."""
    from fastvae import bench
    for case, variants in captured_cases(SMOKE if smoke else BAR, device, smoke):
        saved()  # the rows so far, a failed case's too
        label = f"{case.op} {case.shape} {case.dtype_name}"
        if time.monotonic() - T0 > budget_s:
            rows.append({"case": label, "error": "skipped: budget spent"})
            continue
        try:
            prepared = bench.prepare(case, list(variants))
        except Exception as e:  # a variant that disagrees or fails: reported, the rest run
            rows.append({"case": label, "error": f"{type(e).__name__}: {e}"[:300]})
            log(f"captured {label}: FAILED {rows[-1]['error']}")
            continue
        got = {}
        for v in variants:
            try:
                got[v] = graph_ms(prepared.steps[v], device, reps)
            except Exception as e:  # reported, the other variants still run
                rows.append({"case": label, "variant": v,
                             "error": f"{type(e).__name__}: {e}"[:300]})
                log(f"captured {label} {v}: FAILED {rows[-1]['error']}")
        nbytes = bytes_moved(case)
        for v, ms in got.items():
            def ratio(ref):
                return got[ref] / ms if ms and got.get(ref) else None
            rows.append({"case": label, "variant": v, "graph_ms": ms,
                         "pct_roof": 100 * nbytes / (ms / 1e3) / bw if ms and nbytes else None,
                         "x_eager": ratio("eager"), "x_compile": ratio("compile")})
            log(f"captured {label} {v}: " + (f"{ms:.3f} ms" if ms else
                                              "no CUDA graph off a GPU"))
        del prepared
        saved()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def captured_markdown(res):
    lines = [f"# The bar cases, each variant's fwd+bwd captured in a CUDA graph: {res['device']}, "
             f"torch {res['torch']}, triton {res['triton']}",
             f"shape {res['shape']}; copy bandwidth {res['copy_gbps']:.0f} GB/s; ms per replay, "
             "back-to-back replays (L2 warm)", "",
             "| case | variant | graph ms | % roof | x eager | x compile |",
             "|---|---|---:|---:|---:|---:|"]
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"| {r['case']} | {r.get('variant', '')} | FAILED: {r['error']} "
                         "| | | |")
            continue
        lines.append(f"| {r['case']} | {r['variant']} | {fmt(r['graph_ms'], '.3f')} | "
                     f"{fmt(r['pct_roof'], '.1f')} | {fmt(r['x_eager'], '.2f')} | "
                     f"{fmt(r['x_compile'], '.2f')} |")
    return "\n".join(lines)


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
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
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
    p.add_argument("--reps", type=o.positive_int, default=20)
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
    os.makedirs(args.out, exist_ok=True)
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


def triton_version():
    try:
        import triton
        return triton.__version__
    except ImportError:
        return "not installed"


if __name__ == "__main__":
    from fastvae.bench.extras import script_main
    sys.exit(script_main(main, "gpu_probe.py"))
