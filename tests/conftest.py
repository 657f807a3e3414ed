"""Shared pytest fixtures and hooks. Keep additions additive: several suites use this file.

* ``seed``: fixed per test (derived from its node id), printed, overridable.
* ``backend``: runs a test once per backend of the session (tests/_backends.py says which);
  with ``cpu_path`` also on the "torch" backend's aten fallback.
* ``kernel_device``: for Triton-only tests; skips where no kernel can run.
* ``randn_noise``: the "torch" backend draws ``torch.randn``'s eps, as the reference does.
* ``launches``: the names of the Triton kernels launched, in order.
* ``good_run``: one finished tiny training run, shared read-only (tests/_checkpoint.py).
* markers: ``gpu`` tests are skipped without CUDA; ``slow`` ones run in the suite too
  (``-m "not slow"`` leaves them out while iterating); ``background(name, job)`` ones run
  last, their job started in the background when collection ends (tests/_background.py).
* Hypothesis: a derandomized profile, so the examples are the same on every run.
"""
from __future__ import annotations

import os
import sys
import zlib

import pytest
import torch
from hypothesis import HealthCheck, settings

# The helper modules (tests/_compare.py, _formulas.py, _backends.py) are plain modules.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _background  # noqa: E402
from _backends import BACKENDS, INTERPRET, KERNEL_DEVICE, KERNELS_RUN  # noqa: E402
from _checkpoint import good_run  # noqa: E402,F401 (a fixture, for every module that reads it)

if INTERPRET:
    import _interpreter_patch  # noqa: E402
    _interpreter_patch.install()

# Tests compare float32 against float64 references at float32's tolerance; on a GPU cuDNN
# would run float32 convolutions in TF32 (on by default; matmuls are not), ~1e-3 off.
torch.backends.cudnn.allow_tf32 = False

# "fastvae" (the default): derandomized, every run draws the same examples; no deadline
# (a first call compiles or builds). The function-scoped fixtures the property tests take
# (``backend``) are constant across examples. FASTVAE_HYPOTHESIS=explore draws fresh
# examples, more of them, to hunt for new failures by hand.
settings.register_profile("fastvae", derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.register_profile("explore", parent=settings.get_profile("fastvae"),
                          derandomize=False, max_examples=500)
settings.load_profile(os.environ.get("FASTVAE_HYPOTHESIS", "fastvae"))


def _seed_key(request) -> str:
    """The test's node id without the backend's parameter id: every backend sees the same
    inputs for the same case (float32 ones on Triton)."""
    node = request.node
    callspec = getattr(node, "callspec", None)
    if callspec is None or "backend" not in callspec.params:
        return node.nodeid
    ids = callspec.id.split("-")
    ids.remove(callspec.params["backend"])
    return f"{node.nodeid.split('[')[0]}[{'-'.join(ids)}]"


@pytest.fixture
def seed(request):
    """Seed torch's RNGs with a seed derived from the test's node id: each test its own
    inputs, the same ones on every run. Printed, so a failure can be replayed or a test
    tried on other inputs: FASTVAE_TEST_SEED=<seed> pytest <test id>."""
    s = os.environ.get("FASTVAE_TEST_SEED")
    s = int(s) if s else zlib.crc32(_seed_key(request).encode()) & 0x7FFFFFFF
    torch.manual_seed(s)
    print(f"\n[seed] {request.node.nodeid}: FASTVAE_TEST_SEED={s}")
    return s


# -- backends ------------------------------------------------------------------------

def _parametrized_by_test(metafunc, name: str) -> bool:
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0]
        names = names.split(",") if isinstance(names, str) else names
        if name in [n.strip() for n in names]:
            return True
    return False


def pytest_generate_tests(metafunc):
    names = metafunc.fixturenames
    if "backend" not in names or _parametrized_by_test(metafunc, "backend"):
        return
    if "cpu_path" in names:
        # "default" on every backend, and the "torch" backend once more on its aten path
        combos = [(b, "default") for b in BACKENDS]
        combos += [("torch", "aten")] if "torch" in BACKENDS else []
        metafunc.parametrize("backend,cpu_path", combos, indirect=True,
                             ids=[f"{b}-{p}" if p != "default" else b for b, p in combos])
    else:
        metafunc.parametrize("backend", BACKENDS, indirect=True)


def _poison(monkeypatch):
    """Every buffer the Triton backend allocates starts as NaN (integers: a huge value),
    so an output element a kernel forgets to write shows up."""
    from fastvae.backends.triton_backend import _launch

    def alloc(shape, dtype, device):
        if dtype.is_floating_point:
            return torch.full(shape, float("nan"), dtype=dtype, device=device)
        return torch.full(shape, 2**30, dtype=dtype, device=device)

    monkeypatch.setattr(_launch, "alloc", alloc)


@pytest.fixture
def backend(request, monkeypatch):
    """The backend a case runs on (parametrized by ``pytest_generate_tests``). On "triton"
    every output buffer starts as NaN, and compiled (non-interpreted) runs create their
    tensors on CUDA (torch's default device for the test)."""
    name = request.param
    if name != "triton":
        yield name
        return
    _poison(monkeypatch)
    if INTERPRET:
        yield name
        return
    before = torch.get_default_device()
    torch.set_default_device(KERNEL_DEVICE)
    try:
        yield name
    finally:
        torch.set_default_device(before)


@pytest.fixture
def cpu_path(request, backend, monkeypatch):
    """The "torch" backend's float32 Bernoulli rows run in a compiled kernel where one
    builds (``fastvae.backends.torch_backend.native``); "aten" runs the same case on the
    aten fallback
    (``FASTVAE_NATIVE=0``). Other backends have one path: "default"."""
    if request.param != "aten":
        yield request.param
        return
    from fastvae.backends.torch_backend import native as _native
    monkeypatch.setenv("FASTVAE_NATIVE", "0")
    _native.reset()
    yield "aten"
    monkeypatch.undo()
    _native.reset()


@pytest.fixture
def randn_noise():
    """The "torch" backend draws ``torch.randn``'s eps (its aten sampler) as the reference
    does, instead of its C kernel's Philox stream: for tests that follow the two backends
    draw by draw (training curves)."""
    from fastvae.backends.torch_backend.reparameterize import randn_noise as _randn_noise
    with _randn_noise():
        yield


@pytest.fixture
def kernel_device(monkeypatch):
    """The device Triton kernels run on here ("cuda", or "cpu" under the interpreter), for
    tests of the Triton backend itself; skipped where no kernel can run. Output buffers
    start as NaN, as with ``backend``."""
    if not KERNELS_RUN:
        pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1 "
                    "(tests/test_triton_interpreter.py runs this module with it)")
    _poison(monkeypatch)
    return KERNEL_DEVICE


@pytest.fixture
def kernels(kernel_device):
    """``kernel_device``, with torch's default device set to it for the test: tensors on
    the device the kernels run on (CUDA unless interpreted)."""
    before = torch.get_default_device()
    torch.set_default_device(kernel_device)
    yield kernel_device
    torch.set_default_device(before)


def _record_launches(monkeypatch, run: bool) -> list:
    """A list that gets the name of every kernel the Triton backend launches, each
    launch then run (``run``) or not."""
    from fastvae.backends.triton_backend import _launch

    seen = []
    real = _launch.launch

    def record(kernel, grid, **args):
        seen.append(getattr(kernel, "__name__", None) or kernel.fn.__name__)
        if run:
            return real(kernel, grid, **args)

    monkeypatch.setattr(_launch, "launch", record)
    return seen


@pytest.fixture
def launches(monkeypatch):
    """A list that records the name of every kernel the Triton backend launches."""
    return _record_launches(monkeypatch, run=True)


@pytest.fixture
def routes(monkeypatch):
    """Like ``launches``, but no kernel runs: for the tests that ask only which kernels a
    call takes (under the interpreter a K = 50, D = 784 row costs seconds). What the
    call returns is unwritten memory."""
    return _record_launches(monkeypatch, run=False)


# -- markers and the interpreter session ---------------------------------------------------

@pytest.hookimpl(trylast=True)  # after -k / -m deselection
def pytest_collection_modifyitems(config, items):
    """Under TRITON_INTERPRET=1, only the tests that run Triton kernels (those taking
    ``backend`` or ``kernel_device``): the rest ran in the main session already.

    Tests marked ``background(name, job)`` go last, and each selected, not skipped one's
    job starts now in the background (tests/_background.py): the slow children run beside
    the rest of the session, and their tests find the results ready at the end."""
    if INTERPRET:
        keep, drop = [], []
        for item in items:
            names = getattr(item, "fixturenames", ())
            (keep if ("backend" in names or "kernel_device" in names) else drop).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep
    jobs, later, now = {}, [], []
    for item in items:
        mark = item.get_closest_marker("background")
        if mark is None:
            now.append(item)
            continue
        later.append(item)
        skipped = any(m.args and m.args[0] is True for m in item.iter_markers("skipif"))
        if not skipped:
            jobs.setdefault(mark.args[0], mark.args[1])
    items[:] = now + later
    if config.option.collectonly:
        return
    for name, job in jobs.items():
        _background.start(name, job)


def pytest_sessionfinish(session, exitstatus):
    _background.stop()


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")


@pytest.fixture
def restore_validation():
    """Put fastvae's global validation switch back after the test."""
    import fastvae

    before = fastvae.get_validation()
    yield
    fastvae.set_validation(before)
