"""One training step of the hierarchical VAE (4 latent groups, 28x28 images): the same
model with the eager per-group sampling and KL vs every group through fastvae's fused
sample_with_kl (spec: ``fastvae/bench/specs/train_hvae.py``)."""
from fastvae import bench

CASES = bench.suite_cases("train_hvae")


def test_train_hvae(benchmark, prepared, variant):
    bench.run_benchmark(benchmark, prepared, variant)


if __name__ == "__main__":   # python benchmarks/bench_train_hvae.py [pytest's flags]
    bench.run_suite(__file__)
