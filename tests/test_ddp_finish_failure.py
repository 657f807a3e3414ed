"""Rank 0 failing at the end of ``fastvae train`` under torchrun (the final estimate, the
pictures, metrics.json: a full disk) stops the other ranks as its failure, said once:
they each reported a lost peer, exited 1 where rank 0 exited 2, and torchrun named one
of them as the first failure."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest


def test_rank_0_failing_to_finish_is_said_once_and_every_rank_exits_alike(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun not installed next to this python")
    script = tmp_path / "wrapped.py"
    script.write_text(textwrap.dedent("""
        import sys
        import fastvae.train as T
        def finish(*args):
            raise OSError(28, "No space left on device", "metrics.json")
        T.finish = finish
        from fastvae.cli import main
        sys.exit(main(sys.argv[1:]))
    """))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp))
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", str(script), "train",
                        "--epochs", "1", "--hidden", "16", "--latent", "2", "--batch-size",
                        "256", "--iwae-k", "0", "--no-progress", "--device", "cpu", "--out",
                        str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode != 0
    said = [line for line in r.stderr.splitlines() if "fastvae train:" in line]
    assert len(said) == 1 and "No space left on device" in said[0], r.stderr[-3000:]
    codes = [line.split(":")[1].split()[0] for line in r.stderr.splitlines()
             if line.strip().startswith("exitcode")]
    # 1: a lost peer's code (rank 0's teardown may still meet torchrun's SIGTERM)
    assert len(codes) == 2 and "1" not in codes, r.stderr[-3000:]
