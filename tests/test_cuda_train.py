"""``fastvae train``, ``eval`` and ``sample`` end to end on a CUDA device: the commands' own
bookkeeping (a step's sums gathered on the host, the epoch's evaluation, the checkpoint)
mixes host and device tensors in ways no CPU run can show."""
import json
import math

import pytest
import torch

from fastvae import cli

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
# the embedded digits load through scikit-learn, the pictures need matplotlib: a GPU
# machine with fastvae installed without its extras skips, naming the missing one
pytest.importorskip("sklearn", reason="the digits need scikit-learn (fastvae[train])")
pytest.importorskip("matplotlib", reason="the pictures need matplotlib (fastvae[train])")

SMALL = {"mlp": ["--hidden", "32", "--latent", "4"],
         "conv": ["--channels", "8", "16", "--latent", "4",
                  "--likelihood", "discretized_logistic_mixture"],
         "hvae": ["--channels", "8", "16", "--latent", "2", "--groups", "1"]}


# one module of the GPU session's tests (90 s each, first compiles included): each model
# once, mixed precision with the mlp
@pytest.mark.parametrize("model,amp", [("mlp", True), ("conv", False), ("hvae", False)])
def test_train_eval_sample_on_cuda(tmp_path, capsys, model, amp):
    out = tmp_path / "run"
    argv = ["train", "--device", "cuda", "--model", model, *SMALL[model], "--epochs", "1",
            "--batch-size", "64", "--iwae-k", "5", "--no-progress", "--out", str(out),
            "--amp" if amp else "--no-amp"]
    assert cli.main(argv) == 0
    final = json.loads((out / "metrics.json").read_text())["final"]
    assert math.isfinite(final["test_elbo"]) and math.isfinite(final["test_iwae_nll"])
    assert cli.main(["eval", str(out), "--device", "cuda", "--k", "5", "--no-progress"]) == 0
    assert cli.main(["sample", str(out), "--device", "cuda", "--n", "4",
                     "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    capsys.readouterr()
