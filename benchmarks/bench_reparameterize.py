"""Reparameterization z = mu + exp(0.5*logvar)*eps, forward+backward, K in {1, 16}.

Samples cannot be compared draw for draw across RNG streams: each variant is checked
for self-consistency instead (eps = (z - mu)/std is N(0, 1), gradients are the closed
form of its own z).

Variants: eager (pytorch/examples), torch.distributions, torch.compile of the eager
loss, the same drawing with aten's RNG (compile-eager-rng), fastvae "torch" backend, fastvae "triton" backend (CUDA only). Each case's
variants are checked as above, on the first call and on one after the warm-up, before
any is timed (``fastvae.bench.prepare``; the op's spec is in ``fastvae/bench/specs/``).
"""
from fastvae import bench

CASES = bench.suite_cases("reparameterize")


def test_reparameterize(benchmark, prepared, variant):
    bench.run_benchmark(benchmark, prepared, variant)


if __name__ == "__main__":   # python benchmarks/bench_reparameterize.py [pytest's flags]
    bench.run_suite(__file__)
