"""A checkpoint whose epoch is True (a bool, which isinstance counts as an int) is
refused."""
import pytest

from fastvae.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def test_an_epoch_that_is_a_bool_is_refused(tmp_path):
    save_checkpoint({"config": {}, "model": {}, "epoch": True}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=r"its epoch is True, not a count of trained "
                                              r"epochs"):
        load_checkpoint(tmp_path / "c.pt")
