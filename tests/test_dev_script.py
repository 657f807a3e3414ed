"""The ``./dev`` script's own handling, checked without installing anything: where it runs
from and what it says. Nothing here builds an environment."""
from __future__ import annotations

import os
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
