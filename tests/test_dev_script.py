"""The ``./dev`` script's own handling, checked without installing anything: where it runs
from and what it says. Nothing here builds an environment."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "dev"


def run(args, cwd, dev=DEV, env=None):
    """``dev args`` run in ``cwd``; ``dev`` may be a path relative to ``cwd``."""
    return subprocess.run([str(dev), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("how", ["relative path from another folder", "symlink"])
def test_help_from_anywhere(tmp_path, how):
    """Called from another folder by a relative path, or through a symlink, ``./dev`` still
    finds its checkout (it read its help from, and hashed the packaging files of, the wrong
    folder before)."""
    if how == "symlink":
        dev = tmp_path / "dev"
        dev.symlink_to(DEV)
    else:
        dev = os.path.relpath(DEV, tmp_path)
    r = run(["--help"], tmp_path, dev)
    assert r.returncode == 0, r.stderr
    assert "./dev train" in r.stdout and "./dev test" in r.stdout
    assert r.stderr == ""


@pytest.mark.parametrize("args", [[], ["bogus"], ["--tset"]])
def test_no_or_unknown_command_is_a_usage_error(tmp_path, args):
    """No command, or one it doesn't know: a usage line on stderr and exit status 2 (a bare
    ``./dev`` printed the help and succeeded; an unknown one exited 1), before any setup."""
    r = run(args, tmp_path)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert lines[-1].startswith("usage: ./dev {train|test|bench|setup}")
    assert len(lines) == (2 if args else 1)
    if args:
        assert f"unknown command '{args[0]}'" in lines[0]


@pytest.mark.parametrize("flag", ["--help", "-h", "help"])
def test_help_succeeds(tmp_path, flag):
    r = run([flag], tmp_path)
    assert r.returncode == 0 and r.stderr == ""
    assert all(f"./dev {cmd}" in r.stdout for cmd in ("train", "test", "bench", "setup"))
    # the whole header comment, and no code after it
    assert "PYTHON picks" in r.stdout and "set -e" not in r.stdout


# A stand-in for .venv/bin/python that installs nothing: it logs each call (folder, arguments,
# the variables setup should not pass on) to calls.log beside dev, and acts the part: pip is
# there once ensurepip ran (or .venv/bin/pip exists), torch is never importable, and an install
# into --target puts a triton package there (only its __init__.py, then fails, where
# FAKE_TRITON_FAILS is set: a pip killed midway). With FAKE_PIP_SECONDS each install takes
# that long, and one that starts while another runs is logged to overlaps.log.
_FAKE_PYTHON = r"""#!/usr/bin/env bash
bin=$(cd "$(dirname "$0")" && pwd)
echo "cwd=$PWD PYTHONPATH=${PYTHONPATH-} PIP_USER=${PIP_USER-} args=$*" >> "$bin/../../calls.log"
if [ -n "${FAKE_PIP_SECONDS-}" ] && [[ "$*" == "-m pip install "* ]]; then
  mkdir "$bin/../pip-busy" 2>/dev/null || echo "$*" >> "$bin/../../overlaps.log"
  sleep "$FAKE_PIP_SECONDS"
  rmdir "$bin/../pip-busy" 2>/dev/null || true
fi
case "$*" in
  "-m pip --version") [ -e "$bin/pip" ] ;;
  "-m ensurepip "*) touch "$bin/pip" ;;
  "-c import torch") exit 1 ;;
  *" --target "*) while [ "$1" != --target ]; do shift; done
    mkdir -p "$2/triton" && touch "$2/triton/__init__.py"
    [ -z "${FAKE_TRITON_FAILS-}" ] || exit 1 ;;
esac
"""


@pytest.fixture
def checkout(tmp_path):
    """A copy of dev and the packaging files it hashes, with a .venv whose python is the
    stand-in above (and whose pip is missing, as in a venv cut short)."""
    root = tmp_path / "checkout"
    root.mkdir()
    for name in ("dev", "pyproject.toml", "setup.py"):
        shutil.copy2(ROOT / name, root / name)
    bin_ = root / ".venv" / "bin"
    bin_.mkdir(parents=True)
    (bin_ / "python").write_text(_FAKE_PYTHON)
    (bin_ / "python").chmod(0o755)
    return root


def calls(root):
    log = root / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def test_setup_puts_pip_into_a_venv_cut_short(checkout):
    """A .venv with its python but no pip (./dev setup stopped while the venv ran ensurepip)
    gets its pip, then the packages; ./dev used to call .venv/bin/pip and fail on every run."""
    r = run(["setup"], checkout, checkout / "dev")
    assert r.returncode == 0, r.stderr
    args = [c.split(" args=")[1] for c in calls(checkout)]
    assert args[:2] == ["-m pip --version", "-m ensurepip --upgrade --default-pip"]
    assert "-m pip install -q torch==2.13.0" in args and "-m pip install -q -e .[dev]" in args
    assert (checkout / ".venv" / ".fastvae-setup").exists()
    # A second run on the finished environment calls nothing.
    (checkout / "calls.log").unlink()
    r = run(["setup"], checkout, checkout / "dev")
    assert r.returncode == 0, r.stderr
    assert calls(checkout) == []


def test_setup_ignores_the_callers_python_path_and_pip_redirections(checkout):
    """With PYTHONPATH naming another environment, pip counted its torch as installed and
    .venv was left without one (then stamped as done); PIP_USER=1 made every install fail."""
    env = dict(os.environ, PYTHONPATH="/somewhere/site-packages", PIP_USER="1")
    r = run(["setup"], checkout, checkout / "dev", env=env)
    assert r.returncode == 0, r.stderr
    assert calls(checkout)
    assert all("PYTHONPATH= PIP_USER=0 " in c for c in calls(checkout))


@pytest.mark.parametrize("cmd", ["train", "bench", "test"])
def test_commands_run_where_their_paths_mean_what_the_caller_meant(checkout, tmp_path, cmd):
    """``train`` and ``bench`` run in the caller's folder, so ``--out run`` lands there as it
    does for ``fastvae train`` (it landed in the checkout); ``test`` runs the checkout's suite.
    Their arguments pass through untouched."""
    assert run(["setup"], checkout, checkout / "dev").returncode == 0
    fastvae = checkout / ".venv" / "bin" / "fastvae"
    fastvae.write_text('#!/usr/bin/env bash\necho "cwd=$PWD args=$*"\n')
    fastvae.chmod(0o755)
    elsewhere = tmp_path / "elsewhere dir"
    elsewhere.mkdir()
    r = run([cmd, "--out", "my run", "-k", "x y"], elsewhere, checkout / "dev")
    assert r.returncode == 0, r.stderr
    if cmd == "test":
        assert calls(checkout)[-1].startswith(f"cwd={checkout} ")
        assert calls(checkout)[-1].endswith("args=-m pytest tests --out my run -k x y")
    else:
        assert r.stdout == f"cwd={elsewhere} args={cmd} --out my run -k x y\n"


@pytest.mark.parametrize("have_311, python, made_by", [
    (True, None, "python3.11"), (False, None, "python3"), (True, "python3", "python3")])
def test_venv_python_prefers_311(checkout, tmp_path, have_311, python, made_by):
    """.venv is built by python3.11 where one runs (the default torch==2.13.0 on the project
    machines' disk is a cp311 file; a python3.12 first on PATH made pip download a 526 MB
    CUDA wheel and its CUDA libraries), by python3 without one, by $PYTHON where it is set."""
    shutil.rmtree(checkout / ".venv")
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    fake = bin_ / "fake-python"
    fake.write_text(_FAKE_PYTHON)
    fake.chmod(0o755)
    for name in ["python3"] + (["python3.11"] if have_311 else []):
        (bin_ / name).write_text(
            "#!/usr/bin/env bash\n"
            f'[ "$1" = -m ] && [ "$2" = venv ] || exit 0\n'
            f'mkdir -p "$3/bin" && cp {fake} "$3/bin/python" && echo {name} > "$3/made-by"\n')
        (bin_ / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    for tool in ("env", "bash", "readlink", "dirname", "cat", "sha256sum", "cut", "sed", "rm",
                 "mkdir", "cp", "touch", "mv"):   # what dev and the fakes call, and no real python
        (bin_ / tool).symlink_to(shutil.which(tool))
    env["PATH"] = str(bin_)
    if python:
        env["PYTHON"] = python
    r = run(["setup"], checkout, checkout / "dev", env=env)
    assert r.returncode == 0, r.stderr
    assert (checkout / ".venv" / "made-by").read_text().strip() == made_by


def test_a_venv_that_fails_is_removed_and_said(checkout, tmp_path):
    """A Python without its venv package makes bin/python and fails: the half-made .venv
    was then taken for built by every later setup, PYTHON=... included."""
    shutil.rmtree(checkout / ".venv")
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "python3").write_text('#!/usr/bin/env bash\nmkdir -p "$3/bin" && '
                                  'touch "$3/bin/python" && chmod +x "$3/bin/python"; exit 1\n')
    (bin_ / "python3").chmod(0o755)
    for tool in ("env", "bash", "readlink", "dirname", "cat", "sha256sum", "cut", "rm", "mkdir",
                 "touch", "chmod"):
        (bin_ / tool).symlink_to(shutil.which(tool))
    env = dict({k: v for k, v in os.environ.items() if k != "PYTHON"}, PATH=str(bin_))
    r = run(["setup"], checkout, checkout / "dev", env=env)
    assert r.returncode == 1
    assert "dev setup: python3 -m venv failed" in r.stderr.splitlines()[-1]
    assert not (checkout / ".venv").exists()


def test_two_setups_at_once_take_turns(checkout):
    """``./dev test`` and ``./dev train`` started together on a fresh checkout both ran pip
    into the one .venv at once; the second now waits, says so, and finds it all built."""
    env = dict(os.environ, FAKE_PIP_SECONDS="0.3")
    procs = [subprocess.Popen([str(checkout / "dev"), "setup"], cwd=checkout, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errs = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert not (checkout / "overlaps.log").exists()
    args = [c.split(" args=")[1] for c in calls(checkout)]
    assert args.count("-m pip install -q -e .[dev]") == 1
    assert sum("waiting for it to finish" in e for e in errs) == 1


def test_setup_without_flock_goes_on_unlocked(checkout, tmp_path):
    """flock is util-linux's (macOS has none): without it setup says it takes no lock and
    builds as before."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for tool in ("env", "bash", "readlink", "dirname", "cat", "sha256sum", "cut", "rm",
                 "mkdir", "touch", "mv"):
        (bin_ / tool).symlink_to(shutil.which(tool))
    r = run(["setup"], checkout, checkout / "dev", env=dict(os.environ, PATH=str(bin_)))
    assert r.returncode == 0, r.stderr
    assert "dev setup: no flock here, so no lock" in r.stderr
    assert (checkout / ".triton36" / ".fastvae-ready").read_text() == "3.6.0\n"


def test_a_lock_that_fails_is_no_busy_lock(checkout, tmp_path):
    """flock failing for another reason than a lock held (a file system without locks)
    was said as another ./dev setting up, then the blocking flock failed and stopped
    setup: it says it cannot lock and builds unlocked."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    fake = bin_ / "flock"
    fake.write_text("#!/bin/sh\necho 'flock: 9: Operation not supported' >&2\nexit 1\n")
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_}{os.pathsep}{os.environ['PATH']}")
    r = run(["setup"], checkout, checkout / "dev", env=env)
    assert r.returncode == 0, r.stderr
    assert "could not lock .dev-setup.lock, so no lock" in r.stderr
    assert "waiting for it to finish" not in r.stderr
    assert (checkout / ".triton36" / ".fastvae-ready").read_text() == "3.6.0\n"


@pytest.mark.parametrize("left", ["a pip killed midway", "another version"])
def test_a_triton36_not_finished_is_installed_again(checkout, left):
    """.triton36 counted as ready once it had triton/__init__.py, which a pip killed midway
    leaves too (every later setup then kept the broken target): it is ready once pip
    finished installing this version into it."""
    assert run(["setup"], checkout, checkout / "dev").returncode == 0
    target = checkout / ".triton36"
    if left == "a pip killed midway":
        shutil.rmtree(target)
        (target / "triton").mkdir(parents=True)
        (target / "triton" / "__init__.py").touch()
    else:
        (target / ".fastvae-ready").write_text("3.5.0\n")
    (checkout / "calls.log").unlink()
    r = run(["setup"], checkout, checkout / "dev")
    assert r.returncode == 0, r.stderr
    assert [c.split(" args=")[1] for c in calls(checkout)] == [
        "-m pip install -q --no-deps --target .triton36.part triton==3.6.0"]
    assert (target / ".fastvae-ready").read_text() == "3.6.0\n"
    assert not (checkout / ".triton36.part").exists()


def test_a_failed_triton36_install_is_not_taken_for_done(checkout):
    """pip failing midway is said, leaves no part of its target behind and what .triton36
    held in place (an unmarked one from before, say: no reinstall can then take the last
    Triton 3.6 an offline machine had), and is tried again by the next setup."""
    old = checkout / ".triton36" / "triton"
    old.mkdir(parents=True)
    (old / "__init__.py").touch()
    r = run(["setup"], checkout, checkout / "dev", env=dict(os.environ, FAKE_TRITON_FAILS="1"))
    assert r.returncode == 0, r.stderr
    assert "could not install triton==3.6.0" in r.stderr
    assert (old / "__init__.py").exists() and not (checkout / ".triton36.part").exists()
    assert not (checkout / ".triton36" / ".fastvae-ready").exists()
    (checkout / "calls.log").unlink()
    assert run(["setup"], checkout, checkout / "dev").returncode == 0
    assert [c.split(" args=")[1] for c in calls(checkout)] == [
        "-m pip install -q --no-deps --target .triton36.part triton==3.6.0"]
    assert (checkout / ".triton36" / ".fastvae-ready").exists()


def test_a_finished_triton36_not_yet_moved_in_is_moved_in(checkout):
    """Setup stopped while it removed the old .triton36, after pip finished the new one
    beside it: the next setup removed that finished copy to install again, which offline
    left no Triton 3.6 at all. It is moved in, with no pip call."""
    assert run(["setup"], checkout, checkout / "dev").returncode == 0
    target = checkout / ".triton36"
    target.rename(checkout / ".triton36.part")
    (target / "triton").mkdir(parents=True)   # what the removal left of the old one
    (checkout / "calls.log").unlink()
    r = run(["setup"], checkout, checkout / "dev", env=dict(os.environ, FAKE_TRITON_FAILS="1"))
    assert r.returncode == 0, r.stderr
    assert calls(checkout) == [] and "could not install" not in r.stderr
    assert (target / ".fastvae-ready").read_text() == "3.6.0\n"
    assert (target / "triton" / "__init__.py").exists()
    assert not (checkout / ".triton36.part").exists()


@pytest.mark.parametrize("whole", [True, False])
def test_a_triton36_from_before_the_marker_is_kept_if_pip_finished_it(checkout, whole):
    """A checkout set up before the marker existed has a .triton36 without it: one whose
    RECORD (pip writes it after every file) lists only files that are there is taken as
    it is, with no pip call (offline, each setup would otherwise try pip again); one that
    lacks a listed file is installed again."""
    dist = checkout / ".triton36" / "triton-3.6.0.dist-info"
    pkg = checkout / ".triton36" / "triton"
    dist.mkdir(parents=True)
    pkg.mkdir()
    (pkg / "__init__.py").touch()
    listed = ["triton/__init__.py", "triton/language.py", "triton-3.6.0.dist-info/RECORD"]
    if whole:
        (pkg / "language.py").touch()
    (dist / "RECORD").write_text(
        "../../bin/proton,sha256=x,1\n" + "".join(f"{f},sha256=y,0\n" for f in listed))
    r = run(["setup"], checkout, checkout / "dev")
    assert r.returncode == 0, r.stderr
    pip36 = [c for c in calls(checkout) if "triton==3.6.0" in c]
    assert pip36 == [] if whole else len(pip36) == 1
    assert (checkout / ".triton36" / ".fastvae-ready").read_text() == "3.6.0\n"
