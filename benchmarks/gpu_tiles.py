"""The ELBO row kernel under candidate launch configurations, where a GPU is lent: which
tile, warps and column-loop pipeline depth reach the most of the copy roofline at the bar
shape (B=65536, D=784, L=64, Bernoulli, sum), fp32 and bf16.

    python benchmarks/gpu_tiles.py --out DIR [--budget-s 75]   # CUDA: DIR/tiles.{md,json}
    python benchmarks/gpu_tiles.py --smoke --out DIR           # CPU: the code paths
    PYTHONPATH=.triton36 python benchmarks/gpu_tiles.py --offline   # no GPU: each one's SASS

A candidate sets ``configs.ELBO_TILE_ELEMENTS`` (elements a program's step, by element
size), ``ELBO_WARPS``, ``ELBO_BLOCK_D`` and ``ELBO_STAGES`` (the column loop's pipeline
depth, ``tl.range(num_stages=)``); the ELBO's launch plans are rebuilt for it and restored
after. Each is first checked against the shipped configuration on the same inputs: every
gradient bit for bit (a tile changes no element's math), the value to summation order
(relative 1e-5); a candidate that differs is reported and not ranked. Then, over 5
fwd+bwd steps, the row kernel's device time per launch (torch.profiler), its registers
and spills (the compiled kernel) and the bytes the step must move
(``fastvae.bench.core.bytes_moved``) over that time as a % of the device-to-device copy
bandwidth measured here. Candidates run in order of interest: a budget cut loses the last.
``--offline`` compiles each for sm_90 under this interpreter's Triton (the GPU machines' with
``PYTHONPATH=.triton36``) and prints the speed proxy's view of it (``fastvae bench --proxy``:
registers, spills, shared memory, programs an SM, issue time against the memory floor),
which cannot see latency: that is what the GPU run is for. ``--smoke`` runs them on CPU
tensors under TRITON_INTERPRET=1 with the GPU tiles at B=64 (the step's wall time stands in
for the kernel's; no registers).
"""
from __future__ import annotations

import os
import sys

if "--smoke" in sys.argv[1:]:  # before triton's jit decorators run: the kernels interpret
    os.environ["TRITON_INTERPRET"] = "1"

import importlib  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from fastvae import options as o  # noqa: E402
from fastvae.bench.core import bytes_moved  # noqa: E402

from gpu_report import (add_out, T0, device_for, environment, failed, fmt, log,  # noqa: E402
                        make_out, write_report)
from gpu_steps import BAR, DTYPES, SMOKE, elbo_step  # noqa: E402
from gpu_timing import copy_bandwidth, kernel_times  # noqa: E402

SHIPPED = "shipped"
# (label, {dtype: patch}): patch keys tile (elements), warps, block_d, stages. Per dtype, in
# order of interest; the proxy's regs / programs per SM on sm_90 (Triton 3.6.0) in comments.
CANDIDATES = {
    "bf16": [
        ("stages 3", dict(stages=3)),                            # 56 regs, 9 an SM
        ("1024 el, stages 3", dict(tile=1024, stages=3)),        # 32 regs, 16 an SM
        ("1024 el", dict(tile=1024)),                            # 32 regs, 16 an SM
        ("stages 2", dict(stages=2)),                            # 64 regs, 8 an SM
        ("1024 el, stages 2", dict(tile=1024, stages=2)),        # 40 regs, 12 an SM
        ("8 warps", dict(warps=8)),                              # 40 regs, 6 an SM
        ("8 warps, stages 3", dict(warps=8, stages=3)),          # 40 regs, 6 an SM
    ],
    "fp32": [
        ("stages 3", dict(stages=3)),                            # 48 regs, 10 an SM
        ("512 el", dict(tile=512)),                              # 32 regs, 16 an SM
        ("512 el, stages 2", dict(tile=512, stages=2)),          # 32 regs, 16 an SM
        ("stages 2", dict(stages=2)),                            # 48 regs, 10 an SM
    ],
}


class Patched:
    """``configs`` set to one candidate for a ``with`` block, the ELBO's plans rebuilt on
    entry and on exit (they were made for the tables as they were)."""

    def __init__(self, element_size: int, patch: dict):
        self.size, self.patch = element_size, patch
        self.configs = importlib.import_module("fastvae.backends.triton_backend.configs")
        self.host = importlib.import_module("fastvae.backends.triton_backend.elbo")

    def __enter__(self):
        c = self.configs
        self.saved = (dict(c.ELBO_TILE_ELEMENTS), c.ELBO_WARPS, c.ELBO_BLOCK_D,
                      dict(c.ELBO_STAGES))
        p = self.patch
        if "tile" in p:
            c.ELBO_TILE_ELEMENTS[self.size] = p["tile"]
        if "stages" in p:
            c.ELBO_STAGES[self.size] = p["stages"]
        c.ELBO_WARPS = p.get("warps", c.ELBO_WARPS)
        c.ELBO_BLOCK_D = p.get("block_d", c.ELBO_BLOCK_D)
        self.host._PLANS.clear()
        return self

    def __exit__(self, *exc):
        c = self.configs
        tiles, c.ELBO_WARPS, c.ELBO_BLOCK_D, stages = self.saved
        c.ELBO_TILE_ELEMENTS.clear()
        c.ELBO_TILE_ELEMENTS.update(tiles)
        c.ELBO_STAGES.clear()
        c.ELBO_STAGES.update(stages)
        self.host._PLANS.clear()

    def launch_config(self):
        """(BLOCK_B, BLOCK_D, warps, STAGES) the row launch uses under this candidate."""
        fixed = next(iter(self.host._PLANS.values()))["rows"].fixed
        return fixed["BLOCK_B"], fixed["BLOCK_D"], fixed["num_warps"], fixed["STAGES"]

    def compiled(self):
        """(registers, spilled bytes) of the row kernel the plan launched, where known."""
        compiled = next(iter(self.host._PLANS.values()))["rows"]._compiled
        for k in compiled.values():
            return getattr(k, "n_regs", None), getattr(k, "n_spills", None)
        return None, None


def outputs(step):
    """(value, the gradients) of one step of :func:`gpu_steps.elbo_step`."""
    loss = step()
    return float(loss), [t.grad.detach().clone() for t in step.leaves]


def agreement(got, want) -> str:
    """'' when ``got`` matches ``want`` (gradients bit for bit, value to 1e-5), else what
    differs."""
    (v, gs), (v0, gs0) = got, want
    bad = [i for i, (g, g0) in enumerate(zip(gs, gs0)) if not torch.equal(g, g0)]
    if bad:
        worst = max(float((gs[i].float() - gs0[i].float()).abs().max()) for i in bad)
        return f"gradients {bad} differ (max abs {worst:.3g})"
    if abs(v - v0) > 1e-5 * max(abs(v0), 1.0):
        return f"value {v!r} against {v0!r}"
    return ""


def row_kernel_us(step, device, cuda, steps=5):
    """Device us per launch of the row kernel (CUDA), or the step's wall us (smoke)."""
    if not cuda:
        t = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - t) / steps * 1e6
    for name, (count, us) in kernel_times(step, device, steps).items():
        if "elbo_rows_kernel" in name:
            return us / count
    raise RuntimeError("no elbo_rows_kernel launch in the profile")


def sweep(shape, device, cuda, bw, budget_s, rows, saved=lambda: None):
    """Append a row per candidate to ``rows``, calling ``saved()`` after each (the report
    is rewritten: a stage killed at its timeout keeps what it measured)."""
    for dt, candidates in CANDIDATES.items():
        step, case = elbo_step(shape, DTYPES[dt], device, "triton")
        nbytes = bytes_moved(case)
        want = None
        for label, patch in [(SHIPPED, {}), *candidates]:
            if time.monotonic() - T0 > budget_s:
                rows.append(dict(dtype=dt, candidate=label, error="skipped: budget spent"))
                continue
            try:
                with Patched(case.dtype.itemsize, patch) as p:
                    got = outputs(step)   # compiles this candidate, warms up
                    step()
                    if label == SHIPPED:
                        want, mismatch = got, ""
                    else:  # no reference when the shipped one failed: unchecked, not "ok"
                        mismatch = (agreement(got, want) if want is not None else
                                    "unchecked: the shipped configuration failed")
                    us = row_kernel_us(step, device, cuda)
                    regs, spills = p.compiled()
                    block_b, block_d, warps, stages = p.launch_config()
                row = dict(dtype=dt, candidate=label, block_b=block_b, block_d=block_d,
                           warps=warps, stages=stages, us=us, regs=regs, spills=spills,
                           pct_roof=100 * nbytes / (us * 1e-6) / bw if cuda else None,
                           mismatch=mismatch)
                log(f"{dt} {label}: {us:.1f} us" + (f", {row['pct_roof']:.1f}% roof"
                                                     if cuda else "") + f" {mismatch}")
            except Exception as e:  # one failed candidate must not lose the others
                row = dict(dtype=dt, candidate=label, error=f"{type(e).__name__}: {e}"[:300])
                log(f"{dt} {label}: FAILED {row['error']}")
            rows.append(row)
            saved()
        del step
        if cuda:
            torch.cuda.empty_cache()


def offline() -> str:
    """The speed proxy of every candidate (sm_90, this Triton), one line each."""
    from fastvae.bench.offline import judge
    import triton
    lines = [f"ELBO row kernel at B=65536 D=784 L=64, sm_90, Triton {triton.__version__}",
             "| dtype | candidate | grid x warps | regs | spill B | shared B | programs an SM "
             "(warps) | issue us | memory us |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for dt, candidates in CANDIDATES.items():
        size = DTYPES[dt].itemsize
        for label, patch in [(SHIPPED, {}), *candidates]:
            with Patched(size, patch):
                (case,) = judge.proxy_cases(judge.bar_cases((dt,), ("elbo",)))["cases"]
            r = next(la for la in case["launches"] if la["kernel"] == "elbo_rows_kernel")
            lines.append(f"| {dt} | {label} | {r['grid'][0]} x {r['warps']} | {r['regs']} | "
                         f"{r['spills']} | {r['shared']} | {r['programs_per_sm']} "
                         f"({r['warps_per_sm']}) | {r['issue_us'][1]:.1f} | "
                         f"{case['memory_us']:.1f} |")
    return "\n".join(lines)


def markdown(res) -> str:
    """The report's table; ``local B``: the compiled kernel's local memory a thread
    (Triton's ``n_spills``, which counts spills and stack alike)."""
    unit = "kernel us" if res["cuda"] else "step wall us (smoke)"
    lines = [f"# ELBO row kernel, candidate configurations: {res['device']}, torch "
             f"{res['torch']}, triton {res['triton']}",
             f"shape {res['shape']}; copy bandwidth {res['copy_gbps']:.0f} GB/s", "",
             f"| dtype | candidate | BLOCK_B x BLOCK_D, warps, stages | {unit} | % roof | "
             "regs | local B | x shipped | checked |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    shipped = {r["dtype"]: r["us"] for r in res["rows"]
               if r["candidate"] == SHIPPED and "us" in r}
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"| {r['dtype']} | {r['candidate']} | {r['error']} | | | | | | |")
            continue
        base = shipped.get(r["dtype"])
        lines.append(
            f"| {r['dtype']} | {r['candidate']} | {r['block_b']} x {r['block_d']}, "
            f"{r['warps']}, {r['stages']} | {r['us']:.1f} | {fmt(r['pct_roof'], '.1f')} | "
            f"{fmt(r['regs'])} | {fmt(r['spills'])} | "
            f"{fmt(base / r['us'] if base else None, '.3f')} | "
            f"{'MISMATCH: ' + r['mismatch'] if r['mismatch'] else 'ok'} |")
    return "\n".join(lines)


def main(argv=None):
    p = o.Parser(description=__doc__.split("\n\n")[0])
    add_out(p)
    p.add_argument("--smoke", action="store_true",
                   help="CPU tensors under TRITON_INTERPRET=1, B=64: the code paths")
    p.add_argument("--offline", action="store_true",
                   help="no GPU: the speed proxy of each candidate (sm_90), printed")
    p.add_argument("--budget-s", type=o.positive_float, default=75.0,
                   help="stop starting new candidates after this many seconds")
    args = p.parse_args(argv)
    if args.offline and args.smoke:   # --smoke interprets the kernels: nothing to compile
        p.error("--offline compiles the kernels for the GPU, --smoke interprets them on the "
                "CPU; give one")
    if args.offline:
        from fastvae.bench.offline.capture import Interpreted
        try:
            print(offline())
        except Interpreted as e:   # TRITON_INTERPRET=1 set outside
            print(f"gpu_tiles.py: error: {e}", file=sys.stderr)
            return 2
        return 0
    device = device_for("gpu_tiles.py", args.smoke)
    if device is None:
        return 2
    make_out(p, args.out)
    cuda = device.type == "cuda"
    if not cuda:  # the GPU tiles, run by the interpreter (as benchmarks/host_path.py)
        importlib.import_module("fastvae.backends.triton_backend.configs").CONFIG_MODE = "gpu"
    shape = SMOKE if args.smoke else BAR
    bw_bytes = (64 << 20) if args.smoke else (1 << 30)
    bw = copy_bandwidth(device, bw_bytes)
    res = environment(device, shape, bw, rows=[])
    sweep(shape, device, cuda, bw, args.budget_s, res["rows"],
          lambda: write_report(args.out, "tiles", res, markdown(res), quiet=True))
    write_report(args.out, "tiles", res, markdown(res))
    return 1 if failed(res["rows"]) or any(r.get("mismatch") for r in res["rows"]) else 0


if __name__ == "__main__":
    from fastvae.bench.extras import script_main
    sys.exit(script_main(main, "gpu_tiles.py"))
