"""Under torchrun rank 0 alone writes checkpoint.pt: other ranks would write the same
file at once, into a folder they hold no lock on. `fastvae train` runs under torchrun with
save_checkpoint wrapped to log the rank."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest


def test_only_rank_0_writes_the_checkpoint(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun not installed next to this python")
    log = tmp_path / "saves"
    script = tmp_path / "wrapped.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        import fastvae.train as T
        real = T.save_checkpoint
        def save(state, path):
            with open({str(log)!r}, "a") as f:
                f.write(os.environ["RANK"] + "\\n")
            return real(state, path)
        T.save_checkpoint = save
        from fastvae.cli import main
        sys.exit(main(sys.argv[1:]))
    """))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp))
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", str(script), "train",
                        "--epochs", "2", "--hidden", "16", "--latent", "2", "--batch-size",
                        "256", "--iwae-k", "0", "--no-progress", "--device", "cpu", "--out",
                        str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert log.read_text().split() == ["0", "0"]
