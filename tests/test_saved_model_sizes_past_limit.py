"""A checkpoint whose config holds a model size past train's limit (its checksum matching):
eval and sample name the size as train names it, with the file, before building the
model (whose out-of-memory advice, "try smaller sizes", no flag of theirs can follow)."""
import pytest
import torch

from fastvae import cli
from fastvae.checkpoint import CHECKPOINT_NAME, save_checkpoint
from fastvae.validation import MAX_COUNT

from _checkpoint import copy_run, one_error_line


@pytest.mark.parametrize("key, value", [("latent", MAX_COUNT + 1), ("hidden", [2 ** 40]),
                                        ("hidden", 2 ** 40)])
@pytest.mark.parametrize("command", ["eval", "sample"])
def test_a_saved_size_past_the_limit_is_named(good_run, tmp_path, capsys, key, value,
                                              command):
    run = copy_run(good_run, tmp_path / "run")
    state = torch.load(run / CHECKPOINT_NAME, weights_only=True)
    state.pop("checksum")
    state["config"][key] = value
    save_checkpoint(state, run / CHECKPOINT_NAME)
    more = ["--k", "1"] if command == "eval" else ["--out", str(tmp_path / "s.png")]
    assert cli.main([command, str(run), *more]) == 2
    one_error_line(capsys, f"{run / CHECKPOINT_NAME}: its config does not describe a model: "
                   f"{key}: must be at most {MAX_COUNT}")
    assert not (tmp_path / "s.png").exists()
