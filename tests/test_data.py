"""Datasets: the embedded digits, IDX files (written here), .npy/.npz, and clear
errors for missing or malformed files."""
import copy
import gzip
import os
import re
import sys

import numpy as np
import pytest
import torch

from fastvae import data
from fastvae.data import DataError, load_dataset, load_run_dataset, read_idx, write_idx


def test_digits_fixed_split_in_unit_range():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.shape == (1, 8, 8)
    assert len(a.train) + len(a.test) == 1797 and len(a.test) == 359
    assert float(a.train.min()) == 0.0 and float(a.train.max()) == 1.0
    assert a.train.dtype == torch.float32
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    # The split is a partition of all 1797 images (compare as sorted rows).
    from sklearn.datasets import load_digits

    rows = sorted(map(tuple, torch.cat([a.train, a.test]).reshape(-1, 64).tolist()))
    want = sorted(map(tuple, (load_digits().images.reshape(-1, 64) / 16.0).tolist()))
    assert rows == want


def test_digits_are_scikit_learns_read_without_importing_it(monkeypatch, tmp_path):
    """From the file scikit-learn ships them in (its import is most of a short run's
    start); through its loader where the file is elsewhere; a one-line error without it."""
    import importlib.util

    from sklearn.datasets import load_digits
    want = load_digits().images
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)   # importing it fails now
    got = data._digits_images()
    assert got.dtype == want.dtype and np.array_equal(got, want)
    monkeypatch.undo()
    real = importlib.util.find_spec

    def elsewhere(name, *args):
        spec = real(name, *args)
        if name == "sklearn":   # a copy: an imported package's spec is its own
            spec = copy.copy(spec)
            spec.submodule_search_locations = [str(tmp_path)]
        return spec
    monkeypatch.setattr(importlib.util, "find_spec", elsewhere)
    assert np.array_equal(data._digits_images(), want)
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "sklearn", None)   # as if not installed
    with pytest.raises(DataError, match=r"needs scikit-learn: pip install 'fastvae\[train\]'"):
        data.load_digits()


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_idx_round_trip(tmp_path, suffix, dtype):
    arr = (np.arange(2 * 3 * 5) % 200).astype(dtype).reshape(2, 3, 5)
    path = tmp_path / f"x-idx3-ubyte{suffix}"
    write_idx(path, arr)
    out = read_idx(path)
    assert out.shape == (2, 3, 5) and np.array_equal(out, arr)


def _fake_mnist(folder, n_train=20, n_test=10, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    ext = ".gz" if gz else ""
    write_idx(folder / f"train-images-idx3-ubyte{ext}", rng.randint(0, 256, (n_train, 28, 28)).astype(np.uint8))
    write_idx(folder / f"t10k-images-idx3-ubyte{ext}", rng.randint(0, 256, (n_test, 28, 28)).astype(np.uint8))


@pytest.mark.parametrize("layout", ["", "MNIST/raw", "mnist"])
def test_mnist_from_idx_files(tmp_path, layout):
    _fake_mnist(tmp_path / layout if layout else tmp_path, gz=layout != "mnist")
    ds = load_dataset("mnist", tmp_path)
    assert ds.train.shape == (20, 1, 28, 28) and ds.test.shape == (10, 1, 28, 28)
    assert float(ds.train.max()) <= 1.0 and float(ds.train.min()) >= 0.0
    raw = read_idx(tmp_path / layout / ("train-images-idx3-ubyte" + (".gz" if layout != "mnist" else "")))
    assert torch.allclose(ds.train[:, 0], torch.from_numpy(raw.astype(np.float32) / 255))


def test_fashion_mnist_uses_its_folder(tmp_path):
    _fake_mnist(tmp_path / "FashionMNIST" / "raw")
    assert load_dataset("fashion-mnist", tmp_path).train.shape == (20, 1, 28, 28)


def test_missing_idx_says_what_where_and_how(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("mnist", tmp_path)
    msg = str(e.value)
    assert "train-images-idx3-ubyte" in msg and str(tmp_path) in msg and "To get it" in msg


def test_download_without_torchvision_says_so(tmp_path, monkeypatch):
    """--download without torchvision: the missing piece is named, not a bare "not found"."""
    monkeypatch.setitem(__import__("sys").modules, "torchvision", None)   # import fails
    with pytest.raises(DataError, match=r"--download fetches it with torchvision, which does "
                                        r"not import here .*pip install torchvision"):
        load_dataset("mnist", tmp_path, download=True)


def test_truncated_idx(tmp_path):
    _fake_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated") as e:
        load_dataset("mnist", tmp_path)
    assert str(path) in str(e.value)
    path.write_bytes(b"\x00\x00\x08\x03\x00")  # header cut short
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_wrong_magic_and_labels_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"PK\x03\x04 not an idx file at all")
    with pytest.raises(DataError, match="magic") as e:
        read_idx(path)
    assert str(path) in str(e.value)
    write_idx(path, np.zeros(20, dtype=np.uint8))  # a labels file (idx1) in the images' place
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28), dtype=np.uint8))
    with pytest.raises(DataError, match="labels"):
        load_dataset("mnist", tmp_path)
    # colour images (N, H, W, C) are no labels file: the shape alone is said
    write_idx(path, np.zeros((2, 28, 28, 3), dtype=np.uint8))
    with pytest.raises(DataError, match=r"got shape \(2, 28, 28, 3\)$"):
        load_dataset("mnist", tmp_path)


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00" * 1000)[:20])
    with pytest.raises(DataError, match=str(path.name)):
        read_idx(path)


def test_npy_and_npz(tmp_path, monkeypatch):
    imgs = np.random.RandomState(0).randint(0, 256, (50, 12, 10)).astype(np.uint8)
    np.save(tmp_path / "a.npy", imgs)
    ds = load_dataset(str(tmp_path / "a.npy"))
    assert ds.train.shape == (40, 1, 12, 10) and ds.test.shape == (10, 1, 12, 10)
    assert float(ds.train.max()) <= 1.0
    rgb = np.random.RandomState(1).rand(30, 6, 6, 3).astype(np.float32)  # NHWC floats
    np.savez(tmp_path / "b.npz", train=rgb[:20], test=rgb[20:])
    ds = load_dataset(str(tmp_path / "b.npz"))
    assert ds.train.shape == (20, 3, 6, 6) and ds.test.shape == (10, 3, 6, 6)
    assert torch.allclose(ds.train[3], torch.from_numpy(rgb[3]).permute(2, 0, 1))
    np.savez(tmp_path / "c.npz", images=imgs)
    assert load_dataset(str(tmp_path / "c.npz")).shape == (1, 12, 10)
    np.save(tmp_path / "UP.npy", imgs)   # a file named in capitals, from its own folder
    (tmp_path / "UP.npy").rename(tmp_path / "UP.NPY")
    monkeypatch.chdir(tmp_path)
    assert load_dataset("UP.NPY").shape == (1, 12, 10)
    # the last axis is channels where it holds 1 to 4 values and axis 1 does not; otherwise
    # NCHW. Two channels last were read as NCHW (8 channels of 8 x 2): a run trained so
    # keeps that layout (its checkpoint's shape), a new one reads the channels
    for shape, want in (((20, 8, 8, 3), (3, 8, 8)), ((20, 8, 8, 2), (2, 8, 8)),
                        ((20, 2, 8, 8), (2, 8, 8)), ((20, 3, 3, 3), (3, 3, 3))):
        np.save(tmp_path / "d.npy", np.zeros(shape, np.uint8))
        assert load_dataset(str(tmp_path / "d.npy")).shape == want, shape
    two = np.arange(20 * 8 * 8 * 2, dtype=np.float32).reshape(20, 8, 8, 2) / 2560
    np.save(tmp_path / "d.npy", two)
    for run_shape, layout in (([8, 8, 2], lambda t: t),
                              ([2, 8, 8], lambda t: t.permute(2, 0, 1))):
        got = load_run_dataset(str(tmp_path / "d.npy"), run_shape=run_shape).train[0]
        i = round(float(got.flatten()[0]) * 2560 / 128)   # which image the split put first
        assert torch.equal(got, layout(torch.from_numpy(two[i]))), run_shape


def test_bad_array_files(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"this is not a zip archive")
    with pytest.raises(DataError, match="bad.npz is not an .npy/.npz array file"):
        load_dataset(str(bad))
    text = tmp_path / "text.npy"   # numpy would call any non-.npy file pickled objects
    text.write_text("1 2 3\n4 5 6\n")
    with pytest.raises(DataError, match=r"text.npy is not an .npy/.npz array file \(a text"):
        load_dataset(str(text))
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty.npy .*\(it is empty\)"):
        load_dataset(str(tmp_path / "empty.npy"))
    good = tmp_path / "t.npz"
    np.savez(good, images=np.zeros((10, 4, 4), np.uint8))
    truncated = tmp_path / "trunc.npz"
    truncated.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(DataError, match="trunc.npz"):
        load_dataset(str(truncated))
    import zipfile   # a zip whose member is no .npy: numpy hands back its bytes
    with zipfile.ZipFile(tmp_path / "csv.npz", "w") as z:
        z.writestr("images.csv", "0,1,0")
    with pytest.raises(DataError, match=r"csv.npz\[images.csv\]: expected a .npy array, got "
                                        r"a bytes"):
        load_dataset(str(tmp_path / "csv.npz"))
    for name in ("images.pt", "images.npz"):   # torch.save's zip, whatever its name
        torch.save({"train": torch.zeros(4, 2, 2), "test": torch.zeros(2, 2, 2)},
                   tmp_path / name)
        with pytest.raises(DataError, match=rf"{name} is a torch.save file, not an .npy/.npz "
                                            r"array file; save the images with numpy.save"):
            load_dataset(str(tmp_path / name))
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="obj.npy"):
        load_dataset(str(obj))
    np.save(tmp_path / "complex.npy", np.full((4, 2, 2), 0.5 + 0.5j))
    with pytest.raises(DataError, match=r"complex.npy: expected a real .*complex128"):
        load_dataset(str(tmp_path / "complex.npy"))
    np.savez(tmp_path / "two.npz", a=np.zeros((4, 2, 2)), b=np.zeros((4, 2, 2)))
    with pytest.raises(DataError, match="keys"):
        load_dataset(str(tmp_path / "two.npz"))
    for shape in ((200, 0), (5, 0, 3), (5, 3, 0, 2)):   # images without a single value
        np.save(tmp_path / "hollow.npy", np.zeros(shape, np.float32))
        # the file's own shape, not the (N, C, H, W) it was read as
        with pytest.raises(DataError, match=rf"hollow.npy: each image holds no values "
                                            rf"\(shape {re.escape(str(shape))}\)"):
            load_dataset(str(tmp_path / "hollow.npy"))
    np.save(tmp_path / "flat5d.npy", np.zeros((2, 1, 1, 1, 1)))
    with pytest.raises(DataError, match="shape"):
        load_dataset(str(tmp_path / "flat5d.npy"))
    with pytest.raises(DataError, match="not found"):
        load_dataset(str(tmp_path / "nope.npz"))
    with pytest.raises(DataError, match="is a folder"):
        load_dataset(str(tmp_path) + os.sep)
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("cifar")


def test_idx_header_whose_size_overflows_int64(tmp_path):
    """2**31 x 2**31 x 4 bytes is 2**64: in int64 that wraps to 0 and matched an empty body."""
    import struct

    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2 ** 31, 2 ** 31, 4))
    with pytest.raises(DataError, match="truncated") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_train_and_test_images_of_different_sizes(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(DataError, match="28, 28.*32, 32") as e:
        load_dataset("mnist", tmp_path)
    assert "train-images-idx3-ubyte" in str(e.value) and "t10k-images-idx3-ubyte" in str(e.value)
    np.savez(tmp_path / "mixed.npz", train=np.zeros((4, 6, 6), np.uint8),
             test=np.zeros((2, 5, 5), np.uint8))
    with pytest.raises(DataError, match="mixed.npz"):
        load_dataset(str(tmp_path / "mixed.npz"))


@pytest.mark.parametrize("dtype,scaled", [(np.uint8, True), (np.int8, True), (np.int16, False),
                                          (np.int32, False), (np.float32, False)])
def test_only_8_bit_integers_are_divided_by_255(tmp_path, dtype, scaled):
    arr = np.zeros((10, 3, 3), dtype)
    arr[:, 1, 1] = 1
    np.save(tmp_path / "a.npy", arr)
    ds = load_dataset(str(tmp_path / "a.npy"))
    assert float(torch.cat([ds.train, ds.test]).max()) == pytest.approx(1 / 255 if scaled else 1.0)
    write_idx(tmp_path / "train-images-idx3-ubyte", arr)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", arr[:2])
    ds = load_dataset("mnist", tmp_path)
    assert float(ds.train.max()) == pytest.approx(1 / 255 if scaled else 1.0)


def test_a_refused_range_says_8_bit_integers_were_divided(tmp_path):
    """An int8 file holding -128 is refused for a Bernoulli or DMoL decoder as -0.502: the
    message says that division happened, so the values it quotes are the file's."""
    from fastvae import dmol_training
    from fastvae.run_data import check_run_data

    arr = np.zeros((10, 3, 3), np.int8)
    arr[:, 0, 0], arr[:, 1, 1] = -128, 127
    path = tmp_path / "a.npy"
    np.save(path, arr)
    ds = load_dataset(str(path))
    said = r"got \[-0.50196\d*, 0.49803\d*\] \(its 8-bit integers divided by 255\)"
    with pytest.raises(DataError, match=said):
        check_run_data(ds, "bernoulli", None, "ckpt", saved=False)
    with pytest.raises(DataError, match=said.replace("got", "got values in")):
        dmol_training.prepare(ds, "discretized_logistic_mixture")
    np.save(path, arr.astype(np.float32))       # values as they are: nothing to say
    with pytest.raises(DataError, match=r"got \[-128, 127\]; rescale") as e:
        check_run_data(load_dataset(str(path)), "bernoulli", None, "ckpt", saved=False)
    assert "divided" not in str(e.value)


def test_digits_docstring_states_the_split_it_makes():
    ds = load_dataset("digits")
    split = f"{len(ds.train)}/{len(ds.test)}"
    assert split in data.load_digits.__doc__
    assert "1437/360" not in (data.__doc__ or "") + data.load_digits.__doc__


def test_a_range_names_bounds_that_differ_from_their_neighbours():
    """1 + 2^-23 is out of [0, 1]: a message that printed it as 1 contradicted itself."""
    from fastvae.data import value_range
    assert value_range(0.0, 255.0) == "[0, 255]"
    assert value_range(-0.5, float(np.nextafter(np.float32(1), np.float32(2)))) == \
        "[-0.5, 1.0000001192092896]"


@pytest.mark.parametrize("labels_at", ["train", "test"])
def test_a_labels_file_beside_float_images_is_named_as_such_not_as_a_scale(tmp_path, labels_at):
    """The labels file (8-bit) beside float32 images differs in scale too; the shape says
    what is wrong with it, the scale would send the user to re-store the images."""
    files = {"train": tmp_path / "train-images-idx3-ubyte",
             "test": tmp_path / "t10k-images-idx3-ubyte"}
    for split, path in files.items():
        write_idx(path, np.zeros(20, dtype=np.uint8) if split == labels_at
                  else np.zeros((2, 28, 28), dtype=np.float32))
    with pytest.raises(DataError, match="is this a labels file") as e:
        load_dataset("mnist", tmp_path)
    assert str(files[labels_at]) in str(e.value) and "dtype" not in str(e.value)
