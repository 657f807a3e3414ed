"""An integer array file holding values past 2**24 is refused with a DataError naming the
value and the limit: float32 would round them (16777217 reads as 16777216), and pixel values
that large mean a wrong file. Before, it trained on the rounded values without a word."""
import numpy as np
import pytest

from fastvae.cli import main
from fastvae.data import F32_EXACT_INT, DataError, load_array_file


@pytest.mark.parametrize("dtype, value", [(np.int32, F32_EXACT_INT + 1), (np.int64, -2 ** 40),
                                          (np.uint32, 2 ** 32 - 1)])
def test_integers_past_2_24_are_refused(tmp_path, dtype, value):
    images = np.zeros((10, 4, 4), dtype)
    images[3, 1, 2] = value
    np.save(tmp_path / "x.npy", images)
    with pytest.raises(DataError, match=rf"value of {value} is past 2\*\*24 \(16777216\)"):
        load_array_file(tmp_path / "x.npy")


def test_integers_up_to_2_24_are_read_exactly(tmp_path):
    images = np.zeros((10, 4, 4), np.int64)
    images[0, 0, 0], images[1, 0, 0] = F32_EXACT_INT, -F32_EXACT_INT
    np.save(tmp_path / "x.npy", images)
    data = load_array_file(tmp_path / "x.npy")
    values = set(data.train.flatten().tolist()) | set(data.test.flatten().tolist())
    assert {float(F32_EXACT_INT), float(-F32_EXACT_INT)} <= values


def test_the_command_says_it_in_one_line(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.full((10, 4, 4), 2 ** 30, np.int32))
    status = main(["train", "--dataset", str(tmp_path / "x.npy"), "--out", str(tmp_path / "r"),
                   "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert status != 0 and len(err.splitlines()) == 1 and "past 2**24" in err, err
