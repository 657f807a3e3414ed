"""The Triton backend's per-launch scratch buffers (``_launch.scratch``) stay bounded over
many shapes: a buffer per batch or latent size ever seen would grow without end in a
workload of varying sizes (an eval's last, smaller batch; a sweep). Checked on the CPU:
nothing is launched."""
import pytest
import torch

pytest.importorskip("triton")
from fastvae.backends.triton_backend import _launch  # noqa: E402


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(_launch, "_scratch", {})
    monkeypatch.setattr(_launch, "_scratch_bases", {}, raising=False)


def test_scratch_over_1000_shapes_keeps_a_few_buffers(fresh):
    dev = torch.device("cpu")
    memory = set()   # the storages handed out, each alive until the end (the module's)
    for b in range(1, 1001):   # sample_with_kl's (chunks, B) partials, one per batch size
        buf = _launch.scratch((4, b), torch.float32, dev)
        assert buf.shape == (4, b) and buf.is_contiguous() and buf.dtype == torch.float32
        memory.add(buf.untyped_storage().data_ptr())
    for l in range(1, 1001):   # the free-bits clamp's (programs, L) partials
        memory.add(_launch.scratch((132, l), torch.float32, dev).untyped_storage().data_ptr())
    # powers of two up to 4 * 1000 and 132 * 1000 elements: 18 buffers, not 2000
    assert len(memory) <= 18
    assert len(_launch._scratch) <= 256


def test_scratch_of_a_shape_is_the_same_memory_every_call(fresh):
    # a captured CUDA graph replays the launch on the buffer it saw: the memory of a shape
    # never changes, also after its view was dropped with the others
    dev = torch.device("cpu")
    first = _launch.scratch((3, 7), torch.float32, dev).data_ptr()
    assert _launch.scratch((3, 7), torch.float32, dev).data_ptr() == first
    for b in range(1, 600):
        _launch.scratch((1, b), torch.float32, dev)
    assert _launch.scratch((3, 7), torch.float32, dev).data_ptr() == first
    assert _launch.scratch((3, 7), torch.float64, dev).dtype == torch.float64
