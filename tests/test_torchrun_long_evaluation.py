"""Under torchrun rank 0 alone evaluates the test set (the untrained model's, each
epoch's) while the other ranks wait: in the default group that wait was bounded by its
timeout (NCCL's 10 minutes, gloo's 30), past which a long evaluation ended the run as a
lost peer. They wait, as for the final estimate, in a group of their own."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest


def test_an_evaluation_longer_than_the_group_timeout_is_waited_for(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun not installed next to this python")
    script = tmp_path / "wrapped.py"
    # the default group's timeout 5 s, each evaluation 7 s: the untrained model's (in
    # ranks.together) and the epoch's (ranks.from_rank_0)
    script.write_text(textwrap.dedent("""
        import datetime, sys, time
        import torch
        from fastvae import ranks
        import fastvae.train as T

        def init_group(backend):
            import torch.distributed.nn.functional  # noqa: F401
            torch.distributed.init_process_group(backend,
                                                 timeout=datetime.timedelta(seconds=5))
        ranks.init_group = init_group
        real = T.evaluate

        def slow(*args):
            time.sleep(7)
            return real(*args)
        T.evaluate = slow
        from fastvae.cli import console
        sys.exit(console(sys.argv[1:]))
    """))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", str(script), "train",
                        "--epochs", "1", "--hidden", "16", "--latent", "2", "--iwae-k", "0",
                        "--batch-size", "256", "--no-progress", "--device", "cpu",
                        "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=240,
                       env=dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp)))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
