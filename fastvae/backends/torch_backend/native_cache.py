"""The C kernels' cache folder: where it is, a process's own temporary one where it cannot
be written, and the cleanups of what killed builds and unused libraries leave there
(``native`` builds and loads the library)."""
from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import time
from typing import List

from ... import _warnings


def cache_dir() -> str:
    """The cache folder, absolute (the compiler runs in a folder of its own, where a
    relative output path would name another file); where it cannot be made or written,
    is mounted noexec (no library there loads), or is to be in a home folder the process
    has none of, :func:`process_cache`."""
    d = os.environ.get("FASTVAE_CACHE_DIR")
    if not d:
        xdg = os.environ.get("XDG_CACHE_HOME", "")
        if not os.path.isabs(xdg):   # the XDG spec: a relative value is invalid, ignored
            xdg = os.path.expanduser("~/.cache")
        if not os.path.isabs(xdg):
            # No home to expand "~" to ($HOME unset and no passwd entry, as in a container
            # run as an unnamed user) or a relative $HOME: the cache would be a folder
            # named "~" in whatever folder the process starts in, one per folder.
            return process_cache(os.path.join(xdg, "fastvae"), problem=(
                "no home folder for the C kernels' cache (HOME is unset or relative, and "
                "XDG_CACHE_HOME is not an absolute path)"))
        d = os.path.join(xdg, "fastvae")
    d = os.path.abspath(d)
    try:
        os.makedirs(d, exist_ok=True)
        writable = os.access(d, os.W_OK)
    except OSError:
        writable = False
    if writable and runs_code(d):
        return d
    return process_cache(d, noexec=writable)


def runs_code(d: str) -> bool:
    """False where ``d``'s file system is mounted noexec: a library built there verifies,
    then fails to map (hardened homes and /tmp)."""
    try:
        return not os.statvfs(d).f_flag & getattr(os, "ST_NOEXEC", 0)
    except (OSError, AttributeError):   # no statvfs here: building is how to find out
        return True


class NoFolder(OSError):
    """Neither the cache folder nor a temporary one can hold a library that loads."""


def process_cache(wanted: str, noexec: bool = False, problem: str = "") -> str:
    """A temporary folder for this load's builds (one, however often asked: the probe and
    each flag set), removed once :func:`native.load` is done (a loaded library stays
    mapped; a process that exits before that, at exit), said once a process: each process
    builds again until the cache is fixed. :class:`NoFolder` where the temporary folder is
    mounted noexec too: no build there would load. ``problem``: what is wrong with
    ``wanted``, where it is neither unwritable nor noexec."""
    global _cache_warned
    if _temporary:
        return _temporary[-1]
    if not problem:
        problem = (f"the C kernels' cache folder {wanted} is on a file system mounted noexec"
                   if noexec else f"cannot write the C kernels' cache folder {wanted}")
    fix = "set FASTVAE_CACHE_DIR to a writable folder"
    exec_fix = fix + " on a file system that allows running code"
    d = tempfile.mkdtemp(prefix="fastvae-")
    _temporary.append(d)
    if not runs_code(d):
        raise NoFolder(f"{problem}, and the temporary folder {os.path.dirname(d)} is mounted "
                       f"noexec ({exec_fix})")
    if not _cache_warned:
        _cache_warned = True
        _warnings.warn(f"fastvae: {problem}; they are built for this process only "
                       f"({exec_fix if noexec else fix})")
    return d


def drop_temporary() -> None:
    while _temporary:
        shutil.rmtree(_temporary.pop(), ignore_errors=True)


_temporary: List[str] = []
_cache_warned = False
atexit.register(drop_temporary)


# A build folder untouched this long is a killed build's: a build is killed at
# native.BUILD_TIMEOUT_S (120 s).
STALE_BUILD_S = 600


def drop_stale_builds(d: str) -> None:
    """Remove the ``.build-*`` folders a build killed partway left in the cache (a live
    one, another process's, is younger than :data:`STALE_BUILD_S`)."""
    now = time.time()
    try:
        names = [n for n in os.listdir(d) if n.startswith(".build-")]
    except OSError:
        return
    for name in names:
        folder = os.path.join(d, name)
        try:
            if now - os.stat(folder).st_mtime > STALE_BUILD_S:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass   # gone already: another builder cleaned it


# A library no process has loaded for this long (another CPU's or compiler's, an older
# source's) is removed when the next one is built: each build leaves ~0.1 MB behind. A
# fastvae older than this rule never marks its library as in use: it rebuilds it then.
UNUSED_LIBRARY_S = 30 * 24 * 3600


def drop_unused_libraries(d: str, keep: str) -> None:
    """Remove the cached libraries besides ``keep`` whose hash file (touched by every
    load, ``native._library``) is older than :data:`UNUSED_LIBRARY_S`. A process that has
    one loaded keeps its mapping; a later one would build it again."""
    now = time.time()
    try:
        names = [n for n in os.listdir(d) if n.startswith("fastvae_cpu_") and n.endswith(".so")]
    except OSError:
        return
    for name in names:
        lib = os.path.join(d, name)
        if lib == keep:
            continue
        try:
            stamp = os.stat(lib + ".sha256").st_mtime
        except OSError:
            try:
                stamp = os.stat(lib).st_mtime
            except OSError:
                continue   # gone already: another builder cleaned it
        if now - stamp > UNUSED_LIBRARY_S:
            for f in (lib, lib + ".sha256"):
                with contextlib.suppress(OSError):
                    os.remove(f)
