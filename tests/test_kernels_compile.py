"""Every Triton kernel at every constexpr configuration we ship, compiled for real GPUs
(sm_80 and sm_90) with no GPU present: ``triton.compile(ASTSource(...), target=GPUTarget(...))``.

The interpreter accepts code the real compiler rejects, and no CPU test sees register
spills or unvectorized loads, so this checks, per kernel and configuration:
  * it builds (PTX and cubin);
  * ptxas reports 0 bytes of spill stores and loads (its -v log, from the same compile);
  * the contiguous path uses vectorized global loads when the arguments carry the
    divisibility-by-16 the GPU JIT infers for aligned tensors: a load as wide as the tile
    gives each thread, up to 16 bytes (``ld.global.v4.b32`` in the PTX).
The JIT specializes on pointer dtypes, so bf16 and fp16 inputs are compilations of their
own: every kernel that takes the caller's dtype is compiled in all three (the row
kernels, the finish kernel, reparameterization). bf16 and fp16 differ in a few spill
results (ptxas heuristics at 50-100 registers), so neither stands in for the other;
the 16-bit variants add about a minute on two cores.
Run ``python tests/test_kernels_compile.py`` for the table (registers, spills, stack,
shared memory) that benchmarks/RESULTS.md quotes.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

import pytest

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
triton = pytest.importorskip("triton")
pytestmark = [
    pytest.mark.skipif(INTERPRET, reason="kernels are interpreted functions under "
                                         "TRITON_INTERPRET=1; nothing to compile"),
    # The harness speaks newer Triton's compile API (triton.knobs, ASTSource with named
    # constexprs; 3.6 and 3.9 checked). Triton 3.0's differs; by hand there, every
    # shipped fp32 config compiled for sm_90.
    pytest.mark.skipif(not hasattr(triton, "knobs"),
                       reason="the compile harness needs triton.knobs (newer Triton)"),
]

TARGETS = (80, 90)
LOW_PRECISION = ("bf16", "fp16")
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def _configs():
    from fastvae.backends.triton_backend.shipped import shipped_configs
    out = {c["name"]: dict(c, dtype="fp32") for c in shipped_configs()}
    for dt in LOW_PRECISION:  # only the kernels whose names take the dtype's tag
        out.update({c["name"]: dict(c, dtype=dt) for c in shipped_configs(dt)
                    if c["name"].endswith(f",{dt}]")})
    return out


def _widest_load_allowed(cfg) -> int:
    """Bytes per thread of the widest contiguous load the tile allows, up to 16: the row
    kernels spread BLOCK_B x BLOCK_D input elements over the program's threads, the
    reparameterization kernels Q per quarter; other kernels read fp32 buffers."""
    cx, threads = cfg["constexprs"], 32 * cfg["num_warps"]
    per_thread = 4
    if "BLOCK_D" in cx and "LIK" in cx:
        per_thread = max(1, cx["BLOCK_B"] * cx["BLOCK_D"] // threads)
    elif "Q" in cx:
        per_thread = max(1, cx["Q"] // threads)
    elif "BLOCK_P" in cx:  # the DMoL kernel's (components, pixels) parameter tiles
        per_thread = max(1, cx["BLOCK_M"] * cx["BLOCK_P"] // threads)
    else:
        return 16
    return min(16, per_thread * BYTES[cfg["dtype"]])


def _compile_one(job):
    """Compile one (config, cc) in a fresh cache; return what the test and the table need."""
    name, cc, cache_dir = job
    os.environ["TRITON_CACHE_DIR"] = cache_dir
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    cfg = _configs()[name]
    triton.knobs.nvidia.dump_ptxas_log = True
    attrs = {(i,): [["tt.divisibility", 16]] for i in cfg["divisible"]}
    src = ASTSource(fn=cfg["kernel"], signature=cfg["signature"], constexprs=cfg["constexprs"],
                    attrs=attrs)
    out = {"name": name, "cc": cc, "num_warps": cfg["num_warps"]}
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            k = triton.compile(src, target=GPUTarget("cuda", cc, 32),
                               options={"num_warps": cfg["num_warps"]})
    except Exception as e:  # reported by the test, with the compiler's message
        out["error"] = f"{type(e).__name__}: {e}"[-3000:]
        return out
    log = buf.getvalue()
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    regs = re.search(r"Used (\d+) registers", log)
    out.update(ptxas_log=log[-2000:], spill_stores=spill and int(spill.group(1)),
               spill_loads=spill and int(spill.group(2)), regs=regs and int(regs.group(1)),
               shared=k.metadata.shared)
    ptx = k.asm["ptx"]
    out["ld_v4"] = len(re.findall(r"ld\.global(\.\w+)*\.v4", ptx))
    out["ld_v2"] = len(re.findall(r"ld\.global(\.\w+)*\.v2", ptx))
    out["ld_all"] = len(re.findall(r"ld\.global", ptx))
    # data elements are at most 32-bit: a 64-bit load is the reparameterization seed
    widths = [int(v or 1) * int(bits) // 8 for v, bits in
              re.findall(r"ld\.global(?:\.[\w:]+?)*?(?:\.v(\d))?\.[bfsu](\d+)\b", ptx)
              if int(bits) <= 32]
    out["ld_widest"] = max(widths, default=0)
    out["ld_allowed"] = _widest_load_allowed(cfg)
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                             "cuobjdump")
    if os.path.exists(cuobjdump):
        with tempfile.NamedTemporaryFile(suffix=".cubin", dir=cache_dir) as f:
            f.write(k.asm["cubin"])
            f.flush()
            usage = subprocess.run([cuobjdump, "--dump-resource-usage", f.name],
                                   capture_output=True, text=True).stdout
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", usage)
        if m:
            out.update(cubin_regs=int(m.group(1)), stack=int(m.group(2)),
                       cubin_shared=int(m.group(3)))
    return out


def compile_all(workers: int = 2):
    names = list(_configs())
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(n, cc, os.path.join(tmp, f"{i}-{cc}")) for i, n in enumerate(names)
                for cc in TARGETS]
        import multiprocessing as mp
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
            results = list(ex.map(_compile_one, jobs))
    return {(r["name"], r["cc"]): r for r in results}


@pytest.fixture(scope="module")
def compiled():
    return compile_all(workers=max(1, min(4, os.cpu_count() or 1)))


def _ids():
    try:
        return [(n, cc) for n in _configs() for cc in TARGETS]
    except ImportError:  # no triton: the module is skipped anyway
        return []


@pytest.mark.slow  # the module's compiles: minutes on two cores
@pytest.mark.parametrize("name,cc", _ids(), ids=[f"{n}-sm{cc}" for n, cc in _ids()])
def test_kernel_compiles_without_spills(compiled, name, cc):
    r = compiled[(name, cc)]
    assert "error" not in r, r.get("error")
    assert r["spill_stores"] is not None, f"no ptxas -v log captured:\n{r['ptxas_log']}"
    assert r["spill_stores"] == 0 and r["spill_loads"] == 0, r["ptxas_log"]
    assert r["regs"] <= 255


@pytest.mark.slow
@pytest.mark.parametrize("name,cc", _ids(), ids=[f"{n}-sm{cc}" for n, cc in _ids()])
def test_contiguous_path_loads_are_vectorized(compiled, name, cc):
    r = compiled[(name, cc)]
    assert "error" not in r, r.get("error")
    assert r["ld_widest"] >= r["ld_allowed"], (
        f"{name}: widest global load {r['ld_widest']} B per thread, the tile allows "
        f"{r['ld_allowed']} B ({r['ld_v4']} v4 / {r['ld_v2']} v2 among {r['ld_all']} loads)")


def test_every_launch_configuration_is_shipped():
    """The host code only launches configurations this file compiles."""
    from fastvae.backends.triton_backend import configs
    names = set(_configs())
    old = configs.CONFIG_MODE
    configs.CONFIG_MODE = "gpu"
    try:
        for kernel in ("elbo", "iwae_bound"):
            for d in (1, 7, 64, 65, 256, 784, 1003, 1024, 4100, 50_000):
                for lik in range(4):
                    bb, bd, bl, warps = configs.row_config(256, d, 32, kernel, lik)
                    assert f"{kernel}_rows[LIK={lik},{bb}x{bd},L{bl}]" in names
    finally:
        configs.CONFIG_MODE = old


def test_dmol_gpu_configs_are_shipped():
    """Every DMoL configuration the host can launch on a GPU (M up to DMOL_MAX_MIX)."""
    from fastvae.backends.triton_backend import configs
    names = set(_configs())
    old = configs.CONFIG_MODE
    configs.CONFIG_MODE = "gpu"
    try:
        for m in range(1, configs.DMOL_MAX_MIX + 1):
            for hw in (1, 64, 784, 1024, 4096):
                bm, bp, warps = configs.dmol_config(m, hw)
                assert m <= bm
                for c, mode in itertools.product((1, 3), ("grad", "eval")):
                    assert f"dmol_rows[C={c},{mode},{bm}x{bp}]" in names
        for element, tag in ((4, ""), (2, ",bf16"), (2, ",fp16")):
            bb, bd, bl, _ = configs.elbo_config(256, 0, 64, element)  # the shipped L
            assert f"elbo_rows[latents-train,{bb}x{bd},L{bl}{tag}]" in names
    finally:
        configs.CONFIG_MODE = old


def test_iwae_onepass_gpu_configs_are_shipped():
    """Every one-pass IWAE configuration the host can launch on a GPU is compiled here
    (the two-pass kernel's tiles: the test above)."""
    from fastvae.backends.triton_backend import configs
    from fastvae.backends.triton_backend.shipped import _IWAE_MODES, _iwae_tiles, shipped_configs
    old = configs.CONFIG_MODE
    configs.CONFIG_MODE = "gpu"
    try:
        names = {c["name"]: c for c in shipped_configs()}
        hit = set()
        for k in (1, 2, 3, 4, 5, 8, 9, 50):
            for d in (1, 7, 64, 65, 256, 784, 1024, 1025):
                for l in (1, 32, 128, 129):
                    for lik in range(4):
                        cfg = configs.iwae_onepass_config(256, k, d, l, lik)
                        if cfg is None:
                            assert k > 8 or d > 1024 or l > 128 or (lik == 1 and k > 4 and d > 256)
                            continue
                        bb, bk, bd, bl, warps = cfg
                        assert k <= bk and d <= bd and l <= bl
                        for mode in _IWAE_MODES:  # each mode is a compilation of its own
                            if mode.endswith("-prior") and (bb, bk, bd, bl) not in [
                                    tuple(t) for t in _iwae_tiles(mode, lik)[1]]:
                                continue  # a learned prior ships the benchmark shape's tile
                            name = f"iwae_bound_onepass[LIK={lik},{mode},{bb}x{bk}x{bd},L{bl}]"
                            assert name in names and names[name]["num_warps"] == warps, name
                            hit.add(name)
    finally:
        configs.CONFIG_MODE = old
    assert hit == {n for n in names if n.startswith("iwae_bound_onepass[")}


def markdown_table(results) -> str:
    lines = ["| kernel [config] | sm | warps | regs | spill st/ld (B) | stack (B) | shared (B) "
             "| ld.global v4/v2/all |",
             "|---|---|---|---|---|---|---|---|"]
    for (name, cc), r in sorted(results.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        if "error" in r:
            lines.append(f"| {name} | {cc} | {r['num_warps']} | build error | | | | |")
            continue
        lines.append(f"| {name} | {cc} | {r['num_warps']} | {r['regs']} | {r['spill_stores']}/"
                     f"{r['spill_loads']} | {r.get('stack', '?')} | {r['shared']} | "
                     f"{r['ld_v4']}/{r['ld_v2']}/{r['ld_all']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    print(markdown_table(compile_all(workers=os.cpu_count() or 1)))
