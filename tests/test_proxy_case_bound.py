"""The speed proxy's per-case arithmetic (``judge.proxy_cases``) on two fake launches of
known SASS, no compiler: each launch's issue and MUFU times, the compute time (per launch
the longer of the two), the programs an SM holds, whether loads and arithmetic overlap,
the bound that follows, and backward's scale pass over every gradient slot."""
from __future__ import annotations

import json
import os

import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from _kernel_lines import for_lines  # noqa: E402
from fastvae.bench.core import Case  # noqa: E402
from fastvae.bench.offline import compiler, judge  # noqa: E402
from fastvae.bench.offline import proxy as P  # noqa: E402

_FILE = os.path.abspath(__file__)

# H200 as the proxy models it: warp-instructions issued a second, MUFU warp-instructions
# a second (16 results per SM and cycle, 32 a warp-instruction), copy bytes a second
ISSUE_PER_S = 132 * 4 * 1.98e9
MUFU_PER_S = 132 * 16 * 1.98e9 / 32
COPY_PER_S = 4.3e12


@triton.jit
def _row_kernel(X, N, BLOCK: tl.constexpr):
    for i in range(0, N, BLOCK):
        tl.store(X + i, tl.load(X + i))


_FOR = for_lines(_row_kernel)[0]

# 3 instructions and EXIT outside; a loop of 8, two of them MUFU, whose cheapest pass
# skips one (7)
_ROW_SASS = f"""
	//## File "{_FILE}", line {_FOR - 1}
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   S2R R0, SR_TID.X ;
        /*0020*/                   MOV R2, RZ ;
.L_x_0:
	//## File "{_FILE}", line {_FOR + 1}
        /*0030*/                   LDG.E R4, desc[UR4][R2.64] ;
        /*0040*/                   MUFU.EX2 R4, R4 ;
        /*0050*/                   MUFU.LG2 R4, R4 ;
        /*0060*/               @P0 BRA `(.L_x_1) ;
        /*0070*/                   FMUL R4, R4, 0.5 ;
.L_x_1:
        /*0080*/                   STG.E desc[UR4][R2.64], R4 ;
	//## File "{_FILE}", line {_FOR}
        /*0090*/                   ISETP.GE.AND P1, PT, R0, 0x10, PT ;
        /*00a0*/              @!P1 BRA `(.L_x_0) ;
        /*00b0*/                   EXIT ;
"""
# no loop: 4 instructions once per program
_SCALE_SASS = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   LDG.E R4, desc[UR4][R2.64] ;
        /*0020*/                   FSETP.NEU.AND P0, PT, R4, 1, PT ;
        /*0030*/                   EXIT ;
"""


class _Launch:
    def __init__(self, kernel, grid, args, sass, regs):
        self.kernel, self.grid, self.args, self.cc = kernel, grid, args, 90
        self.spec = json.dumps({"options": {"num_warps": 4}, "kernel": kernel})
        self.sass, self.regs = sass, regs

    @property
    def short(self):
        return self.kernel.rsplit(".", 1)[-1]

    def ident(self):
        return (self.kernel, self.cc, repr(self.grid))

    def options(self):
        return json.loads(self.spec)["options"]

    def constexprs(self):
        return {"BLOCK": 64}


def _run(monkeypatch, programs: int):
    # B=256, D=64, L=16 in fp32: the ELBO moves (3*256*64 + 4*256*16) * 4 = 262,144 bytes
    case = Case("elbo", 256, 64, 16, 1, torch.float32, "cpu")
    row = _Launch("t.row_kernel", (programs,), {"N": 64000}, _ROW_SASS, 32)
    scale = _Launch("t.scale_grads_kernel", (1,),
                    {"N0": 16384, "G0": "float32[256, 64]", "N1": 0, "G1": "float32[1]",
                     "N5": 10, "G5": "bfloat16[10]"}, _SCALE_SASS, 16)
    by_spec = {la.spec: la for la in (row, scale)}
    monkeypatch.setattr(judge, "capture_case", lambda c: [row, scale])
    monkeypatch.setattr(P, "jit_function", lambda name: _row_kernel)
    monkeypatch.setattr(compiler, "compile_one", lambda spec, cc, sass: dict(
        name=by_spec[spec].short, sass=by_spec[spec].sass, regs=by_spec[spec].regs, shared=0,
        spill_stores=0))
    (out,) = judge.proxy_cases([case])["cases"]
    return out


@pytest.mark.parametrize("programs", [200, 100])
def test_the_case_bound_from_two_launches(monkeypatch, programs):
    """200 programs: 2 an SM (16 would fit), so loads and arithmetic overlap and the bound
    is the larger of the two; 100 programs, fewer than the 132 SMs: one a SM, the sum."""
    out = _run(monkeypatch, programs)
    row, scale = out["launches"]
    passes = programs * (64000 // 64)
    insns = [4 * (7 * passes + 4 * programs), 4 * (8 * passes + 4 * programs)]
    mufu = 4 * 2 * passes
    assert row["warp_insns"] == insns
    assert row["mufu_warp_insns"] == [mufu, mufu]
    assert row["issue_us"] == pytest.approx([n / ISSUE_PER_S * 1e6 for n in insns])
    assert row["mufu_us"] == pytest.approx([mufu / MUFU_PER_S * 1e6] * 2)
    assert row["hot_executions"] == [passes, passes]
    # thread-instructions per element of the largest tensor (B x D = 16384)
    assert row["per_element"] == pytest.approx([n * passes * 4 * 32 / 16384 for n in (7, 8)])
    assert row["kernel_per_element"] == pytest.approx([n * 32 / 16384 for n in insns])
    # 32 registers, 4 warps: 65536 // (32 * 32 * 4) = 16 programs fit an SM
    assert row["programs_per_sm"] == 16
    resident = 2 if programs > 132 else 1
    assert row["resident_per_sm"] == resident and row["warps_per_sm"] == 4 * resident
    assert row["waves"] == pytest.approx(programs / (132 * 16))
    assert scale["warp_insns"] == [4 * 4, 4 * 4] and scale["mufu_warp_insns"] == [0, 0]
    # each gradient slot read and written, the sixth one too
    assert scale["scale_bytes"] == 2 * (16384 * 4 + 10 * 2)
    memory_us = 262144 / COPY_PER_S * 1e6
    scale_us = 2 * (16384 * 4 + 10 * 2) / COPY_PER_S * 1e6
    assert out["memory_us"] == pytest.approx(memory_us)
    assert out["scale_us"] == pytest.approx(scale_us)
    # the row launch is MUFU-bound (2 of 8 instructions at 8 cycles each), the scale
    # launch issue-bound
    assert mufu / MUFU_PER_S > insns[1] / ISSUE_PER_S
    compute_us = (mufu / MUFU_PER_S + 16 / ISSUE_PER_S) * 1e6
    assert out["overlap"] is (programs > 132)
    if programs > 132:
        want = [max(memory_us, compute_us), max(memory_us + scale_us, compute_us)]
    else:
        want = [memory_us + compute_us, memory_us + scale_us + compute_us]
    assert out["bound_us"] == pytest.approx(want, rel=1e-9)
