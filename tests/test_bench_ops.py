"""fastvae.bench's ops: the default and suite grids, the bytes-moved model, the
fastvae-aten variant, an eager baseline's work, and the op registry (a spec module and a
suite per op; a new op needs only its spec)."""
import pytest
import torch

import fastvae
from fastvae import bench, testing
from fastvae.bench import core, grids
from fastvae.bench.specs import _common

from _bench import _parse


def test_default_grids():
    cpu = bench.grid_from_args(_parse([]), "cpu", [])
    gpu = bench.grid_from_args(_parse([]), "cuda", [])
    quick = bench.grid_from_args(_parse(["--quick"]), "cpu", [])
    assert bench.Case("elbo", 4096, 784, 32) in cpu and bench.Case("elbo", 32768, 784, 32) in cpu
    for grid in (cpu, quick):  # the CPU bar's training step
        assert bench.Case("train_mlp", 4096, 784, 32) in grid
    for dtype in (torch.float32, torch.bfloat16):  # the GPU bar's shape, both dtypes
        assert bench.Case("elbo", 65536, 784, 32, dtype=dtype, device="cuda") in gpu
        assert bench.Case("train_mlp", 65536, 784, 32, dtype=dtype, device="cuda") in gpu
    assert all(c.largest_elements() <= 1 << 27 for c in cpu)


def test_bytes_moved_model():
    # elbo: 3BD + 4BL fp32 elements; eval: 2BD + 2BL; training steps have no roofline.
    assert bench.bytes_moved(bench.Case("elbo", 2, 3, 1)) == (18 + 8) * 4
    assert bench.bytes_moved(bench.Case("elbo_eval", 2, 3, 1)) == (12 + 4) * 4
    assert bench.bytes_moved(bench.Case("iwae", 2, 3, 1, k=4)) == (6 + 48 + 16 + 8) * 4
    assert bench.bytes_moved(bench.Case("train_mlp", 2, 3, 1)) is None


def test_suite_grid_leaves_out_oversized_cases(monkeypatch):
    monkeypatch.setenv("FASTVAE_BENCH_MAX_ELEMENTS", str(1 << 24))
    grid = bench.suite_cases("iwae", device="cpu")
    assert grid and all(c.largest_elements() <= 1 << 24 for c in grid)
    assert {c.k for c in grid} == {5, 50}
    for bad in ("abc", "0", "-5"):   # a collection error naming the variable, not int()'s
        monkeypatch.setenv("FASTVAE_BENCH_MAX_ELEMENTS", bad)
        with pytest.raises(ValueError, match=r"^FASTVAE_BENCH_MAX_ELEMENTS must be a"):
            bench.suite_cases("iwae", device="cpu")


def test_cuda_suite_grid_fits_a_card(monkeypatch):
    """The CUDA grid adds B=65536 and bf16 but leaves out what no card holds (IWAE K=50 at
    B=65536, D=3072 is 10 G elements a tensor)."""
    monkeypatch.delenv("FASTVAE_BENCH_MAX_ELEMENTS", raising=False)
    grid = bench.suite_cases("iwae", device="cuda")
    assert {c.batch for c in grid} >= {65536} and {c.dtype for c in grid} == {torch.float32,
                                                                              torch.bfloat16}
    assert all(c.largest_elements() <= 1 << 29 for c in grid)
    assert not any(c.batch == 65536 and c.k == 50 and c.dim == 3072 for c in grid)


def test_fastvae_aten_variant_runs_without_the_compiled_kernel(monkeypatch):
    # The torch backend's no-C-compiler fallback, on CPU, for the ops that have the kernel.
    _native = _common._native  # the one module the bench reaches into

    for op in ("elbo", "elbo_eval", "iwae", "dmol"):
        names = core.variant_names(op, "cpu")
        assert names.index("fastvae-aten") == names.index("fastvae-torch") + 1
        assert "fastvae-aten" not in core.variant_names(op, "cuda")
    assert "fastvae-aten" not in core.variant_names("reparameterize", "cpu")
    if _native.load() is None:
        pytest.skip(f"compiled kernel unavailable here: {_native.status()}")
    calls = []
    rows = _native.bernoulli_rows
    monkeypatch.setattr(_native, "bernoulli_rows", lambda *a: calls.append(1) or rows(*a))
    load = _native.load
    prepared = bench.prepare(bench.Case("elbo", 64, 40, 3), ["fastvae-torch", "fastvae-aten"],
                             warmup=0)  # and the two agree with eager
    del calls[:]
    aten = [t.clone() for t in prepared.steps["fastvae-aten"]()]
    assert calls == [] and _native.load is load  # off inside the step, back on after it
    fused = prepared.steps["fastvae-torch"]()
    assert calls
    for i, (a, f) in enumerate(zip(aten, fused)):  # the same numbers by the tests' rule
        testing.assert_close(f"output #{i}", a, f, torch.float32)


def test_the_dmol_eager_baseline_makes_each_full_size_intermediate_once():
    """Eager DMoL's interior term, log(1 - e^-w), w the bin's width over the scale (2/n times
    the inverse scale it has already): log w + log((1 - e^-w) / w), the same value, costs
    two exps, a division and an add more over every B x 3 x M x H x W element (10-30% of
    eager's step), and would inflate every ratio against eager by as much."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from fastvae.bench.specs import discretized_logistic_mixture_log_prob as dmol

    case = bench.Case("dmol", 2, 16, 3)
    inputs = dmol.make_inputs(case, torch.Generator().manual_seed(0))
    full = 2 * 3 * 3 * 16   # B x 3 x M x H*W

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.numel() == full and out.dim() == 5:
                self.ops.append(func.overloadpacket.__name__)
            return out

    with torch.no_grad(), Count() as count:
        dmol.eager_dmol_loss(inputs["x"], inputs["params"])
    assert count.ops.count("exp") == 1, count.ops   # the inverse scale
    assert "div" not in count.ops, count.ops


@pytest.mark.parametrize("op", ["sample_with_kl", "kl_normal"])
def test_a_16_bit_eager_kl_step_casts_no_cotangent(op):
    """The KL's per-row cotangent is float32; eager's 16-bit KL needs it in 16 bits, fastvae's
    float32 KL as it is. Cast in every timed call, it was a copy only eager paid."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from fastvae.bench.harness import make_inputs

    case = bench.Case(op, 4, 0, 8, dtype=torch.bfloat16)
    step = core.OPS[op].variants["eager"].build(case, make_inputs(core.OPS[op], case, 0))
    step()

    class Copies(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.shapes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ == "_to_copy":
                self.shapes.append(tuple(args[0].shape))
            return func(*args, **(kwargs or {}))

    with Copies() as copies:
        step()
    assert (case.batch,) not in copies.shapes, copies.shapes


def test_every_spec_module_is_registered_and_has_a_suite():
    """Adding an op = a spec module in fastvae/bench/specs/ + benchmarks/bench_<op>.py."""
    import importlib
    import pkgutil
    from pathlib import Path

    from fastvae.bench import specs

    modules = [m.name for m in pkgutil.iter_modules(specs.__path__) if not m.name.startswith("_")]
    ops = [op.name for m in modules
           for op in importlib.import_module(f"{specs.__name__}.{m}").OPS]
    assert sorted(ops) == sorted(bench.OPS)
    # Today's table order, kept by the specs' ORDER.
    assert list(bench.OPS) == ["elbo", "elbo_eval", "reparameterize", "iwae", "sample_with_kl",
                               "kl_normal", "train_mlp", "train_conv", "dmol", "train_hvae"]
    suites = Path(__file__).resolve().parents[1] / "benchmarks"
    for m in modules:
        assert (suites / f"bench_{m}.py").exists(), m


def test_a_suite_run_as_a_script_runs_under_pytest():
    """``python benchmarks/bench_<op>.py --help`` printed nothing and exited 0: a
    pytest-benchmark module run as a script only defines its test (every suite's
    ``__main__``: tests/test_benchmark_scripts.py)."""
    import subprocess
    import sys
    from pathlib import Path

    suite = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_kl_normal.py"
    out = subprocess.run([sys.executable, str(suite), "--collect-only", "-q"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "tests collected" in out.stdout, out.stdout + out.stderr


def test_a_new_op_needs_only_its_spec(monkeypatch, capsys):
    """What a spec file does, done here: the grids, the K flag, the check, the timing
    and the table take a new op with no change anywhere else."""
    import torch.distributions as D

    def make_inputs(case, gen):
        mu = torch.randn(case.k, case.batch, case.latent, generator=gen)
        lv = 0.5 * torch.randn(case.k, case.batch, case.latent, generator=gen)
        return {"mu": core.leaf(mu, True), "logvar": core.leaf(lv, True)}

    def eager(mu, logvar):
        return 0.5 * (mu * mu + logvar.exp() - 1 - logvar).sum()

    def dist(mu, logvar):
        q = D.Normal(mu, (0.5 * logvar).exp())
        return D.kl_divergence(q, D.Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum()

    def fused(backend):
        return lambda mu, lv: fastvae.kl_standard_normal(
            mu.reshape(-1, mu.shape[-1]), lv.reshape(-1, lv.shape[-1]), backend=backend).sum()

    def make(get_fn, backend):
        return lambda case, inputs: core.loss_step(get_fn(), inputs, ("mu", "logvar"), True)

    toy = core.Op("toy_kl", make_inputs, _common.standard_variants(make, eager, dist, fused),
                  elements_moved=lambda c: 4 * c.k * c.batch * c.latent, uses_dim=False,
                  k_values=(1, 2), k_flag="--k-toy", grids={"cpu": dict(batch=[8])})
    monkeypatch.setitem(core.OPS, "toy_kl", toy)
    assert bench.Case("toy_kl", 8, 784, 3, k=2).shape == "B=8 L=3 K=2"
    assert bench.bytes_moved(bench.Case("toy_kl", 8, 784, 3, k=2)) == 4 * 2 * 8 * 3 * 4
    args = _parse(["--ops", "toy_kl", "--k-toy", "3", "--latent", "3", "--reps", "2",
                   "--budget", "0.01", "--no-extras", "--variants",
                   "eager,distributions,fastvae-torch"])
    assert grids.grid_from_args(args, "cpu", []) == [bench.Case("toy_kl", 8, 784, 3, k=3)]
    rows = bench.measure_grid(args)
    assert [r["variant"] for r in rows] == ["eager", "distributions", "fastvae-torch"]
    assert "toy_kl" in capsys.readouterr().out
