"""Packaging: the Triton kernels live in the top-level ``kernels/`` folder of the
repository but install inside the fastvae namespace as ``fastvae.kernels``; a
top-level ``kernels`` import belongs to another PyPI package."""
from setuptools import setup

setup(
    packages=["fastvae", "fastvae.ops", "fastvae.backends", "fastvae.backends.torch_backend",
              "fastvae.backends.triton_backend", "fastvae.bench", "fastvae.bench.specs",
              "fastvae.kernels"],
    package_dir={"fastvae": "fastvae", "fastvae.kernels": "kernels"},
)
