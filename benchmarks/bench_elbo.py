"""ELBO forward+backward, reduction="sum", Bernoulli + analytic KL (the pytorch/examples
``loss_function``).

Variants: eager (pytorch/examples), torch.distributions, torch.compile of the eager
loss, fastvae "torch" backend, the same with its compiled C row kernel off
(``fastvae-aten``, the no-C-compiler fallback; CPU only), fastvae "triton" backend
(CUDA only). Each case's variants are checked against eager before any is timed
(``fastvae.bench.prepare``; the op's spec is in ``fastvae/bench/specs/``). Bytes saved for backward are in each result's
``extra_info``; peak memory and kernel counts are columns of ``fastvae bench``.
"""
from fastvae import bench

CASES = bench.suite_cases("elbo")


def test_elbo(benchmark, prepared, variant):
    bench.run_benchmark(benchmark, prepared, variant)


if __name__ == "__main__":   # python benchmarks/bench_elbo.py [pytest's flags]
    bench.run_suite(__file__)
