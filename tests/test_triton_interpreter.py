"""Runs the Triton kernel tests (tests/test_triton_*.py) under TRITON_INTERPRET=1.

TRITON_INTERPRET must be set before the kernels are first imported, and setting it for
the whole session would change what other suites see (backend="triton" accepting CPU
tensors), so the kernel tests run in a child pytest that has it. On a GPU machine the
same modules also run in this session, compiled, on CUDA tensors.
"""
import os
import subprocess
import sys

import pytest

from _triton_testing import HAS_TRITON, INTERPRET

HERE = os.path.dirname(os.path.abspath(__file__))
MODULES = ["test_triton_elbo.py", "test_triton_iwae.py", "test_triton_ops.py",
           "test_triton_reparameterize.py"]


@pytest.mark.skipif(not HAS_TRITON, reason="needs the triton package")
@pytest.mark.skipif(INTERPRET, reason="already under TRITON_INTERPRET=1: the modules run directly")
def test_triton_kernels_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", TRITON_DEFAULT_FP_FUSION="1",
               PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
           "-o", "addopts=", *[os.path.join(HERE, m) for m in MODULES]]
    proc = subprocess.run(cmd, cwd=os.path.dirname(HERE), env=env, capture_output=True, text=True)
    tail = (proc.stdout + proc.stderr)[-6000:]
    print(tail)
    assert proc.returncode == 0, f"kernel tests under TRITON_INTERPRET=1 failed:\n{tail}"
    assert " passed" in proc.stdout, tail
