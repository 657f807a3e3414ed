"""The IWAE NLL estimate's progress bar: ``fastvae eval`` (on unless --no-progress) and the
end of ``fastvae train`` (with --progress) count its test images on a bar that closes
when the estimate ends, also when it fails; without tqdm, or where stderr is not a
terminal, there is no bar and the estimate is the same."""
from __future__ import annotations

import io
import sys

import pytest
import torch

from fastvae import cli, evaluation, progress
from fastvae.models import VAE

from _cli import TINY


class _Bar:
    def __init__(self, total, desc, unit, **kw):
        self.total, self.desc, self.unit, self.kw = total, desc, unit, kw
        self.counts, self.closed = [], False
        _Bar.made.append(self)

    def update(self, n):
        self.counts.append(n)

    def close(self):
        self.closed = True


@pytest.fixture
def bars(monkeypatch):
    _Bar.made = []
    monkeypatch.setattr(evaluation, "progress_bar", _Bar)
    return _Bar.made


def _model():
    torch.manual_seed(0)
    return VAE((1, 8, 8), latent_dim=2, hidden=(16,))


def test_the_bar_counts_every_image_and_closes(bars):
    images = torch.rand(600, 1, 8, 8).round()
    nll = evaluation.iwae_nll(_model(), images, 3, "cpu", 0, batch_size=256, progress=True)
    (bar,) = bars
    assert (bar.total, bar.desc, bar.unit, bar.counts) == (600, "IWAE NLL (K=3)", "image",
                                                          [256, 256, 88])
    assert bar.closed and bar.kw == {"terminal_only": True}
    assert nll == evaluation.iwae_nll(_model(), images, 3, "cpu", 0, batch_size=256)
    assert len(bars) == 1   # progress=False (the default) makes none


def test_a_bar_that_cannot_be_made_leaves_the_model_as_it_was(monkeypatch):
    model = _model()
    monkeypatch.setattr(evaluation, "progress_bar", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        evaluation.iwae_nll(model, torch.rand(10, 1, 8, 8), 3, "cpu", 0, progress=True)
    assert model.training


def test_the_bar_closes_when_the_estimate_fails(bars, monkeypatch):
    model = _model()
    monkeypatch.setattr(model, "iwae_nll", lambda *a, **k: (_ for _ in ()).throw(
        RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        evaluation.iwae_nll(model, torch.rand(10, 1, 8, 8), 3, "cpu", 0, progress=True)
    assert bars[0].closed and model.training


def test_no_bar_where_stderr_is_not_a_terminal(monkeypatch):
    pytest.importorskip("tqdm")
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    bar = progress.progress_bar(10, "IWAE NLL (K=3)", "image", terminal_only=True)
    bar.update(10)
    bar.close()
    assert sys.stderr.getvalue() == ""
    shown = progress.progress_bar(10, "epoch 1/1", "batch")   # training's bar: always drawn
    shown.update(10)
    shown.close()
    assert "epoch 1/1" in sys.stderr.getvalue()


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_bar_shows_where_stderr_is_a_terminal(monkeypatch):
    pytest.importorskip("tqdm")
    monkeypatch.setattr(sys, "stderr", _Terminal())
    bar = progress.progress_bar(10, "IWAE NLL (K=3)", "image", terminal_only=True)
    bar.update(10)
    bar.close()
    assert "IWAE NLL (K=3)" in sys.stderr.getvalue()


def test_no_bar_without_tqdm(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)   # import tqdm raises ImportError
    assert progress.progress_bar(10, "IWAE NLL (K=3)", "image", terminal_only=True) is None


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("progress") / "run"
    assert cli.main(["train", *TINY, "--iwae-k", "0", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("flag,want", [([], True), (["--progress"], True),
                                       (["--no-progress"], False)])
def test_eval_draws_the_bar_unless_told_not_to(run, bars, flag, want, capsys):
    assert cli.main(["eval", str(run), "--k", "2", "--limit", "7", *flag]) == 0
    assert [(b.total, b.desc, b.closed) for b in bars] == ([(7, "IWAE NLL (K=2)", True)]
                                                           if want else [])


@pytest.mark.parametrize("flag,want", [(["--progress"], 1), (["--no-progress"], 0)])
def test_train_draws_it_for_the_final_estimate_with_progress(tmp_path, bars, flag, want):
    argv = [a for a in TINY if a != "--no-progress"]
    assert cli.main(["train", *argv, *flag, "--out", str(tmp_path / "r")]) == 0
    assert [b.desc for b in bars] == ["IWAE NLL (K=5)"] * want
