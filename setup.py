"""Packaging: the Triton kernels live in the top-level ``kernels/`` folder of the
repository but install inside the fastvae namespace as ``fastvae.kernels``; a
top-level ``kernels`` import belongs to another PyPI package. The torch backend's C
row kernel ships as source (package data) and is compiled on the user's machine at
first use."""
from setuptools import setup

setup(
    packages=["fastvae", "fastvae.ops", "fastvae.backends", "fastvae.backends.torch_backend",
              "fastvae.backends.triton_backend", "fastvae.bench", "fastvae.bench.specs", "fastvae.bench.offline",
              "fastvae.kernels"],
    package_dir={"fastvae": "fastvae", "fastvae.kernels": "kernels"},
    package_data={"fastvae.backends.torch_backend": ["*.c", "*.h"]},
)
