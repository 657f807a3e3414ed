"""The Triton backend's launch helpers (fastvae/backends/triton_backend/_launch.py),
checked without running a kernel: ``launch`` switches to the tensors' CUDA device,
``dummy`` is one dedicated stand-in per dtype for absent pointers; and the tile mode
(configs.interpreter_tiles), asked several times per launch, reads TRITON_INTERPRET once."""
import contextlib

import pytest
import torch

pytest.importorskip("triton")
from fastvae import _env  # noqa: E402
from fastvae.backends.triton_backend import _launch, configs  # noqa: E402


class FakeCudaTensor:
    def __init__(self, index):
        self.device = torch.device("cuda", index)


class FakeKernel:
    def __init__(self, log):
        self.log = log

    def __getitem__(self, grid):
        return lambda **args: self.log.append(("launch", grid, sorted(args)))


@pytest.mark.parametrize("index,current,switched", [(1, 0, True), (0, 0, False)])
def test_launch_runs_on_the_tensors_device(monkeypatch, index, current, switched):
    """Triton launches on the current device: tensors on another GPU switch it for the
    launch (and only then), instead of running on the wrong device's stream. Keyword
    arguments only, passed through as given, with the compile options every launch sets."""
    log = []

    @contextlib.contextmanager
    def device(d):
        log.append(("enter", torch.device(d)))
        yield
        log.append(("exit", torch.device(d)))

    monkeypatch.setattr(_launch, "Tensor", FakeCudaTensor)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    monkeypatch.setattr(torch.cuda, "device", device)
    _launch.launch(FakeKernel(log), (3,), c=1.0, X=FakeCudaTensor(index), Y=FakeCudaTensor(index),
                   BLOCK=4)
    cuda = torch.device("cuda", index)
    launched = ("launch", (3,), sorted(["BLOCK", "X", "Y", "c", *_launch.OPTIONS]))
    assert log == ([("enter", cuda), launched, ("exit", cuda)] if switched else [launched])


def test_launch_on_cpu_tensors_never_touches_cuda(monkeypatch):
    log = []
    monkeypatch.setattr(torch.cuda, "current_device",
                        lambda: pytest.fail("asked CUDA for the current device"))
    _launch.launch(FakeKernel(log), (1,), X=torch.zeros(2), n=3)
    assert log == [("launch", (1,), sorted(["X", "n", *_launch.OPTIONS]))]


def test_launch_takes_keyword_arguments_only():
    with pytest.raises(TypeError):
        _launch.launch(FakeKernel([]), (1,), torch.zeros(2))


def test_dummy_is_one_stand_in_per_dtype():
    """An absent pointer gets a dummy of the dtype the real tensor would have (the JIT
    specializes on pointer element types), never another input."""
    a = _launch.dummy(torch.bfloat16, "cpu")
    assert a.dtype == torch.bfloat16 and a.numel() == 1
    assert _launch.dummy(torch.bfloat16, torch.device("cpu")) is a
    assert _launch.dummy(torch.float32, "cpu") is not a
    x = torch.zeros(3)
    assert _launch.given(x, torch.float16, "cpu") is x
    assert _launch.given(None, torch.float16, "cpu") is _launch.dummy(torch.float16, "cpu")


@pytest.fixture
def fresh_mode(monkeypatch):
    """Tile mode from the environment, read afresh; read afresh again after the test (its
    own TRITON_INTERPRET is gone by the next call, which reads the real one)."""
    monkeypatch.setattr(configs, "CONFIG_MODE", None)
    configs.reset_interpreting()
    yield
    configs.reset_interpreting()


def test_the_tile_mode_reads_the_environment_once(monkeypatch, fresh_mode):
    # os.environ.get cost ~1.5 us a call where the variable is unset, several calls a step
    reads = []
    real = _env.interpreting
    monkeypatch.setattr(_env, "interpreting", lambda: reads.append(1) or real())
    first = configs.interpreter_tiles()
    assert all(configs.interpreter_tiles() is first for _ in range(5)) and len(reads) == 1


@pytest.mark.parametrize("value, want", [("1", True), ("0", False), (None, False)])
def test_the_tile_mode_follows_a_changed_environment_after_a_reset(monkeypatch, fresh_mode,
                                                                    value, want):
    configs.interpreter_tiles()   # read before the change
    if value is None:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    else:
        monkeypatch.setenv("TRITON_INTERPRET", value)
    configs.reset_interpreting()
    assert configs.interpreter_tiles() is want
    monkeypatch.setattr(configs, "CONFIG_MODE", "interpret" if not want else "gpu")
    assert configs.interpreter_tiles() is not want   # the tests' override still wins


def test_a_contiguous_inputs_gradient_is_allocated_without_keywords(monkeypatch):
    """A gradient in its contiguous input's dtype is ``torch.empty_like(t)`` (keywords cost
    ~0.15 us an allocation, three a step); any other stays contiguous in its dtype."""
    from fastvae.backends.triton_backend import _rows
    x = torch.rand(4, 6)
    wide = torch.randn(4, 9)[:, :6]    # rows of unit stride, row stride 9
    half = torch.randn(4, 3, dtype=torch.float16)
    mu = torch.randn(4, 3)
    inputs = (x, wide, half, mu, None)
    dtypes = _rows.gradient_dtypes(inputs, [False, True, True, True, False])
    assert dtypes == (None, torch.float32, torch.float32, _launch.SAME, None)
    grads = _rows.gradient_buffers(inputs, dtypes, [False, True, True, True, False], False,
                                   False, 1, None, x.device)
    for g, t, dtype in zip(grads[1:4], inputs[1:4], dtypes[1:4]):
        assert g.shape == t.shape and g.is_contiguous()
        assert g.dtype == (t.dtype if dtype is _launch.SAME else dtype)
    made = []
    real = _launch.alloc   # a replaced alloc (the tests' NaN poison) sees these too
    monkeypatch.setattr(_launch, "alloc", lambda *a: made.append(a) or real(*a))
    _rows.gradient_buffers(inputs, dtypes, [False, True, True, True, False], False, False, 1,
                           None, x.device)
    assert [a[1] for a in made] == [torch.float32] * 3
