"""Under torchrun every epoch visits the data in a new order (DistributedSampler's order
depends on the epoch given to it), as a single process reshuffles each epoch."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest


def test_each_epoch_under_torchrun_has_its_own_order(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun not installed next to this python")
    log = tmp_path / "orders"
    script = tmp_path / "wrapped.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        import fastvae.train as T
        real = T._train_epoch
        def epoch(run, model, guard, train_x, order, ep, is_main):
            if is_main:
                with open({str(log)!r}, "a") as f:
                    f.write(",".join(map(str, order[:20].tolist())) + "\\n")
            return real(run, model, guard, train_x, order, ep, is_main)
        T._train_epoch = epoch
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
    first, second = log.read_text().split()
    assert first != second
