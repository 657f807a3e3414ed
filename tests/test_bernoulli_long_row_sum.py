"""The C Bernoulli kernel sums a row in float over blocks of ROW_BLOCK vectors and adds
the blocks in double (bernoulli_rows.c, vecmath.h), so a long row's log p(x|z) keeps
float32 precision whatever D (a plain float accumulation drifts by ~1e-4 relative at
D = 2^20). Exact expectation: constant x and logit give D times one element's value (float64)."""
import math

import pytest
import torch

import fastvae
from _backends import BACKENDS


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"], indirect=True)
@pytest.mark.parametrize("d", [1 << 20, 3 * (1 << 18) + 5])
def test_long_row_sum_keeps_float32_precision(backend, d):
    x = torch.full((2, d), 0.5)
    recon = torch.full((2, d), 0.3)
    mu, lv = torch.zeros(2, 1), torch.zeros(2, 1)
    got = fastvae.elbo(x, recon, mu, lv, reduction="none", backend=backend)
    l32 = float(torch.tensor(0.3, dtype=torch.float32))   # the logit as stored
    per = 0.5 * l32 - math.log1p(math.exp(l32))
    want = torch.full((2,), d * per, dtype=torch.float64)   # KL = 0
    torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=0)
