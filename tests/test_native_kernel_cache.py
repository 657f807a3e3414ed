"""The torch backend's C kernels' loader (native.py, native_cache.py): one warning when
it falls back to aten because of a failure, and the on-disk cache's integrity (never
load a library that does not match its recorded hash; rebuild it; clean up after killed
builds and libraries unused for a month).

Accuracy: test_native_kernel_accuracy.py; threads: test_native_kernel_threads.py."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

from fastvae.backends.torch_backend import native, native_cache
from fastvae.backends.torch_backend import openmp

from _native_kernel import _rows
from _native_kernel import cache  # noqa: F401,F811 (a fixture, found by name in this module)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- one warning when the kernel falls back because of a failure ---------------------------

def test_build_failure_warns_once(cache, monkeypatch):
    monkeypatch.setattr(native, "_warned", False)
    monkeypatch.setattr(native, "_OPENMP_FLAGS", ["--no-such-flag-for-fastvae"])
    monkeypatch.setattr(native, "_PLAIN_FLAG_SETS", (["--no-such-flag-for-fastvae"],))
    with pytest.warns(RuntimeWarning, match="C kernels are unavailable.*build failed"):
        assert native.load() is None
    native.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.load() is None  # once per process


def test_no_compiler_warns(cache, monkeypatch):
    monkeypatch.setattr(native, "_warned", False)
    monkeypatch.setattr(native, "_compiler", lambda: None)
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        assert native.load() is None


def test_fallback_warning_names_the_callers_line(cache, monkeypatch):
    """The warning points at the line that called fastvae (here, through nn.Module's
    __call__ too), not at fastvae's or torch's frames."""
    import fastvae
    monkeypatch.setattr(native, "_warned", False)
    monkeypatch.setattr(native, "_compiler", lambda: None)
    x = torch.rand(4, 6)
    logits, mu, logvar = torch.randn(4, 6), torch.randn(4, 3), torch.randn(4, 3)
    with pytest.warns(RuntimeWarning, match="no C compiler") as caught:
        fastvae.ELBOLoss(backend="torch")(logits, x, mu, logvar)
    assert {w.filename for w in caught} == {__file__}


def test_disabled_does_not_warn(cache, monkeypatch):
    monkeypatch.setattr(native, "_warned", False)
    monkeypatch.setenv("FASTVAE_NATIVE", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.load() is None
    assert "FASTVAE_NATIVE" in native.status() and not native._warned


# -- the cache: never load a library that does not match its recorded hash ----------------

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A cache directory holding a freshly built library for each flag set the loader may
    use (built, not loaded: the tests damage copies, and a mapped file must never be)."""
    cc = native._compiler()
    if cc is None:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("cache-template")
    old = os.environ.get("FASTVAE_CACHE_DIR")
    os.environ["FASTVAE_CACHE_DIR"] = str(d)
    try:
        source = native.read_sources()
        for flags in (native._OPENMP_FLAGS, *native._PLAIN_FLAG_SETS):
            try:
                native._library(source, cc, flags)
            except (OSError, subprocess.SubprocessError):
                pass
    finally:
        if old is None:
            del os.environ["FASTVAE_CACHE_DIR"]
        else:
            os.environ["FASTVAE_CACHE_DIR"] = old
    if not any(d.glob("*.so")):
        pytest.skip("the kernel does not build here")
    return d


def _copy_cache(built, dest):
    for p in built.iterdir():
        shutil.copy(p, dest / p.name)
    return sorted(dest.glob("*.so"))


_CHILD = """
import json, warnings
warnings.simplefilter("always")
import torch, fastvae
from fastvae.backends.torch_backend import native, native_cache
from fastvae.backends.torch_backend import openmp
from fastvae.backends.torch_backend.elf import elf_needed
g = torch.Generator().manual_seed(0)
x, r = torch.rand(33, 101, generator=g), torch.randn(33, 101, generator=g).requires_grad_()
mu, lv = torch.randn(33, 4, generator=g), torch.randn(33, 4, generator=g)
with warnings.catch_warnings(record=True) as w:
    v = fastvae.elbo(x, r, mu, lv, backend="torch", reduction="sum")
    v.backward()
ref = fastvae.elbo(x, r.detach(), mu, lv, backend="reference", reduction="sum")
print(json.dumps({"status": native.status(), "value": v.item(), "ref": ref.item(),
                  "warnings": [str(m.message) for m in w]}))
"""


def _child(cache_dir, cwd=ROOT, **more_env):
    env = {k: v for k, v in os.environ.items() if k != "FASTVAE_NATIVE"}
    env.update(FASTVAE_CACHE_DIR=str(cache_dir), **more_env)
    return subprocess.run([sys.executable, "-c", _CHILD], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def _kind(status: str) -> str:
    """Which build a status names (OpenMP in which runtime, or none), without the details."""
    return status.split(" (")[0]


def _check_child(proc, want_status):
    import json

    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert _kind(out["status"]) == _kind(want_status), out  # the same build as a clean cache
    assert abs(out["value"] - out["ref"]) <= 1e-4 * abs(out["ref"])
    assert not any("C row kernel" in w for w in out["warnings"]), out
    return out


@pytest.fixture
def clean_status(built, monkeypatch):
    """What the loader reports with the intact cache (loaded here: the tests damage only
    copies of it, never a file this process has mapped)."""
    monkeypatch.setenv("FASTVAE_CACHE_DIR", str(built))
    native.reset()
    try:
        assert native.load() is not None, native.status()
        return native.status()
    finally:
        monkeypatch.undo()
        native.reset()


def _damage(cache_dir, how: str) -> None:
    """Damage every cached library in ``cache_dir`` the way ``how`` says."""
    for so in cache_dir.glob("*.so"):
        data = so.read_bytes()
        if how == "truncated":
            so.write_bytes(data[: len(data) // 2])
        elif how == "zero-length":
            so.write_bytes(b"")
        elif how == "bit-flip":
            i = len(data) // 3
            so.write_bytes(data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1:])
        elif how == "hash-missing":
            os.remove(str(so) + ".sha256")
        elif how == "hash-garbage":
            (cache_dir / (so.name + ".sha256")).write_text("0" * 64)
        assert not native.verified(str(so))


# Damage that could crash the process that maps it is tested in a fresh process.

def test_truncated_cached_library_is_rebuilt_not_mapped(built, clean_status, tmp_path):
    """Issue 14, item 4: a truncated cached .so used to crash every later process with
    SIGBUS (exit 135, or -7 from subprocess) while dlopen mapped it."""
    _copy_cache(built, tmp_path)
    _damage(tmp_path, "truncated")
    _check_child(_child(tmp_path), clean_status)
    assert any(native.verified(str(so)) for so in tmp_path.glob("*.so"))  # the one it rebuilt


def test_bit_flipped_cached_library_is_rebuilt(built, clean_status, tmp_path):
    _copy_cache(built, tmp_path)
    _damage(tmp_path, "bit-flip")
    _check_child(_child(tmp_path), clean_status)
    assert any(native.verified(str(so)) for so in tmp_path.glob("*.so"))


@pytest.mark.parametrize("damage", ["hash-missing", "hash-garbage", "zero-length"])
def test_damaged_cache_is_rebuilt(built, clean_status, cache, monkeypatch, damage):
    """A library that does not match its recorded hash is rebuilt before loading, with no
    warning, into the same build as from a clean cache. (In this process: these kinds
    of damage cannot crash it should the check regress; dlopen rejects an empty file.
    The same build kind as a clean cache: a zero-length library once made every later
    process fall back, silently and for good, to the build without OpenMP.)"""
    _copy_cache(built, cache)
    _damage(cache, damage)
    monkeypatch.setattr(native, "_warned", False)
    builds = []
    build = native._build
    monkeypatch.setattr(native, "_build", lambda *a: builds.append(a[2]) or build(*a))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.load() is not None, native.status()
    assert _kind(native.status()) == _kind(clean_status)
    assert builds, "a library that did not match its hash was loaded without a rebuild"
    source = native.read_sources()
    assert all(native.verified(native.library_path(source, native._compiler(), f)) for f in builds)
    x, l = torch.rand(5, 19), torch.randn(5, 19)
    rows, g = _rows(x, l, 1)
    want = (x.double() * l.double() - torch.nn.functional.softplus(l.double())).sum(-1)
    torch.testing.assert_close(rows.double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g.double(), -0.5 * (x.double() - torch.sigmoid(l.double())),
                               rtol=0, atol=1e-7)


def test_a_relative_cache_folder_is_the_current_folders(built, clean_status, tmp_path):
    """FASTVAE_CACHE_DIR=relative: the compiler runs in a build folder of its own, so a
    relative output path named a file under that folder; the build failed and every
    process fell back to aten, with a warning."""
    if native._compiler() is None:
        pytest.skip("no C compiler")
    out = _check_child(_child("rel cache", cwd=str(tmp_path), PYTHONPATH=ROOT), clean_status)
    assert out["warnings"] == [], out
    assert list((tmp_path / "rel cache").glob("*.so")), "nothing was cached"


def test_an_unusable_cache_folder_builds_once_a_process_and_cleans_up(built, clean_status,
                                                                      tmp_path):
    """FASTVAE_CACHE_DIR naming a file: the build goes to a temporary folder, removed once
    the library is loaded, with one warning saying so (it left a folder in /tmp per
    library, every process, silently)."""
    if native._compiler() is None:
        pytest.skip("no C compiler")
    not_a_folder, tmp = tmp_path / "file", tmp_path / "tmp"
    not_a_folder.write_text("")
    tmp.mkdir()
    # one child, leaving by os._exit as a fork worker does (no atexit): the folder must be
    # gone once the library is loaded
    env = dict(os.environ, FASTVAE_CACHE_DIR=str(not_a_folder), TMPDIR=str(tmp))
    env.pop("FASTVAE_NATIVE", None)
    code = ("import os, sys, warnings\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    from fastvae.backends.torch_backend import native\n"
            "    loaded = native.load() is not None\n"
            "print(loaded, native.status(), [str(m.message) for m in w], flush=True)\n"
            "os._exit(0)")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("True") and _kind(clean_status) in r.stdout, r.stdout
    assert r.stdout.count("cannot write the C kernels' cache") == 1, r.stdout
    assert list(tmp.iterdir()) == []


def test_unverifiable_library_is_never_loaded(cache, monkeypatch):
    """If a rebuilt library still does not match (a file system that loses writes), the
    loader falls back to aten with one warning and never dlopens the file."""
    if native._compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.setattr(native, "_warned", False)
    monkeypatch.setattr(native, "verified", lambda path: False)
    bound, built = [], []
    monkeypatch.setattr(native, "_bind", lambda p: bound.append(p))
    # what the compiler writes is never looked at here (verified says no): no C compiled
    monkeypatch.setattr(native, "_build", lambda sources, cc, flags, path: built.append(flags))
    with pytest.warns(RuntimeWarning, match="does not match its recorded hash"):
        assert native.load() is None
    assert bound == []
    # each build tried once, the OpenMP one first where torch's runtime is OpenMP
    assert built == ([native._OPENMP_FLAGS] if openmp.torch_openmp_runtime() else []) + \
        list(native._PLAIN_FLAG_SETS)


def test_fresh_build_leaves_only_the_library_and_its_hash(cache):
    if native._compiler() is None:
        pytest.skip("no C compiler")
    if native.load() is None:
        pytest.skip(f"compiled kernel unavailable here: {native.status()}")
    names = sorted(p.name for p in cache.iterdir())
    assert names and all(n.endswith((".so", ".so.sha256")) for n in names), names
    assert all(native.verified(str(p)) for p in cache.glob("*.so"))


def test_a_killed_build_s_folder_is_removed_by_the_next_build(cache):
    """A build killed partway leaves its .build-* folder; the next build in that cache
    removes it once it is older than any live build can be, and leaves a young one (a
    build running in another process) alone."""
    if native._compiler() is None:
        pytest.skip("no C compiler")
    old, young = cache / ".build-killed", cache / ".build-running"
    for folder in (old, young):
        folder.mkdir()
        (folder / "lib.so").write_bytes(b"half")
    an_hour_ago = os.stat(old).st_mtime - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    if native.load() is None:
        pytest.skip(f"compiled kernel unavailable here: {native.status()}")
    assert not old.exists() and young.exists()


def test_a_library_no_process_loaded_for_a_month_goes_when_another_is_built(cache, monkeypatch):
    """Each source, compiler or CPU change builds a new library beside the old ones.
    Loading one touches its hash file; building another removes the ones untouched for
    UNUSED_LIBRARY_S, and leaves recently loaded ones (another install's, say) alone."""
    old_s = native_cache.UNUSED_LIBRARY_S + 3600
    stale, recent = cache / "fastvae_cpu_0000stale.so", cache / "fastvae_cpu_000recent.so"
    for lib in (stale, recent):
        lib.write_bytes(b"lib")
        (cache / (lib.name + ".sha256")).write_text("x" * 64 + "\n")
    for f in (stale, cache / (stale.name + ".sha256")):
        t = os.stat(f).st_mtime - old_s
        os.utime(f, (t, t))
    sources, flags = (("k.c", b"int f(void) { return 1; }\n"),), ["-shared"]
    built = []

    def fake_build(src, cc, fl, path):   # what _build leaves: the library and its hash
        built.append(path)
        with open(path, "wb") as f:
            f.write(b"built")
        with open(path + ".sha256", "w") as f:
            f.write(native._sha256(path) + "\n")
    monkeypatch.setattr(native, "_build", fake_build)
    path = native._library(sources, "/usr/bin/cc", flags)
    assert built == [path] and os.path.exists(path)
    assert not stale.exists() and not (cache / (stale.name + ".sha256")).exists()
    assert recent.exists()
    # a load of the cached library builds nothing and marks it as in use
    t = os.stat(path + ".sha256").st_mtime - old_s
    os.utime(path + ".sha256", (t, t))
    assert native._library(sources, "/usr/bin/cc", flags) == path and len(built) == 1
    assert os.stat(path + ".sha256").st_mtime > t + old_s / 2
