"""fastvae.testing: the comparison rule shared by the tests and the benchmarks."""
import pytest
import torch

from fastvae import testing


def test_within_the_dtype_tolerance_passes_and_beyond_fails():
    want = torch.tensor([100.0, 1.0, -3.0], dtype=torch.float64)
    rtol, atol = testing.tolerance(torch.float32)
    # atol scales with max|want| (100): a small element may be off by that much.
    ok = want + torch.tensor([0.0, 0.9 * atol * 100, 0.0], dtype=torch.float64)
    testing.assert_close("ok", ok, want, torch.float32)
    bad = want * (1 + 2 * (rtol + atol))
    with pytest.raises(AssertionError, match=r"^bad: 1 of 3 values differ.*flat index 0"):
        testing.assert_close("bad", bad, want, torch.float32)


def test_tolerances_grow_with_lower_precision():
    order = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
    rtols = [testing.tolerance(d)[0] for d in order]
    assert rtols == sorted(rtols)
    assert testing.tolerance(torch.int64) == testing.TOLERANCES[torch.float32]


@pytest.mark.parametrize("got, want, message", [
    (None, None, None),
    (torch.ones(2), None, "one side has no value"),
    (torch.ones(2), torch.ones(3), "shape"),
    (torch.tensor([1.0, float("nan")]), torch.ones(2), "non-finite"),
    # a NaN or inf reference made the tolerance NaN or inf: any finite got passed
    (torch.tensor([5.0, 100.0, -3.0]), torch.tensor([float("nan"), 1.0, 2.0]),
     "the reference has 1 non-finite of 3"),
    (torch.tensor([5.0, 100.0]), torch.tensor([float("inf"), 1.0]), "reference has 1 non-finite"),
    (torch.empty(0), torch.empty(0), None),
])
def test_edge_cases(got, want, message):
    if message is None:
        testing.assert_close("x", got, want, torch.float32)
    else:
        with pytest.raises(AssertionError, match=message):
            testing.assert_close("x", got, want, torch.float32)
