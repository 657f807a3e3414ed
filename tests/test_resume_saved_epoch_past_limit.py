"""A checkpoint whose epoch is past 2**31 - 1 cannot be resumed: --epochs, the total to
reach, cannot exceed it. Resume said to pass an --epochs above it, which the parser refuses;
it now names the saved epoch and the limit, as it names a saved setting out of range."""
import torch

from fastvae import cli
from fastvae.checkpoint import CHECKPOINT_NAME, save_checkpoint
from fastvae.validation import MAX_COUNT

from _checkpoint import copy_run, one_error_line


def _with_epoch(good_run, dst, epoch):
    run = copy_run(good_run, dst)
    state = torch.load(run / CHECKPOINT_NAME, weights_only=True)
    state.pop("checksum")
    save_checkpoint(dict(state, epoch=epoch), run / CHECKPOINT_NAME)
    return run


def test_a_saved_epoch_past_the_limit_is_named(good_run, tmp_path, capsys):
    for epoch in (MAX_COUNT + 1, 2 ** 64):
        run = _with_epoch(good_run, tmp_path / str(epoch), epoch)
        argv = ["train", "--resume", "--out", str(run), "--no-progress"]
        for more in ([], ["--epochs", str(MAX_COUNT)]):
            assert cli.main([*argv, *more]) == 2
            one_error_line(capsys, f"{run / CHECKPOINT_NAME}: its epoch cannot be resumed: "
                           f"must be at most {MAX_COUNT} (2**31 - 1)", f"got {epoch}")
