"""What the ``fastvae.bench`` test modules (test_bench_*.py) share: tiny command-line
shapes and the bench's own argument parser."""
import argparse

from fastvae import bench

TINY = ["--batch", "16", "--dim", "12", "--latent", "3", "--k-reparam", "2", "--k-iwae", "3",
        "--reps", "2", "--budget", "0.01", "--variants", "eager,distributions,fastvae-torch"]
NO_K = TINY[:6] + TINY[10:]   # for elbo alone: a K flag of an op not run is refused


def _parse(argv):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(argv)
