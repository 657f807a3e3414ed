"""A checkpoint whose picture range holds an int past float's range (its checksum matching)
has no range, as a non-finite one has none: ``fastvae sample`` draws over [0, 1], with
no OverflowError from math.isfinite."""
import torch

from fastvae import cli, plots
from fastvae.checkpoint import CHECKPOINT_NAME, save_checkpoint

from _checkpoint import copy_run


def test_a_range_past_float_is_no_range():
    for bad in ([0, 10 ** 400], [-(10 ** 400), 1], (0.5, 2 ** 1024)):
        assert plots.saved_picture_range({"picture_range": bad}) == (0.0, 1.0)
    assert plots.saved_picture_range({"picture_range": [0, 2 ** 60]}) == (0.0, float(2 ** 60))


def test_sample_draws_a_run_whose_saved_range_is_past_float(good_run, tmp_path, capsys):
    run = copy_run(good_run, tmp_path / "run")
    state = torch.load(run / CHECKPOINT_NAME, weights_only=True)
    state.pop("checksum")
    state["config"]["picture_range"] = [0, 10 ** 400]
    save_checkpoint(state, run / CHECKPOINT_NAME)
    assert cli.main(["sample", str(run), "-n", "2", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert "wrote 2 samples" in capsys.readouterr().out
