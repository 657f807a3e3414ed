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
