"""Whether the C kernels' OpenMP build may run in this process: only where it links the
very OpenMP runtime torch links, already loaded, from one file (two runtimes in one
process oversubscribe the cores and can deadlock after fork; see ``native``)."""
from __future__ import annotations

import ctypes
import os
from typing import List, Optional

import torch

from .elf import elf_needed


def loaded(soname: str) -> bool:
    """Whether a library with this soname is already loaded (the dynamic linker's own
    test: it binds a DT_NEEDED entry to a loaded object of the same soname)."""
    try:
        ctypes.CDLL(soname, mode=getattr(os, "RTLD_NOLOAD", 4) | os.RTLD_LAZY)
        return True
    except OSError:
        return False


def mapped_paths(soname: str, maps: str = "/proc/self/maps") -> List[str]:
    """The distinct files mapped under ``soname`` (other copies of a runtime, e.g.
    scikit-learn's ``libgomp-<hash>.so.1.0.0``, carry sonames of their own)."""
    paths: List[str] = []
    try:
        # Bytes, decoded as file names are: a mapped file's path in any folder (a venv,
        # the cache) may hold bytes the locale's encoding cannot decode, and a
        # UnicodeDecodeError here escaped the loader as a traceback from the first op.
        with open(maps, "rb") as f:
            for line in f:
                fields = line.rstrip(b"\n").split(maxsplit=5)
                if len(fields) < 6:
                    continue   # an anonymous mapping
                p = os.fsdecode(fields[5])   # the path, spaces and all
                name = os.path.basename(p)
                if (name == soname or name.startswith(soname + ".")) and p not in paths:
                    paths.append(p)
    except OSError:
        pass
    return paths


def torch_openmp_runtime() -> Optional[str]:
    """The OpenMP runtime's soname torch links, if torch's parallel backend is OpenMP
    and the soname can be read from its library; else None."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    lib = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    omp = [n for n in elf_needed(lib) or [] if "omp" in n]
    return omp[0] if len(omp) == 1 else None


def openmp_check(path: str) -> str:
    """Empty when the OpenMP build at ``path`` would share torch's runtime, else why not."""
    torch_omp = torch_openmp_runtime()
    if torch_omp is None:
        return "torch's parallel backend is not a known OpenMP runtime"
    ours = [n for n in elf_needed(path) or [] if "omp" in n]
    if ours != [torch_omp]:
        return f"the OpenMP build links {ours or 'no known runtime'}, torch links {torch_omp}"
    if not loaded(torch_omp):
        return f"{torch_omp} is not loaded in this process"
    if len(mapped_paths(torch_omp)) > 1:  # which one would the linker bind? not ours to guess
        return f"two files named {torch_omp} are loaded: {mapped_paths(torch_omp)}"
    return ""
