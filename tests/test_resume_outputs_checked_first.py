"""A resumed run whose folder holds a folder where it writes a picture or metrics.json is
refused before it trains: the rename that writes the file failed only at the end, after
all the training."""
import shutil

import pytest

from fastvae import cli
from fastvae import train as T

TINY_ARGS = ["--epochs", "1", "--hidden", "32", "--iwae-k", "0", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    made = {}
    for latent in (2, 4):
        out = tmp_path_factory.mktemp(f"latent{latent}") / "run"
        assert cli.main(["train", *TINY_ARGS, "--latent", str(latent), "--out", str(out)]) == 0
        made[latent] = out
    return made


def _copy(run, tmp_path, folder_at):
    out = tmp_path / "run"
    shutil.copytree(run, out)
    (out / folder_at).unlink(missing_ok=True)   # latent.png: only a 2-D run has one
    (out / folder_at).mkdir()
    return out


@pytest.mark.parametrize("name", ["metrics.json", "samples.png", "reconstructions.png",
                                  "latent.png", "curves.png"])
def test_a_folder_where_a_resume_writes_is_refused_before_training(runs, tmp_path, capsys,
                                                                   monkeypatch, name):
    out = _copy(runs[2], tmp_path, name)
    for loader in ("load_dataset", "load_run_dataset"):
        monkeypatch.setattr(T, loader, lambda *a, **k: pytest.fail("loaded data"))
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--out", str(out), "--epochs", "2",
                     "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"{out / name} is a folder" in err, err


def test_latent_png_is_checked_only_where_the_run_draws_it(runs, tmp_path):
    out = _copy(runs[4], tmp_path, "latent.png")
    assert cli.main(["train", "--resume", "--out", str(out), "--epochs", "2",
                     "--no-progress"]) == 0
    assert (out / "latent.png").is_dir()


def test_a_metrics_json_folder_is_named_on_a_resume_without_epochs(runs, tmp_path, capsys):
    # the folder made the finished-run check read the run as finished (it cannot be
    # read), which asked for --epochs; only with it given was the folder named
    out = _copy(runs[2], tmp_path, "metrics.json")
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"{out / 'metrics.json'} is a folder" in err and "--epochs" not in err, err
