"""The speed proxy's occupancy on an H200 SM (benchmarks/ROOFLINE.md): registers are
allocated per warp in units of 256 (a thread's count rounded up to 8), and each program
reserves 1 KB of shared memory beside its own."""
from __future__ import annotations

import pytest

pytest.importorskip("triton")

from fastvae.bench.offline import proxy as P  # noqa: E402


def test_registers_round_up_to_eight_a_thread():
    # 33 registers -> 40 a thread, 1280 a warp, 5120 a 4-warp program: 65536 // 5120 = 12
    # (at 33 exactly it would be 65536 // 4224 = 15; the warp limit is 64 // 4 = 16)
    assert P.programs_per_sm(33, 4, 0) == 12
    assert P.programs_per_sm(40, 4, 0) == 12
    assert P.programs_per_sm(41, 4, 0) == 10     # 48 a thread: 65536 // 6144


def test_each_program_reserves_a_kilobyte_of_shared_memory():
    # 228 KB an SM: three programs of 76 KB need 3 x 77 KB = 231 KB, so two fit
    assert P.programs_per_sm(32, 4, 76 * 1024) == 2
    assert P.programs_per_sm(32, 4, 75 * 1024) == 3   # 3 x 76 KB = 228 KB exactly
