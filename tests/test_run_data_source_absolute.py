"""run_data_source returning the moved array file relative to the cwd passes the
suite; the path goes into a resumed run's checkpoint, which must find it from anywhere."""
import os

import numpy as np

from fastvae.data import run_data_source


def test_a_moved_array_file_is_returned_as_an_absolute_path(tmp_path, monkeypatch):
    (tmp_path / "moved").mkdir()
    np.save(tmp_path / "moved" / "x.npy", np.zeros((4, 2, 2), np.float32))
    monkeypatch.chdir(tmp_path)
    dataset, data_dir = run_data_source("/gone/x.npy", "moved")
    assert dataset == str(tmp_path / "moved" / "x.npy") and os.path.isabs(dataset)
    assert data_dir == "moved"
