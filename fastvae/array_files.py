"""The files images come in, read without knowing what they are for: IDX (MNIST's format,
raw or gzip) and numpy's .npy/.npz. Every problem with a file is a :class:`DataError`
naming it; :mod:`fastvae.data` turns the arrays into datasets."""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

# IDX type codes -> big-endian numpy dtypes (the format stores everything big-endian).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataError(Exception):
    """A dataset file is missing, unreadable or not what it should be."""


def read_idx(path) -> np.ndarray:
    """Read one IDX file (raw or gzip-compressed) into a numpy array.

    Format: two zero bytes, a type code, the number of dims ``n``; then ``n``
    big-endian uint32 sizes; then the data, big-endian. Raises :class:`DataError`
    for a wrong magic number, an unknown type or a truncated file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            raw = gzip.decompress(f.read()) if head == b"\x1f\x8b" else f.read()
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(
            f"{path} is not an IDX file (wrong magic number {raw[:4].hex() or 'empty'}; "
            "expected 0000 then a type code such as 08 for unsigned bytes)"
        )
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path} is truncated: the header promises {ndim} dims")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    want = math.prod(dims) * dtype.itemsize  # Python ints: np.int64 wraps at 2**63
    body = len(raw) - 4 - 4 * ndim
    if body != want:
        what = "truncated" if body < want else "longer than its header says"
        raise DataError(f"{path} is {what}: header says shape {dims} ({want} bytes), "
                        f"found {body} bytes of data")
    return np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(dims)


def write_idx(path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (``.gz`` name -> gzip). Used by tests and tools."""
    array = np.asarray(array)
    codes = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C,
             np.float32: 0x0D, np.float64: 0x0E}
    code = codes[array.dtype.type]
    data = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(_IDX_DTYPES[code]).tobytes()
    Path(path).write_bytes(gzip.compress(data) if str(path).endswith(".gz") else data)


def read_arrays(path: Path) -> dict:
    """The array of an .npy (key "") or the members of an .npz that are used: a train and
    test pair (train/test or x_train/x_test, in that order), else its only member. Other
    members, a metadata object array say, are neither read nor refused."""
    def bad(e, member=""):
        return DataError(f"{path}{member} is not a readable .npy/.npz array file "
                         f"(corrupt, truncated or pickled objects?): {e}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as e:  # numpy/zipfile/zlib raise many types for a bad file
        raise bad(e) from None
    if not hasattr(loaded, "files"):  # an .npy
        return {"": loaded}
    with loaded:
        files = loaded.files
        if any(k == "data.pkl" or k.endswith("/data.pkl") for k in files):
            # torch.save's zip: numpy lists its members; unpickling it could run code
            raise DataError(f"{path} is a torch.save file, not an .npy/.npz array file; save "
                            "the images with numpy.save(path, tensor.numpy())")
        used = next(([tr, te] for tr, te in (("train", "test"), ("x_train", "x_test"))
                     if tr in files and te in files), None)
        if used is None and len(files) != 1:
            raise DataError(f"{path}: an .npz needs keys train/test (or x_train/x_test) or a "
                            f"single array, found keys {sorted(files)}")
        arrays = {}
        for k in used or files:
            try:
                arrays[k] = loaded[k]
            except Exception as e:
                raise bad(e, f"[{k}]") from None
    return arrays


def check_array_magic(path: Path) -> None:
    """DataError for a file that is neither an .npy nor a zip (.npz): numpy would read
    any other file as a pickle and say it holds pickled objects."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise DataError(f"dataset file {path} cannot be read: {e.strerror or e}") from None
    if not head.startswith((b"\x93NUMPY", b"PK")):
        what = "it is empty" if not head else "a text or other file?"
        raise DataError(f"{path} is not an .npy/.npz array file ({what}); write images "
                        "with numpy.save or numpy.savez")
