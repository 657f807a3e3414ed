"""A SIGTERM that reaches one rank of ``fastvae train`` under torchrun alone (a kill of its
pid, a scheduler's stop on its node): that rank says so in one line, named by its rank (a
rank other than 0 died without a word, torchrun's exit code 143 the only trace), and rank 0
stops too, saying so, instead of waiting."""
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest


def test_a_sigterm_to_rank_1_alone_is_said_by_it_and_stops_rank_0(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun not installed next to this python")
    script = tmp_path / "wrapped.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        with open({str(tmp_path)!r} + "/pid." + os.environ["RANK"], "w") as f:
            f.write(str(os.getpid()))
        from fastvae.cli import console
        sys.exit(console(sys.argv[1:]))
    """))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    run = tmp_path / "run"
    p = subprocess.Popen([torchrun, "--standalone", "--nproc_per_node=2", str(script), "train",
                          "--epochs", "1000", "--hidden", "16", "--latent", "2",
                          "--batch-size", "256", "--iwae-k", "0", "--no-progress",
                          "--device", "cpu", "--out", str(run)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp)))
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoint.pt").is_file() and p.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        os.kill(int((tmp_path / "pid.1").read_text()), signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    said = [line for line in err.splitlines() if "fastvae train:" in line]
    resume = f"`torchrun --nproc_per_node=2 -m fastvae train --resume --out {run} --epochs 1000`"
    assert len(said) == 2, err[-3000:]
    assert said[0 if said[0].startswith("[rank 1]") else 1] == (
        f"[rank 1] fastvae train: terminated (SIGTERM); the last checkpoint in {run} is "
        f"intact: {resume} (with its other torchrun flags) continues the run"), err[-3000:]
    # its collective's lost peer, most often; torchrun's own SIGTERM, if that comes first
    assert any(line.startswith(("fastvae train: error: another process of the run failed or "
                                "was stopped", "fastvae train: terminated (SIGTERM)"))
               for line in said), err[-3000:]
