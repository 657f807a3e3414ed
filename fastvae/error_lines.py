"""One-line errors for failures deep inside a library that a command can name: out of
memory (a size flag too big for the machine), a full disk, no C++ compiler for
torch.compile. Each returns None for any other error, and under FASTVAE_DEBUG (the
traceback wanted)."""
from __future__ import annotations

import errno

import torch

from . import _env
from .checkpoint import error_chain, os_words


def out_of_memory_line(prog: str, e: Exception, hint: str):
    """The one-line error for ``e`` where an allocator raised it (a size flag too big for
    the machine: torch's, on the CPU a RuntimeError with no subclass to tell it by, or
    numpy's / Python's MemoryError); None for any other error, and under FASTVAE_DEBUG
    (the traceback wanted)."""
    if _env.debug() or not (
            isinstance(e, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError)))
            or "can't allocate memory" in str(e)):
        return None
    return f"{prog}: error: out of memory ({str(e).splitlines()[0]}); {hint}"


_DISK_FULL = tuple(getattr(errno, n) for n in ("ENOSPC", "EFBIG", "EDQUOT") if hasattr(errno, n))


def disk_full_line(prog: str, e: BaseException, hint: str):
    """The one-line error for ``e`` where a full disk (or a file-size limit) is behind it
    deep inside a library: torch.compile's cache writes raise an InductorError around the
    OSError. None otherwise, and under FASTVAE_DEBUG."""
    if _env.debug():
        return None
    compiling = False
    for seen in error_chain(e):
        compiling = compiling or type(seen).__module__.startswith("torch._")
        if isinstance(seen, OSError) and seen.errno in _DISK_FULL:
            where = f" {seen.filename}" if seen.filename else ""
            what = (f"torch.compile could not write its cache{where} (TORCHINDUCTOR_CACHE_DIR; "
                    "by default in the temporary folder)" if compiling else f"cannot write{where}")
            return f"{prog}: error: {what}: {os_words(seen)}; {hint}"
    return None


def no_compiler_why(e: BaseException):
    """What inductor said where it found no working C++ compiler behind ``e`` (its CPU
    code is C++: ``InvalidCxxCompiler``), else None."""
    for seen in error_chain(e):
        if type(seen).__name__ == "InvalidCxxCompiler" or "InvalidCxxCompiler" in str(seen):
            text = str(seen).strip().splitlines()
            return text[0] if text else type(seen).__name__
    return None


# What a machine without inductor's C++ compiler needs (train's two messages say it).
NO_COMPILER_FIX = "install one (g++) or set CXX to it"


def no_compiler_line(prog: str, e: BaseException, hint: str):
    """The one-line error for ``e`` where torch.compile found no C++ compiler; None for any
    other error, and under FASTVAE_DEBUG."""
    why = None if _env.debug() else no_compiler_why(e)
    if why is None:
        return None
    return f"{prog}: error: torch.compile needs a working C++ compiler ({why}); {hint}"
