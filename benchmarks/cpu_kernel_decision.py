"""Which CPU kernel runs the torch backend's float32 Bernoulli rows: the C kernel, or
``torch.compile`` of the same closed form? (issue 9, item 7; results in RESULTS.md).

    python benchmarks/cpu_kernel_decision.py                 # everything, in one run
    python benchmarks/cpu_kernel_decision.py --parts steady --batches 4096 --rounds 11

Parts:
* ``first``: fresh processes, first-call cost of one ELBO fwd+bwd at B=4096: the C
  kernel built into an empty cache and loaded from a warm one; inductor compiling
  the closed form (and the eager loss) with an empty and with a warm cache.
* ``steady``: interleaved rounds of the variants below, fwd+bwd of -ELBO summed,
  D=784, L=32 (``fastvae bench``'s shapes): 2 threads on the wall clock, then 1 thread
  on the process CPU clock (less sensitive to other jobs than the wall clock).
* ``floor``: 1 thread, ns per element of the C kernel's row pass against loops of its
  own ``exp`` and ``log1p`` alone (test entry points of the C file), aten's, and a
  copy, with the data in cache and streamed from memory (see :func:`floor`).

Ratios: of medians; "paired" is the median over rounds of the ratio within a round;
"best" the ratio of the fastest rounds (what an otherwise idle machine would show).

Variants: ``eager`` = pytorch/examples' loss_function; ``compile-eager`` =
``torch.compile(eager)``; ``fastvae-C`` = ``fastvae.ELBOLoss(reduction="sum",
backend="torch")`` (C row kernel); ``fastvae-aten`` = the same with the C kernel off;
``compile-closed`` = ``torch.compile`` of the closed-form value *and* gradients (the
function the torch backend computes), wrapped in an autograd.Function that returns
the saved gradients, as fastvae does.
"""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

import fastvae
from fastvae import options as o
from fastvae.checkpoint import write_json

try:
    from fastvae.backends.torch_backend import native
except ImportError:  # before the C kernel moved into its own file
    from fastvae.backends import _native as native

DIM, LATENT = 784, 32
PARTS = ("first", "steady", "floor")


def eager_loss(x, recon, mu, logvar):
    bce = F.binary_cross_entropy_with_logits(recon, x, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def closed_form(x, recon, mu, logvar):
    """-ELBO summed, and its gradients w.r.t. recon, mu, logvar, in closed form."""
    e = torch.exp(-recon.abs())
    softplus = recon.clamp(min=0) + torch.log1p(e)
    sig = torch.where(recon >= 0, 1 / (1 + e), e / (1 + e))
    var = torch.exp(logvar)
    loss = (softplus - x * recon).sum() + 0.5 * (mu * mu + var - 1 - logvar).sum()
    return loss, sig - x, mu * 1.0, 0.5 * (var - 1)


_COMPILED = {}


def compiled(fn):
    if fn.__name__ not in _COMPILED:
        _COMPILED[fn.__name__] = torch.compile(fn, dynamic=False)
    return _COMPILED[fn.__name__]


class _ClosedForm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, recon, mu, logvar):
        loss, *grads = compiled(closed_form)(x, recon, mu, logvar)
        ctx.save_for_backward(*grads)
        return loss

    @staticmethod
    def backward(ctx, g):
        grads = ctx.saved_tensors
        if not bool(g == 1):
            grads = [t * g for t in grads]
        return (None, *grads)


def closed_form_compiled_loss(x, recon, mu, logvar):
    return _ClosedForm.apply(x, recon, mu, logvar)


@contextlib.contextmanager
def c_kernel_off():
    load = native.load
    native.load = lambda: None
    try:
        yield
    finally:
        native.load = load


def variants():
    loss = fastvae.ELBOLoss(reduction="sum", backend="torch")

    def aten(*a):
        with c_kernel_off():
            return loss(*a)
    return {"eager": eager_loss, "compile-eager": compiled(eager_loss), "fastvae-C": loss,
            "fastvae-aten": aten, "compile-closed": closed_form_compiled_loss}


def inputs(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, DIM, generator=g)
    recon = (2.0 * torch.randn(batch, DIM, generator=g)).requires_grad_()
    mu = torch.randn(batch, LATENT, generator=g).requires_grad_()
    logvar = (0.5 * torch.randn(batch, LATENT, generator=g)).requires_grad_()
    return x, recon, mu, logvar


def step(fn, args):
    for t in args[1:]:
        t.grad = None
    loss = fn(*args)
    loss.backward()
    return loss.detach(), *(t.grad for t in args[1:])


# -- first call, each in a fresh process -------------------------------------------------

_FIRST = r"""
import json, os, sys, time
t0 = time.perf_counter()
import torch, fastvae
sys.path.insert(0, os.path.dirname(sys.argv[1]))
import cpu_kernel_decision as m
t1 = time.perf_counter()
args = m.inputs(4096)
fn = {"C": fastvae.ELBOLoss(reduction="sum", backend="torch"),
      "compile-closed": m.closed_form_compiled_loss,
      "compile-eager": m.compiled(m.eager_loss)}[sys.argv[2]]
t2 = time.perf_counter()
m.step(fn, args)
t3 = time.perf_counter()
later = []
for _ in range(5):
    t = time.perf_counter(); m.step(fn, args); later.append(time.perf_counter() - t)
later.sort()
print(json.dumps({"import_s": t1 - t0, "first_s": t3 - t2, "later_s": later[2],
                  "status": m.native.status()}))
"""


def first_call(repeats: int) -> list:
    rows = []
    here = os.path.abspath(__file__)
    for what, label in (("C", "C kernel"), ("compile-closed", "compile-closed"),
                        ("compile-eager", "compile-eager")):
        for r in range(repeats):
            with tempfile.TemporaryDirectory() as cache:
                env = dict(os.environ, FASTVAE_CACHE_DIR=cache, TORCHINDUCTOR_CACHE_DIR=cache)
                for state in ("empty cache", "warm cache"):
                    out = subprocess.run([sys.executable, "-c", _FIRST, here, what], env=env,
                                         capture_output=True, text=True, check=True)
                    res = json.loads(out.stdout.strip().splitlines()[-1])
                    res.update(variant=label, cache=state, repeat=r)
                    rows.append(res)
    return rows


def first_table(rows) -> str:
    lines = ["| variant | cache | first call s (median) | runs | steady call ms "
             "| first - steady s |", "|---|---|---:|---|---:|---:|"]
    keys = []
    for r in rows:
        if (r["variant"], r["cache"]) not in keys:
            keys.append((r["variant"], r["cache"]))
    for v, c in keys:
        rs = [r for r in rows if (r["variant"], r["cache"]) == (v, c)]
        first = statistics.median(r["first_s"] for r in rs)
        later = statistics.median(r["later_s"] for r in rs)
        runs = ", ".join(f"{r['first_s']:.2f}" for r in rs)
        lines.append(f"| {v} | {c} | {first:.3f} | {runs} | {1e3 * later:.2f} | "
                     f"{first - later:.3f} |")
    return "\n".join(lines)


# -- steady state, interleaved ----------------------------------------------------------

def interleaved(fns, args, rounds, clock, target_s=0.02):
    names = list(fns)
    for n in names:  # warm-up (compiles) and agreement with eager
        out = step(fns[n], args)
        ref = step(fns["eager"], args)
        for a, b in zip(out, ref):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)
    t = time.perf_counter()
    step(fns["eager"], args)
    inner = max(1, int(target_s / max(time.perf_counter() - t, 1e-6)))
    times = {n: [] for n in names}
    for r in range(rounds):
        for j in range(len(names)):
            n = names[(r + j) % len(names)]
            t0 = clock()
            for _ in range(inner):
                step(fns[n], args)
            times[n].append((clock() - t0) / inner)
    return times, inner


def steady(batches, rounds, threads, clock_name):
    clock = {"wall": time.perf_counter, "cpu": time.process_time}[clock_name]
    torch.set_num_threads(threads)
    fns = variants()
    rows = []
    for b in batches:
        args = inputs(b)
        times, inner = interleaved(fns, args, rounds if b < 32768 else max(5, rounds // 2),
                                   clock)
        med = {n: statistics.median(ts) for n, ts in times.items()}
        for n, ts in times.items():
            q = sorted(ts)
            paired = statistics.median(e / t for e, t in zip(times["eager"], ts))
            rows.append(dict(batch=b, variant=n, threads=threads, clock=clock_name,
                             median_ms=1e3 * med[n], lo_ms=1e3 * q[len(q) // 4],
                             hi_ms=1e3 * q[(3 * len(q)) // 4], x_eager=med["eager"] / med[n],
                             x_eager_paired=paired,
                             x_eager_best=min(times["eager"]) / min(ts),
                             x_compile_eager=med["compile-eager"] / med[n],
                             x_compile_closed=med["compile-closed"] / med[n],
                             ns_per_elem=1e9 * med[n] / (b * DIM), inner=inner,
                             rounds=len(ts)))
    return rows


def steady_table(rows) -> str:
    lines = ["| B | variant | median ms | IQR ms | x eager (paired; best) | x compile-eager | "
             "x compile-closed | ns/elem |", "|---:|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['variant']} | {r['median_ms']:.3f} | "
                     f"{r['lo_ms']:.3f}-{r['hi_ms']:.3f} | {r['x_eager']:.2f} "
                     f"({r['x_eager_paired']:.2f}; {r['x_eager_best']:.2f}) | "
                     f"{r['x_compile_eager']:.2f} | {r['x_compile_closed']:.2f} | "
                     f"{r['ns_per_elem']:.2f} |")
    return "\n".join(lines)


# -- the floor: two transcendentals per element ------------------------------------------

def _per_call(fn, reps=31, inner=1):
    ts = []
    for _ in range(reps):
        t = time.process_time()
        for _ in range(inner):
            fn()
        ts.append((time.process_time() - t) / inner)
    return statistics.median(ts)


def floor() -> str:
    """ns per element, 1 thread, process CPU clock. Streamed: B=4096 rows, 12.8 MB an
    array. In cache: the row kernel reads one row for every row (row stride 0) and, for
    the value alone, writes nothing; the elementwise loops run on 16 rows (50 KB) with
    the cost of an empty call (ctypes, about a microsecond) taken off."""
    torch.set_num_threads(1)
    have_c = native.load() is not None and hasattr(native, "eval_elementwise")
    rows_n = 4096
    x, recon, _, _ = inputs(rows_n)
    l = recon.detach()
    neg, out, r, g = -l.abs(), torch.empty_like(l), torch.empty(rows_n), torch.empty_like(l)
    e = torch.exp(neg)
    n_small = 16 * DIM
    neg_s, e_s, out_s = neg[:16].clone(), e[:16].clone(), out[:16].clone()
    x1, l1 = x[:1].expand(rows_n, DIM), l[:1].expand(rows_n, DIM)  # stride 0: one row in L1
    res = {}

    def both(name, streamed, cached=None, cached_n=None, empty=None):
        a = _per_call(streamed) / (rows_n * DIM)
        b = None
        if cached is not None:
            t = _per_call(cached, inner=400 if cached_n == n_small else 1)
            if empty is not None:
                t -= _per_call(empty, inner=2000)
            b = t / cached_n
        res[name] = (b, a)

    tiny_in, tiny_out = torch.zeros(8), torch.zeros(8)
    if have_c:
        both("C row kernel: value + gradient",
             lambda: native.bernoulli_rows(x, l, g, 1.0, r, threads=1),
             lambda: native.bernoulli_rows(x1, l1, g, 1.0, r, threads=1), rows_n * DIM)
        both("C row kernel: value only",
             lambda: native.bernoulli_rows(x, l, None, 1.0, r, threads=1),
             lambda: native.bernoulli_rows(x1, l1, None, 1.0, r, threads=1), rows_n * DIM)
        for what, arg, arg_s in (("exp", neg, neg_s), ("log1p", e, e_s)):
            both(f"C {what} alone", lambda: native.eval_elementwise(what, arg, out),
                 lambda: native.eval_elementwise(what, arg_s, out_s), n_small,
                 lambda: native.eval_elementwise(what, tiny_in, tiny_out))
    both("aten exp alone (Sleef)", lambda: torch.exp(neg, out=out),
         lambda: torch.exp(neg_s, out=out_s), n_small,
         lambda: torch.exp(tiny_in, out=tiny_out))
    both("aten log1p alone (Sleef)", lambda: torch.log1p(e, out=out),
         lambda: torch.log1p(e_s, out=out_s), n_small,
         lambda: torch.log1p(tiny_in, out=tiny_out))
    both("copy 4 B -> 4 B", lambda: out.copy_(l))
    if have_c:
        res["C exp + C log1p (the floor)"] = tuple(
            a + b for a, b in zip(res["C exp alone"], res["C log1p alone"]))
    lines = ["| 1 thread, D=784 | in cache, ns/elem | streamed, ns/elem |", "|---|---:|---:|"]
    for k, (a, b) in res.items():
        lines.append(f"| {k} | {'' if a is None else f'{1e9 * a:.2f}'} | {1e9 * b:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    # Every flag checked as it is parsed, a one-line usage error naming it: an unknown part
    # measured nothing and exited 0; a batch of 0 or 0 rounds failed after the timing.
    p = o.Parser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--parts", type=o.names_from(PARTS), default=list(PARTS),
                   help=f"comma list of {', '.join(PARTS)} (default all)")
    p.add_argument("--batches", type=o.positive_ints, default=[256, 4096, 32768],
                   help="comma list of batch sizes for steady (default 256,4096,32768)")
    p.add_argument("--rounds", type=o.positive_int, default=15)
    p.add_argument("--first-repeats", type=o.positive_int, default=3)
    p.add_argument("--json", metavar="FILE", type=o.file_to_write, default=None,
                   help="also write every number here (checked first, written atomically)")
    a = p.parse_args(argv)
    parts, batches = a.parts, a.batches
    dump = {"torch": torch.__version__, "cpus": os.cpu_count(),
            "load_before": os.getloadavg(), "argv": sys.argv}
    native.load()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()}, "
          f"C kernel: {native.status()}\n")
    if "first" in parts:
        rows = first_call(a.first_repeats)
        dump["first"] = rows
        print("First call of an ELBO fwd+bwd at B=4096 in a fresh process (after import):\n")
        print(first_table(rows) + "\n")
    if "steady" in parts:
        rows = steady(batches, a.rounds, 2, "wall") + steady(batches, a.rounds, 1, "cpu")
        dump["steady"] = rows
        for th, clock in ((2, "wall"), (1, "cpu")):
            print(f"Steady state, {th} thread(s), {clock} clock, D={DIM} L={LATENT}:\n")
            print(steady_table([r for r in rows if r["threads"] == th]) + "\n")
    if "floor" in parts:
        table = floor()
        dump["floor"] = table
        print("Floor:\n\n" + table + "\n")
    dump["load_after"] = os.getloadavg()
    print(f"load average after: {os.getloadavg()}")
    if a.json:
        write_json(dump, a.json)  # atomic: a failed write keeps the last file whole


if __name__ == "__main__":
    from fastvae.bench.extras import script_main
    sys.exit(script_main(main, "cpu_kernel_decision.py"))
