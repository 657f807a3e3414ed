"""Optional dependencies (the ``train`` extra: matplotlib, scikit-learn, tqdm) checked
before any work: a missing or broken one is one line with the way to install it; only
tqdm's absence trains on, with a note."""
import sys

import pytest

from fastvae import cli

from _cli import TINY


@pytest.mark.parametrize("missing", ["matplotlib", "sklearn"])
def test_train_without_the_train_extra_fails_first(tmp_path, capsys, monkeypatch, missing):
    from fastvae import train as T

    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed
    monkeypatch.setattr(T, "load_dataset", lambda *a, **k: pytest.fail("loaded data"))
    assert cli.main(["train", *TINY, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert missing in err.replace("scikit-learn", "sklearn")
    assert "pip install 'fastvae[train]'" in err
    assert list(tmp_path.iterdir()) == []


def test_a_matplotlib_that_does_not_import_fails_first(tmp_path, capsys, monkeypatch):
    """Installed but broken (built against another numpy): found before training, not as
    a traceback after the whole run when the pictures are drawn (a review's find)."""
    from fastvae import plots
    from fastvae import train as T

    def broken():
        raise ImportError("numpy.core.multiarray failed to import")
    monkeypatch.setattr(plots, "pyplot", broken)
    monkeypatch.setattr(T, "load_dataset", lambda *a, **k: pytest.fail("loaded data"))
    assert cli.main(["train", *TINY, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err == ("fastvae train: error: fastvae train needs matplotlib (for the pictures), "
                   "which is installed but does not import: numpy.core.multiarray failed to "
                   "import\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("progress", [[], ["--no-progress"]])
def test_train_without_tqdm_trains_and_says_there_is_no_bar(tmp_path, capsys, monkeypatch,
                                                            progress):
    """tqdm only draws the progress bar: a run without it trains, with a note where the bar
    was asked for (it was silently dropped)."""
    from fastvae import train as T

    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if not installed
    monkeypatch.setattr(T, "_train_in_group", lambda *a: {"stopped": "here"})
    argv = ["train", *[a for a in TINY if a != "--no-progress"], *progress]
    assert cli.main([*argv, "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    note = "note: no progress bar: tqdm is not installed (pip install 'fastvae[train]'"
    assert (note in out) == (not progress), out


def test_sample_without_matplotlib_fails_first(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli.main(["sample", str(tmp_path / "nothing-here")]) == 2
    err = capsys.readouterr().err
    assert "matplotlib" in err and "pip install" in err and "no checkpoint" not in err, err
