"""IWAE bound (Burda et al. 2016) forward+backward, K in {5, 50}, reduction="sum".

Variants: eager (pytorch/examples), torch.distributions, torch.compile of the eager
loss, fastvae "torch" backend, fastvae "triton" backend (CUDA only). Each case's
variants are checked against eager before any is timed (``fastvae.bench.prepare``).
"""
import pytest

from fastvae import bench


@pytest.fixture(scope="module", params=bench.suite_cases("iwae"), ids=lambda c: c.id)
def prepared(request):
    yield bench.prepare(request.param)


@pytest.mark.parametrize("variant", bench.VARIANT_ORDER)
def test_iwae(benchmark, prepared, variant):
    bench.run_benchmark(benchmark, prepared, variant)
