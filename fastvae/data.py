"""Datasets for the training command: images as float32 tensors ``(N, C, H, W)``.

* ``digits`` (default): scikit-learn's 1,797 handwritten 8x8 digits, shipped inside
  the scikit-learn package (no download), scaled to [0, 1] by dividing by 16, split
  1438 train / 359 test by a fixed seeded permutation.
* ``mnist``, ``fashion-mnist``: the standard IDX files (``train-images-idx3-ubyte``,
  ``t10k-images-idx3-ubyte``, ``.gz`` or raw), both from one folder: the dataset's own
  under ``data_dir`` (torchvision's ``MNIST/raw``, ``FashionMNIST/raw``; ``mnist/``,
  ``fashion-mnist/``, ``fashion/``) before ``data_dir`` itself; read by
  :func:`read_idx`, scaled to [0, 1] by dividing by 255. The two datasets' standard files
  share names and shapes; the other one's are refused (by their mean pixel). With
  ``download=True`` and torchvision installed, torchvision fetches them where none (or
  only the other dataset's) are found.
* a path to an ``.npy`` / ``.npz`` file of images. 8-bit integers are divided by 255;
  wider integers (up to 2**24, exact in float32) and floats are used as they are.

Every problem with a file is a :class:`DataError` whose message names the file,
where it was looked for and how to get it; train and test images of different shapes
are one too.
"""
from __future__ import annotations

import functools
import hashlib
import math
import ntpath
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .array_files import (DataError, check_array_magic, read_arrays, read_idx,  # noqa: F401
                          write_idx)

SPLIT_SEED = 0          # the fixed train/test split of digits and single-array files
TEST_FRACTION = 0.2
IDX_NAMES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
IDX_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
_HOW_TO_GET = {
    "mnist": "get train-images-idx3-ubyte.gz and t10k-images-idx3-ubyte.gz from "
             "https://ossci-datasets.s3.amazonaws.com/mnist/ (or yann.lecun.com/exdb/mnist)",
    "fashion-mnist": "get train-images-idx3-ubyte.gz and t10k-images-idx3-ubyte.gz from "
                     "https://github.com/zalandoresearch/fashion-mnist (data/fashion)",
}


@dataclass
class Dataset:
    """Train and test images, float32 ``(N, C, H, W)``."""

    name: str
    train: torch.Tensor
    test: torch.Tensor
    scaled: str = ""    # what was done to the file's values on reading, for messages quoting them
    levels: int = 0     # every value is k / levels (scikit-learn's digits: 16); 0: not known

    @property
    def shape(self) -> tuple:
        """One image's shape ``(C, H, W)``."""
        return tuple(self.train.shape[1:])

    @functools.cached_property
    def digest(self) -> str:
        """A hash of the train and test images' values (not their files' bytes: a file
        rewritten with the same images keeps it). A run keeps it, so that --resume and eval
        can tell that a data file was replaced since. Hashed in place (no copy of the
        data), once per dataset."""
        h = hashlib.blake2b(digest_size=16)
        for t in (self.train, self.test):
            h.update(repr(tuple(t.shape)).encode())
            h.update(memoryview(t.detach().to(torch.float32).contiguous().numpy()))
        return h.hexdigest()

    @functools.cached_property
    def bounds(self) -> tuple:
        """(smallest, largest) image value over train and test: read once per dataset, by
        the likelihood's range check and the training stop's advice."""
        pairs = [torch.aminmax(t) for t in (self.train, self.test) if t.numel()]
        return (min((float(lo) for lo, _ in pairs), default=0.0),
                max((float(hi) for _, hi in pairs), default=0.0))

    def quote(self, lo: float, hi: float) -> str:
        """:func:`value_range` of values read from this dataset, saying how the file's own
        values were scaled (a message quoting -0.5 for a file holding -128 would mislead)."""
        return value_range(lo, hi) + (f" ({self.scaled})" if self.scaled else "")


def value_range(lo: float, hi: float) -> str:
    """``[lo, hi]`` with the digits that tell each bound apart from its neighbours (``:g``
    printed 1 + 2^-23 as 1: "needs pixels in [0, 1], got [0, 1]")."""
    def exact(v: float) -> str:
        return f"{v:g}" if float(f"{v:g}") == v else repr(v)
    return f"[{exact(lo)}, {exact(hi)}]"


def _eight_bit(array) -> bool:
    """8-bit integers are pixels: read divided by 255."""
    return (isinstance(array, np.ndarray) and np.issubdtype(array.dtype, np.integer)
            and array.dtype.itemsize == 1)


# The channel counts an axis may hold: gray, two bands (gray and alpha), RGB, RGBA.
CHANNELS = (1, 2, 3, 4)


def _as_images(array: np.ndarray, source: str, run_shape=None) -> torch.Tensor:
    """``(N, H, W)``, ``(N, C, H, W)``, ``(N, H, W, C)`` or ``(N, D)`` -> float32 NCHW.
    ``run_shape``: a saved run's ``(C, H, W)``: an array that run read as NCHW is read so
    again (runs trained before two channels last were read as such keep their layout)."""
    if not isinstance(array, np.ndarray):   # an .npz member that is not a .npy: its bytes
        raise DataError(f"{source}: expected a .npy array, got a {type(array).__name__} (an "
                        "archive member that is not a .npy file?)")
    # complex is a number to numpy, but the float32 cast would drop its imaginary part;
    # a timedelta is one too, and no more an image than a datetime is
    if (array.dtype == object or array.dtype.kind in "cmM"
            or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool)):
        raise DataError(f"{source}: expected a real numeric array of images, got dtype "
                        f"{array.dtype}")
    shape = array.shape
    if array.ndim == 2:
        array = array[:, None, None, :]
    elif array.ndim == 3:
        array = array[:, None]
    elif (array.ndim == 4 and shape[1] not in CHANNELS and shape[3] in CHANNELS
          and (run_shape is None or list(shape[1:]) != list(run_shape))):
        array = array.transpose(0, 3, 1, 2)          # NHWC -> NCHW
    elif array.ndim != 4:
        raise DataError(f"{source}: expected images shaped (N, H, W), (N, C, H, W), (N, H, W, C) "
                        f"or (N, D), got shape {shape}")
    if array.shape[0] == 0:
        raise DataError(f"{source}: the array holds no images (shape {shape})")
    if math.prod(array.shape[1:]) == 0:
        raise DataError(f"{source}: each image holds no values (shape {shape})")
    if _eight_bit(array):
        array = array.astype(np.float32) / 255.0     # 8-bit pixels; wider ints are values
    elif array.dtype.kind in "iu" and array.dtype.itemsize > 2:
        _exact_in_float32(array, source)
    with np.errstate(over="ignore"):   # a wider float past float32's range: said below
        out = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if not bool(torch.isfinite(out).all()):
        if array.dtype.kind == "f" and array.dtype.itemsize > 4 and np.isfinite(array).all():
            raise DataError(f"{source}: values up to {float(np.abs(array).max()):.6g} do not "
                            "fit float32, which training computes in; scale the data")
        raise DataError(f"{source}: the images contain NaN or inf")
    return out


# Integers past 2**24 are rounded to float32's 24-bit significand (16777217 reads as
# 16777216): refused, since pixel values that large come from a wrong file, not images.
F32_EXACT_INT = 2 ** 24


def _exact_in_float32(array: np.ndarray, source: str) -> None:
    lo, hi = int(array.min()), int(array.max())
    worst = hi if hi >= -lo else lo
    if abs(worst) > F32_EXACT_INT:
        raise DataError(f"{source}: an integer value of {worst} is past 2**24 ({F32_EXACT_INT}), "
                        "the largest float32 (which training computes in) holds exactly; pixel "
                        "values are 0 to 255 or 65535: is it the right file? Scale the data")


def _split(images: torch.Tensor, source: str, seed: int = SPLIT_SEED):
    """The fixed, seeded train/test split (test = the first 20% of a permutation)."""
    if len(images) < 2:
        raise DataError(f"{source}: need at least 2 images to split into train and test, got "
                        f"{len(images)}")
    perm = torch.from_numpy(np.random.RandomState(seed).permutation(len(images)))
    n_test = max(1, int(round(len(images) * TEST_FRACTION)))
    return images[perm[n_test:]], images[perm[:n_test]]


def _same_scale(name: str, train, test, train_src, test_src) -> None:
    """DataError where only one of train and test is 8-bit (a non-array: _as_images says)."""
    if (isinstance(train, np.ndarray) and isinstance(test, np.ndarray)
            and _eight_bit(train) != _eight_bit(test)):
        raise DataError(f"{name}: train images {train_src} are {train.dtype.name} but test images "
                        f"{test_src} are {test.dtype.name}: only 8-bit integers are divided by 255, "
                        "so they would be on different scales; store both as the same dtype")


def _pair(name: str, train: torch.Tensor, test: torch.Tensor, train_src, test_src) -> Dataset:
    """A Dataset, once train and test images are known to have the same shape."""
    if train.shape[1:] != test.shape[1:]:
        raise DataError(f"{name}: train images {train_src} are {tuple(train.shape[1:])} but test "
                        f"images {test_src} are {tuple(test.shape[1:])}; they must match")
    return Dataset(name, train, test)


DIGITS_LEVELS = 16   # scikit-learn's digits: integers 0..16
_DIGITS_NEED = "the digits dataset needs scikit-learn: pip install 'fastvae[train]'"


def load_digits() -> Dataset:
    """scikit-learn's 8x8 digits in [0, 1], fixed 1438/359 train/test split."""
    images = torch.from_numpy(_digits_images().astype(np.float32) / DIGITS_LEVELS)[:, None]
    train, test = _split(images, "scikit-learn's digits")
    return Dataset("digits", train, test, levels=DIGITS_LEVELS)


def _digits_images() -> np.ndarray:
    """The (1797, 8, 8) images of ``sklearn.datasets.load_digits``, read from the file
    scikit-learn ships them in without importing it: the import is ~1.8 s of CPU, most of
    what a short ``fastvae train`` on the digits spends before training. Through
    scikit-learn's own loader where the file is not where it keeps it."""
    import importlib.util
    try:
        spec = importlib.util.find_spec("sklearn")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise DataError(_DIGITS_NEED)
    for root in spec.submodule_search_locations or ():
        path = os.path.join(root, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):   # 65 columns: the 64 pixels, then the label
            return np.loadtxt(path, delimiter=",")[:, :-1].reshape(-1, 8, 8)
    try:
        from sklearn.datasets import load_digits as sk_load
    except ImportError:
        raise DataError(_DIGITS_NEED) from None
    return sk_load().images


def _own_folder(data_dir: Path, name: str) -> Path:
    """Where a dataset's IDX files go: its own folder, the first one read (and
    torchvision's), so the other dataset's files of the same names are never in the way."""
    return data_dir / IDX_NAMES[name] / "raw"


def _idx_folders(data_dir: Path, name: str):
    """Where a dataset's IDX files may be, its own folders first: MNIST and Fashion-MNIST
    files have the same names, and ``data_dir`` itself is either one's."""
    own = [_own_folder(data_dir, name), data_dir / name, data_dir / name / "raw"]
    if name == "fashion-mnist":
        own.append(data_dir / "fashion")
    return own + [data_dir]


def _idx_file(folder: Path, split: str):
    base = IDX_FILES[split]
    names = (base, base + ".gz", base.replace("-idx3-", ".idx3-"))
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _find_idx(data_dir: Path, name: str):
    """``({split: path}, None)`` from the first folder that holds both splits' image
    files (never one split from one folder and the other from another), else
    ``(None, why)``."""
    folders, halves = _idx_folders(data_dir, name), []
    for folder in folders:
        paths = {split: _idx_file(folder, split) for split in IDX_FILES}
        if all(paths.values()):
            return paths, None
        halves += [f"{p} without {IDX_FILES[other]}[.gz] beside it"
                   for split, p in paths.items() if p is not None
                   for other in IDX_FILES if other != split]
    why = (f"{name}: {IDX_FILES['train']} and {IDX_FILES['test']} ([.gz]) not found "
           f"together in any of {', '.join(f'{f}/' for f in folders)}")
    if halves:
        why += f" (found {halves[0]})"
    dirs = [f / IDX_FILES[s] for f in folders for s in IDX_FILES
            if (f / IDX_FILES[s]).is_dir()]
    if dirs:
        why += f"; {dirs[0]} is a folder: put the file itself there"
    return None, why


# The standard files' mean pixel (train, test): the two datasets' files share their
# names, sizes and shapes, and this tells them apart where nothing else does.
_MEANS = {"mnist": (0.1307, 0.1325), "fashion-mnist": (0.2860, 0.2868)}
_STANDARD_SIZES = {"train": 60000, "test": 10000}


def _check_not_the_other(name: str, split: str, images: torch.Tensor, path: Path,
                         data_dir: Path) -> None:
    """DataError for the standard files of the other dataset read as ``name``'s."""
    if images.shape != (_STANDARD_SIZES[split], 1, 28, 28):
        return   # not a standard file: a subset, another dataset in IDX form
    mean = float(images.mean(dtype=torch.float64))
    col = 0 if split == "train" else 1
    other = next(n for n in _MEANS if n != name)
    if abs(mean - _MEANS[other][col]) < abs(mean - _MEANS[name][col]):
        raise DataError(
            f"{path} holds {other}'s {split} images, not {name}'s (their pixels average "
            f"{mean:.3f}; {other}'s {_MEANS[other][col]:.3f}, {name}'s {_MEANS[name][col]:.3f})"
            f": put {name}'s files in {_own_folder(data_dir, name)}/ or pass --data-dir "
            "their folder")


def _torchvision_fetch(data_dir: Path, name: str) -> None:
    try:
        import torchvision.datasets as tvd  # optional; not a dependency
    except ImportError as e:  # said, not folded into "not found": --download was asked for
        raise DataError(f"{name}: --download fetches it with torchvision, which does not "
                        f"import here ({e}): pip install torchvision, or {_HOW_TO_GET[name]} "
                        f"and put the files in {_own_folder(data_dir, name)}/") from None
    cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
    try:
        for train in (True, False):
            cls(root=str(data_dir), train=train, download=True)
    except Exception as e:  # network errors come in many types; report, don't crash
        raise DataError(f"{name}: torchvision could not download it ({e}); {_HOW_TO_GET[name]} "
                        f"and put the files in {_own_folder(data_dir, name)}/") from None


def load_idx_dataset(name: str, data_dir, download: bool = False) -> Dataset:
    """MNIST or Fashion-MNIST from IDX files in ``data_dir`` (see module doc). With
    ``download``, torchvision fetches them where none are found, or where those found
    are the other dataset's."""
    data_dir = Path(data_dir if data_dir is not None else "data")
    try:
        return _read_idx_pair(name, data_dir)
    except DataError:
        if not download:
            raise
    _torchvision_fetch(data_dir, name)
    return _read_idx_pair(name, data_dir)


def _read_idx_pair(name: str, data_dir: Path) -> Dataset:
    paths, why = _find_idx(data_dir, name)
    if paths is None:
        raise DataError(f"{why}. To get it: {_HOW_TO_GET[name]} and put the files in "
                        f"{_own_folder(data_dir, name)}/ (or let `fastvae train --download` "
                        "fetch them, with torchvision installed).")
    arrays, out = {split: read_idx(path) for split, path in paths.items()}, {}
    for split, path in paths.items():   # before the scales: a labels file is 8-bit
        if arrays[split].ndim != 3:
            labels = "; is this a labels file?" if arrays[split].ndim == 1 else ""
            raise DataError(f"{path}: expected images (N, H, W), got shape "
                            f"{arrays[split].shape}{labels}")
    _same_scale(name, arrays["train"], arrays["test"], paths["train"], paths["test"])
    for split, path in paths.items():
        out[split] = _as_images(arrays[split], str(path))
        _check_not_the_other(name, split, out[split], path, data_dir)
    return _pair(name, out["train"], out["test"], paths["train"], paths["test"])


def load_array_file(path, run_shape=None) -> Dataset:
    """Images from ``.npy`` (one array, split 80/20) or ``.npz`` (keys ``train``/``test``
    or ``x_train``/``x_test``, else its only array, split 80/20); ``run_shape``: as
    :func:`_as_images` takes it."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"dataset {path} is a folder; pass an .npy/.npz file of images, or "
                        "--dataset mnist|fashion-mnist with --data-dir for IDX files")
    if path.exists() and not path.is_file():   # a FIFO would block the read below
        raise DataError(f"dataset {path} is not a regular file; pass an .npy/.npz file of images")
    if not path.is_file():   # (Path.resolve raises RuntimeError on a symlink loop)
        raise DataError(f"dataset file {path} not found (resolved to {os.path.realpath(path)}); "
                        "a dataset is digits, mnist, fashion-mnist or a path to an .npy/.npz of "
                        "images")
    check_array_magic(path)
    arrays = read_arrays(path)
    scaled = ("its 8-bit integers divided by 255" if any(map(_eight_bit, arrays.values()))
              else "")
    if len(arrays) == 2:   # a train/test pair
        (tr, train), (te, test) = arrays.items()
        _same_scale(path.name, train, test, f"{path}[{tr}]", f"{path}[{te}]")
        data = _pair(path.name, _as_images(train, f"{path}[{tr}]", run_shape),
                     _as_images(test, f"{path}[{te}]", run_shape), f"{path}[{tr}]",
                     f"{path}[{te}]")
    else:
        (key, arr), = arrays.items()
        source = f"{path}[{key}]" if key else str(path)
        data = Dataset(path.name, *_split(_as_images(arr, source, run_shape), source))
    data.scaled = scaled
    return data


def _is_array_file(name: str) -> bool:
    """Whether ``--dataset`` names an .npy/.npz file rather than a named dataset."""
    return (name != "digits" and name not in IDX_NAMES
            and (name.lower().endswith((".npy", ".npz")) or os.sep in name))


def stored_name(name: str) -> str:
    """The dataset as a run's config keeps it: an array file by its absolute path, so that
    ``fastvae eval`` and ``--resume`` find it from any working directory; a named one as is."""
    return os.path.abspath(name) if _is_array_file(name) else name


def check_dataset_name(name: str) -> None:
    """DataError unless ``name`` is a dataset: digits, mnist, fashion-mnist or a path to an
    .npy/.npz file (which need not exist yet: loading it says so)."""
    if name != "digits" and name not in IDX_NAMES and not _is_array_file(name):
        raise DataError(f"unknown dataset {name!r}: use digits, mnist, fashion-mnist or a path "
                        "to an .npy/.npz file of images")


def run_data_source(name: str, data_dir) -> tuple:
    """(dataset, data folder) that ``fastvae eval`` or ``--resume`` reads for a saved run of
    dataset ``name`` (:func:`stored_name`) given ``--data-dir data_dir``: MNIST's and
    Fashion-MNIST's data folder; an array file moved there, by its file name (its contents
    are checked against the run's as ever). Digits reads no folder: ValueError, since the
    flag would be ignored."""
    if name in IDX_NAMES:
        return name, data_dir
    if not _is_array_file(name):
        raise ValueError(f"--data-dir: the run's dataset {name} is not read from a folder "
                         "(--data-dir is MNIST's or Fashion-MNIST's, or the one a run's "
                         ".npy/.npz has moved to); drop --data-dir")
    # the file's name whichever system the run was trained on: a run trained on Windows
    # keeps C:\data\x.npy, whose POSIX basename is all of it (ntpath splits at either
    # separator; a POSIX name holding a backslash is tried as it is first)
    names = dict.fromkeys((os.path.basename(name), ntpath.basename(name)))
    moved = next((m for m in (os.path.abspath(os.path.join(data_dir, n)) for n in names)
                  if os.path.isfile(m)), None)
    if moved is None:
        raise DataError(f"--data-dir {data_dir}: no {ntpath.basename(name)} there (the run was "
                        f"trained on {name})")
    return moved, data_dir


def load_run_dataset(name: str, data_dir=None, download: bool = False,
                     run_shape=None) -> Dataset:
    """:func:`load_dataset` of the dataset a saved run names (:func:`stored_name`): an array
    file gone from the path the run keeps is said as the run's, with what to do (a
    dataset's own advice, which names datasets to pass, is no help to eval or --resume).
    ``run_shape``: the run's saved image shape, which an array file is read in where it
    can be (:func:`_as_images`)."""
    if _is_array_file(name):
        if not os.path.exists(name):
            raise DataError(f"the run was trained on {name}, which is not there now; put the "
                            "file back at that path, or pass --data-dir with the folder it is "
                            "in now (its contents are checked against the run's)")
        return load_array_file(name, run_shape)
    return load_dataset(name, data_dir, download)


def load_dataset(name: str = "digits", data_dir=None, download: bool = False) -> Dataset:
    """``digits`` | ``mnist`` | ``fashion-mnist`` | a path to ``.npy``/``.npz``."""
    check_dataset_name(name)
    if name == "digits":
        return load_digits()
    if name in IDX_NAMES:
        return load_idx_dataset(name, data_dir, download=download)
    return load_array_file(name)
