"""What the torchrun test modules share: torchrun beside this interpreter (a test without it
is skipped), the environment its ranks run in, the fastvae command as a script with
something of train's replaced first, and a tiny training run's flags."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

# one epoch of the smallest model, on each rank's share of a global batch of 256
TRAIN = ["train", "--epochs", "1", "--hidden", "16", "--latent", "2", "--iwae-k", "0",
         "--batch-size", "256", "--no-progress", "--device", "cpu"]


def torchrun(nproc: int = 2) -> list:
    """The command line that starts ``nproc`` ranks on this machine, followed by what they
    run; skips the test where torchrun is not installed next to this python."""
    found = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if found is None:
        pytest.skip("torchrun not installed next to this python")
    return [found, "--standalone", f"--nproc_per_node={nproc}"]


def env(tmp_path) -> dict:
    """One thread a rank (a 2-core machine), and a temporary folder of the test's own:
    torchrun leaves its log folder (a ``torchelastic_*`` one) there when it exits."""
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    return dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp))


def run(tmp_path, *args, timeout: float = 240) -> subprocess.CompletedProcess:
    """``torchrun`` with 2 ranks running ``args``, its output captured."""
    return subprocess.run([*torchrun(), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env(tmp_path))


def said(stderr: str, prefix: str = "fastvae train:") -> list:
    """The lines of ``stderr`` the ranks printed that start with ``prefix`` (after a
    ``[rank N]``), not torchrun's report, which repeats a quiet rank's (ranks.leave_word)."""
    return [line for line in stderr.splitlines()
            if re.match(r"(\[rank \d+\] )?" + re.escape(prefix), line)]


def command(tmp_path, setup: str = "", name: str = "wrapped.py"):
    """A script that runs ``setup`` (replacing what a test needs replaced), then the
    fastvae command as ``torchrun -m fastvae`` does, with the script's arguments."""
    script = tmp_path / name
    script.write_text(textwrap.dedent(setup) + "\nimport sys\nfrom fastvae.cli import console\n"
                      "sys.exit(console(sys.argv[1:]))\n")
    return script
