"""Host cost of one fused ``ELBOLoss`` forward+backward on the "triton" backend, with the
GPU work stubbed out, on a machine without a GPU.

    .venv/bin/python benchmarks/host_path.py [--batch 64] [--dim 784] [--latent 64]
        [--dtype fp32] [--reduction sum] [--rounds 9] [--calls 400] [--profile 25] [--json F]

What stands in for CUDA: CPU tensors, the backend told it may run there (as under
``TRITON_INTERPRET=1``) with the GPU tiles (``configs.CONFIG_MODE = "gpu"``), and
``_launch.launch`` replaced by a recorder that returns at once. What is timed is then
everything fastvae and autograd do on the host for one step: validation, backend choice,
the autograd.Function, allocations, the ticket, launch arguments, backward's scaling.

Measured apart, because the stub skips it: Triton's own argument binding for each launch
the step makes (``JITFunction.run`` up to the driver: the generated binder that
specializes every argument, and the cache key), with Triton's binder for an sm_90
target on the same CPU tensors. Not measured: the C launcher and the driver's
``cuLaunchKernel`` (a few microseconds per launch on a GPU host).

CPU allocations stand in for the CUDA caching allocator's; both are a free-list lookup
for the small tensors used here (keep ``--batch`` small: large CPU tensors go to mmap,
which the caching allocator never does). The machine is shared and slow at times, so
each round also times a fixed calibration loop (``calib``: 20 ``torch.empty(1)`` plus
200 empty Python calls); ``step / calib`` is comparable across runs and machines, the
microseconds only within one run. ``floor`` is the same step through a bare
autograd.Function that only allocates its outputs: what autograd itself costs. Times are the thread's CPU time (``time.thread_time``). ``py calls`` counts Python-level function calls per step
(``sys.setprofile``), independent of the machine.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

import fastvae
from fastvae import _env
import fastvae.backends as backends
from fastvae.backends.triton_backend import _launch, configs

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def stub_gpu():
    """Let the Triton backend run on CPU tensors with its GPU tiles, launching nothing;
    returns the list every launch's (kernel, grid, kwargs) is appended to."""
    _env.interpreting = lambda: True
    configs.CONFIG_MODE = "gpu"
    record = []

    def launch(kernel, grid, **args):
        if record is not None and len(record) < 64:
            record.append((kernel, grid, args))
    _launch.launch = launch
    if not backends.triton_available():
        raise SystemExit("host_path.py needs the triton package (for its binder)")
    return record


def make_step(args):
    dt = DTYPES[args.dtype]
    g = torch.Generator().manual_seed(0)
    b, d, l = args.batch, args.dim, args.latent
    x = torch.rand(b, d, generator=g).to(dt)
    recon = torch.randn(b, d, generator=g).to(dt).requires_grad_()
    mu = torch.randn(b, l, generator=g).to(dt).requires_grad_()
    logvar = torch.randn(b, l, generator=g).to(dt).requires_grad_()
    loss_fn = fastvae.ELBOLoss(reduction=args.reduction, backend="triton")
    leaves = (recon, mu, logvar)

    def forward():
        return loss_fn(x, recon, mu, logvar)

    def step():
        forward().backward()
        for t in leaves:  # the next backward hands its gradient over, no accumulation
            t.grad = None
    return step, forward


def make_floor(args):
    """The same step through a bare autograd.Function that only allocates the value and
    the gradients and hands them back: what any custom op costs in autograd and the
    allocator, the floor under fastvae's own host work."""
    dt = DTYPES[args.dtype]
    b, d, l = args.batch, args.dim, args.latent
    x = torch.rand(b, d).to(dt)
    leaves = (torch.randn(b, d).to(dt).requires_grad_(), torch.randn(b, l).to(dt).requires_grad_(),
              torch.randn(b, l).to(dt).requires_grad_())

    class Bare(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, recon, mu, logvar):
            ctx.save_for_backward(torch.empty_like(recon), torch.empty_like(mu),
                                  torch.empty_like(logvar))
            return torch.empty((), dtype=torch.float32)

        @staticmethod
        def backward(ctx, grad_out):
            return (None, *ctx.saved_tensors)

    def step():
        Bare.apply(x, *leaves).backward()
        for t in leaves:
            t.grad = None
    return step


def calib():
    def f():
        pass
    for _ in range(20):
        torch.empty(1)
    for _ in range(200):
        f()


def timed(fn, n):
    """Microseconds per call of this thread's CPU time: time spent descheduled on a
    shared machine does not count (a cache disturbed by other jobs still does)."""
    t = time.thread_time()
    for _ in range(n):
        fn()
    return (time.thread_time() - t) / n * 1e6


def binder_cost(launches, n):
    """Microseconds of Triton's binder + cache key per recorded launch (sm_90 target)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime import jit

    be = make_backend(GPUTarget("cuda", 90, 32))
    out = []
    for kernel, _grid, kw in launches:
        fn = kernel
        while not hasattr(fn, "params"):  # an autotuner/heuristics wrapper holds the JIT
            fn = fn.fn
        binder = jit.create_function_from_signature(fn.signature, fn.params, be)
        cache = {}

        def bind():
            _, spec, opts = binder(**kw)
            jit.compute_cache_key(cache, spec, opts)
        bind()
        out.append((fn.__name__, timed(bind, n)))
    return out


def count_calls(fn):
    calls = 0

    def prof(frame, event, arg):
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1
    sys.setprofile(prof)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dim", type=int, default=784)
    p.add_argument("--latent", type=int, default=64)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--reduction", choices=("sum", "mean", "none"), default="sum")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--calls", type=int, default=400)
    p.add_argument("--profile", type=int, default=0,
                   help="print the N functions with the most own time (cProfile)")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    record = stub_gpu()
    step, forward = make_step(args)
    for _ in range(50):
        step()
    launches = list(record)
    if backends.last_used() != "triton":
        raise SystemExit(f"the step ran backend {backends.last_used()!r}, not triton")
    record.clear()
    step()
    per_step = len(record)
    record[:] = []

    floor = make_floor(args)
    steps, fwds, cals, floors = [], [], [], []
    for _ in range(args.rounds):  # interleaved, so load changes hit every column alike
        cals.append(timed(calib, max(args.calls // 4, 20)))
        steps.append(timed(step, args.calls))
        fwds.append(timed(lambda: forward(), args.calls))
        floors.append(timed(floor, args.calls))
    binds = binder_cost(launches[:per_step], max(args.calls, 200))
    calls = count_calls(step)
    med = statistics.median
    res = {
        "shape": f"B={args.batch} D={args.dim} L={args.latent} {args.dtype} {args.reduction}",
        "torch": torch.__version__, "triton": __import__("triton").__version__,
        "launches_per_step": per_step,
        "step_us": med(steps), "step_us_min": min(steps), "forward_us": med(fwds),
        "calib_us": med(cals), "step_over_calib": med(s / c for s, c in zip(steps, cals)),
        "floor_us": med(floors), "step_over_floor": med(s / f for s, f in zip(steps, floors)),
        "bind_us": {name: round(us, 2) for name, us in binds},
        "bind_total_us": sum(us for _, us in binds),
        "py_calls_per_step": calls,
    }
    res["host_total_us"] = res["step_us"] + res["bind_total_us"]
    print(f"host path, {res['shape']}, torch {res['torch']}, triton {res['triton']}, "
          f"{args.rounds} rounds x {args.calls} steps")
    print(f"  launches per step          {per_step}")
    print(f"  fwd+bwd, launches stubbed  {res['step_us']:.1f} us median "
          f"(min {res['step_us_min']:.1f}; forward alone {res['forward_us']:.1f})")
    print(f"  bare autograd.Function     {res['floor_us']:.1f} us (the floor: autograd and "
          f"4 allocations); step / floor {res['step_over_floor']:.2f}")
    print(f"  Triton binding             {res['bind_total_us']:.1f} us "
          f"({', '.join(f'{n} {us:.1f}' for n, us in binds)})")
    print(f"  host total                 {res['host_total_us']:.1f} us")
    print(f"  calib                      {res['calib_us']:.1f} us; step / calib "
          f"{res['step_over_calib']:.2f}")
    print(f"  Python calls per step      {calls}")
    if args.profile:
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.calls):
            step()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(args.profile)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
