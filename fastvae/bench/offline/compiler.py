"""Compile recorded specializations for real GPU targets, with no GPU, and read what the
compiler made of them: registers, spills (ptxas's own report), stack, shared memory,
the width of the global loads, and the SASS.

Each specialization compiles through ``JITFunction.preload``, the JIT's own replay of its
serialized form, so the binary is the one the JIT would build; each one once, in a
process pool (each worker its own empty Triton cache, so ptxas runs and reports every
time). Another Triton version runs the same code in a child process with its folder
first on ``PYTHONPATH`` (:func:`run_version`).
"""
from __future__ import annotations

import contextlib
import importlib
import io
import json
import multiprocessing as mp
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

ELEMENT_BYTES = {"fp32": 4, "f32": 4, "bf16": 2, "fp16": 2, "f16": 2, "i32": 4, "i64": 8,
                 "fp64": 8, "f64": 8, "i8": 1, "i1": 1, "i16": 2}


class ToolMissing(RuntimeError):
    """A tool the judge needs is not where this Triton keeps it: an installation to
    mend, not a fault of the judge (its command exits 2 with the line)."""


class JudgeFailed(RuntimeError):
    """The judge in a child process stopped with a one-line error (exit 2); ``stderr``
    holds all it wrote."""

    def __init__(self, line: str, stderr: str):
        super().__init__(line)
        self.stderr = stderr


def _tool(name: str) -> Optional[str]:
    import triton
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    return path if os.path.exists(path) else None


def _kernel(spec: dict):
    module, name = spec["name"].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def describe(spec_json: str) -> str:
    """A short name: ``elbo_rows_kernel[LIK=0,BLOCK_B=2,... w8] (*bf16 x2, ...)``."""
    spec = json.loads(spec_json)
    names = list(spec["signature"])
    const = {names[k[0]]: (v["constexpr"] if isinstance(v, dict) else v)
             for k, v in zip(spec["constant_keys"], spec["constant_vals"])}
    ptrs = [t for t in spec["signature"].values() if t.startswith("*")]
    kinds = sorted({t for t in ptrs}, key=ptrs.index)
    cx = ",".join(f"{k}={v}" for k, v in const.items())
    return (f"{spec['name'].rsplit('.', 1)[-1]}[{cx} w{spec['options']['num_warps']}]"
            f"({' '.join(f'{t}x{ptrs.count(t)}' for t in kinds)})")


def divisible(spec: dict) -> Tuple[str, ...]:
    """The arguments the JIT saw divisible by 16 (pointers and integers), by name."""
    names = list(spec["signature"])
    return tuple(sorted(names[k[0]] for k, v in zip(spec["attrs_keys"], spec["attrs_vals"])
                        if ["tt.divisibility", 16] in [list(a) for a in v]))


def aligned(spec_json: str) -> bool:
    """Whether the JIT saw every pointer and every non-constant integer divisible by 16:
    the launch of aligned, contiguous tensors whose sizes are multiples of 16, where the
    tile's loads can be as wide as its layout gives each thread."""
    spec = json.loads(spec_json)
    div = set(divisible(spec))
    return all(name in div for name, ty in spec["signature"].items()
               if ty.startswith("*") or ty in ("i32", "i64", "u32", "u64"))


def widest_load_allowed(ttgir: str, num_warps: int) -> int:
    """Bytes per thread of the widest global load the tiles allow, up to 16: for each
    ``tt.load`` of a tensor of pointers, the elements each thread holds (at least 1)
    times the element size."""
    threads = 32 * num_warps
    best = 0
    for shape, ty in re.findall(r"tt\.load [^\n]*?: tensor<((?:\d+x)+)!tt\.ptr<(\w+)>", ttgir):
        numel = 1
        for s in shape.rstrip("x").split("x"):
            numel *= int(s)
        best = max(best, min(16, max(1, numel // threads) * ELEMENT_BYTES.get(ty, 4)))
    return best


def ptx_loads(ptx: str) -> dict:
    """Counts of vector global loads and the widest one (bytes per thread) in the PTX."""
    widths = [int(v or 1) * int(bits) // 8 for v, bits in
              re.findall(r"ld\.global(?:\.[\w:]+?)*?(?:\.v(\d))?\.[bfsu](\d+)\b", ptx)
              if int(bits) <= 32]  # data is at most 32-bit; a 64-bit load is a seed
    return dict(ld_v4=len(re.findall(r"ld\.global(\.\w+)*\.v4", ptx)),
                ld_v2=len(re.findall(r"ld\.global(\.\w+)*\.v2", ptx)),
                ld_all=len(re.findall(r"ld\.global", ptx)), ld_widest=max(widths, default=0))


def disassemble(cubin: bytes, workdir: str) -> str:
    """``nvdisasm -c -g``: the SASS with source lines (Triton compiles with line info)."""
    nvdisasm = _tool("nvdisasm")
    if nvdisasm is None:
        import triton
        raise ToolMissing(f"nvdisasm not found next to Triton {triton.__version__} "
                          f"({os.path.dirname(triton.__file__)}/backends/nvidia/bin)")
    with tempfile.NamedTemporaryFile(suffix=".cubin", dir=workdir, delete=False) as f:
        f.write(cubin)
    try:
        out = subprocess.run([nvdisasm, "-c", "-g", f.name], capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    if out.returncode != 0:
        raise RuntimeError(f"nvdisasm failed: {out.stderr[-2000:]}")
    return out.stdout


OWN_CAP = "own"   # a launch's own register cap, as the host chose it


def with_maxnreg(spec_json: str, cap) -> str:
    """The specialization with its register cap replaced: ``cap`` registers a thread
    (an int), none (None), or its own (:data:`OWN_CAP`). The cap is one of the compile
    options the Triton cache keys on, so each cap compiles, and ptxas reports, anew."""
    if cap == OWN_CAP:
        return spec_json
    spec = json.loads(spec_json)
    spec["options"]["maxnreg"] = cap
    return json.dumps(spec)


def compile_one(spec_json: str, cc: int, sass: bool = False) -> dict:
    """Compile one recorded specialization for ``sm_{cc}`` in this process; the compiler's
    report (``error`` instead where it fails)."""
    import triton

    from .capture import jit_target

    spec = json.loads(spec_json)
    num_warps = spec["options"]["num_warps"]
    out = {"name": describe(spec_json), "cc": cc, "num_warps": num_warps,
           "maxnreg": spec["options"].get("maxnreg"), "aligned": aligned(spec_json)}
    triton.knobs.nvidia.dump_ptxas_log = True
    buf = io.StringIO()
    t0 = time.perf_counter()
    kernel = _kernel(spec)
    try:
        with jit_target(cc), contextlib.redirect_stdout(buf):
            k = kernel.preload(spec_json)
    except Exception as e:  # reported by the caller, with the compiler's message
        out["error"] = f"{type(e).__name__}: {e}"[-3000:]
        return out
    finally:
        # preload leaves the kernel in the JIT's cache for the stand-in device: a later
        # capture in this process would find it there and try to run it
        kernel.device_caches.pop(cc, None)
    out["seconds"] = time.perf_counter() - t0
    log = buf.getvalue()
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    stack = re.search(r"(\d+) bytes stack frame", log)
    regs = re.search(r"Used (\d+) registers", log)
    out.update(ptxas_log=log[-2000:], spill_stores=spill and int(spill.group(1)),
               spill_loads=spill and int(spill.group(2)), regs=regs and int(regs.group(1)),
               stack=stack and int(stack.group(1)),
               shared=k.metadata.shared,
               ld_allowed=widest_load_allowed(k.asm["ttgir"], num_warps), **ptx_loads(k.asm["ptx"]))
    if sass:
        workdir = os.environ.get("TRITON_CACHE_DIR") or tempfile.gettempdir()
        out["sass"] = disassemble(k.asm["cubin"], workdir)
    return out


def _init_worker(cache_root: str) -> None:
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(dir=cache_root)
    import warnings
    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")


def _job(args):
    return compile_one(*args)


def compile_all(jobs: Sequence[tuple], workers: int) -> List[dict]:
    """``compile_one(spec_json, cc, sass)`` for each job, ``workers`` processes at a time
    (spawned: each imports its own Triton), in job order."""
    cache_root = tempfile.mkdtemp(prefix="fastvae-compile-")
    try:
        if workers <= 1:
            _init_worker(cache_root)
            return [_job(j) for j in jobs]
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                 initializer=_init_worker, initargs=(cache_root,)) as ex:
            return list(ex.map(_job, jobs, chunksize=1))
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)


def run_version(triton_path: Optional[str], args: Iterable[str], timeout: float = 3600,
                popen: Callable[..., subprocess.Popen] = subprocess.Popen) -> dict:
    """``python -m fastvae.bench.offline <args> --json FILE`` under the Triton in folder
    ``triton_path`` (None: this interpreter's own), in a child process started with
    ``popen`` (the test suite passes one that kills it when the session ends); its JSON."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    if triton_path:
        env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(triton_path),
                                             *filter(None, [env.get("PYTHONPATH")])])
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    try:
        proc = popen([sys.executable, "-m", "fastvae.bench.offline", *args, "--json", path],
                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except BaseException:   # a timeout, or Ctrl-C sent to this process alone
            proc.kill()
            proc.communicate()
            raise
        where = triton_path or "this Triton"
        if proc.returncode == 2 and stderr.strip():
            line = stderr.strip().splitlines()[-1].split(": error: ", 1)[-1]
            raise JudgeFailed(f"the offline judge under {where}: {line}", stderr)
        if proc.returncode != 0:
            raise RuntimeError(f"the offline judge under {where} failed "
                               f"({proc.returncode}):\n{stderr[-4000:]}")
        with open(path) as f:
            out = json.load(f)
        out["stderr"] = stderr
        return out
    finally:
        os.unlink(path)


def triton_version() -> Dict[str, str]:
    import triton
    return {"version": triton.__version__, "path": os.path.dirname(triton.__file__)}
