"""The ``fastvae`` command on data: array files and MNIST folders found from anywhere, a
data file changed since training, flags a dataset does not read, data the untrained
model cannot score."""
import sys

import numpy as np
import pytest
import torch

from fastvae import cli
from fastvae import train as T
from fastvae.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint

from _checkpoint import TINY_CONFIG, one_error_line
from _cli import TINY
from _train import quiet


def test_train_on_array_files_needs_no_scikit_learn(tmp_path, monkeypatch):
    import numpy as np

    images = np.random.RandomState(0).randint(0, 256, (40, 4, 4)).astype(np.uint8)
    np.save(tmp_path / "x.npy", images)
    monkeypatch.setitem(sys.modules, "sklearn", None)
    assert cli.main(["train", *TINY, "--dataset", str(tmp_path / "x.npy"),
                     "--out", str(tmp_path / "run")]) == 0


def test_a_run_on_a_relative_array_path_is_found_from_anywhere(tmp_path, monkeypatch, capsys):
    """The config keeps an array file's absolute path: eval and --resume work from another
    working directory (the path as typed resolved against theirs)."""
    import numpy as np

    (tmp_path / "data").mkdir()
    (tmp_path / "elsewhere").mkdir()
    images = np.random.RandomState(0).randint(0, 256, (40, 4, 4)).astype(np.uint8)
    np.save(tmp_path / "data" / "x.npy", images)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", *TINY, "--dataset", "data/x.npy", "--out", "run"]) == 0
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert cli.main(["eval", str(tmp_path / "run"), "--k", "0"]) == 0
    assert cli.main(["train", "--out", str(tmp_path / "run"), "--resume", "--epochs", "2",
                     "--no-progress", "--iwae-k", "0"]) == 0
    # the same file typed relative to here is the checkpoint's dataset, not another one
    capsys.readouterr()
    assert cli.main(["train", "--out", str(tmp_path / "run"), "--resume", "--epochs", "3",
                     "--no-progress", "--iwae-k", "0", "--dataset", "../data/x.npy"]) == 0
    assert "ignored" not in capsys.readouterr().out


def test_a_data_file_replaced_since_training_is_not_resumed_on(tmp_path, capsys):
    """--resume would continue a run on other images than it was trained on, so it refuses;
    eval has no other data to take and says so. The same images written again (another
    dtype, another file) are the same data."""
    import numpy as np

    images = np.random.RandomState(0).randint(0, 256, (40, 4, 4)).astype(np.uint8)
    path, run = tmp_path / "x.npy", tmp_path / "run"
    np.save(path, images)
    assert cli.main(["train", *TINY, "--dataset", str(path), "--out", str(run)]) == 0
    np.save(path, images.astype(np.float32) / 255)          # the same images, as floats
    assert cli.main(["train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress",
                     "--iwae-k", "0"]) == 0
    np.save(path, 255 - images)
    capsys.readouterr()
    assert cli.main(["train", "--out", str(run), "--resume", "--epochs", "3", "--no-progress",
                     "--iwae-k", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds other images than" in err[0] and "restore" in err[0], err
    assert cli.main(["eval", str(run), "--k", "0"]) == 0
    assert "holds other images than" in capsys.readouterr().err


def test_data_out_of_range_for_a_saved_model_says_why_not_which_flag(tmp_path, capsys):
    """eval has no --likelihood and --resume keeps the run's: the advice is the data's
    scale, led by the replaced file where that is the cause."""
    import numpy as np

    images = np.random.RandomState(0).randint(0, 256, (40, 4, 4)).astype(np.uint8)
    path, run = tmp_path / "x.npy", tmp_path / "run"
    np.save(path, images)
    assert cli.main(["train", *TINY, "--dataset", str(path), "--out", str(run)]) == 0
    np.save(path, images.astype(np.uint16))       # the same pixels, read unscaled now
    capsys.readouterr()
    assert cli.main(["eval", str(run), "--k", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs pixels in [0, 1]" in err[0], err
    assert "holds other images than" in err[0] and "--likelihood" not in err[0], err
    assert cli.main(["train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress",
                     "--likelihood", "gaussian"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "holds other images than" in err[-1] and "--likelihood" not in err[-1], err


@pytest.mark.parametrize("images,needle", [
    (np.full((10, 5, 7), 128, np.uint8), "was trained on images of shape (1, 8, 8)"),
    (np.full((10, 8, 8), 3.0, np.float32), "needs pixels in [0, 1]")])
def test_eval_on_data_that_changed_since_training(good_run, tmp_path, capsys, images, needle):
    np.save(tmp_path / "x.npy", images)
    state = load_checkpoint(good_run)
    state["config"]["dataset"] = str(tmp_path / "x.npy")
    save_checkpoint(state, tmp_path / CHECKPOINT_NAME)
    assert cli.main(["eval", str(tmp_path), "--k", "0"]) == 2
    one_error_line(capsys, "x.npy", needle)


def test_eval_and_resume_on_data_scaled_since_training(tmp_path, capsys):
    """A Gaussian run's images replaced by others x 1e20: eval says that the model's
    densities overflow on them, and that they are not the images it was trained on (one
    line, exit 2), not a NaN ELBO with exit 0; a resume refuses other images before it
    trains (not a non-finite loss blamed on the learning rate)."""
    rng = np.random.default_rng(0)
    data = tmp_path / "g.npy"
    np.save(data, rng.random((40, 4, 4), dtype=np.float32))
    run = tmp_path / "run"
    T.train(dict(TINY_CONFIG, out=str(run), dataset=str(data), likelihood="gaussian"), log=quiet)
    np.save(data, rng.random((40, 4, 4), dtype=np.float32) * 1e20)
    assert cli.main(["eval", str(run), "--k", "2"]) == 2
    one_error_line(capsys, "the model's test ELBO is", "g.npy", "densities overflow",
                   "holds other images than")
    assert cli.main(["train", "--out", str(run), "--resume", "--epochs", "2",
                     "--no-progress"]) == 2
    one_error_line(capsys, "g.npy holds other images than", "restore the data")
    assert load_checkpoint(run)["epoch"] == 1


def test_a_mistyped_dataset_is_named_before_the_flags_it_would_not_read(tmp_path, capsys,
                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", *TINY, "--dataset", "fashion_mnist", "--data-dir", "data"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown dataset 'fashion_mnist'" in err, err
    assert not (tmp_path / "runs").exists()


def _fake_idx(folder):
    import numpy as np

    from fastvae.data import write_idx

    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    write_idx(folder / "train-images-idx3-ubyte", rng.randint(0, 256, (20, 28, 28)).astype(np.uint8))
    write_idx(folder / "t10k-images-idx3-ubyte", rng.randint(0, 256, (10, 28, 28)).astype(np.uint8))


def test_an_mnist_run_on_a_relative_data_dir_resumes_from_anywhere(tmp_path, monkeypatch):
    """The config keeps the data folder absolute, and --resume without --data-dir reads the
    run's own folder, not the flag's default ``data`` (which here holds no IDX files)."""
    _fake_idx(tmp_path / "idx_ok")
    (tmp_path / "elsewhere" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", *TINY, "--dataset", "mnist", "--data-dir", "idx_ok",
                     "--out", "run", "--iwae-k", "0"]) == 0
    stored = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["config"]
    assert stored["data_dir"] == str(tmp_path / "idx_ok")
    assert cli.main(["train", "--out", "run", "--resume", "--epochs", "2", "--no-progress",
                     "--iwae-k", "0"]) == 0
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert cli.main(["train", "--out", str(tmp_path / "run"), "--resume", "--epochs", "3",
                     "--no-progress", "--iwae-k", "0"]) == 0
    # a --data-dir given on resume is used, and kept (absolute) for the next resume
    _fake_idx(tmp_path / "elsewhere" / "moved")
    assert cli.main(["train", "--out", str(tmp_path / "run"), "--resume", "--epochs", "4",
                     "--data-dir", "moved", "--no-progress", "--iwae-k", "0"]) == 0
    stored = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["config"]
    assert stored["data_dir"] == str(tmp_path / "elsewhere" / "moved")


@pytest.mark.parametrize("flag", [["--download"], ["--data-dir", "data"]])
@pytest.mark.parametrize("dataset", ["digits", "x.npy"])
def test_data_flags_a_dataset_does_not_read_are_refused(tmp_path, capsys, monkeypatch,
                                                        dataset, flag):
    """--download and --data-dir would be ignored: refused in one line before any folder
    is made, for a fresh run and for a resume of such a run (where --data-dir names the
    folder an array file has moved to: ./data holds no x.npy)."""
    import numpy as np

    np.save(tmp_path / "x.npy", np.random.RandomState(0).randint(0, 256, (40, 4, 4)).astype(np.uint8))
    monkeypatch.chdir(tmp_path)
    drop = f"drop {flag[0]}"
    assert cli.main(["train", *TINY, "--dataset", dataset, *flag, "--out", "new"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{flag[0]}: the dataset" in err and drop in err, err
    assert not (tmp_path / "new").exists()
    assert cli.main(["train", *TINY, "--dataset", dataset, "--out", "run"]) == 0
    capsys.readouterr()
    assert cli.main(["train", "--out", "run", "--resume", "--epochs", "2", *flag,
                     "--no-progress"]) == 2
    err = capsys.readouterr().err
    if dataset == "x.npy" and flag[0] == "--data-dir":
        drop = "--data-dir data: no x.npy there"
    assert err.count("\n") == 1 and drop in err, err
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["epoch"] == 1


def test_data_the_untrained_model_cannot_score_is_refused_before_training(tmp_path, capsys):
    """Values in the thousands as int32 (used as they are) under the Gaussian likelihood: the
    untrained test ELBO is not finite, so no learning rate helps; one line naming the data,
    no run folder."""
    import numpy as np

    np.save(tmp_path / "wide.npy", np.random.RandomState(0).randint(7, 5000, (40, 8, 8))
            .astype(np.int32))
    assert cli.main(["train", *TINY, "--likelihood", "gaussian", "--dataset",
                     str(tmp_path / "wide.npy"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "wide.npy" in err and "values in [" in err, err
    assert "--lr" not in err and not (tmp_path / "run").exists()


def test_pictures_of_data_in_minus_1_1_show_its_whole_range(tmp_path, monkeypatch):
    """train's pictures and sample's take the data's range from the run (the sample
    command has no data): the grid is drawn from -1 (black) to 1 (white)."""
    import numpy as np

    from fastvae import plots

    images = np.random.RandomState(0).uniform(-1, 1, (40, 4, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", images)
    ranges = []
    real = plots.save_grid

    def save_grid(*a, value_range=(0.0, 1.0), **k):
        ranges.append(tuple(value_range))
        return real(*a, value_range=value_range, **k)
    monkeypatch.setattr(plots, "save_grid", save_grid)
    assert cli.main(["train", *TINY, "--likelihood", "gaussian", "--dataset",
                     str(tmp_path / "x.npy"), "--out", str(tmp_path / "run")]) == 0
    assert cli.main(["sample", str(tmp_path / "run"), "--n", "4"]) == 0
    shown = (float(images.min()), 1.0)   # the data's low end, and 1 (its top is below)
    assert shown[0] < -0.99 and ranges and all(r == shown for r in ranges), ranges
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["config"][
        "picture_range"] == list(shown)
