"""The torch backend's C kernels' threads (native.py, openmp.py): OpenMP only in torch's
own runtime, else a Python thread pool with bitwise the same results, which a forked
child rebuilds; the status naming which.

Accuracy: test_native_kernel_accuracy.py; fallback warnings and the on-disk cache:
test_native_kernel_cache.py."""
from __future__ import annotations

import os

import pytest
import torch

from fastvae.backends.torch_backend import native
from fastvae.backends.torch_backend import openmp
from fastvae.backends.torch_backend.elf import elf_needed

from _native_kernel import _kernel_or_skip, _rows
from _native_kernel import cache  # noqa: F401,F811 (a fixture, found by name in this module)


# -- threads: OpenMP only in torch's own runtime, else a Python thread pool ---------------

def test_status_names_the_threading():
    _kernel_or_skip()
    s = native.status()
    runtime = openmp.torch_openmp_runtime()
    if runtime is not None and "OpenMP threads" in s:
        assert runtime in s and native._openmp
    else:
        assert "without OpenMP" in s and "thread pool" in s and not native._openmp


def test_torch_openmp_runtime_read_from_its_library():
    """On an OpenMP build of torch the runtime's soname comes from torch's own library,
    and that library is mapped in this process."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        assert openmp.torch_openmp_runtime() is None
        return
    lib = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    needed = elf_needed(lib)
    if needed is None:
        pytest.skip("torch's library is not ELF64 here")
    assert "libc10.so" in needed
    runtime = openmp.torch_openmp_runtime()
    assert runtime is not None and runtime in needed and openmp.loaded(runtime)


def test_status_names_torchs_runtime_beside_other_copies():
    """scikit-learn ships its own libgomp under another soname; the status names the file
    the OpenMP build shares, torch's."""
    pytest.importorskip("sklearn.utils._openmp_helpers")
    _kernel_or_skip()
    runtime = openmp.torch_openmp_runtime()
    if not native._openmp or runtime is None:
        pytest.skip(native.status())
    (path,) = openmp.mapped_paths(runtime)
    assert os.path.basename(path).startswith(runtime) and path in native.status()


def test_mapped_paths_with_spaces_and_undecodable_bytes(tmp_path):
    """A mapped file under a folder named in Latin-1 (or any non-ASCII name under the C
    locale) made reading the maps raise UnicodeDecodeError out of the first op; a path
    with spaces was cut at its last space."""
    where = b"/opt/caf\xe9 env/lib/"
    maps = tmp_path / "maps"
    maps.write_bytes(
        b"7f00-7f01 r-xp 00000000 08:01 42   " + where + b"libgomp.so.1\n"
        b"7f01-7f02 rw-p 00000000 00:00 0\n"
        b"7f02-7f03 r-xp 00000000 08:01 43   /usr/lib/libc.so.6\n")
    assert openmp.mapped_paths("libgomp.so.1", str(maps)) == [os.fsdecode(where + b"libgomp.so.1")]
    assert openmp.mapped_paths("libfoo.so", str(maps)) == []


def test_elf_needed_of_non_elf(tmp_path):
    p = tmp_path / "x.so"
    p.write_bytes(b"not an ELF file at all" * 10)
    assert elf_needed(str(p)) is None
    assert elf_needed(str(tmp_path / "missing.so")) is None


@pytest.mark.parametrize("why", ["torch-not-openmp", "runtime-not-loaded", "two-copies"])
def test_without_torchs_runtime_builds_without_openmp(cache, monkeypatch, why):
    """Where the OpenMP build would bring a second runtime, the library is built without
    OpenMP and rows are split over Python threads, with bitwise the same results."""
    if native._compiler() is None:
        pytest.skip("no C compiler")
    b, d = 301, 333
    x, l = torch.rand(b, d), torch.randn(b, d) * 4
    if native.load() is None:
        pytest.skip(f"compiled kernel unavailable here: {native.status()}")
    want = _rows(x, l, 1)
    if why == "torch-not-openmp":
        monkeypatch.setattr(openmp, "torch_openmp_runtime", lambda: None)
    elif why == "runtime-not-loaded":
        monkeypatch.setattr(openmp, "loaded", lambda soname: False)
    else:
        monkeypatch.setattr(openmp, "mapped_paths", lambda so: ["/a/" + so, "/b/" + so])
    loaded = []
    bind = native._bind
    monkeypatch.setattr(native, "_bind", lambda p: loaded.append(p) or bind(p))
    native.reset()
    assert native.load() is not None
    assert "without OpenMP" in native.status() and not native._openmp
    for p in loaded:  # the OpenMP build was never dlopen'ed
        needed = elf_needed(p)
        assert needed is not None and not any("omp" in n for n in needed), (p, needed)
    for n in (1, 2, 3, 7):
        got = _rows(x, l, n)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_thread_pool_is_rebuilt_in_a_forked_child(cache, monkeypatch):
    """A forked child has none of the parent's pool threads: it must not wait on them."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    monkeypatch.setattr(openmp, "torch_openmp_runtime", lambda: None)
    _kernel_or_skip()
    x, l = torch.rand(64, 600), torch.randn(64, 600)
    want = _rows(x, l, 2)  # starts the parent's pool
    pid = os.fork()
    if pid == 0:  # the child: same result, then leave at once
        ok = False
        try:
            # torch's own OpenMP team does not survive a fork (why DataLoader workers use
            # one thread); the two threads here are the kernel's pool.
            torch.set_num_threads(1)
            got = _rows(x, l, 2)
            ok = torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        finally:
            os._exit(0 if ok else 1)
    import time
    for _ in range(600):  # 60 s
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.1)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung on the thread pool")


def test_a_child_forked_while_the_loader_held_its_lock_can_take_it():
    """A fork while another thread of the parent builds (holding the loader's lock) copies
    the lock locked: the child's first op waited on it for ever."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    with native._lock:
        pid = os.fork()
        if pid == 0:
            os._exit(0 if native._lock.acquire(timeout=5) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
