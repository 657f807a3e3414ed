"""Errors every rank of ``fastvae train`` under torchrun meets alike, said once by rank 0,
with every rank exiting alike: the checks of the data after it is read and of the model
before training, a non-finite test ELBO at an epoch's end (every rank printed them, one
prefixed ``[rank 1]``), and rank 0 failing
at the end (the final estimate, the pictures, metrics.json: a full disk), where each
other rank reported a lost peer, exited 1, and torchrun named it as the first failure."""
import numpy as np
import pytest

import _torchrun


def _said_once(tmp_path, script, *flags):
    r = _torchrun.run(tmp_path, *script, *_torchrun.TRAIN, "--out", tmp_path / "run", *flags)
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
    line = _said_once(tmp_path, ["-m", "fastvae"], "--dataset", str(tmp_path / "huge.npy"),
                      "--likelihood", likelihood, "--batch-size", "4")
    assert named in line and not line.startswith("[rank"), line


def test_rank_0_failing_to_finish_is_said_once_and_every_rank_exits_alike(tmp_path):
    script = _torchrun.command(tmp_path, """
        import fastvae.train as T
        def finish(*args):
            raise OSError(28, "No space left on device", "metrics.json")
        T.finish = finish
    """)
    line = _said_once(tmp_path, [script])
    assert "No space left on device" in line


def test_a_non_finite_test_elbo_every_rank_finds_is_said_once(tmp_path):
    # rank 0 evaluates the weights DDP keeps equal and hands every rank its numbers
    script = _torchrun.command(tmp_path, """
        import fastvae.train as T
        real, calls = T.evaluate, []
        def evaluate(*args, **kwargs):
            calls.append(1)
            m = real(*args, **kwargs)
            return dict(m, elbo=float("nan")) if len(calls) > 1 else m
        T.evaluate = evaluate
    """)
    line = _said_once(tmp_path, [script])
    assert "training stopped: non-finite test elbo" in line and not line.startswith("[rank")
