"""ELBO forward+backward on CPU: fastvae's "torch" backend vs the eager pytorch/examples
loss vs ``torch.compile`` of that loss. Bernoulli likelihood, analytic KL, sum over the
batch (the examples' ``loss_function``), D=784, L=32, fp32, B in {256, 4096, 32768}.

    .venv/bin/python -m pytest benchmarks/bench_elbo.py
    .venv/bin/python -m pytest benchmarks/bench_elbo.py --benchmark-group-by=param:batch

Variants: ``eager``, ``compile`` (``torch.compile(dynamic=False)`` of eager; its first
call, the compile, is outside the timing), ``fastvae`` (the "torch" backend as shipped:
the compiled C row kernel where a C compiler exists) and ``fastvae-aten`` (the same with
``FASTVAE_NATIVE=0``: the pure-aten fallback). Before anything is timed, every variant's
loss and gradients are checked against eager's; a mismatch fails the whole module.

Memory, per variant and B (``test_memory``, printed with ``-s``, and in ``extra_info``):
``saved``: bytes autograd keeps for backward (``saved_tensors_hooks``, unique storages);
``peak``: peak extra bytes of one forward+backward, measured in a fresh subprocess whose
glibc malloc sends every block >= 64 KiB to mmap (``mallopt``) so that its own
``max mmap bytes`` counter is the peak; the gradients left in ``.grad`` are part of it.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import fastvae
from fastvae.backends import _native

D, L = 784, 32
BATCHES = (256, 4096, 32768)
VARIANTS = ("eager", "compile", "fastvae", "fastvae-aten")


def examples_loss(recon, x, mu, logvar):
    """pytorch/examples' VAE loss_function (logits form), verbatim."""
    BCE = F.binary_cross_entropy_with_logits(recon, x, reduction="sum")
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


_compiled = None


def _compile_loss():
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(examples_loss, dynamic=False)
    return _compiled


# -ELBO summed: the examples' loss. ELBOLoss folds the sign into the op, so its backward
# gets grad_output == 1 and hands the saved gradients over untouched (``-fastvae.elbo``
# would cost one more B x D pass and buffer to scale them by -1).
_fastvae_module = fastvae.ELBOLoss(reduction="sum", backend="torch", validate=False)


def fastvae_loss(recon, x, mu, logvar):
    return _fastvae_module(x, recon, mu, logvar)


def _aten_only(fn):
    """Run ``fn`` with the compiled kernel switched off (the no-compiler fallback)."""
    def run(*args):
        os.environ["FASTVAE_NATIVE"] = "0"
        _native.reset()
        try:
            return fn(*args)
        finally:
            del os.environ["FASTVAE_NATIVE"]
            _native.reset()
    return run


def loss_fn(variant):
    return {"eager": examples_loss, "compile": _compile_loss(), "fastvae": fastvae_loss,
            "fastvae-aten": _aten_only(fastvae_loss)}[variant]


def make_inputs(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, D, generator=g)
    recon = torch.randn(batch, D, generator=g).mul_(3).requires_grad_()  # no temporary
    mu = torch.randn(batch, L, generator=g).requires_grad_()
    logvar = torch.randn(batch, L, generator=g).requires_grad_()
    return recon, x, mu, logvar


def make_step(variant, inputs):
    fn = loss_fn(variant)
    recon, x, mu, logvar = inputs

    def step():
        recon.grad = mu.grad = logvar.grad = None
        loss = fn(recon, x, mu, logvar)
        loss.backward()
        return loss
    return step


def check_agreement(batch):
    """Every variant's loss and gradients against eager's; raise loudly on a mismatch."""
    inputs = make_inputs(batch)
    results = {}
    for v in VARIANTS:
        loss = make_step(v, inputs)().detach()
        results[v] = [loss] + [t.grad.clone() for t in (inputs[0], inputs[2], inputs[3])]
    ref = results["eager"]
    for v, got in results.items():
        for name, a, b in zip(("loss", "d/drecon", "d/dmu", "d/dlogvar"), got, ref):
            scale = b.abs().max().item() + 1e-12
            err = (a.double() - b.double()).abs().max().item()
            rtol = 1e-5 if name == "loss" else 1e-5  # fp32; the loss is a sum of B*D terms
            if not err <= rtol * scale:
                raise AssertionError(f"B={batch} {v}: {name} differs from eager by {err:.3e} "
                                     f"(scale {scale:.3e}): its timing would mean nothing")


def saved_bytes(variant, batch):
    """Bytes autograd saves for backward (unique storages) in one forward."""
    inputs = make_inputs(batch)
    fn = loss_fn(variant)
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn(*inputs)
    del loss
    return sum(seen.values())


def _peak_child(variant, batch):
    """In a fresh process: peak extra bytes of one forward+backward (see module doc)."""
    libc = ctypes.CDLL("libc.so.6")
    M_MMAP_THRESHOLD = -3
    libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)  # fixed, so large blocks always go to mmap

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc.mallinfo2.restype = Mallinfo2

    def max_mmapped():
        """glibc's "max mmap bytes" (since process start), from malloc_stats on fd 2."""
        r, w = os.pipe()
        saved = os.dup(2)
        os.dup2(w, 2)
        try:
            libc.malloc_stats()
        finally:
            os.dup2(saved, 2)
            os.close(w)
            os.close(saved)
        text = b""
        while True:
            c = os.read(r, 1 << 16)
            if not c:
                break
            text += c
        os.close(r)
        return int(re.search(rb"max mmap bytes\s*=\s*(\d+)", text).group(1))

    # Everything that allocates once (imports, the compile, the kernel build) happens
    # before the inputs exist, so that glibc's all-time maximum is set by the step.
    if variant == "compile":
        make_step(variant, make_inputs(batch))()
    else:
        make_step(variant, make_inputs(8))()
    inputs = make_inputs(batch)
    step = make_step(variant, inputs)
    base, before = libc.mallinfo2().hblkhd, max_mmapped()
    step()
    peak = max_mmapped()
    if os.environ.get("BENCH_ELBO_DEBUG"):
        print(base, before, peak, file=sys.stderr)
    return peak - base


def peak_bytes(variant, batch):
    code = ("import json, sys; sys.path.insert(0, %r); import bench_elbo as b; "
            "print(json.dumps(b._peak_child(%r, %d)))"
            % (os.path.dirname(os.path.abspath(__file__)), variant, batch))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600)
    if out.returncode != 0:
        return None
    return int(out.stdout.strip().splitlines()[-1])


# -- pytest-benchmark --------------------------------------------------------------------

@pytest.fixture(scope="module", params=BATCHES, ids=lambda b: f"B{b}")
def batch(request):
    check_agreement(request.param)
    return request.param


@pytest.mark.parametrize("variant", VARIANTS)
def test_elbo_fwd_bwd(benchmark, batch, variant):
    inputs = make_inputs(batch)
    step = make_step(variant, inputs)
    step()  # first call: compile / kernel build outside the timing
    benchmark.group = f"elbo fwd+bwd B={batch} D={D} L={L} fp32"
    benchmark.extra_info.update(batch=batch, threads=torch.get_num_threads())
    rounds = max(5, min(200, int(4e8 // (batch * D * 20))))
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=2)


@pytest.mark.parametrize("variant", VARIANTS)
def test_memory(batch, variant, record_property):
    grads = 4 * (batch * D + 2 * batch * L)
    saved, peak = saved_bytes(variant, batch), peak_bytes(variant, batch)
    record_property("saved_bytes", saved)
    record_property("peak_extra_bytes", peak)
    print(f"\n[memory] B={batch} {variant}: saved for backward {saved / 1e6:.2f} MB, "
          f"peak extra {'n/a' if peak is None else f'{peak / 1e6:.2f} MB'}, "
          f"gradients {grads / 1e6:.2f} MB")
    if variant.startswith("fastvae"):
        assert saved == grads  # the gradients, nothing else
        if peak is not None:  # the gradients plus row chunks / per-row sums, well under 2x
            assert peak <= grads * 1.25 + (4 << 20)


# -- a side-by-side table: python benchmarks/bench_elbo.py [--rounds N] [--threads T] ---

def _table(rounds, cpu_time):
    import platform
    import statistics
    import time

    clock = time.thread_time if cpu_time else time.perf_counter
    lines = []
    for batch in BATCHES:
        check_agreement(batch)
        inputs = make_inputs(batch)
        steps = {v: make_step(v, inputs) for v in VARIANTS}
        first = {}
        for v, s in steps.items():
            t = time.perf_counter()
            s()
            first[v] = time.perf_counter() - t
            s()
        reps = max(1, int(2e7 // (batch * D)))
        times = {v: [] for v in VARIANTS}
        order = list(VARIANTS)
        for r in range(rounds):  # interleaved, order rotating: load drifts hit all alike
            order = order[1:] + order[:1]
            for v in order:
                for _ in range(reps):
                    t = clock()
                    steps[v]()
                    times[v].append(clock() - t)
        med = {v: statistics.median(ts) * 1e3 for v, ts in times.items()}
        low = {v: min(ts) * 1e3 for v, ts in times.items()}
        for v in VARIANTS:
            saved, peak = saved_bytes(v, batch), peak_bytes(v, batch)
            lines.append(
                f"| {batch} | {v} | {med[v]:.3f} | {low[v]:.3f} | {med['eager'] / med[v]:.2f}x "
                f"| {med['compile'] / med[v]:.2f}x | {saved / 1e6:.1f} MB "
                f"| {'n/a' if peak is None else f'{peak / 1e6:.1f} MB'} | {first[v]:.2f} s |")
            print(lines[-1], flush=True)
    return lines


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--cpu-time", action="store_true",
                   help="time with time.thread_time (only meaningful with --threads 1): "
                        "robust to other processes on a shared machine")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native kernel: "
          f"{(_native.load(), _native.status())[1]}")
    print("| B | variant | median ms | min ms | vs eager | vs compile | saved for bwd "
          "| peak extra | first call |")
    print("|---|---|---|---|---|---|---|---|---|")
    _table(a.rounds, a.cpu_time)
