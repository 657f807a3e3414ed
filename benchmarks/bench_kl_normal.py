"""kl_normal: the KL between diagonal Gaussians (a learned prior), forward+backward,
checked against eager (spec: ``fastvae/bench/specs/sample_with_kl.py``)."""
from fastvae import bench

CASES = bench.suite_cases("kl_normal")


def test_kl_normal(benchmark, prepared, variant):
    bench.run_benchmark(benchmark, prepared, variant)


if __name__ == "__main__":   # python benchmarks/bench_kl_normal.py [pytest's flags]
    bench.run_suite(__file__)
