"""How fastvae.bench measures: the CPU-time clock, rounds sized from warm calls,
back-to-back calls per sample on a GPU, the L2 flush outside the timed span, and the
extras columns (peak memory, kernels counted).

No timed assertions beyond the control flow, driven on the CPU."""
import pytest
import torch

import fastvae
from fastvae import bench
from fastvae.bench import extras, timing

from _bench import TINY, _parse


def test_cpu_time_clock():
    threads = torch.get_num_threads()
    try:
        rows = bench.measure_grid(_parse(["--ops", "elbo", "--no-extras", "--cpu-time",
                                          "--threads", "1", *TINY]))
    finally:
        torch.set_num_threads(threads)
    assert rows and all(r["clock"] == "cpu" and r["median_ms"] >= 0 for r in rows)
    with pytest.raises(ValueError, match="--threads 1"):
        timing.check_cpu_time("cuda")


def test_gpu_samples_are_back_to_back_calls():
    """On a GPU a sample is several calls between two syncs (host work overlaps the
    GPU's, as in a training loop); the time is per call. The CPU times single calls."""
    assert timing.inner_calls("cpu", 1e-4) == 1
    assert timing.inner_calls("cuda", 1e-4) == timing.CUDA_MAX_INNER
    assert timing.inner_calls("cuda", 5e-3) == 4
    assert timing.inner_calls("cuda", 1.0) == 1
    calls = []
    dt, out = timing.timed(lambda: calls.append(1) or len(calls), "cpu", inner=3)
    assert calls == [1, 1, 1] and out == 3 and dt >= 0
    times = timing.time_interleaved({"a": lambda: calls.append(1)}, "cpu", reps=2, inner=4)
    assert len(times["a"]) == 2 and len(calls) == 3 + 8


def test_rounds_are_sized_from_a_warm_call_not_the_cold_first_one():
    """A first call many times slower than the rest (JIT, tracing, first pages) must not
    cut the rounds to the minimum: measure() and run_benchmark() size from a warm call."""
    prepared = bench.prepare(bench.Case("elbo", 8, 16, 4, 1, torch.float32, "cpu"),
                             ["fastvae-torch"])
    prepared.first_call_s = {n: 10.0 for n in prepared.first_call_s}
    # 5 s: a loaded machine's warm call of this tiny step can take tens of ms
    rows = bench.measure(prepared, reps=12, budget_s=5.0, min_reps=3, with_extras=False)
    assert rows[0]["rounds"] == 12

    class FakeBenchmark:
        extra_info = {}

        def pedantic(self, fn, rounds, iterations, warmup_rounds):
            self.rounds = rounds

    b = FakeBenchmark()
    bench.run_benchmark(b, prepared, "fastvae-torch", budget_s=5.0)
    assert b.rounds == 20


def test_one_slow_sizing_call_does_not_cut_the_rounds():
    """On a shared machine one call can land on another job's burst: rounds are sized from
    the faster of two warm calls (prepare's warm-up and measure's own), not one alone."""
    prepared = bench.prepare(bench.Case("elbo", 8, 16, 4, 1, torch.float32, "cpu"),
                             ["fastvae-torch"])
    step, calls = prepared.steps["eager"], []

    def burst_once():   # the sizing call (measure's first) takes a second, later ones do not
        calls.append(1)
        if len(calls) == 1:
            import time
            time.sleep(2.0)
        return step()
    prepared.steps["eager"] = burst_once
    # one call of 2 s would size int(5 / 2) = 2 rounds, raised to min_reps = 3
    rows = bench.measure(prepared, reps=12, budget_s=5.0, min_reps=3, with_extras=False)
    assert rows[0]["rounds"] == 12


def test_pytest_benchmark_rounds_on_a_gpu_are_back_to_back(monkeypatch):
    """run_benchmark on a CUDA case: `inner` calls per round and one sync after them."""
    import dataclasses

    prepared = bench.prepare(bench.Case("elbo", 8, 16, 4, 1, torch.float32, "cpu"),
                             ["fastvae-torch"])
    prepared.case = dataclasses.replace(prepared.case, device="cuda")
    syncs, calls = [], []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: syncs.append(len(calls)))
    # Several calls per round whatever this machine's load makes of the calibration call.
    monkeypatch.setattr(timing, "CUDA_SAMPLE_S", 1e3)
    real = prepared.steps["fastvae-torch"]
    prepared.steps["fastvae-torch"] = lambda: calls.append(1) or real()

    class FakeBenchmark:
        extra_info = {}

        def pedantic(self, fn, rounds, iterations, warmup_rounds):
            self.iterations = iterations
            for _ in range((rounds + warmup_rounds) * iterations):
                fn()

    b = FakeBenchmark()
    del syncs[:], calls[:]
    bench.run_benchmark(b, prepared, "fastvae-torch")
    inner = b.extra_info["calls_per_round"]
    assert inner == b.iterations > 1
    timed = syncs[2:]  # the calibration call's two syncs come first
    assert len(timed) > 1 and timed[-1] == len(calls), (inner, timed, len(calls))
    assert all(b - a == inner for a, b in zip(timed, timed[1:])), (inner, timed)


def test_l2_flush_runs_before_every_call_outside_the_timed_span():
    """The GPU timing's control flow, driven on the CPU with a clock that the flush
    moves by 1000 s and a step by 1 s: one flush before each call, none timed."""
    log, now = [], [0.0]

    def flush():
        log.append("flush")
        now[0] += 1000.0

    def step():
        log.append("step")
        now[0] += 1.0
        return len(log)

    dt, out = timing.timed(step, "cpu", lambda: now[0], inner=3, flush=flush)
    assert log == ["flush", "step"] * 3 and dt == 1.0 and out == 6
    log.clear()
    times = timing.time_interleaved({"a": step, "b": step}, "cpu", reps=2,
                                    clock=lambda: now[0], inner=2, flush=flush)
    assert log == ["flush", "step"] * 8
    assert times == {"a": [1.0, 1.0], "b": [1.0, 1.0]}
    log.clear()  # no flush: one span over the back-to-back calls, as the CPU path
    dt, _ = timing.timed(step, "cpu", lambda: now[0], inner=3)
    assert log == ["step"] * 3 and dt == 1.0
    assert timing.l2_flusher("cpu") is None  # the CPU is never flushed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_l2_flush_on_a_gpu():
    props = torch.cuda.get_device_properties(0)
    assert timing.L2_FLUSH_BYTES >= 2 * getattr(props, "L2_cache_size", 0)
    flush = timing.l2_flusher("cuda")
    x = torch.randn(1 << 20, device="cuda")
    dt, _ = timing.timed(lambda: x.mul_(1.0), "cuda", inner=4, flush=flush)
    assert 0 < dt < 0.1


def test_fused_elbo_peak_memory_is_its_gradients():
    # What the retired benchmarks/bench_elbo.py asserted of the fused variants: autograd
    # keeps the gradients (d recon, d mu, d logvar) and the inputs (x, recon, mu, logvar:
    # the benchmark's own, no copy), and one forward+backward peaks at those gradients
    # plus row chunks, well under eager's ~2x.
    case = bench.Case("elbo", 4096, 784, 32)
    grads = 4 * (case.batch * case.dim + 2 * case.batch * case.latent)
    inputs = 4 * (2 * case.batch * case.dim + 2 * case.batch * case.latent)
    prepared = bench.prepare(case, ["eager", "fastvae-torch", "fastvae-aten"], warmup=0)
    peak = {}
    for name, step in prepared.steps.items():
        peak[name], saved, _ = extras.extras(step, "cpu")
        if name != "eager":
            assert saved == grads + inputs, name
            assert grads <= peak[name] <= grads * 1.25 + (4 << 20), (name, peak[name], grads)
    assert peak["eager"] > 1.5 * grads


def test_the_kernels_column_counts_fastvaes_c_passes():
    """A C pass over memory is a kernel as an aten op or inductor's C++ kernel is; the
    profiler saw none of them (a ctypes call), so the CPU column said fastvae's
    reparameterize ran 1 kernel (its seed's randint): a review's find."""
    from fastvae.backends.torch_backend import native
    if native.load() is None:
        pytest.skip(f"no C library here: {native.status()}")
    mu = torch.randn(64, 8, requires_grad=True)
    lv = torch.randn(64, 8, requires_grad=True)

    def step():
        fastvae.reparameterize(mu, lv, backend="torch").sum().backward()
    assert extras.extras(step, "cpu")[2] >= 2   # the forward pass and the backward pass
