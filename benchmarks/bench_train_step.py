"""One full training step (forward, loss, backward, Adam) of the standard VAEs.

``fastvae.models.VAE`` (MLP, D -> 400 -> L as in pytorch/examples) and ``ConvVAE``
(1x28x28 for D=784, 3x32x32 for D=3072). Variants: the same model with the eager
pytorch/examples loss, the torch.distributions loss and torch.compile of the eager loss
(z drawn by the eager reparameterization), against the model on fastvae's "torch"
(and on CUDA "triton") backend end to end. The first step of every variant starts
from the same weights and noise; loss and every parameter's gradient must agree.
"""
from fastvae import bench

CASES = bench.suite_cases("train_mlp") + bench.suite_cases("train_conv")


def case_id(case):
    return f"{case.op.split('_')[1]}-{case.id}"


def test_train_step(benchmark, prepared, variant):
    bench.run_benchmark(benchmark, prepared, variant)


if __name__ == "__main__":   # python benchmarks/bench_train_step.py [pytest's flags]
    bench.run_suite(__file__)
