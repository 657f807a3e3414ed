"""Benchmark the fused VAE ops against eager PyTorch and torch.compile.

Prints one table: variant, op, shape, dtype, median ms, speed-up vs eager and vs
torch.compile (the faster of its variants), peak extra memory, bytes saved for backward, kernels, GB/s and % of
the measured copy-bandwidth roofline. Every case first checks that its variants
agree numerically; one that does not is not timed but reported (a line under the table,
an ``error`` row in the JSON, exit status 1), and the run goes on. On a GPU, L2 is flushed
before every timed call (--warm-l2 leaves it warm). ``--quick`` is a subset that
takes under two minutes on 2 CPU cores.

Layout: ``core`` (cases, variants, ops and their registry), ``harness`` (prepare,
check, time and measure a case; the pytest-benchmark adapter), ``timing``, ``check``,
``extras``, ``grids``, ``report`` and ``cli`` know no op; ``specs/<op>.py`` holds one
op's inputs, variants, baselines, bytes moved and default grids. Adding an op is one
spec file in ``specs/`` (found and registered on import) and one pytest-benchmark
suite ``benchmarks/bench_<op>.py``; nothing else changes.
"""
from .core import OPS, VARIANT_ORDER, AgreementError, Case, Op, Variant, bytes_moved
from . import specs  # noqa: F401  (registers every op in OPS)
from .cli import add_arguments, main, measure_grid, run
from .grids import cases, grid_from_args, suite_cases
from .harness import Prepared, measure, prepare, run_benchmark, run_case, run_suite

__all__ = ["OPS", "VARIANT_ORDER", "AgreementError", "Case", "Op", "Variant", "bytes_moved",
           "add_arguments", "main", "measure_grid", "run", "cases", "grid_from_args",
           "suite_cases", "Prepared", "measure", "prepare", "run_benchmark", "run_case",
           "run_suite"]
