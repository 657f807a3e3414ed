"""What the torch backend's C-kernel test modules share (test_native_kernel_*.py): a
private cache directory, the skip where no kernel builds, and one Bernoulli row pass."""
from __future__ import annotations

import pytest
import torch

from fastvae.backends.torch_backend import native


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cache directory; the loader forgets what it had before and after."""
    monkeypatch.setenv("FASTVAE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("FASTVAE_NATIVE", raising=False)
    native.reset()
    yield tmp_path
    monkeypatch.undo()
    native.reset()


def _kernel_or_skip():
    native.reset()
    if native.load() is None:
        pytest.skip(f"compiled kernel unavailable here: {native.status()}")


def _rows(x, l, threads):
    rows, g = torch.empty(x.shape[0]), torch.empty(x.shape)
    native.bernoulli_rows(x, l, g, -0.5, rows, threads=threads)
    return rows, g
