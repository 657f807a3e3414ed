"""The speed proxy's trip counts read a kernel's Python source: ``not``, ``and``, chained
comparisons, conditional expressions, ``min``, keyword arguments of a one-line helper,
``tl.num_programs`` of another axis, a long outer loop; what it cannot evaluate (a loaded
value, ``tl.static_range``, a program-dependent loop over a huge grid) is reported as
such, never guessed."""
from __future__ import annotations

import os

import pytest

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from _kernel_lines import tagged_line  # noqa: E402
from fastvae.bench.offline import trips  # noqa: E402

_FILE = os.path.abspath(__file__)


@triton.jit
def _half(n, d):
    return n // d


@triton.jit
def _expr_kernel(X, N, M, FLAG: tl.constexpr, BLOCK: tl.constexpr):
    if not FLAG:
        for i in range(0, N):  # L_not
            tl.store(X + i, 0.0)
    if FLAG and N > 10:
        for i in range(0, M):  # L_and
            tl.store(X + i, 0.0)
    if 0 < M <= 3:
        for i in range(0, 3):  # L_chain
            tl.store(X + i, 0.0)
    for i in range(0, N if FLAG else M):  # L_ifexp
        tl.store(X + i, 0.0)
    for i in range(0, min(N, M)):  # L_min
        tl.store(X + i, 0.0)
    for i in range(0, _half(N, d=2)):  # L_keyword
        tl.store(X + i, 0.0)
    for i in range(0, tl.num_programs(1)):  # L_programs
        tl.store(X + i, 0.0)
    if tl.load(X) > 0:
        for i in range(0, N):  # L_loaded
            tl.store(X + i, 0.0)
    for i in tl.static_range(0, 4):  # L_static
        tl.store(X + i, 0.0)


@triton.jit
def _long_kernel(X, N, M, BLOCK: tl.constexpr):
    for i in range(0, N):
        for j in range(0, M):  # L_long
            tl.store(X + i + j, 0.0)
    for i in range(tl.program_id(0), N, BLOCK):  # L_pid
        tl.store(X + i, 0.0)


# 15 programs on a (5, 3) grid, N = 6, M = 4, FLAG set
_ARGS = {"N": 6, "M": 4, "FLAG": True, "BLOCK": 64}
_GRID = (5, 3)


@pytest.mark.parametrize("tag,per_program", [
    ("L_not", 0),        # not FLAG
    ("L_and", 0),        # FLAG and 6 > 10
    ("L_chain", 0),      # 0 < 4 <= 3 fails at its second comparison
    ("L_ifexp", 6),      # N if FLAG else M
    ("L_min", 4),        # min(6, 4)
    ("L_keyword", 3),    # _half(6, d=2)
    ("L_programs", 3),   # the grid's second axis
])
def test_the_range_of_each_expression(tag, per_program):
    got, notes = trips.executions(_expr_kernel, _FILE, tagged_line(_expr_kernel, tag), _ARGS, _GRID)
    assert got == (15 * per_program, 15 * per_program), notes


def test_a_branch_on_a_loaded_value_counts_as_not_taken_then_taken():
    got, notes = trips.executions(_expr_kernel, _FILE, tagged_line(_expr_kernel, "L_loaded"),
                                  _ARGS, _GRID)
    assert got == (0, 15 * 6), notes
    assert any("condition unknown" in n for n in notes), notes


def test_a_static_range_is_not_a_loop_it_counts():
    got, notes = trips.executions(_expr_kernel, _FILE, tagged_line(_expr_kernel, "L_static"),
                                  _ARGS, _GRID)
    assert got is None
    assert any("static_range" in n for n in notes), notes


def test_a_long_outer_loop_counts_every_pass():
    """5000 outer passes (past the length at which one pass is evaluated and scaled) of
    3 inner passes, on 2 programs."""
    got, notes = trips.executions(_long_kernel, _FILE, tagged_line(_long_kernel, "L_long"),
                                  {"N": 5000, "M": 3, "BLOCK": 64}, (2,))
    assert got == (2 * 5000 * 3,) * 2, notes


def test_a_program_dependent_loop_over_a_huge_grid_is_not_summed():
    programs = (1 << 17) + 1
    got, notes = trips.executions(_long_kernel, _FILE, tagged_line(_long_kernel, "L_pid"),
                                  {"N": 64, "M": 3, "BLOCK": 64}, (programs,))
    assert got is None
    assert any("not summed" in n for n in notes), notes
    # a small grid is summed program by program: each of 64 passes once
    got, notes = trips.executions(_long_kernel, _FILE, tagged_line(_long_kernel, "L_pid"),
                                  {"N": 64, "M": 3, "BLOCK": 64}, (64,))
    assert got == (64, 64), notes
