"""--resume of a checkpoint that cannot be continued: none there, a part missing, or no epochs
left to train (refused, nothing changed); at its own epochs it finishes a run stopped before
its metrics were written."""
import json

import numpy as np
import pytest

from fastvae import cli
from fastvae.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint

from _checkpoint import copy_run, one_error_line


@pytest.mark.parametrize("key", ["optimizer", "rng", "history"])
def test_resume_from_a_checkpoint_missing_a_part(good_run, tmp_path, capsys, key):
    state = load_checkpoint(good_run)
    del state[key]
    save_checkpoint(state, tmp_path / CHECKPOINT_NAME)  # well-formed, checksum and all
    assert load_checkpoint(tmp_path)["epoch"] == 1       # eval/sample need only the weights
    assert cli.main(["train", "--out", str(tmp_path), "--resume", "--epochs", "2",
                     "--no-progress", "--iwae-k", "0"]) == 2
    one_error_line(capsys, tmp_path / CHECKPOINT_NAME, key)


@pytest.mark.parametrize("done,epochs", [(1, "1"), (3, "2")])
def test_resume_to_no_more_epochs_is_refused_and_changes_nothing(good_run, tmp_path, capsys,
                                                                done, epochs):
    run = copy_run(good_run, tmp_path / "run")
    (run / "metrics.json").write_bytes((good_run / "metrics.json").read_bytes())
    if done != 1:  # as if it had trained more, without the time it takes
        save_checkpoint(dict(load_checkpoint(run), epoch=done), run / CHECKPOINT_NAME)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert cli.main(["train", "--out", str(run), "--resume", "--epochs", epochs,
                     "--no-progress"]) == 2
    one_error_line(capsys, f"--epochs {epochs}:", f"already trained {done} epoch",
                   f"must exceed {done}")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


@pytest.mark.parametrize("same_epochs", [True, False])
def test_resume_at_the_same_epochs_finishes_a_run_stopped_before_its_metrics(good_run, tmp_path,
                                                                            same_epochs):
    """A run stopped after its last epoch's checkpoint (Ctrl-C in the final IWAE estimate, a
    full disk at the pictures) has no metrics.json: --resume with the same --epochs, or with
    none (the run's own), writes the final estimate, pictures and metrics.json, trains
    nothing and keeps the checkpoint; once finished, the same command is refused."""
    run = copy_run(good_run, tmp_path / "run")
    ckpt = (run / CHECKPOINT_NAME).read_bytes()
    done = load_checkpoint(run)["epoch"]
    argv = ["train", "--out", str(run), "--resume", "--no-progress", "--iwae-k", "0"]
    argv += ["--epochs", str(done)] if same_epochs else []
    assert cli.main(argv) == 0
    got = json.loads((run / "metrics.json").read_text())
    want = json.loads((good_run / "metrics.json").read_text())
    got["final"].pop("iwae_s"), want["final"].pop("iwae_s")
    assert got["epochs"] == want["epochs"] and got["final"] == want["final"]
    assert (run / "curves.png").is_file() and (run / CHECKPOINT_NAME).read_bytes() == ckpt
    assert cli.main(argv) == 2


def test_resume_without_a_checkpoint_says_to_drop_resume_not_a_digits_command(tmp_path, capsys):
    """`fastvae train --out DIR` would train digits, not the array file this run reads."""
    data = tmp_path / "images.npy"
    np.save(data, np.random.default_rng(0).random((40, 4, 4), dtype=np.float32))
    run = tmp_path / "run"
    run.mkdir()
    argv = ["train", "--dataset", str(data), "--out", str(run), "--resume", "--no-progress"]
    assert cli.main(argv) == 2
    line = one_error_line(capsys, "start the run with this command without --resume")
    assert "fastvae train --out" not in line and f"no checkpoint at {run}" in line
    (run / "samples.png").write_bytes(b"x")   # a fresh run there would be refused too
    assert cli.main(argv) == 2
    one_error_line(capsys, "in another folder: this command without --resume, with another --out")
