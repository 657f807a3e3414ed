"""Which backends this test session runs, and how one case adapts to each.

Every op suite (tests/test_<op>.py) takes the ``backend`` fixture (tests/conftest.py),
which runs each case on every backend in ``BACKENDS``:

* the main session: "reference" and "torch" on CPU tensors, plus "triton" (compiled
  kernels, CUDA tensors) where a GPU and triton are present;
* under ``TRITON_INTERPRET=1`` (tests/test_triton_interpreter.py runs the op suites in a
  child pytest with it set): "triton" only, the kernels interpreted on CPU tensors.
  TRITON_INTERPRET must be set before the kernels are first imported, and it changes
  what backend="triton" accepts, so it never applies to the main session.

On "triton" a case's float64 inputs become float32 (``case_dtype``): the Triton backend
hands float64 to the "torch" path (same contract, fp64 math), so only float32 and
half inputs test the kernels. The oracle stays float64 and the tolerance follows the
inputs' dtype. Under the interpreter, large sizes are capped (``bounded``).
"""
from __future__ import annotations

import os

import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
HAS_CUDA = torch.cuda.is_available()
try:
    import triton
    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False

# Where the Triton kernels can run in this session, and on which tensors.
KERNELS_RUN = HAS_TRITON and (INTERPRET or HAS_CUDA)
KERNEL_DEVICE = "cpu" if INTERPRET else "cuda"


def skip_unless_kernels_run() -> None:
    """Skip the calling test module where no Triton kernel can run (no Triton; no GPU and
    no TRITON_INTERPRET=1)."""
    if not KERNELS_RUN:
        import pytest
        pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1 (tests/"
                    "test_triton_interpreter.py runs this module with it)",
                    allow_module_level=True)

if INTERPRET:
    BACKENDS = ["triton"] if HAS_TRITON else []
else:
    BACKENDS = ["reference", "torch"] + (["triton"] if KERNELS_RUN else [])
# FASTVAE_TEST_BACKENDS=triton (a comma list) keeps only those: benchmarks/gpu_session.sh
# runs the op suites on the compiled kernels without redoing the CPU backends' cases.
if os.environ.get("FASTVAE_TEST_BACKENDS"):
    _wanted = os.environ["FASTVAE_TEST_BACKENDS"].split(",")
    BACKENDS = [b for b in BACKENDS if b in _wanted]

# Interpreter caps. The interpreter pays per program instance (a few ms) and per element
# (numpy under the hood: ~2 us per element of an ELBO's fwd+bwd on these machines), and
# the two-pass IWAE kernel loops over K: so D, L and K get a cap each, and B a budget of
# elements. The caps keep what the sizes are there to test: odd tails past a tile, D
# past the interpreter's 4096-column block, L past 128, K past the one-pass limit of 8.
CAPS = {"d": 4100, "l": 130, "k": 16}
ELEMENTS = 1 << 16


def bounded(b=None, d=None, l=None, k=None):
    """The sizes a case runs at: as given, or under the interpreter capped to D <= 4100,
    L <= 130, K <= 16, and then B <= 2**16 / (K * max(D, L)) (at least 1). Returns the
    sizes given, in the order b, d, l, k (one size: that int)."""
    sizes = {"b": b, "d": d, "l": l, "k": k}
    if INTERPRET:
        for name, cap in CAPS.items():
            if sizes[name] is not None:
                sizes[name] = min(sizes[name], cap)
        if b is not None:
            width = max(sizes["d"] or 1, sizes["l"] or 1) * (sizes["k"] or 1)
            sizes["b"] = min(b, max(1, ELEMENTS // width))
    out = tuple(v for v in sizes.values() if v is not None)
    return out[0] if len(out) == 1 else out


def case_dtype(backend: str, dtype: torch.dtype = torch.float64) -> torch.dtype:
    """The inputs' dtype for a case written in ``dtype``: float32 instead of float64 on the
    Triton backend (which would otherwise hand the case to the "torch" path)."""
    return torch.float32 if (backend == "triton" and dtype == torch.float64) else dtype


def generator(seed: int) -> torch.Generator:
    """A seeded generator on the device tensors are created on (CUDA for compiled Triton)."""
    return torch.Generator(device=torch.get_default_device()).manual_seed(seed)


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
