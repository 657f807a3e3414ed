"""The C sampler's counters per sample, CPAD = ceil(B L / 4Q) Q (philox.h, the Triton
kernels' layout): test_philox.py::test_layout_and_the_seed_words checks it only at
B L = 9000 (a partial last chunk), and the Triton-equality test at 7000; at an exact
multiple of 4Q = 4096 an off-by-one chunk (floor + 1) went unnoticed: sample k >= 1 then
reads other counters than the Triton backend's (z differs for the same seed)."""
import pytest
import torch

from fastvae.backends.torch_backend import gaussian_rows, native

Q = gaussian_rows.Q


@pytest.fixture
def kernel():
    if native.load() is None:
        pytest.skip(f"compiled kernel unavailable here: {native.status()}")


@pytest.mark.parametrize("bl", [1, 4095, 4096, 4097, 8192, 3 * 4096])
def test_cpad_is_the_ceiling(bl):
    assert gaussian_rows.cpad(bl) == -(-bl // (4 * Q)) * Q == ((bl + 4 * Q - 1) // (4 * Q)) * Q


def test_layout_of_sample_one_at_an_exact_multiple(kernel):
    b, l, k = 2, 2048, 2                            # B L = 4096: exactly one chunk
    seed = torch.tensor([12345], dtype=torch.int64)
    eps = torch.empty(k, b, l)
    assert gaussian_rows.sample_rows(None, torch.zeros(b, l), seed, k, eps)
    i = torch.arange(b * l)
    for s in range(k):
        _, n = gaussian_rows.philox_eval(12345, s * Q, Q)   # CPAD = Q here
        want = n[(i // (4 * Q)) * Q + i % Q, (i % (4 * Q)) // Q]
        assert torch.equal(eps[s].flatten(), want), f"sample {s}"
