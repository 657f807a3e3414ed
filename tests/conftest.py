"""Shared pytest fixtures. Keep additions additive: several suites use this file."""
from __future__ import annotations

import os
import sys

import pytest
import torch

# tests/_formulas.py (independent float64 formulas) is imported as a plain module.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def seed(request):
    """Seed torch's global RNG with a fresh seed and print it, so a failure on fresh random
    inputs can be replayed: FASTVAE_TEST_SEED=<seed> pytest <test id>."""
    s = os.environ.get("FASTVAE_TEST_SEED")
    s = int(s) if s else int.from_bytes(os.urandom(4), "little") >> 1
    torch.manual_seed(s)
    print(f"\n[seed] {request.node.nodeid}: FASTVAE_TEST_SEED={s}")
    return s


@pytest.fixture
def restore_validation():
    """Put fastvae's global validation switch back after the test."""
    import fastvae

    before = fastvae.get_validation()
    yield
    fastvae.set_validation(before)
