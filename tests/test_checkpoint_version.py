"""A checkpoint of a newer format version is refused, not loaded."""
import pytest
import torch

from fastvae.checkpoint import FORMAT, CheckpointError, checksum, load_checkpoint


def test_a_checkpoint_of_a_newer_version_is_refused(tmp_path):
    state = {"config": {}, "model": {}, "epoch": 1, "format": FORMAT, "version": 3}
    state["checksum"] = checksum(state)
    torch.save(state, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=r"c\.pt has checkpoint version 3, this fastvae "
                                              r"reads versions 1 to 2$"):
        load_checkpoint(tmp_path / "c.pt")
