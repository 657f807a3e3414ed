"""The speed proxy on hand-written SASS of nested loops: each instruction belongs to its
innermost loop, each loop's region is counted at its own ``for``'s passes (an outer loop
whose body is mostly the inner loop's set-up still runs as often as the outer ``for``
says), and the hot region is the one that issues the most, not the longest one."""
from __future__ import annotations

import os

import pytest

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from _kernel_lines import for_lines  # noqa: E402
from fastvae.bench.offline import proxy as P  # noqa: E402
from fastvae.bench.offline import sass as S  # noqa: E402
from fastvae.bench.offline import trips  # noqa: E402

_FILE = os.path.abspath(__file__)


@triton.jit
def _nest_kernel(X, N, M, BLOCK: tl.constexpr):
    for i in range(0, N):                 # A
        for j in range(0, M):             # B
            for k in range(0, j):         # C: j passes, a triangle
                tl.store(X + i + j + k, 0.0)


_A, _B, _C = for_lines(_nest_kernel)


def _at(line):
    return f'\t//## File "{_FILE}", line {line}'


def _nest_sass(a_setup_line=_B, b_back_line=_B) -> str:
    """Three nested loops A > B > C. A: its head instruction, a forward branch skipping
    a MUFU, and its back edge (5 instructions, 4 on the cheapest pass, MUFU 1 / 0); B: 3;
    C: 3 with 1 MUFU; outside: MOV and EXIT. A's head and its skipped part carry
    ``a_setup_line`` (the compiler puts an inner loop's set-up on the inner ``for``)."""
    return f"""
nest:
{_at(_A - 1)}
        /*0000*/                   MOV R0, RZ ;
.L_x_0:
{_at(a_setup_line)}
        /*0010*/                   IADD3 R1, R1, 0x1, RZ ;
.L_x_1:
{_at(_C)}
        /*0020*/                   IADD3 R2, R2, 0x1, RZ ;
.L_x_2:
{_at(_C + 1)}
        /*0030*/                   MUFU.EX2 R3, R3 ;
        /*0040*/                   ISETP.GE.AND P0, PT, R3, 0x10, PT ;
{_at(_C)}
        /*0050*/              @!P0 BRA `(.L_x_2) ;
{_at(b_back_line)}
        /*0060*/                   ISETP.GE.AND P1, PT, R2, 0x10, PT ;
        /*0070*/              @!P1 BRA `(.L_x_1) ;
{_at(a_setup_line)}
        /*0080*/               @P3 BRA `(.L_x_3) ;
        /*0090*/                   MUFU.RCP R4, R4 ;
.L_x_3:
{_at(_A)}
        /*00a0*/                   ISETP.GE.AND P2, PT, R1, 0x10, PT ;
        /*00b0*/              @!P2 BRA `(.L_x_0) ;
        /*00c0*/                   EXIT ;
.L_x_4:
        /*00d0*/                   BRA `(.L_x_4);
"""


def test_nested_loops_nest_and_each_instruction_counts_in_its_innermost_loop():
    insns = S.parse(_nest_sass())
    loops, regions = S.regions(insns)
    # A = [1, 11], B = [2, 7], C = [3, 5] (instruction indices)
    assert [(lp.head, lp.back, lp.parent, lp.depth) for lp in loops] == [
        (1, 11, None, 0), (2, 7, 0, 1), (3, 5, 1, 2)]
    a, b, c, outside = regions
    assert (a.static, a.shortest, a.mufu_static, a.mufu_shortest) == (5, 4, 1, 0)
    assert (b.static, b.shortest, b.mufu_static, b.mufu_shortest) == (3, 3, 0, 0)
    assert (c.static, c.shortest, c.mufu_static, c.mufu_shortest) == (3, 3, 1, 1)
    assert (outside.static, outside.shortest) == (2, 2)
    assert [r.back_line for r in (a, b, c)] == [(_FILE, _A), (_FILE, _B), (_FILE, _C)]


def test_each_nested_region_runs_as_often_as_its_own_for_says():
    """N=3, M=6 on 2 programs: A 2*3 = 6 passes, B 6*6 = 36, C 6*(0+1+..+5) = 90."""
    warps, grid = 4, (2,)
    lc = P.count_launch(_nest_kernel, _nest_sass(), {"N": 3, "M": 6, "BLOCK": 64}, grid,
                        warps)
    assert [r.executions for r in lc.regions] == [(6, 6), (36, 36), (90, 90), (2, 2)], lc.notes
    assert lc.warp_insns() == (warps * (4 * 6 + 3 * 36 + 3 * 90 + 2 * 2),
                               warps * (5 * 6 + 3 * 36 + 3 * 90 + 2 * 2))
    # A's MUFU sits on the skippable path: none on the cheapest pass
    assert lc.mufu_warp_insns() == (warps * 90, warps * (6 + 90))
    # C is the shortest region but issues 3 * 90, more than A's 5 * 6
    assert lc.hot().where == f"for at {os.path.basename(_FILE)}:{_C} (depth 2)"


def test_a_second_sass_loop_on_the_same_for_is_noted():
    """Two SASS loops on one ``for`` (unrolled or versioned) both count its passes, and
    the launch says that is an overestimate."""
    text = _nest_sass(b_back_line=_C)   # B's back edge names C's for too
    lc = P.count_launch(_nest_kernel, text, {"N": 3, "M": 6, "BLOCK": 64}, (2,), 4)
    assert lc.regions[1].executions == lc.regions[2].executions == (90, 90)
    assert any("several SASS loops" in n for n in lc.notes), lc.notes


def test_a_loop_whose_range_is_unknown_is_counted_once_per_program_and_noted():
    lc = P.count_launch(_nest_kernel, _nest_sass(), {"N": 3, "BLOCK": 64}, (5,), 4)  # no M
    assert lc.regions[1].executions == (5, 5)
    assert any(f":{_B}: trip count unknown" in n for n in lc.notes), lc.notes


def test_branch_targets_given_as_addresses():
    """``BRA 0x30`` (a hexadecimal address, no label) closes a loop as a label would."""
    text = """
        /*0000*/                   MOV R0, RZ ;
        /*0010*/                   FADD R1, R1, 1 ;
        /*0020*/                   IADD3 R0, R0, 0x1, RZ ;
        /*0030*/                   ISETP.GE.AND P0, PT, R0, 0x10, PT ;
        /*0040*/              @!P0 BRA 0x10 ;
        /*0050*/                   EXIT ;
"""
    insns = S.parse(text)
    assert insns[4].target == 0x10
    loops, regions = S.regions(insns)
    assert [(lp.head, lp.back) for lp in loops] == [(1, 4)]
    assert (regions[0].static, regions[1].static) == (4, 2)


def test_a_never_true_predicate_keeps_the_fall_through():
    """``@!PT`` is never true: the instruction is conditional (its branch not taken), so
    the code after it is reachable; ``@PT`` is always true and counts as no predicate."""
    text = """
        /*0000*/                   MOV R0, RZ ;
        /*0010*/              @!PT BRA `(.L_x_1) ;
        /*0020*/               @PT FADD R1, R1, 1 ;
        /*0030*/                   EXIT ;
.L_x_1:
        /*0040*/                   EXIT ;
"""
    insns = S.parse(text)
    assert [i.pred for i in insns] == [None, "!PT", None, None, None]
    assert S.reachable(insns)[:4] == [True] * 4
    _, (outside,) = S.regions(insns)
    assert outside.static == 5


def test_trip_counts_of_a_triangular_nest_are_exact():
    """An inner range that depends on the outer variable is summed pass by pass."""
    got, notes = trips.executions(_nest_kernel, _FILE, _C, {"N": 2, "M": 10, "BLOCK": 1},
                                  (3,))
    assert got == (3 * 2 * sum(range(10)),) * 2, notes
