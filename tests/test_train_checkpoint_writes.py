"""The training loop's checkpoint: it loads weights-only, a run never overwrites one, a
crash between write and rename keeps the old one, and a damaged or foreign file is refused."""
import os

import pytest
import torch

from fastvae import train as T
from fastvae.checkpoint import (CHECKPOINT_NAME, CheckpointError, load_checkpoint,
                                save_checkpoint)
from _train import quiet, tiny


def test_checkpoint_loads_weights_only_and_refuses_to_overwrite(tmp_path):
    T.train(tiny(tmp_path, epochs=1, iwae_k=0), log=quiet)
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert state["format"] == "fastvae-checkpoint" and isinstance(state["config"], dict)
    with pytest.raises(CheckpointError, match="--resume"):
        T.train(tiny(tmp_path, epochs=1), log=quiet)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        T.train(tiny(tmp_path / "empty", resume=True), log=quiet)


def test_crash_between_write_and_rename_keeps_old_checkpoint(tmp_path, monkeypatch):
    T.train(tiny(tmp_path, epochs=1, iwae_k=0), log=quiet)
    before = (tmp_path / CHECKPOINT_NAME).read_bytes()

    def killed(src, dst):
        raise KeyboardInterrupt("simulated kill between write and rename")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        T.train(tiny(tmp_path, epochs=2, resume=True), log=quiet)
    monkeypatch.undo()
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == before
    assert load_checkpoint(tmp_path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir() if "checkpoint" in p.name) == [CHECKPOINT_NAME]
    # A hard kill cannot clean up: a stray temp file must not count as the checkpoint.
    (tmp_path / ".tmp-checkpoint.pt.abc123").write_bytes(b"half a checkpoint")
    T.train(tiny(tmp_path, epochs=2, resume=True), log=quiet)
    assert load_checkpoint(tmp_path)["epoch"] == 2


def test_save_checkpoint_failure_leaves_no_temp(tmp_path, monkeypatch):
    save_checkpoint({"config": {}, "model": {}, "epoch": 1}, tmp_path / "c.pt")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save_checkpoint({"config": {}, "model": {}, "epoch": 2}, tmp_path / "c.pt")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    assert load_checkpoint(tmp_path / "c.pt")["epoch"] == 1


def test_corrupt_and_foreign_checkpoints(tmp_path):
    T.train(tiny(tmp_path / "run", epochs=1, iwae_k=0), log=quiet)
    good = (tmp_path / "run" / CHECKPOINT_NAME).read_bytes()
    (tmp_path / "trunc.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="trunc.pt"):
        load_checkpoint(tmp_path / "trunc.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a fastvae checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
