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
    said = _torchrun.said(r.stderr)
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


def test_torchrun_s_report_of_a_rank_stopped_by_rank_0_s_error_names_that_error(tmp_path):
    """Rank 0's error that the command does not word (a traceback), in a check every rank
    shares: rank 1, stopped by it, returns first, and torchrun named it the root cause
    (exit code 2, no message), rank 0's traceback left to its list of other failures, or
    rank 0 stopped by torchrun's SIGTERM while it printed it. Rank 1's entry says why."""
    script = _torchrun.command(tmp_path, """
        import fastvae.train as T
        real, calls = T.evaluate, []
        def evaluate(*args, **kwargs):   # the epoch's, after the untrained model's
            calls.append(1)
            if len(calls) > 1:
                raise RuntimeError("a bug of rank 0's own")
            return real(*args, **kwargs)
        T.evaluate = evaluate
    """)
    r = _torchrun.run(tmp_path, script, *_torchrun.TRAIN, "--out", tmp_path / "run")
    assert "RuntimeError: a bug of rank 0's own" in r.stderr, r.stderr[-3000:]
    entries, rank = {}, None   # torchrun's report: each failed rank's exit code and message
    for line in r.stderr.splitlines():
        key, _, value = line.strip().partition(":")
        if key.strip() == "rank":
            rank = int(value.split()[0])
        elif key.strip() in ("exitcode", "traceback") and rank is not None:
            entries.setdefault(rank, {})[key.strip()] = value.strip()
    assert 1 in entries, r.stderr[-3000:]
    if entries[1]["exitcode"].startswith("2 "):   # else torchrun stopped it, after rank 0
        assert entries[1]["traceback"] == ("[rank 1] fastvae train: error: stopped with the "
                                           "run: rank 0: RuntimeError: a bug of rank 0's own")


def test_a_rank_that_leaves_its_error_to_rank_0_leaves_word_for_torchrun(
        monkeypatch, capsys, tmp_path):
    from fastvae import cli, ranks, train as T

    def stopped(cfg, log=print):
        raise ranks.alike(ranks.RankError("stopped with the run: rank 0: OSError: full"))
    monkeypatch.setattr(T, "train", stopped)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "error.json"))
    assert cli.main(["train", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == ""   # rank 0 says it
    assert _torchrun_reads(tmp_path / "error.json") == (
        "[rank 1] fastvae train: error: stopped with the run: rank 0: OSError: full")
    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE")   # not under torchrun: nothing written
    (tmp_path / "error.json").unlink()
    assert cli.main(["train", "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "error.json").exists()


def test_a_rank_that_leaves_a_non_finite_loss_to_rank_0_leaves_word_for_torchrun(
        monkeypatch, capsys, tmp_path):
    """Exit 3's path: a non-finite loss every rank meets (averaged over the ranks) is said
    by rank 0 and left in rank 1's error file; one of rank 1's own is printed."""
    from fastvae import cli, ranks, train as T

    def stopped(cfg, log=print, alike=True):
        e = T.NonFiniteLoss("non-finite loss (nan) at epoch 1, step 3; checkpoint kept")
        raise ranks.alike(e) if alike else e
    monkeypatch.setattr(T, "train", stopped)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "error.json"))
    line = ("[rank 1] fastvae train: training stopped: non-finite loss (nan) at epoch 1, "
            "step 3; checkpoint kept")
    assert cli.main(["train", "--out", str(tmp_path / "run")]) == 3
    assert capsys.readouterr().err == ""   # rank 0 says it
    assert _torchrun_reads(tmp_path / "error.json", exitcode=3) == line
    (tmp_path / "error.json").unlink()
    monkeypatch.setattr(T, "train", lambda cfg, log=print: stopped(cfg, alike=False))
    assert cli.main(["train", "--out", str(tmp_path / "run")]) == 3
    assert capsys.readouterr().err == line + "\n"
    assert not (tmp_path / "error.json").exists()


def _torchrun_reads(path, exitcode=2) -> str:
    """The message torchrun's report shows for a rank's error file, and that torchrun takes
    the file as the root cause without a warning: for one whose message is a plain string
    it warns twice ("has a new message format", "skipping error code override") and
    cannot add the rank's exit code to it."""
    import logging

    from torch.distributed.elastic.multiprocessing.errors import (ChildFailedError,
                                                                  ProcessFailure)
    from torch.distributed.elastic.multiprocessing.errors.error_handler import ErrorHandler

    failure = ProcessFailure(local_rank=1, pid=1, exitcode=exitcode, error_file=str(path))
    assert failure.error_file == str(path) and failure.timestamp > 0
    warned = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = warned.append
    logger = logging.getLogger("torch.distributed.elastic.multiprocessing.errors.error_handler")
    logger.addHandler(handler)
    try:   # what torchrun does with its root cause's file, before it copies it
        ErrorHandler().override_error_code_in_rootcause_data(
            str(path), failure.error_file_data, failure.exitcode)
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in warned] == []
    assert failure.error_file_data["message"]["errorCode"] == exitcode
    report = ChildFailedError("fastvae", {1: failure}).format_msg()
    return report.split("traceback : ", 1)[1].splitlines()[0]
