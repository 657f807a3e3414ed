"""Speed of the gradient estimators against the standard one, on every backend: the same
fused op called with ``estimator="standard"``, ``"stl"`` and ``"dreg"``, forward and
backward, the estimators of one backend timed interleaved in one run
(``fastvae.bench.timing.time_interleaved``), so their ratios are side by side.

    python benchmarks/estimators_speed.py [--quick] [--device cuda] [--reps 31] [--threads 1]
                                          [--cpu-time]

Cases: the ELBO with the Monte-Carlo KL (standard, STL) at B=4096 D=784 L=32, and the IWAE
bound (standard, STL, DReG) at B=256 D=784 L=32, K = 5 and 50; Bernoulli, reduction "sum",
every input a leaf that requires grad (DReG's hook runs on z_k). Backends: on the CPU
"torch", "aten" (the torch backend with its compiled C row kernel off) and "reference";
on CUDA "triton" and "reference". ``x standard`` is standard's median over the
estimator's (> 1: faster); ``paired`` is the median over rounds of the ratio within each
round, with its interquartile range: the spread of the machine. ``--cpu-time`` (CPU,
``--threads 1``) times the calling thread's CPU time instead of the wall clock, which other
processes on a shared machine disturb less. ``--reps`` is at least 2: the paired ratio's
spread needs two rounds. ``--json`` is checked before the run and written atomically.
"""
from __future__ import annotations

import statistics
import sys
import time

import torch

import fastvae
from fastvae import options as o
from fastvae.bench.specs._common import native_kernel_off
from fastvae.bench.timing import check_cpu_time, inner_calls, time_interleaved, timed
from fastvae.checkpoint import write_json


def _leaf(t):
    return t.detach().requires_grad_(True)


def make_inputs(op, b, d, l, k, device, gen):
    x = torch.rand(b, d, generator=gen).to(device)
    mu, lv = torch.randn(b, l, generator=gen), 0.5 * torch.randn(b, l, generator=gen)
    shape = (b, l) if op == "elbo" else (k, b, l)
    z = mu + torch.exp(0.5 * lv) * torch.randn(shape, generator=gen)
    recon = 2.0 * torch.randn((b, d) if op == "elbo" else (k, b, d), generator=gen)
    return x, _leaf(recon.to(device)), _leaf(mu.to(device)), _leaf(lv.to(device)), \
        _leaf(z.to(device))


def make_step(op, inputs, backend, estimator):
    x, recon, mu, lv, z = inputs
    leaves = (recon, mu, lv, z)
    aten = backend == "aten"
    name = "torch" if aten else backend

    def step():
        for t in leaves:
            t.grad = None
        if op == "elbo":
            v = fastvae.elbo(x, recon, mu, lv, kl="mc", z=z, reduction="sum", backend=name,
                             estimator=estimator)
        else:
            v = fastvae.iwae_bound(x, recon, mu, lv, z, reduction="sum", backend=name,
                                   estimator=estimator)
        (-v).backward()
        return v

    if not aten:
        return step

    def step_aten():
        with native_kernel_off():
            return step()
    return step_aten


def _iqr(values):
    # "inclusive": quartiles within the rounds seen; the default ("exclusive")
    # extrapolates past them for few rounds (2 rounds of ratios 0.3 and 1.3 gave a
    # negative ratio as the first quartile)
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def rounds(value) -> int:
    """--reps: the interquartile range of the paired ratios needs two rounds at least
    (statistics.quantiles refuses one, after the whole run)."""
    n = o.positive_int(value)
    if n < 2:
        raise o.BadValue(f"must be at least 2 (the paired ratio's spread needs two rounds), "
                         f"got {n}")
    return n


def main(argv=None) -> int:
    p = o.Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", type=o.device, default="auto")
    p.add_argument("--quick", action="store_true", help="the IWAE K=5 case only, fewer rounds")
    p.add_argument("--reps", type=rounds, default=None,
                   help="interleaved rounds, at least 2 (default 31; 11 with --quick)")
    p.add_argument("--threads", type=o.positive_threads, default=None,
                   help=f"torch threads (1 to {o.MAX_THREADS})")
    p.add_argument("--cpu-time", action="store_true",
                   help="time the thread's CPU time (CPU, --threads 1)")
    # written after the whole run: checked now, or a bad path would lose it
    p.add_argument("--json", metavar="FILE", type=o.file_to_write, default=None,
                   help="write the rows here (atomically)")
    args = p.parse_args(argv)
    try:
        device = str(o.resolve_device(args.device))
    except ValueError as e:
        p.error(f"argument {e}")
    if args.cpu_time and (not device.startswith("cpu") or args.threads != 1):
        p.error("--cpu-time times the calling thread: it needs the CPU and --threads 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = args.reps or (11 if args.quick else 31)
    clock = time.perf_counter
    if args.cpu_time:
        check_cpu_time(device)
        clock = time.thread_time
    cases = [("iwae", 256, 784, 32, 5)]
    if not args.quick:
        cases = [("elbo", 4096, 784, 32, 1)] + cases + [("iwae", 256, 784, 32, 50)]
    backends = (["triton", "reference"] if device.startswith("cuda")
                else ["torch", "aten", "reference"])
    rows = []
    for op, b, d, l, k in cases:
        inputs = make_inputs(op, b, d, l, k, device, torch.Generator().manual_seed(0))
        ests = ["standard", "stl"] + (["dreg"] if op == "iwae" else [])
        shape = f"B={b} D={d} L={l}" + (f" K={k}" if op == "iwae" else "")
        for backend in backends:
            steps = {e: make_step(op, inputs, backend, e) for e in ests}
            for s in steps.values():  # warm-up
                s()
            inner = inner_calls(device, max(timed(s, device)[0] for s in steps.values()))
            times = time_interleaved(steps, device, reps, clock=clock, inner=inner)
            base = statistics.median(times["standard"])
            for e in ests:
                paired = [s / t for s, t in zip(times["standard"], times[e])]
                lo, hi = _iqr(paired)
                rows.append(dict(op=op, shape=shape, backend=backend, estimator=e,
                                 median_ms=1e3 * statistics.median(times[e]),
                                 x_standard=base / statistics.median(times[e]),
                                 paired=statistics.median(paired), paired_q1=lo, paired_q3=hi))
            print(f"{op} {shape} {backend}: " + ", ".join(
                f"{r['estimator']} {r['median_ms']:.2f} ms" for r in rows[-len(ests):]),
                file=sys.stderr, flush=True)
    env = (f"torch {torch.__version__}, {device}"
           + (f" ({torch.cuda.get_device_name()})" if device.startswith("cuda") else "")
           + f", {torch.get_num_threads()} threads, {reps} interleaved rounds, "
           + ("thread CPU time" if args.cpu_time else "wall clock"))
    print(f"\n{env}\n")
    print("| op | shape | backend | estimator | median ms | x standard | paired [IQR] |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['op']} | {r['shape']} | {r['backend']} | {r['estimator']} | "
              f"{r['median_ms']:.2f} | {r['x_standard']:.3f} | {r['paired']:.3f} "
              f"[{r['paired_q1']:.3f}, {r['paired_q3']:.3f}] |")
    if args.json:
        try:  # atomic: a failed write keeps the last run's file whole
            write_json({"environment": env, "rows": rows}, args.json)
        except OSError as e:  # the table is printed; only the file is lost
            print(f"{p.prog}: error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    from fastvae.bench.extras import script_main
    sys.exit(script_main(main, "estimators_speed.py"))
