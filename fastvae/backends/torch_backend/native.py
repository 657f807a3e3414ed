"""Loader of the torch backend's C kernels: every ``*.c`` file in this folder (with the
shared ``vecmath.h``) is built into one library; ``bernoulli_rows.c`` holds the float32
Bernoulli rows of the ELBO, and other kernels bind their entry points with
:func:`symbol` and split rows over threads with :func:`for_rows`.

The library is compiled with the system C compiler (``$CC``, split like a shell command, as
make does: a compiler, or a launcher and its compiler such as ``ccache gcc``; else
``cc``/``gcc``/``clang``) at first use into ``$FASTVAE_CACHE_DIR`` (default ``$XDG_CACHE_HOME/fastvae``,
else ``~/.cache/fastvae``), keyed by a hash of source, compiler, flags and CPU, and loaded
with ctypes; later processes load the cached library (one no process loaded for 30 days
is removed when another is built). :func:`load` returns None where it
cannot be used (no compiler, failed build or load, ``FASTVAE_NATIVE=0``); the caller then
runs the same math as aten ops, and :func:`status` says why. A fallback caused by a
failure warns once per process; one asked for with ``FASTVAE_NATIVE=0`` does not.

Threads. An OpenMP build shares torch's OpenMP runtime only when the runtime it
links (its ``DT_NEEDED`` entry, e.g. ``libgomp.so.1``) is already loaded in this
process and is the one torch's own library links; two OpenMP runtimes in one process
oversubscribe the cores and can deadlock after ``fork``. Where that does not hold
(torch built with TBB or native threads, Intel OpenMP in conda/MKL builds, macOS)
the library is built without OpenMP and rows are split over a Python thread pool:
ctypes releases the GIL during the call.

Cache. A cached library is loaded only after its SHA-256 matches the hash recorded
beside it (``<name>.so.sha256``): a truncated ``.so`` would otherwise be mapped and
crash the process with SIGBUS, and one that fails to load would silently select the
slower build. Builds go to a private temporary folder in the cache directory, are
fsynced, then renamed into place with their hash, so a crash or a concurrent builder
leaves either no file or a complete one (a killed build's folder goes at the next build,
:func:`native_cache.drop_stale_builds`). The hash guards against damage, not
against someone who can write to the cache directory; a library that matches it but does
not load is rebuilt once. A build past :data:`BUILD_TIMEOUT_S` is killed with its process
group, and ends the attempts.
"""
from __future__ import annotations

import contextlib
import concurrent.futures
import ctypes
import errno
import hashlib
import os
import platform
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
from typing import Callable, Optional, Tuple

import torch

from ... import _env, _warnings
from ..._durable import fsync_dir
from . import native_cache, openmp
from .elf import elf_needed

FOLDER = os.path.dirname(os.path.abspath(__file__))

_OPENMP_FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-fopenmp"]
# Without OpenMP: tuned for this CPU, then portable (a compiler without -march=native).
_PLAIN_FLAG_SETS = (["-O3", "-march=native", "-fPIC", "-shared"], ["-O3", "-fPIC", "-shared"])
# Below this many elements one thread is faster than waking a second: an OpenMP worker
# is woken in microseconds, a pool thread (a futex, then the GIL for a moment) in tens.
PARALLEL_MIN_ELEMS = 1 << 15
POOL_MIN_ELEMS = 1 << 20
_EVAL_CODES = {"exp": 0, "log1p": 1, "softplus": 2, "sigmoid": 3, "exp_any": 4, "log": 5,
               "sqrt": 6, "cos_turn": 7, "sin_turn": 8, "log_normal": 9}

_lock = threading.Lock()
_fn = None            # the ctypes function fastvae_bernoulli_rows, or None
_lib = None
_openmp = False       # whether _fn splits rows over OpenMP threads itself
_status = "not loaded yet"
_warned = False
_pool = None          # (pid, workers, ThreadPoolExecutor) for builds without OpenMP
_symbols = {}         # name -> ctypes function, bound by symbol()


def _after_fork_in_child() -> None:
    """A fresh lock in a forked child: a thread of the parent may have held it (a first
    build, say) when the fork copied it locked, with no thread left to release it."""
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _compiler():
    """The compiler command as one shell-quoted string: ``$CC``'s where set, its first word
    resolved on PATH (a launcher and its compiler, ``ccache gcc``, as make takes them;
    ValueError where that word names no executable: building with another compiler than
    the one asked for would go unnoticed), else the first of cc/gcc/clang found; None
    without one."""
    asked = os.environ.get("CC", "").strip()
    if asked:
        try:
            words = shlex.split(asked)
        except ValueError as e:
            raise ValueError(f"CC={asked!r} cannot be split into words ({e})") from None
        found = shutil.which(words[0])
        if found is None:
            raise ValueError(f"CC={asked!r} is not an executable on PATH" if len(words) == 1
                             else f"CC={asked!r}: {words[0]!r} is not an executable on PATH")
        return shlex.join([found, *words[1:]])
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return shlex.quote(shutil.which(name))
    return None


# The /proc/cpuinfo lines that say which instructions -march=native may use: x86's, and
# ARM's, POWER's and RISC-V's (which have neither a model name nor flags).
_CPU_LINES = ("model name", "flags", "Features", "CPU implementer", "CPU architecture",
              "CPU variant", "CPU part", "cpu\t", "isa", "uarch")


def _cpu_id(cpuinfo: str = "/proc/cpuinfo") -> str:
    try:
        with open(cpuinfo) as f:
            return "".join(ln for ln in f if ln.startswith(_CPU_LINES))[:4096]
    except OSError:
        return platform.processor()


def read_sources() -> Tuple[Tuple[str, bytes], ...]:
    """(file name, contents) of every C source and header the library is built from."""
    out = []
    for name in sorted(os.listdir(FOLDER)):
        if name.endswith((".c", ".h")):
            with open(os.path.join(FOLDER, name), "rb") as f:
                out.append((name, f.read()))
    return tuple(out)


def library_path(sources, cc: str, flags) -> str:
    """Where the library for these sources, compiler and flags is cached."""
    parts = [p for name, text in sources for p in (name.encode(), text)]
    key = hashlib.sha256(b"\0".join([*parts, cc.encode(), *(f.encode() for f in flags),
                                     platform.machine().encode(), _cpu_id().encode()]))
    return os.path.join(native_cache.cache_dir(), f"fastvae_cpu_{key.hexdigest()[:20]}.so")


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def verified(path: str) -> bool:
    """Whether ``path`` exists and its SHA-256 is the one recorded beside it."""
    try:
        with open(path + ".sha256") as f:
            want = f.read().strip()
        return len(want) == 64 and _sha256(path) == want
    except OSError:
        return False



def _build(sources, cc: str, flags, path: str) -> None:
    """Compile into a private folder beside ``path``, fsync, record the hash, rename both.

    The compiler runs in that folder on fixed file names, so concurrent builders
    produce the same bytes and whichever rename lands last leaves a matching pair."""
    d = os.path.dirname(path)
    native_cache.drop_stale_builds(d)
    work = tempfile.mkdtemp(prefix=".build-", dir=d)
    try:
        for name, text in sources:
            with open(os.path.join(work, name), "wb") as f:
                f.write(text)
        out = os.path.join(work, "lib.so")
        units = [name for name, _ in sources if name.endswith(".c")]
        _compile([*shlex.split(cc), *flags, "-o", out, *units], work)
        with open(out, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
            os.fsync(f.fileno())
        with open(out + ".sha256", "w") as f:
            f.write(digest + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(out, path)
        os.replace(out + ".sha256", path + ".sha256")
        fsync_dir(d)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# One build's limit. A compiler that runs past it ends the attempts: the next flag set's
# build would wait as long.
BUILD_TIMEOUT_S = 120


def _compile(cmd, cwd: str) -> None:
    """Run the compiler in a session of its own, so that a timeout kills it with every
    process it started (cc1, as, ld), not the driver alone."""
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
    except OSError as e:
        # Not as an OSError: one with EACCES or EPERM (a compiler on a noexec mount, a
        # script whose interpreter may not run) would read as a cache folder that cannot
        # take the build, built again in a temporary folder and warned about as such.
        raise subprocess.SubprocessError(f"cannot run the compiler {cmd[0]}: {e}") from None
    try:
        out, err = proc.communicate(timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (OSError, AttributeError):   # gone already; no process groups here
            proc.kill()
        proc.communicate()
        raise
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd, out, err)


# What a cache folder that cannot take the build says (full, over quota, read-only).
_UNWRITABLE = tuple(getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM")
                    if hasattr(errno, n))


def _library(sources, cc: str, flags) -> str:
    """The path of a verified library for these flags, built (or rebuilt) if needed; in
    a process's own folder (``native_cache.process_cache``) where the cache cannot take it."""
    path = library_path(sources, cc, flags)
    with contextlib.suppress(OSError):   # in use (first: a builder may be pruning now)
        os.utime(path + ".sha256")
    if verified(path):
        return path
    # missing, truncated, zero-length, altered, or no hash file
    native_cache.drop_unused_libraries(os.path.dirname(path), path)
    try:
        _build(sources, cc, flags, path)
    except OSError as e:
        if e.errno not in _UNWRITABLE:
            raise
        path = os.path.join(native_cache.process_cache(os.path.dirname(path)),
                            os.path.basename(path))
        _build(sources, cc, flags, path)
    if not verified(path):
        raise OSError(f"{path} does not match its recorded hash after a rebuild")
    return path


def _rebuilt(sources, cc: str, flags, path: str) -> str:
    """:func:`_library` again after removing ``path``: a cached library whose hash matches
    but that is no shared library, or does not load (built by a toolchain broken then; for
    another libc, through a shared cache), would otherwise be kept for good."""
    for f in (path, path + ".sha256"):
        with contextlib.suppress(OSError):
            os.remove(f)
    return _library(sources, cc, flags)


def _bound(sources, cc: str, flags):
    """:func:`_bind` of the library for these flags, rebuilt once where it does not load
    (or lacks an entry point)."""
    path = _library(sources, cc, flags)
    try:
        return _bind(path)
    except (OSError, AttributeError):
        return _bind(_rebuilt(sources, cc, flags, path))


def _openmp_bound(sources, cc: str):
    """((lib, fn, openmp), "") of the OpenMP build, or (None, why it may not run here).

    A cached library that matches its hash but is no shared library or does not load is
    rebuilt once, as :func:`_bound` does for the other builds: kept, it would have every
    later process take the build without OpenMP, silently and for good."""
    path = _library(sources, cc, _OPENMP_FLAGS)
    if elf_needed(path) is None:   # no shared library: nothing to check or load
        return _openmp_bind(_rebuilt(sources, cc, _OPENMP_FLAGS, path))
    try:
        return _openmp_bind(path)
    except (OSError, AttributeError):
        return _openmp_bind(_rebuilt(sources, cc, _OPENMP_FLAGS, path))


def _openmp_bind(path: str):
    why = openmp.openmp_check(path)  # before dlopen: it would load the runtime
    return (None, why) if why else (_bind(path), "")


def _bind(path: str):
    lib = ctypes.CDLL(path)
    fn = lib.fastvae_bernoulli_rows
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                   ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_float,
                   ctypes.c_void_p, ctypes.c_int]
    lib.fastvae_eval.restype = ctypes.c_int
    lib.fastvae_eval.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    return lib, fn, bool(lib.fastvae_openmp())


def lanes(lib) -> int:
    """The float32 lanes a loaded library's vectors hold: 16 where it was built for
    AVX-512, else 8 (vecmath.h)."""
    lib.fastvae_lanes.restype = ctypes.c_int
    return int(lib.fastvae_lanes())


def _error(flags, e) -> str:
    detail = (getattr(e, "stderr", b"") or b"").decode(errors="replace")[-300:]
    return f"{' '.join(flags)}: {e} {detail}".strip()


def _load():
    """(lib, fn, openmp, status)."""
    unknown = _env.unknown_switch("FASTVAE_NATIVE")
    if unknown:   # said once by load's warning, with the status, not by _env.switch's
        return None, None, False, unknown
    if not _env.switch("FASTVAE_NATIVE", True):
        return None, None, False, "disabled by FASTVAE_NATIVE"
    try:
        cc = _compiler()
    except ValueError as e:
        return None, None, False, str(e)
    if cc is None:
        return None, None, False, "no C compiler found (set CC)"
    try:
        source = read_sources()
    except OSError as e:
        return None, None, False, f"kernel source unreadable: {e}"
    if not any(name.endswith(".c") for name, _ in source):   # nothing to hand the compiler
        return None, None, False, (f"no C source in {FOLDER}: this install of fastvae lacks "
                                   "its package data; reinstall it")
    try:
        native_cache.cache_dir()
    except native_cache.NoFolder as e:   # no build would load: none tried, in any process
        return None, None, False, str(e)
    errors = []
    why_not_omp = "torch's parallel backend is not a known OpenMP runtime"
    if openmp.torch_openmp_runtime() is not None:
        try:
            bound, why_not_omp = _openmp_bound(source, cc)
            if bound is not None:
                lib, fn, omp = bound
                runtime = openmp.torch_openmp_runtime()
                where = (openmp.mapped_paths(runtime) or ["?"])[0]
                return lib, fn, omp, (f"loaded: OpenMP threads in torch's runtime {runtime} "
                                      f"({where}); {lanes(lib)} lanes; {cc} "
                                      f"{' '.join(_OPENMP_FLAGS)}")
        except (OSError, subprocess.SubprocessError, AttributeError) as e:
            why_not_omp = "the OpenMP build failed"
            errors.append(_error(_OPENMP_FLAGS, e))
            if isinstance(e, subprocess.TimeoutExpired):
                return None, None, False, "build failed: " + " | ".join(errors)
    for flags in _PLAIN_FLAG_SETS:
        try:
            lib, fn, omp = _bound(source, cc, flags)
        except (OSError, subprocess.SubprocessError, AttributeError) as e:
            errors.append(_error(flags, e))
            if isinstance(e, subprocess.TimeoutExpired):
                break
            continue
        return lib, fn, omp, (f"loaded: built without OpenMP ({why_not_omp}), rows split over "
                              f"a Python thread pool; {lanes(lib)} lanes; {cc} {' '.join(flags)}")
    return None, None, False, "build failed: " + " | ".join(errors)


def load():
    """The compiled Bernoulli row kernel (a ctypes function), or None where the library
    cannot be used."""
    global _lib, _fn, _openmp, _status, _warned
    if _status == "not loaded yet":
        with _lock:
            if _status == "not loaded yet":
                try:
                    _lib, _fn, _openmp, _status = _load()
                finally:
                    native_cache.drop_temporary()
                if _fn is None and not _status.startswith("disabled") and not _warned:
                    _warned = True
                    _warnings.warn(f"fastvae: the C kernels are unavailable ({_status}); the "
                                   "torch backend runs its slower aten paths. FASTVAE_NATIVE=0 "
                                   "selects that path without this warning.")
    return _fn


def status() -> str:
    """Why :func:`load` gives what it gives, and how rows are threaded (after the first call)."""
    return _status


def reset() -> None:
    """Forget the loaded kernel so the next :func:`load` looks again (tests use this)."""
    global _lib, _fn, _openmp, _status
    with _lock:
        _lib, _fn, _openmp, _status = None, None, False, "not loaded yet"
        _symbols.clear()


def usable(x: torch.Tensor, logits: torch.Tensor) -> bool:
    """Whether the kernel can take these (B, D) tensors as they are."""
    return (x.dtype == torch.float32 and logits.dtype == torch.float32
            and x.device.type == "cpu" and logits.device.type == "cpu"
            and x.dim() == 2 and x.shape == logits.shape and x.numel() > 0
            and x.stride(1) == 1 and logits.stride(1) == 1)


def _thread_pool(n: int) -> concurrent.futures.ThreadPoolExecutor:
    """A pool of at least n workers, made afresh in a forked child: the parent's worker
    threads do not exist there, and its executor would wait on them for ever."""
    global _pool
    with _lock:
        if _pool is None or _pool[0] != os.getpid() or _pool[1] < n:
            _pool = (os.getpid(), n, concurrent.futures.ThreadPoolExecutor(
                n, thread_name_prefix="fastvae-rows"))
        return _pool[2]


# The profiler's name for one C pass (fastvae.bench counts them as kernels).
PASS_EVENT = "fastvae::c_pass"


def for_rows(rows: int, elems: int, block: Callable[[int, int, int], None],
             threads: Optional[int] = None) -> None:
    """Run ``block(first_row, row_count, nthreads)`` over ``rows`` rows (``elems`` elements
    in all): once over every row where the library threads itself (OpenMP: ``nthreads``
    is its team size) or one thread suffices, else as contiguous row blocks, one per
    pool thread, the caller's thread taking the first (``nthreads`` = 1 in each).

    ``threads`` defaults to ``torch.get_num_threads()``, or 1 below PARALLEL_MIN_ELEMS
    (POOL_MIN_ELEMS for a build without OpenMP)."""
    if torch.autograd._profiler_enabled():
        # one pass over memory, seen by the profiler as an aten op is (a ctypes call is not)
        with torch.profiler.record_function(PASS_EVENT):
            return _for_rows(rows, elems, block, threads)
    return _for_rows(rows, elems, block, threads)


def _for_rows(rows, elems, block, threads):
    n = threads or (torch.get_num_threads()
                    if elems >= (PARALLEL_MIN_ELEMS if _openmp else POOL_MIN_ELEMS) else 1)
    n = max(1, min(n, rows))
    if _openmp or n == 1:
        block(0, rows, n)
        return
    edges = [rows * k // n for k in range(n + 1)]
    pool = _thread_pool(n - 1)
    futures = [pool.submit(block, edges[k], edges[k + 1] - edges[k], 1) for k in range(1, n)]
    block(0, edges[1], 1)
    for f in futures:
        f.result()


def symbol(name: str, argtypes, restype=ctypes.c_int):
    """The library's C function ``name`` with these ctypes types, or None where the
    library cannot be used (:func:`status` says why)."""
    if load() is None:
        return None
    with _lock:
        fn = _symbols.get(name)
        if fn is None:
            fn = getattr(_lib, name)
            fn.argtypes, fn.restype = argtypes, restype
            _symbols[name] = fn
        return fn


def bernoulli_rows(x: torch.Tensor, logits: torch.Tensor, grad, c: float, out: torch.Tensor,
                   threads: Optional[int] = None):
    """out[i] = sum_d x*l - softplus(l); grad (contiguous (B, D) or None) = c * (x - sigmoid(l)).

    ``threads``: see :func:`for_rows`."""
    rows, d = x.shape
    xp, sx, lp, sl = x.data_ptr(), x.stride(0), logits.data_ptr(), logits.stride(0)
    gp, op = None if grad is None else grad.data_ptr(), out.data_ptr()

    def block(i, count, nthreads):
        _fn(count, d, xp + 4 * i * sx, sx, lp + 4 * i * sl, sl,
            None if gp is None else gp + 4 * i * d, c, op + 4 * i, nthreads)

    for_rows(rows, rows * d, block, threads)


def eval_elementwise(what: str, inp: torch.Tensor, out: torch.Tensor) -> None:
    """Test entry point: ``out`` = the kernels' own ``exp`` (argument <= 0), ``log1p``
    (argument in [0, 1]), ``softplus``, ``sigmoid``, ``exp_any`` or ``log`` (any argument),
    ``sqrt`` (argument >= 0), ``cos_turn`` / ``sin_turn`` (cos, sin of 2 pi times an
    argument in [-1/2, 1/2]), ``log_normal`` (positive normal floats) of ``inp``
    (contiguous float32)."""
    if load() is None:
        raise RuntimeError(f"C kernels unavailable: {status()}")
    if not (inp.dtype == out.dtype == torch.float32 and inp.is_contiguous()
            and out.is_contiguous() and inp.numel() == out.numel()):
        raise ValueError("eval_elementwise takes contiguous float32 tensors of one size")
    if _lib.fastvae_eval(_EVAL_CODES[what], inp.numel(), inp.data_ptr(), out.data_ptr()) != 0:
        raise ValueError(what)
