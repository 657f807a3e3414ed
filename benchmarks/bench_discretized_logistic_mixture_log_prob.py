"""Discretized mixture of logistics (``fastvae.discretized_logistic_mixture_log_prob``)
forward+backward on 8-bit RGB, M = 10: ``(B=64, 3x32x32)`` and ``(B=8, 3x64x64)`` (the
issue's CPU shapes) and their crosses, as a loss ``-sum log p``.

Variants: eager (NVAE's DMoL in eager PyTorch, its edge and interior bugs fixed),
torch.compile of it, fastvae "torch" backend (its C kernel), fastvae-aten (the same backend
without the C kernel, as where no compiler exists), fastvae "triton" backend (CUDA only).
Peak memory and bytes saved for backward are in the table of ``fastvae bench --ops dmol``
(``fastvae.bench.extras``); every variant is checked against eager before timing.
"""
from fastvae import bench

CASES = bench.suite_cases("dmol")


def test_discretized_logistic_mixture_log_prob(benchmark, prepared, variant):
    bench.run_benchmark(benchmark, prepared, variant)


if __name__ == "__main__":   # python benchmarks/bench_discretized_logistic_mixture_log_prob.py [pytest's flags]
    bench.run_suite(__file__)
