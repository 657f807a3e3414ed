"""Host cost of one fused ``ELBOLoss`` forward+backward on the "triton" backend (or, with
``--op``, of ``sample_with_kl`` with a learned prior or ``reparameterize``), with the GPU
work stubbed out, on a machine without a GPU.

    .venv/bin/python benchmarks/host_path.py [--op elbo] [--batch 64] [--dim 784]
        [--latent 64] [--dtype fp32] [--reduction sum] [--warmup 20] [--rounds 9] [--calls 400]
        [--layers 25] [--profile 25] [--json F]

What stands in for CUDA: CPU tensors, the backend told it may run there (as under
``TRITON_INTERPRET=1``) with the GPU tiles (``configs.CONFIG_MODE = "gpu"``). Three ways
to launch, timed interleaved in the same rounds:

- ``planned``: the launches as a training step makes them. Triton's ``JITFunction.run``
  runs for real on a stand-in sm_90 device (``fastvae.bench.offline.jit_no_gpu``): its
  binder, cache key and lookup on a launch that takes Triton's path, the compiled
  kernel's own ``launch_metadata`` and launcher call on every launch; the launcher
  itself (C argument packing, ``cuLaunchKernel``, a few microseconds per launch on a GPU
  host) is what is not run.
- ``triton``: the same with every launch through ``kernel[grid](**args)`` (a pass-through
  ``_launch.launch``, which planned launches always go through when it is replaced): what
  the step cost before planned launches skipped Triton's binder on repeated calls.
- ``stub``: ``_launch.launch_planned`` and ``_launch.launch`` replaced by recorders that
  return at once, where fastvae hands a launch over: fastvae's own host work and
  autograd, no Triton at all. (Until 2026-12-01 only ``_launch.launch`` was replaced, so a
  planned launch first merged its plan's fixed arguments into a keyword dict, ~60 entries,
  for the recorder: work no real launch does. RESULTS.md quotes both stubs side by side.)

CPU allocations stand in for the CUDA caching allocator's; both are a free-list lookup
for the small tensors used here (keep ``--batch`` small: large CPU tensors go to mmap,
which the caching allocator never does). The machine is shared and slow at times, so
each round also times a fixed calibration loop (``calib``: 20 ``torch.empty(1)`` plus
200 empty Python calls); ``step / calib`` is comparable across runs and machines, the
microseconds only within one run; ``/ floor`` is the median of the rounds' ratios,
``min/min`` the ratio of the least-disturbed rounds. ``floor`` is the same step through a bare
autograd.Function that only allocates its outputs: what autograd itself costs.
``launches only`` (the ELBO): that Function plus the step's two planned launches, stubbed,
with the real step's arguments: the least any design of the op can cost here; the stubbed
step above it is fastvae's dispatch, checks, plan lookups and bookkeeping. Times are
the thread's CPU time (``time.thread_time``). ``py calls`` counts Python-level function
calls per step (``sys.setprofile``), independent of the machine.
"""
from __future__ import annotations

import statistics
import sys
import time

import torch

import fastvae
from fastvae import _env
from fastvae import options as o
from fastvae.checkpoint import write_json
import fastvae.backends as backends
from fastvae.backends.triton_backend import _launch, configs
from fastvae.bench.offline.jit_no_gpu import jit_no_gpu

MODES = ("planned", "triton", "stub")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def stub_gpu():
    """Let the Triton backend run on CPU tensors with its GPU tiles; returns the three ways
    to launch (name -> a function that sets ``_launch.launch`` and
    ``_launch.launch_planned`` for it) and the list the stub appends every launch to: a
    planned one's (plan, per-call arguments), another's (kernel, grid, kwargs)."""
    if not backends.triton_available():
        raise SystemExit("host_path.py needs the triton package")
    _env.interpreting = lambda: True
    configs.CONFIG_MODE = "gpu"
    record = []
    real, real_planned = _launch.launch, _launch.launch_planned

    def stub(kernel, grid, **args):
        if len(record) < 64:
            record.append((kernel, grid, args))

    def planned_stub(p, **args):
        if len(record) < 64:
            record.append((p, args))

    def through_triton(kernel, grid, **args):
        return real(kernel, grid, **args)

    def way(launch, planned):
        def use():
            _launch.launch, _launch.launch_planned = launch, planned
        return use
    return {"stub": way(stub, planned_stub), "triton": way(through_triton, real_planned),
            "planned": way(real, real_planned)}, record


def make_step(args):
    if args.op != "elbo":
        return make_sampler_step(args)
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
        value = forward()
        (value.sum() if args.reduction == "none" else value).backward()
        for t in leaves:  # the next backward hands its gradient over, no accumulation
            t.grad = None
    return step, forward


def make_sampler_step(args):
    """sample_with_kl (a full learned prior) or reparameterize (K=1) on (B, L) latents,
    fwd+bwd with fixed cotangents."""
    dt = DTYPES[args.dtype]
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, args.latent)
    leaves = [torch.randn(shape, generator=g).to(dt).requires_grad_()
              for _ in range(4 if args.op == "sample_with_kl" else 2)]
    dz = torch.randn(shape, generator=g).to(dt)
    dkl = torch.randn(args.batch, generator=g)

    def forward():
        if args.op == "sample_with_kl":
            return fastvae.sample_with_kl(*leaves, backend="triton")
        return (fastvae.reparameterize(*leaves, backend="triton"),)

    def step():
        out = forward()
        torch.autograd.backward(out, [dz, dkl][:len(out)])
        for t in leaves:
            t.grad = None
    return step, forward


def leaf_shapes(args):
    b, d, l = args.batch, args.dim, args.latent
    return {"elbo": [(b, d), (b, l), (b, l)], "sample_with_kl": [(b, l)] * 4,
            "reparameterize": [(b, l)] * 2}[args.op]


def make_floor(args):
    """The same step through a bare autograd.Function that only allocates the value and
    the gradients and hands them back: what any custom op costs in autograd and the
    allocator, the floor under fastvae's own host work."""
    return _bare_step(args)


def _bare_step(args, forward_launch=None, backward_launch=None):
    """The bare Function's fwd+bwd step on leaves of the op's shapes; ``forward_launch``
    and ``backward_launch`` (no arguments) run inside its forward and backward."""
    dt = DTYPES[args.dtype]
    x = torch.rand(args.batch, args.dim).to(dt)
    leaves = [torch.randn(s).to(dt).requires_grad_() for s in leaf_shapes(args)]

    class Bare(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, *ins):
            grads = [torch.empty_like(t) for t in ins]
            if forward_launch is not None:
                forward_launch()
            ctx.save_for_backward(*grads)
            return torch.empty((), dtype=torch.float32)

        @staticmethod
        def backward(ctx, grad_out):
            if backward_launch is not None:
                backward_launch()
            return (None, *ctx.saved_tensors)

    def step():
        Bare.apply(x, *leaves).backward()
        for t in leaves:
            t.grad = None
    return step


def make_launches_only(args, record):
    """The ELBO step as the bare Function (:func:`make_floor`) plus what no design can
    skip: the step's two planned launches (the row kernel forward, the scale kernel
    backward) with the arguments the real step passed (``record``: its launches,
    stubbed). What is left above this is fastvae's dispatch, checks, plan lookups and
    higher-order bookkeeping. None for another op."""
    if args.op != "elbo" or len(record) != 2:
        return None
    (row, row_args), (scale, scale_args) = record
    return _bare_step(args, lambda: _launch.launch_planned(row, **row_args),
                      lambda: _launch.launch_planned(scale, **scale_args))


def layer_times(args, floor, rounds, calls):
    """Each layer of the planned step called alone (least-disturbed round, us): the host
    function, the op (autograd.Function around it), ``fastvae.elbo`` (validation and
    dispatch around that), the module, and ``backward()`` of the op's value."""
    import importlib
    op = importlib.import_module("fastvae.ops.elbo").elbo
    host = backends.get("triton").elbo_fwd
    dt = DTYPES[args.dtype]
    b, d, l = args.batch, args.dim, args.latent
    x = torch.rand(b, d).to(dt)
    recon, mu, lv = (torch.randn(b, n).to(dt).requires_grad_() for n in (d, l, l))
    needs = [False, True, True, True, False, False, False, False]
    loss_fn = fastvae.ELBOLoss(reduction=args.reduction, backend="triton")
    red = args.reduction

    def backward():
        value = op(x, recon, mu, lv, None, 0.0, likelihood="bernoulli", kl="analytic", beta=1.0,
                   free_bits=0.0, reduction=red, backend="triton", scale=-1.0)
        if red == "none":
            value = value.sum()
        t = time.thread_time()
        value.backward()
        t = time.thread_time() - t
        recon.grad = mu.grad = lv.grad = None
        return t

    parts = {
        "host": lambda: host(x, recon, mu, lv, None, None, None, None, 0.0, "bernoulli",
                             "analytic", 1.0, 0.0, red, -1.0, needs),
        "op": lambda: op(x, recon, mu, lv, None, 0.0, likelihood="bernoulli", kl="analytic",
                         beta=1.0, free_bits=0.0, reduction=red, backend="triton", scale=-1.0),
        "fastvae.elbo": lambda: fastvae.elbo(x, recon, mu, lv, reduction=red, backend="triton",
                                             _scale=-1.0),
        "module": lambda: loss_fn(x, recon, mu, lv),
    }
    best = {name: float("inf") for name in (*parts, "backward", "floor")}
    for _ in range(rounds):
        for name, fn in parts.items():
            best[name] = min(best[name], timed(fn, calls))
        best["backward"] = min(best["backward"],
                               sum(backward() for _ in range(calls)) / calls * 1e6)
        best["floor"] = min(best["floor"], timed(floor, calls))
    return best


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
    p = o.Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--op", choices=("elbo", "sample_with_kl", "reparameterize"),
                   default="elbo", help="the fused call measured (default: ELBOLoss)")
    p.add_argument("--batch", type=o.count, default=64)
    p.add_argument("--dim", type=o.count, default=784)
    p.add_argument("--latent", type=o.count, default=64)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--reduction", choices=("sum", "mean", "none"), default="sum")
    p.add_argument("--warmup", type=o.count, default=20,
                   help="steps each way to launch runs before timing (first compiles)")
    p.add_argument("--rounds", type=o.count, default=9)
    p.add_argument("--calls", type=o.count, default=400)
    p.add_argument("--profile", type=o.count_or_zero, default=0,
                   help="print the N functions with the most own time (cProfile)")
    p.add_argument("--layers", type=o.count_or_zero, default=0,
                   help="also time each layer of the step alone, over N rounds")
    p.add_argument("--json", metavar="FILE", type=o.file_to_write,
                   help="write the numbers here")
    args = p.parse_args(argv)
    if args.layers and args.op != "elbo":
        p.error("--layers times the ELBO's layers only")
    torch.set_num_threads(1)
    modes, record = stub_gpu()
    with jit_no_gpu(90, record=False):
        return measure(args, modes, record)


def measure(args, modes, record):
    step, forward = make_step(args)
    for name in MODES:   # each way's first launches (Triton's binder, compile stand-ins)
        modes[name]()
        for _ in range(args.warmup):
            step()
    if backends.last_used() != "triton":
        raise SystemExit(f"the step ran backend {backends.last_used()!r}, not triton")
    modes["stub"]()
    record.clear()
    step()
    per_step = len(record)

    floor = make_floor(args)
    launches_only = make_launches_only(args, record)
    times = {name: [] for name in ("calib", *MODES, "forward", "floor")}
    if launches_only is not None:
        times["launches_only"] = []
    for _ in range(args.rounds):  # interleaved, so load changes hit every column alike
        times["calib"].append(timed(calib, max(args.calls // 4, 20)))
        for name in MODES:
            modes[name]()
            times[name].append(timed(step, args.calls))
        modes["planned"]()
        times["forward"].append(timed(lambda: forward(), args.calls))
        if launches_only is not None:   # stubbed, as the stub mode's launches
            modes["stub"]()
            times["launches_only"].append(timed(launches_only, args.calls))
        times["floor"].append(timed(floor, args.calls))
    modes["planned"]()   # for the call count, the layers and the profile
    calls = count_calls(step)
    if args.layers:
        best = layer_times(args, floor, args.layers, max(args.calls // 2, 20))
        print("  each layer alone, least-disturbed of", args.layers, "rounds (us; / floor):")
        for name, us in best.items():
            print(f"    {name:14} {us:8.1f} {us / best['floor']:6.2f}")

    med = statistics.median

    def ratio(a, b):
        return med(x / y for x, y in zip(times[a], times[b]))
    res = {
        "shape": (f"B={args.batch} D={args.dim} L={args.latent} {args.dtype} {args.reduction}"
                  if args.op == "elbo" else f"{args.op} B={args.batch} L={args.latent} "
                  f"{args.dtype}"),
        "torch": torch.__version__, "triton": __import__("triton").__version__,
        "launches_per_step": per_step,
        **{f"{name}_us": med(times[name]) for name in times},
        **{f"{name}_us_min": min(times[name]) for name in MODES},
        **{f"{name}_over_floor": ratio(name, "floor") for name in MODES},
        # the least-disturbed round of each: on a loaded machine, the steadier figure
        **{f"{name}_min_over_floor_min": min(times[name]) / min(times["floor"])
           for name in MODES},
        "floor_us_min": min(times["floor"]),
        "planned_over_calib": ratio("planned", "calib"),
        "py_calls_per_step": calls,
    }
    print(f"host path, {res['shape']}, torch {res['torch']}, triton {res['triton']}, "
          f"{args.rounds} rounds x {args.calls} steps, {per_step} launches per step")
    print(f"  {'':28} {'median us':>10} {'min us':>8} {'/ floor':>8} {'min/min':>8}")
    for name, what in (("planned", "fwd+bwd, planned launches"),
                       ("triton", "fwd+bwd, kernel[grid] each"),
                       ("stub", "fwd+bwd, launches stubbed")):
        print(f"  {what:28} {res[name + '_us']:10.1f} {res[name + '_us_min']:8.1f} "
              f"{res[name + '_over_floor']:8.2f} {res[name + '_min_over_floor_min']:8.2f}")
    if "launches_only_us" in res:
        print(f"  {'launches only, stubbed':28} {res['launches_only_us']:10.1f} "
              f"{min(times['launches_only']):8.1f} {ratio('launches_only', 'floor'):8.2f}")
    print(f"  {'bare autograd.Function':28} {res['floor_us']:10.1f} {res['floor_us_min']:8.1f}")
    print(f"  forward alone (planned)      {res['forward_us']:10.1f}")
    print(f"  calib {res['calib_us']:.1f} us; planned / calib {res['planned_over_calib']:.2f}; "
          f"Python calls per step (planned) {calls}")
    if args.profile:
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.calls):
            step()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(args.profile)
    if args.json:  # atomic: a failed write keeps the last file whole
        write_json(res, args.json)


if __name__ == "__main__":
    from fastvae.bench.extras import script_main
    sys.exit(script_main(main, "host_path.py"))
