"""Errors every rank of ``fastvae train`` under torchrun meets alike, said once by rank 0,
with every rank exiting alike: the checks of the data after it is read and of the model
before training, a non-finite test ELBO at an epoch's end (every rank printed them, one
prefixed ``[rank 1]``), and rank 0 failing
at the end (the final estimate, the pictures, metrics.json: a full disk), where each
other rank reported a lost peer, exited 1, and torchrun named it as the first failure."""
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest


def _torchrun(tmp_path, script, *flags):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun not installed next to this python")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp))
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", *script, "train",
                        "--epochs", "1", "--hidden", "16", "--latent", "2", "--iwae-k", "0",
                        "--no-progress", "--device", "cpu", "--out", str(tmp_path / "run"),
                        *flags], capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode != 0
    said = [line for line in r.stderr.splitlines() if "fastvae train:" in line]
    codes = [line.split(":")[1].split()[0] for line in r.stderr.splitlines()
             if line.strip().startswith("exitcode")]
    # 1: a lost peer's code (rank 0's teardown may still meet torchrun's SIGTERM)
    assert len(codes) == 2 and "1" not in codes, r.stderr[-3000:]
    assert len(said) == 1, r.stderr[-3000:]
    return said[0]


@pytest.mark.parametrize("likelihood,named", [("bernoulli", "needs pixels in [0, 1]"),
                                              ("gaussian", "untrained model's test ELBO")])
def test_data_or_a_model_every_rank_finds_wrong_is_said_once(tmp_path, likelihood, named):
    np.save(tmp_path / "huge.npy", np.full((8, 4, 4), 1e25, np.float32))
    line = _torchrun(tmp_path, ["-m", "fastvae"], "--dataset", str(tmp_path / "huge.npy"),
                     "--likelihood", likelihood, "--batch-size", "4")
    assert named in line and not line.startswith("[rank"), line


def test_rank_0_failing_to_finish_is_said_once_and_every_rank_exits_alike(tmp_path):
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
    line = _torchrun(tmp_path, [str(script)], "--batch-size", "256")
    assert "No space left on device" in line


def test_a_non_finite_test_elbo_every_rank_finds_is_said_once(tmp_path):
    # rank 0 evaluates the weights DDP keeps equal and hands every rank its numbers
    script = tmp_path / "wrapped.py"
    script.write_text(textwrap.dedent("""
        import sys
        import fastvae.train as T
        real, calls = T.evaluate, []
        def evaluate(*args, **kwargs):
            calls.append(1)
            m = real(*args, **kwargs)
            return dict(m, elbo=float("nan")) if len(calls) > 1 else m
        T.evaluate = evaluate
        from fastvae.cli import main
        sys.exit(main(sys.argv[1:]))
    """))
    line = _torchrun(tmp_path, [str(script)], "--batch-size", "256")
    assert "training stopped: non-finite test elbo" in line and not line.startswith("[rank")
