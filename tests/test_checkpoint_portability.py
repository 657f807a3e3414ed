"""What a run writes loads back, wherever it goes: numpy numbers and paths in a Python API config, a
run trained on Windows evaluated elsewhere with --data-dir, and a checkpoint whose content
cannot be hashed or restored is one CheckpointError naming the file, not a traceback."""
import json
import os

import numpy as np
import pytest
import torch

from fastvae import train as T
from fastvae.checkpoint import (FORMAT, CheckpointError, checksum, load_checkpoint,
                                save_checkpoint)
from fastvae.data import run_data_source
from _train import quiet, tiny as train_tiny


def tiny(out, **kw):
    """tests/_train.py's tiny run, one epoch and no final estimate."""
    return train_tiny(out, **{"epochs": 1, "iwae_k": 0, **kw})


def test_numpy_numbers_in_a_config_make_a_checkpoint_that_loads(tmp_path):
    # a sweep's values: np.logspace gives numpy.float64, an array of sizes numpy.int64
    out = tmp_path / "run"
    T.train(tiny(out, lr=np.logspace(-3, -2, 3)[1], beta=np.float32(1.0), latent=np.int64(4),
                 hidden=[np.int64(16)], seed=np.int64(3), batch_size=np.int64(64)), log=quiet)
    state = load_checkpoint(out)   # torch.load(weights_only=True) refuses numpy objects
    cfg = state["config"]
    assert type(cfg["lr"]) is float and type(cfg["latent"]) is int and cfg["seed"] == 3
    assert cfg["hidden"] == [16] and type(cfg["hidden"][0]) is int
    assert json.loads((out / "metrics.json").read_text())["config"]["latent"] == 4
    T.train(tiny(out, resume=True, epochs=2, lr=np.float64(1e-3)), log=quiet)
    assert type(load_checkpoint(out)["config"]["lr"]) is float


def test_path_objects_in_a_config_are_stored_as_text(tmp_path):
    """``out=Path(...)``, ``data_dir=Path(...)``: refused as no folder name before, and a
    Path in the checkpoint's config would not load with weights_only."""
    data = tmp_path / "images.npy"
    np.save(data, np.random.default_rng(0).random((40, 4, 4), dtype=np.float32))
    out = tmp_path / "run"
    T.train(dict(tiny(out, dataset=str(data)), out=out), log=quiet)
    assert load_checkpoint(out)["config"]["out"] == str(out)
    assert json.loads((out / "metrics.json").read_text())["config"]["out"] == str(out)
    # resumed where the array file's folder is given (the file moved there)
    T.train(dict(tiny(out, resume=True, epochs=2), out=out, data_dir=tmp_path), log=quiet)
    assert load_checkpoint(out)["config"]["dataset"] == str(data)


def test_a_windows_path_finds_its_file_in_data_dir(tmp_path):
    (tmp_path / "imgs.npy").write_bytes(b"")
    for stored in (r"C:\Users\me\data\imgs.npy", "/home/me/data/imgs.npy"):
        assert run_data_source(stored, str(tmp_path)) == (str(tmp_path / "imgs.npy"),
                                                           str(tmp_path))


def _saved(path, **changes):
    state = {"config": {}, "model": {"w": torch.ones(2)}, "epoch": 1, "format": FORMAT,
             "version": 2}
    state.update(changes)
    state["checksum"] = "0" * 64
    torch.save(state, path)


def test_a_checkpoint_of_meta_tensors_is_a_checkpoint_error(tmp_path):
    _saved(tmp_path / "c.pt", model={"w": torch.ones(2, device="meta")})
    with pytest.raises(CheckpointError, match=r"c\.pt is not a readable fastvae checkpoint: it "
                                              r"holds tensors without data \(on the 'meta'"):
        load_checkpoint(tmp_path / "c.pt")


@pytest.mark.parametrize("version", [True, 2.0, "2"])
def test_a_version_that_is_no_int_is_refused(tmp_path, version):
    state = {"config": {}, "model": {}, "epoch": 1, "format": FORMAT, "version": version}
    state["checksum"] = checksum(state)
    torch.save(state, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=rf"c\.pt has checkpoint version {version!r},"):
        load_checkpoint(tmp_path / "c.pt")


@pytest.mark.parametrize("key, value, says", [
    ("optimizer", None, "its optimizer state does not match"),
    ("rng", [1], "its random-number state cannot be restored"),
    ("history", [None], "its history holds None, not an epoch's"),
    ("history", [{"epoch": 1, "train": {}}], "its history holds"),
])
def test_a_resume_of_a_malformed_checkpoint_is_a_checkpoint_error(tmp_path, key, value, says):
    out = tmp_path / "run"
    T.train(tiny(out), log=quiet)
    state = load_checkpoint(out)
    del state["format"], state["version"]
    state[key] = value
    save_checkpoint(state, out / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=says):
        T.train(tiny(out, resume=True, epochs=2), log=quiet)
    assert os.path.exists(out / "checkpoint.pt")


@pytest.mark.parametrize("key, value, says", [
    ("latent", None, "latent is None, which fastvae train never saves"),
    ("kl_warmup", None, "kl_warmup is None"),
    ("k", None, "k is None"),
    ("objective", {}, "objective: must be one of elbo, iwae, got {}"),
    ("data_shape", 1.5, "data_shape is 1.5, not a list of image sizes"),
])
def test_a_resume_of_a_config_value_fastvae_never_saves(tmp_path, key, value, says):
    """None means "the default" in a given config, never in a saved one: a resume of such
    a checkpoint is refused up front, not a TypeError in the model or the first step."""
    out = tmp_path / "run"
    T.train(tiny(out), log=quiet)
    state = load_checkpoint(out)
    del state["format"], state["version"]
    state["config"][key] = value
    save_checkpoint(state, out / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="its config cannot be resumed: " + says):
        T.train(tiny(out, resume=True, epochs=2), log=quiet)
