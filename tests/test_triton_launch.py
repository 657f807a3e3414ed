"""Host-side launch logic of the Triton backend, checked without running a kernel."""
import contextlib

import pytest
import torch

pytest.importorskip("triton")
from fastvae.backends import triton_backend as tb  # noqa: E402


class FakeCudaTensor:
    def __init__(self, index):
        self.device = torch.device("cuda", index)


class FakeKernel:
    def __init__(self, log):
        self.log = log

    def __getitem__(self, grid):
        return lambda *args, **meta: self.log.append(("launch", grid))


@pytest.mark.parametrize("index,current,switched", [(1, 0, True), (0, 0, False)])
def test_launch_runs_on_the_tensors_device(monkeypatch, index, current, switched):
    """Triton launches on the current device: tensors on another GPU switch it for the
    launch (and only then), instead of running on the wrong device's stream."""
    log = []

    @contextlib.contextmanager
    def device(d):
        log.append(("enter", torch.device(d)))
        yield
        log.append(("exit", torch.device(d)))

    monkeypatch.setattr(tb, "Tensor", FakeCudaTensor)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    monkeypatch.setattr(torch.cuda, "device", device)
    tb._launch(FakeKernel(log), (3,), 1.0, FakeCudaTensor(index), FakeCudaTensor(index), BLOCK=4)
    cuda = torch.device("cuda", index)
    want = [("enter", cuda), ("launch", (3,)), ("exit", cuda)] if switched else [("launch", (3,))]
    assert log == want


def test_launch_on_cpu_tensors_never_touches_cuda(monkeypatch):
    log = []
    monkeypatch.setattr(torch.cuda, "current_device",
                        lambda: pytest.fail("asked CUDA for the current device"))
    tb._launch(FakeKernel(log), (1,), torch.zeros(2), 3)
    assert log == [("launch", (1,))]
