"""The C kernels' build where the machine gets in the way: a compiler that hangs (one
limit, its processes killed, no second attempt), a cached library whose hash matches but
that does not load (rebuilt once), a cache folder that cannot take the build or is mounted noexec (a folder
of the process's own), an install without the C sources, and the cache key of CPUs whose
/proc/cpuinfo has no flags line."""
import errno
import os
import stat
import tempfile
import time
import warnings

import pytest
import torch

import fastvae
from fastvae.backends.torch_backend import native


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTVAE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTVAE_NATIVE", raising=False)
    monkeypatch.setattr(native, "_warned", True)   # the warning is not what these test
    native.reset()
    yield tmp_path / "cache"
    monkeypatch.undo()
    native.reset()


def _needs_compiler():
    if native._compiler() is None:
        pytest.skip("no C compiler")


@pytest.mark.skipif(os.name != "posix", reason="a shell script as the compiler")
def test_a_hanging_compiler_is_killed_with_its_children_and_not_tried_again(cache, tmp_path,
                                                                            monkeypatch):
    log, child = tmp_path / "calls", tmp_path / "child.pid"
    cc = tmp_path / "cc_hang"
    cc.write_text(f"#!/bin/sh\necho call >> {log}\nsleep 1000 &\necho $! > {child}\nwait\n")
    cc.chmod(cc.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setattr(native, "BUILD_TIMEOUT_S", 1)
    start = time.monotonic()
    assert native.load() is None
    assert time.monotonic() - start < 30
    assert "timed out after 1 second" in native.status()
    assert log.read_text().count("call") == 1          # no other flag set waited as long
    pid = int(child.read_text())
    time.sleep(0.2)
    assert not _running(pid)   # the compiler's child went with it


def test_an_install_without_the_c_sources_says_so_and_runs_no_compiler(cache, tmp_path,
                                                                       monkeypatch):
    """A wheel or repackaging that dropped the package data (setup.py's package_data):
    the status names the folder instead of the compiler's "no input files", thrice."""
    calls = []
    monkeypatch.setattr(native, "_compiler", lambda: "cc")   # found or not: none runs
    monkeypatch.setattr(native, "FOLDER", str(tmp_path))   # no .c or .h in it
    monkeypatch.setattr(native, "_build", lambda *a: calls.append(a))
    assert native.load() is None
    assert native.status().startswith(f"no C source in {tmp_path}"), native.status()
    assert "reinstall" in native.status() and calls == []


def _running(pid: int) -> bool:
    """Whether ``pid`` lives and is not a zombie (killed, waiting for an init that a
    container may not have to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:   # no /proc: ask the process table
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def test_a_cached_library_that_matches_its_hash_but_does_not_load_is_rebuilt(cache):
    """Garbage recorded with its own hash (a toolchain broken when it was built): each
    flag set's library is rebuilt once and loads; the garbage is gone."""
    _needs_compiler()
    assert native.load() is not None, native.status()
    libs = sorted(p for p in cache.iterdir() if p.suffix == ".so")
    native.reset()
    for lib in libs:   # not mapped by this test's load: replaced, not written in place
        garbage = lib.with_suffix(".tmp")
        garbage.write_bytes(b"not a shared library")
        os.replace(garbage, lib)
        (cache / (lib.name + ".sha256")).write_text(native._sha256(str(lib)) + "\n")
    assert native.load() is not None, native.status()
    for lib in libs:
        assert lib.read_bytes()[:4] == b"\x7fELF"


def test_an_openmp_library_that_matches_its_hash_but_does_not_load_is_rebuilt(cache,
                                                                             monkeypatch):
    """A shared library recorded with its own hash that dlopen refuses (one that needs
    another machine's libraries, through a shared cache): the OpenMP build is rebuilt
    once and loads. It was kept, and every later process took the build without OpenMP,
    with no warning."""
    _needs_compiler()
    assert native.load() is not None, native.status()
    if not native.status().startswith("loaded: OpenMP"):
        pytest.skip(f"no OpenMP build here: {native.status()}")
    source, cc = native.read_sources(), native._compiler()
    built = native.library_path(source, cc, native._OPENMP_FLAGS)
    # another folder: this process has the built path loaded, and dlopen of a loaded
    # path's name hands back that library without opening the file
    other = cache.parent / "shared cache"
    other.mkdir()
    monkeypatch.setenv("FASTVAE_CACHE_DIR", str(other))
    lib = native.library_path(source, cc, native._OPENMP_FLAGS)
    with open(built, "rb") as f:
        data = f.read()
    needs_missing = data.replace(b"libc.so.6\0", b"libX.so.6\0", 1)
    assert needs_missing != data
    with open(lib, "wb") as f:
        f.write(needs_missing)
    with open(lib + ".sha256", "w") as f:
        f.write(native._sha256(lib) + "\n")
    native.reset()
    assert native.load() is not None, native.status()
    assert native.status().startswith("loaded: OpenMP"), native.status()
    assert native._sha256(lib) == native._sha256(built)


def test_a_cache_folder_that_cannot_take_the_build_builds_for_the_process(cache, monkeypatch):
    """A full disk (ENOSPC) while the build writes into the cache: built in a temporary
    folder of the process's own, with the warning an unwritable cache gives."""
    _needs_compiler()
    real = native._build

    def full(sources, cc, flags, path):
        if os.path.dirname(path) == str(cache):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real(sources, cc, flags, path)

    monkeypatch.setattr(native, "_build", full)
    monkeypatch.setattr(native.native_cache, "_cache_warned", False)
    with pytest.warns(RuntimeWarning, match="cannot write the C kernels' cache folder"):
        assert native.load() is not None, native.status()
    x, logits = torch.rand(4, 64), torch.randn(4, 64)
    assert native.usable(x, logits)


@pytest.mark.skipif(os.name != "posix", reason="a shell script as the compiler")
def test_a_compiler_that_may_not_run_is_not_taken_for_an_unwritable_cache(cache, tmp_path,
                                                                         monkeypatch):
    """A compiler whose start fails with EACCES (its interpreter may not run, or it lies on
    a noexec mount) was taken for a cache folder that cannot be written: a warning naming
    the cache folder, and every build tried again in a temporary folder."""
    interpreter, cc = tmp_path / "interpreter", tmp_path / "cc_denied"
    interpreter.write_text("")   # not executable: execve fails with EACCES
    cc.write_text(f"#!{interpreter}\n")
    cc.chmod(cc.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setattr(native.native_cache, "_cache_warned", False)
    folders = []
    real = native._build
    monkeypatch.setattr(native, "_build", lambda *a: folders.append(os.path.dirname(a[3]))
                        or real(*a))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.load() is None
    assert "cannot run the compiler" in native.status(), native.status()
    assert "Permission denied" in native.status(), native.status()
    assert folders and set(folders) == {str(cache)}, folders


def test_a_cache_folder_mounted_noexec_builds_in_a_temporary_folder(cache, monkeypatch):
    """A library built on a noexec mount verifies, then fails to map (each flag set built
    twice, in every process, before the aten path): the cache folder is passed over, and
    where the temporary folder is noexec too nothing is built."""
    _needs_compiler()
    monkeypatch.setattr(native.native_cache, "runs_code", lambda d: d != str(cache))
    monkeypatch.setattr(native.native_cache, "_cache_warned", False)
    made = []
    real = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda **k: made.append(real(**k)) or made[-1])
    with pytest.warns(RuntimeWarning, match=f"cache folder {cache} is on a file system mounted "
                      "noexec.*FASTVAE_CACHE_DIR to a writable folder on a file system that "
                      "allows running code"):
        assert native.load() is not None, native.status()
    assert not any(cache.iterdir())
    # one folder for the load (its probe and every build), gone once loaded
    folders = [d for d in made if os.path.basename(d).startswith("fastvae-")]
    assert len(folders) == 1 and not os.path.exists(folders[0]), made


def test_no_folder_that_runs_code_builds_nothing(cache, monkeypatch):
    monkeypatch.setattr(native.native_cache, "runs_code", lambda d: False)
    monkeypatch.setattr(native, "_build", lambda *a: pytest.fail("built"))
    assert native.load() is None
    assert native.status() == (
        f"the C kernels' cache folder {cache} is on a file system mounted noexec, and the "
        f"temporary folder {tempfile.gettempdir()} is mounted noexec (set FASTVAE_CACHE_DIR "
        "to a writable folder on a file system that allows running code)")
    x, logits, mu, lv = torch.rand(3, 5), torch.randn(3, 5), torch.randn(3, 2), torch.randn(3, 2)
    assert fastvae.elbo(x, logits, mu, lv, backend="torch").isfinite()   # on aten


def test_a_relative_xdg_cache_home_is_ignored(monkeypatch, tmp_path):
    monkeypatch.delenv("FASTVAE_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", "relcache")
    assert native.native_cache.cache_dir() == str(tmp_path / "home" / ".cache" / "fastvae")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert native.native_cache.cache_dir() == str(tmp_path / "xdg" / "fastvae")


@pytest.mark.parametrize("home", [None, "relhome"])
def test_no_home_folder_builds_for_the_process(monkeypatch, tmp_path, home):
    """$HOME unset with no passwd entry for the user (a container run as an unnamed
    user), or relative: "~/.cache" stayed unexpanded, and the cache became a folder
    named "~" (or relhome) in the current folder, a new one in each folder a process
    started in, with no word said."""
    import pwd
    monkeypatch.delenv("FASTVAE_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    if home is None:
        monkeypatch.delenv("HOME", raising=False)
    else:
        monkeypatch.setenv("HOME", home)

    def no_entry(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid}")
    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(native.native_cache, "_cache_warned", False)
    try:
        # the cause named, not "cannot write" a folder that was never the problem
        with pytest.warns(RuntimeWarning, match="no home folder for the C kernels' cache "
                          r"\(HOME is unset or relative.*FASTVAE_CACHE_DIR"):
            d = native.native_cache.cache_dir()
        assert os.path.isabs(d) and not d.startswith(str(tmp_path)), d
        assert list(tmp_path.iterdir()) == []
    finally:
        native.native_cache.drop_temporary()


def test_cpus_without_a_flags_line_are_told_apart_and_clock_speeds_are_not(tmp_path):
    def cpu(text):
        f = tmp_path / "cpuinfo"
        f.write_text(text)
        return native._cpu_id(str(f))

    arm = "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd {}\nCPU implementer\t: 0x41\n"
    assert cpu(arm.format("")) != cpu(arm.format("sve"))
    x86 = "processor\t: 0\ncpu MHz\t\t: {}\nmodel name\t: EPYC\nflags\t\t: sse avx2\n"
    assert cpu(x86.format("2400.0")) == cpu(x86.format("3100.5")) != ""
