"""Where the IDX datasets' files are read from (MNIST and Fashion-MNIST share file names),
--download's outcomes, and array files whose unused members or values are unusual."""
import os
import sys
import types
import warnings

import numpy as np
import pytest

from fastvae import data
from fastvae.data import DataError, load_dataset, write_idx


def _idx_pair(folder, mean, n_train=6, n_test=4):
    """Train and test image files of 28x28 pixels averaging about ``mean``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    for name, n in (("train", n_train), ("t10k", n_test)):
        pixels = (rng.rand(n, 28, 28) < mean).astype(np.uint8) * 255
        write_idx(folder / f"{name}-images-idx3-ubyte.gz", pixels)


@pytest.fixture
def standard_sizes(monkeypatch):
    """Small files stand in for the standard 60,000 / 10,000 image ones."""
    monkeypatch.setattr(data, "_STANDARD_SIZES", {"train": 6, "test": 4})


def test_each_dataset_reads_its_own_folder_before_the_shared_one(tmp_path, standard_sizes):
    _idx_pair(tmp_path, 0.13)                               # MNIST in data/ itself
    _idx_pair(tmp_path / "FashionMNIST" / "raw", 0.29)      # Fashion in torchvision's place
    fashion = load_dataset("fashion-mnist", tmp_path).train.mean().item()
    mnist = load_dataset("mnist", tmp_path).train.mean().item()
    assert abs(fashion - 0.29) < 0.05 and abs(mnist - 0.13) < 0.05


def test_the_other_dataset_s_standard_files_are_refused(tmp_path, standard_sizes):
    _idx_pair(tmp_path, 0.13)
    with pytest.raises(DataError, match=r"holds mnist's train images, not fashion-mnist's.*"
                                        r"FashionMNIST/raw"):
        load_dataset("fashion-mnist", tmp_path)
    _idx_pair(tmp_path / "fashion", 0.29)
    with pytest.raises(DataError, match="holds fashion-mnist's train images, not mnist's"):
        load_dataset("mnist", tmp_path / "fashion")
    assert load_dataset("fashion-mnist", tmp_path).train.shape == (6, 1, 28, 28)


def test_files_of_other_sizes_are_not_judged_by_their_mean(tmp_path, standard_sizes):
    _idx_pair(tmp_path, 0.13, n_train=7, n_test=5)    # a subset: not the standard files
    assert load_dataset("fashion-mnist", tmp_path).train.shape == (7, 1, 28, 28)


def test_both_splits_come_from_one_folder(tmp_path):
    _idx_pair(tmp_path / "mnist", 0.13)
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").rename(
        tmp_path / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match=r"not found together.*train-images-idx3-ubyte.gz "
                                        r"without t10k-images-idx3-ubyte"):
        load_dataset("mnist", tmp_path)


def test_an_idx_name_that_is_a_folder_is_said_to_be_one(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").mkdir()
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte is a folder"):
        load_dataset("mnist", tmp_path)


def _torchvision(monkeypatch, fetch):
    """A stand-in torchvision whose datasets call ``fetch(root, train)``."""
    tv = types.ModuleType("torchvision")
    tv.datasets = types.ModuleType("torchvision.datasets")
    tv.datasets.MNIST = tv.datasets.FashionMNIST = \
        lambda root, train, download: fetch(root, train)
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", tv.datasets)


def test_download_replaces_the_other_dataset_s_files(tmp_path, monkeypatch, standard_sizes):
    _idx_pair(tmp_path, 0.13)
    fetched = []
    _torchvision(monkeypatch, lambda root, train: fetched.append(train) or _idx_pair(
        tmp_path / "FashionMNIST" / "raw", 0.29))
    ds = load_dataset("fashion-mnist", tmp_path, download=True)
    assert fetched == [True, False] and abs(ds.train.mean().item() - 0.29) < 0.05


def test_a_failed_download_is_one_error(tmp_path, monkeypatch, capsys):
    def offline(root, train):
        raise OSError("Temporary failure in name resolution")
    _torchvision(monkeypatch, offline)
    with pytest.raises(DataError) as e:
        load_dataset("mnist", tmp_path, download=True)
    msg = str(e.value)
    assert msg.startswith("mnist: torchvision could not download it (Temporary failure")
    assert "--download" not in msg and "\n" not in msg
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("case", ["download failed", "not found"])
def test_the_advice_names_the_dataset_s_own_folder(tmp_path, monkeypatch, standard_sizes, case):
    """Files put in the data folder itself would collide with the other dataset's (the
    same names) where it holds them: the advice names this dataset's own folder."""
    if case == "download failed":   # the data folder holds MNIST's files
        _idx_pair(tmp_path, 0.13)
        _torchvision(monkeypatch, lambda root, train: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", tmp_path, download=case == "download failed")
    assert f"put the files in {tmp_path / 'FashionMNIST' / 'raw'}/" in str(e.value), e.value


def test_npz_members_that_are_not_used_are_not_read(tmp_path):
    path = tmp_path / "meta.npz"
    np.savez(path, train=np.zeros((4, 8, 8), np.uint8), test=np.zeros((2, 8, 8), np.uint8),
             meta=np.array({"source": "camera"}, dtype=object))
    assert load_dataset(str(path)).train.shape == (4, 1, 8, 8)
    np.savez(path, images=np.array([{"a": 1}], dtype=object))   # the one that is used
    with pytest.raises(DataError, match=r"meta.npz\[images\] is not a readable"):
        load_dataset(str(path))
    np.savez(path, a=np.zeros((4, 8, 8)), b=np.zeros((4, 8, 8)))
    with pytest.raises(DataError, match=r"keys train/test .* found keys \['a', 'b'\]"):
        load_dataset(str(path))


def test_float64_values_past_float32_are_refused_as_such(tmp_path):
    path = tmp_path / "big.npy"
    np.save(path, np.full((10, 4, 4), 1e300))
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # and no numpy overflow warning on the way
        with pytest.raises(DataError, match=r"big.npy: values up to 1e\+300 do not fit float32"):
            load_dataset(str(path))


def test_one_image_and_time_arrays_are_refused_naming_the_file(tmp_path):
    one = tmp_path / "one.npy"
    np.save(one, np.zeros((1, 4, 4), np.uint8))
    with pytest.raises(DataError, match=r"one.npy: need at least 2 images"):
        load_dataset(str(one))
    td = tmp_path / "td.npy"
    np.save(td, np.zeros((4, 4, 4), "m8[s]"))
    with pytest.raises(DataError, match=r"td.npy: expected a real numeric array"):
        load_dataset(str(td))


def test_a_pair_of_8_bit_and_wider_images_is_refused(tmp_path):
    """Only 8-bit images are divided by 255: a uint8 train beside a float test of the same
    0..255 pixels trained on [0, 1] and was scored on [0, 255], a test ELBO of -1e14."""
    path = tmp_path / "mixed.npz"
    for other in (np.float32, np.int16, bool):
        wide = np.full((2, 4, 4), 200).astype(other)
        np.savez(path, train=np.full((6, 4, 4), 200, np.uint8), test=wide)
        with pytest.raises(DataError, match=rf"mixed.npz: train images .*mixed.npz\[train\] are "
                                            rf"uint8 but test images .* are {wide.dtype.name}"):
            load_dataset(str(path))
        if other is not bool:   # IDX has no bool type
            write_idx(tmp_path / "train-images-idx3-ubyte", wide)
            write_idx(tmp_path / "t10k-images-idx3-ubyte", np.full((2, 4, 4), 200, np.uint8))
            with pytest.raises(DataError, match=rf"mnist: train images .*train-images-idx3-ubyte "
                                                rf"are {wide.dtype.name} but test images "
                                                r".*t10k-images-idx3-ubyte are uint8"):
                load_dataset("mnist", tmp_path)
    np.savez(path, train=np.full((6, 4, 4), 200, np.uint8),
             test=np.full((2, 4, 4), 100, np.int8))   # both 8-bit: both divided
    ds = load_dataset(str(path))
    assert float(ds.train.max()) == pytest.approx(200 / 255)
    assert float(ds.test.max()) == pytest.approx(100 / 255)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs symlinks and FIFOs")
def test_a_symlink_loop_or_a_fifo_is_one_data_error(tmp_path):
    loop = tmp_path / "loop.npy"
    os.symlink(loop, loop)   # Path.resolve raised RuntimeError for it
    with pytest.raises(DataError, match="loop.npy not found"):
        load_dataset(str(loop))
    fifo = tmp_path / "fifo.npy"
    os.mkfifo(fifo)   # exists, so "not found" would mislead; opening it would block
    with pytest.raises(DataError, match="fifo.npy is not a regular file"):
        load_dataset(str(fifo))
