"""Shared helpers of the Triton tests (tests/test_triton_*.py).

Those modules run their kernels where they can: on CUDA tensors when a GPU is present
(compiled kernels), else on CPU tensors under ``TRITON_INTERPRET=1``. The main pytest
session does not set TRITON_INTERPRET (it must be set before the kernels are first
imported, and other suites expect backend="triton" to refuse CPU tensors), so
tests/test_triton_interpreter.py runs these modules in a child pytest with it set.
"""
from __future__ import annotations

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
HAS_CUDA = torch.cuda.is_available()

try:
    import triton  # noqa: F401
    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False


def _interpreter_index_for_numpy_2_4():
    """Triton < 3.7's interpreter turns a scalar argument into a loop bound (``range(0, D,
    BLOCK_D)``) with ``int()`` of a shape-(1,) array, which NumPy >= 2.4 refuses
    (triton-lang/triton#9171, fixed in 3.7 by squeezing first). Same fix, for the
    interpreter runs of these tests only; later Triton and older NumPy are left alone."""
    import numpy as np
    from triton.runtime import interpreter as ti
    if (tuple(int(p) for p in triton.__version__.split(".")[:2]) >= (3, 7)
            or tuple(int(p) for p in np.__version__.split(".")[:2]) < (2, 4)
            or not hasattr(ti, "_patch_lang_tensor")):
        return
    original = ti._patch_lang_tensor

    def patch(tensor, *scope):
        original(tensor, *scope)
        index = lambda self: int(np.asarray(self.handle.data).squeeze())  # noqa: E731
        if scope:  # the versions that restore what they patch do it through a scope
            scope[0].set_attr(tensor, "__index__", index)
        else:
            tensor.__index__ = index

    ti._patch_lang_tensor = patch

if HAS_TRITON and INTERPRET:
    _interpreter_index_for_numpy_2_4()

DEVICE = "cuda" if (HAS_CUDA and not INTERPRET) else "cpu"

KERNELS_RUN = HAS_TRITON and (INTERPRET or HAS_CUDA)
SKIP_REASON = ("Triton kernels need a GPU or TRITON_INTERPRET=1 (test_triton_interpreter.py runs "
               "these modules with it)")


def skip_module_unless_kernels_run():
    """One skip line per module (not per test) in the main CPU session."""
    if not KERNELS_RUN:
        pytest.skip(SKIP_REASON, allow_module_level=True)


needs_kernels = pytest.mark.skipif(
    not HAS_TRITON or not (INTERPRET or HAS_CUDA),
    reason="Triton kernels need a GPU or TRITON_INTERPRET=1 (test_triton_interpreter.py runs "
           "these modules with it)",
)

TOL = {torch.float32: 2e-4, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def assert_close(got, want, dtype=torch.float32, what="", eager=None):
    """got vs an fp64 oracle: rtol per input dtype, atol that times the largest |want|.

    ``eager``: the same quantity from the eager reference in fp32; its error is added to
    the allowance, twice (flash-attention's rule), for quantities whose fp32 error is
    inherently large, e.g. softmax weights of log-weights of order 1e4.
    """
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    tol = TOL[dtype]
    want = want.detach().double()
    scale = float(want.abs().max()) if want.numel() else 0.0
    atol = tol * max(scale, 1e-6)
    if eager is not None and want.numel():
        atol += 2 * float((eager.detach().double() - want).abs().max())
    torch.testing.assert_close(got.detach().double(), want, rtol=tol, atol=atol,
                               msg=lambda m: f"{what}: {m}")


@pytest.fixture
def poison(monkeypatch):
    """Every buffer the Triton backend allocates starts as NaN (ints: a huge value), so an
    output element that a kernel forgets to write shows up."""
    from fastvae.backends import triton_backend as tb

    def alloc(shape, dtype, device):
        if dtype.is_floating_point:
            return torch.full(shape, float("nan"), dtype=dtype, device=device)
        return torch.full(shape, 2**30, dtype=dtype, device=device)

    monkeypatch.setattr(tb, "_alloc", alloc)


@pytest.fixture
def launches(monkeypatch):
    """A list that records the name of every kernel the Triton backend launches."""
    from fastvae.backends import triton_backend as tb

    seen = []
    real = tb._launch

    def count(kernel, grid, *args, **meta):
        seen.append(getattr(kernel, "__name__", None) or kernel.fn.__name__)
        return real(kernel, grid, *args, **meta)

    monkeypatch.setattr(tb, "_launch", count)
    return seen


def leaf(t, grad=True):
    return t.detach().clone().requires_grad_(grad)


def grads(out, inputs, weight=None):
    """d(sum(weight * out)) / d(inputs) (None for inputs that do not require grad)."""
    want = [t for t in inputs if t is not None and t.requires_grad]
    g = torch.autograd.grad(out, want, grad_outputs=weight, allow_unused=True)
    it = iter(g)
    return [next(it) if (t is not None and t.requires_grad) else None for t in inputs]


def oracle_inputs(*ts):
    """fp64 leaf copies of (low-precision) inputs: the oracle sees exactly the same numbers."""
    return [None if t is None else (t.detach().double().requires_grad_(t.requires_grad)
                                    if isinstance(t, torch.Tensor) else t) for t in ts]
