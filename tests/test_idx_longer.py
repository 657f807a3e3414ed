"""`body != want` -> `body < want` passes: an IDX file longer than its header says
is not pinned as refused."""
import numpy as np
import pytest

from fastvae.data import DataError, read_idx, write_idx


def test_an_idx_file_longer_than_its_header_is_refused(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path, np.zeros((2, 3, 3), np.uint8))
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(DataError, match=r"is longer than its header says: header says shape "
                                        r"\(2, 3, 3\) \(18 bytes\), found 19 bytes of data"):
        read_idx(path)
