"""The offline speed proxy (``fastvae.bench.offline``): its SASS reading and arithmetic on a
fixed snippet (no compiler needed), and one end-to-end run on the ELBO row kernel (slow:
it compiles for sm_90)."""
from __future__ import annotations

import math
import os

import pytest

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

from _kernel_lines import for_lines  # noqa: E402
from fastvae.bench.offline import proxy as P  # noqa: E402
from fastvae.bench.offline import sass as S  # noqa: E402
from fastvae.bench.offline import trips  # noqa: E402
from fastvae.kernels.reduce import last_ticket  # noqa: E402,F401 (_toy_outer calls it)


@triton.jit
def _toy_kernel(X, N, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    for i in range(0, N, BLOCK):  # the loop the snippet's backward branch points at
        tl.store(X + offs + i, tl.load(X + offs + i))


_FOR_LINE = for_lines(_toy_kernel)[0]
_FILE = os.path.abspath(__file__)


def _snippet(file=_FILE, line=_FOR_LINE) -> str:
    """nvdisasm -c -g style: 3 instructions before the loop, a 6-instruction body with
    one forward branch skipping 1 (predicated: the cheapest pass is 5) and 1 MUFU, the
    backward branch, EXIT, and the trap after it."""
    return f"""
toy:
.text.toy:
	//## File "{file}", line {line - 2}
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   S2R R0, SR_TID.X ;
        /*0020*/                   MOV R2, RZ ;
.L_x_0:
	//## File "{file}", line {line + 1}
        /*0030*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0040*/                   MUFU.EX2 R4, R4 ;
        /*0050*/               @P0 BRA `(.L_x_1) ;
        /*0060*/                   FADD R4, R4, 1 ;
.L_x_1:
        /*0070*/                   STG.E.128 desc[UR4][R2.64], R4 ;
	//## File "{file}", line {line}
        /*0080*/                   ISETP.GE.AND P1, PT, R0, 0x10, PT ;
        /*0090*/              @!P1 BRA `(.L_x_0) ;
        /*00a0*/                   EXIT ;
.L_x_2:
        /*00b0*/                   BRA `(.L_x_2);
"""


def test_sass_regions_of_a_fixed_snippet():
    insns = S.parse(_snippet())
    assert [i.opcode for i in insns][:4] == ["LDC", "S2R", "MOV", "LDG.E.128"]
    assert insns[5].pred == "P0" and insns[5].target == 0x70
    assert insns[9].pred == "!P1" and insns[9].target == 0x30
    loops, regions = S.regions(insns)
    assert [(lp.head, lp.back, lp.depth) for lp in loops] == [(3, 9, 0)]
    body, outside = regions
    # body: LDG MUFU BRA FADD STG ISETP BRA = 7 static; the cheapest pass skips FADD
    assert (body.static, body.shortest, body.mufu_static, body.mufu_shortest) == (7, 6, 1, 1)
    assert body.back_line == (_FILE, _FOR_LINE)
    # outside: LDC S2R MOV, then EXIT (the trap after EXIT is unreachable)
    assert (outside.static, outside.shortest, outside.mufu_static) == (4, 4, 0)


def test_trip_count_from_the_kernel_source():
    got, notes = trips.executions(_toy_kernel, _FILE, _FOR_LINE, {"N": 1000, "BLOCK": 64},
                                  (5,))
    assert got == (5 * 16, 5 * 16), notes  # cdiv(1000, 64) = 16 passes per program


@triton.jit
def _toy_inner(X, N, BLOCK: tl.constexpr):
    for i in range(0, N, BLOCK):   # reached from the kernel through two helpers
        tl.store(X + i, 0.0)


@triton.jit
def _toy_outer(X, COUNTER, N, BLOCK: tl.constexpr):
    if last_ticket(COUNTER, tl.num_programs(0)):
        _toy_inner(X, N, BLOCK)


@triton.jit
def _toy_chain_kernel(X, COUNTER, N, FLAG: tl.constexpr, BLOCK: tl.constexpr):
    STEP: tl.constexpr = 2 * BLOCK
    if FLAG:
        for i in range(0, N, STEP):   # a flag and an annotated constexpr decide it
            tl.store(X + i, 1.0)
    _toy_outer(X, COUNTER, N, BLOCK)


@triton.jit
def _toy_twice_kernel(X, N, FLAG: tl.constexpr, BLOCK: tl.constexpr):
    if FLAG:
        _toy_inner(X, N, BLOCK)
    else:
        _toy_inner(X, 2 * N, BLOCK)


@triton.jit
def _toy_2d_kernel(X, N, BLOCK: tl.constexpr):
    for i in range(tl.program_id(0) + tl.program_id(1), N, BLOCK):   # each program's own
        tl.store(X + i, 0.0)


def test_trip_counts_through_flags_constexprs_helpers_and_the_ticket():
    """A bool flag and a ``NAME: tl.constexpr = ...`` are read; a loop two helpers down is
    found; the ticket branch runs in one program of the grid; a helper called at two
    sites counts the one its branch takes. Each was a guess (once per program) or, the
    second site, a silent 0."""
    args = {"N": 1000, "BLOCK": 64, "FLAG": True}
    got, notes = trips.executions(_toy_chain_kernel, _FILE, for_lines(_toy_chain_kernel)[0],
                                  args, (5,))
    assert got == (5 * 8, 5 * 8), notes             # cdiv(1000, 128) a program
    got, notes = trips.executions(_toy_chain_kernel, _FILE, for_lines(_toy_chain_kernel)[0],
                                  dict(args, FLAG=False), (5,))
    assert got == (0, 0), notes
    got, notes = trips.executions(_toy_chain_kernel, _FILE, for_lines(_toy_inner)[0], args, (5,))
    assert got == (16, 16), notes                   # cdiv(1000, 64), the last program only
    # a (4, 3) grid: program (a, b) starts at a + b; 48 passes in all for N = 64, BLOCK 4
    got, notes = trips.executions(_toy_2d_kernel, _FILE, for_lines(_toy_2d_kernel)[0],
                                  {"N": 64, "BLOCK": 4}, (4, 3))
    assert got == (sum(len(range(a + b, 64, 4)) for a in range(4) for b in range(3)),) * 2, notes
    for flag, per_program in ((True, 16), (False, 32)):   # each call site, as its branch
        got, notes = trips.executions(_toy_twice_kernel, _FILE, for_lines(_toy_inner)[0],
                                      dict(args, FLAG=flag), (5,))
        assert got == (5 * per_program, 5 * per_program), notes


def test_proxy_arithmetic_on_the_snippet():
    warps, grid, n, block = 4, (5,), 1000, 64
    lc = P.count_launch(_toy_kernel, _snippet(), {"N": n, "BLOCK": block}, grid, warps)
    passes = grid[0] * math.ceil(n / block)
    lo, hi = lc.warp_insns()
    assert lo == warps * (6 * passes + 4 * grid[0])
    assert hi == warps * (7 * passes + 4 * grid[0])
    assert lc.mufu_warp_insns() == (warps * passes, warps * passes)
    assert lc.hot().where.startswith("for at test_speed_proxy.py:")
    # H200: 132 SMs x 4 schedulers x 1.98 GHz issue; 16 MUFU results per SM and cycle;
    # 4.3 TB/s
    assert P.issue_seconds(hi) == pytest.approx(hi / (132 * 4 * 1.98e9))
    assert P.mufu_seconds(warps * passes) == pytest.approx(
        warps * passes * 32 / (132 * 16 * 1.98e9))
    assert P.memory_seconds(4.3e12) == pytest.approx(1.0)
    # occupancy on an H200 SM: registers go by 256 a warp (48 a thread: 1536 a warp)
    assert P.programs_per_sm(48, 4, 0) == 10          # 65536 // (1536 * 4)
    assert P.programs_per_sm(179, 8, 0) == 1          # 184 a thread: 47104 a program
    assert P.programs_per_sm(16, 1, 0) == 32          # the program limit
    assert P.programs_per_sm(16, 8, 0) == 8           # 64 warps
    assert P.programs_per_sm(32, 4, 100_000) == 2     # 228 KB, 1 KB reserved a program
    assert P.launch_seconds(2.0, 1.0, 1) == 3.0 and P.launch_seconds(2.0, 1.0, 2) == 2.0
    # a mis-attributed loop is reported, never guessed
    lc2 = P.count_launch(_toy_kernel, _snippet(line=_FOR_LINE + 1), {"N": n, "BLOCK": block},
                         grid, warps)
    assert any("no for statement" in note or "unknown" in note for note in lc2.notes)


def test_scale_pass_bytes_count_every_gradient_slot_read_and_written():
    from fastvae.bench.offline import judge

    class FakeLaunch:
        short = "scale_grads_kernel"
        args = {"N0": 10, "G0": "float32[10]", "N1": 0, "G1": "float32[1]", "N2": 6,
                "G2": "bfloat16[2, 3]"}

        def constexprs(self):
            return {"N3": 1, "G3": "float16[1]"}   # a size of 1 is a JIT constant

    assert judge._scale_pass_bytes(FakeLaunch()) == 2 * (10 * 4 + 6 * 2 + 1 * 2)
    FakeLaunch.short = "elbo_rows_kernel"
    assert judge._scale_pass_bytes(FakeLaunch()) == 0


@pytest.mark.slow
@pytest.mark.skipif(INTERPRET, reason="compiles for sm_90; nothing to compile interpreted")
def test_proxy_end_to_end_on_the_elbo_row_kernel():
    """The bar's ELBO step (B=65536, D=784, L=64, fp32) under this Triton: the row
    kernel's hot loop is its D loop, run B/BLOCK_B x (D // BLOCK_D) times, and its issue
    time is at most half the memory floor (the issue's target); a capture after it in the
    same process launches the same."""
    from fastvae.bench.offline import judge
    from fastvae.backends.triton_backend import configs
    cases = judge.bar_cases(("fp32",), ("elbo",))
    out = judge.proxy_cases(cases)
    (case,) = out["cases"]
    rows = {la["kernel"]: la for la in case["launches"]}
    row = rows["elbo_rows_kernel"]
    block_b, block_d, _, warps = configs.elbo_config(65536, 784, 64, 4)
    assert row["warps"] == warps and row["grid"] == [65536 // block_b]
    assert row["hot"].startswith("for at elbo.py:")
    assert row["hot_executions"][1] == 65536 // block_b * (784 // block_d)
    assert row["spills"] == 0
    static_per_elem = row["hot_static"] * row["hot_executions"][1] * warps * 32 / (65536 * 784)
    assert row["per_element"][1] == pytest.approx(static_per_elem)
    assert case["memory_us"] == pytest.approx((3 * 65536 * 784 + 4 * 65536 * 64) * 4 / 4.3e6)
    assert row["issue_us"][1] <= 0.5 * case["memory_us"], row
    # several programs an SM overlap loads and arithmetic: the bound is the memory floor,
    # and at grad_output != 1 that plus backward's scale pass over every saved gradient
    assert row["resident_per_sm"] >= 2 and case["overlap"]
    scale = rows["scale_grads_kernel"]["scale_bytes"]
    assert scale == 2 * 4 * (65536 * 784 + 2 * 65536 * 64)     # d recon, d mu, d logvar
    assert case["scale_us"] == pytest.approx(scale / 4.3e6)
    assert case["bound_us"] == pytest.approx([case["memory_us"],
                                              case["memory_us"] + case["scale_us"]])
    # the compiles left nothing behind that a second capture in this process would trip on
    # (a kernel left in the JIT's cache for the stand-in device would be run)
    again = judge.capture_case(cases[0])
    assert [(la.short, list(la.grid)) for la in again] == [
        (r["kernel"], r["grid"]) for r in case["launches"]]
