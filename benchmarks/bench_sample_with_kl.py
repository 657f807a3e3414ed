"""One latent group of a hierarchical VAE with a learned prior: sample_with_kl (z and the
KL to the prior) forward+backward, (B=32, 16x32x32 latents) and (B=4096, L=64).

Variants: eager (the VDVAE pattern), torch.distributions, torch.compile of eager, the
same drawing with aten's RNG (compile-eager-rng), fastvae "torch", fastvae "triton" (CUDA only). Each variant is checked alone (samples
differ across RNG streams): eps standard normal, the KL and every gradient the closed
form of its own z (the op's spec: ``fastvae/bench/specs/sample_with_kl.py``).
"""
from fastvae import bench

CASES = bench.suite_cases("sample_with_kl")


def test_sample_with_kl(benchmark, prepared, variant):
    bench.run_benchmark(benchmark, prepared, variant)


if __name__ == "__main__":   # python benchmarks/bench_sample_with_kl.py [pytest's flags]
    bench.run_suite(__file__)
