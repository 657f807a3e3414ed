"""tests/_interpreter_patch.py, which the interpreter children install: a helper called
inside a launch no longer re-patches triton.language in every program, the launch still
patches it and restores it after, and the results are the interpreter's own."""
from __future__ import annotations

import pytest
import torch

from _backends import INTERPRET, HAS_TRITON

pytestmark = pytest.mark.skipif(not (INTERPRET and HAS_TRITON),
                                reason="the interpreter children's patch: runs under "
                                       "TRITON_INTERPRET=1 (tests/test_triton_interpreter.py)")

if INTERPRET and HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _square(v):
        return v * v

    @triton.jit
    def _twice_square(v):
        # tl.sum: a helper of triton.language's own, whose globals hold tl.core, not tl
        return _square(v) + _square(v) + 0.0 * tl.sum(v, axis=0)

    @triton.jit
    def _kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        v = tl.load(x_ptr + offs, mask=mask)
        tl.store(out_ptr + offs, _twice_square(v) + tl.exp(v), mask=mask)


def test_a_launch_patches_the_language_once_and_restores_it(kernel_device):
    from triton.runtime import interpreter
    assert getattr(interpreter._patch_lang, "_fastvae_once", False), \
        "tests/conftest.py did not install tests/_interpreter_patch.py"
    patch_builtin = interpreter._patch_builtin
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return patch_builtin(*args, **kwargs)
    arange = tl.arange
    x = torch.randn(37, device=kernel_device)   # the last program masked
    out = torch.empty_like(x)
    per_grid = {}
    _kernel[(1,)](x, out, 8, BLOCK=8)   # Triton's first call of a helper adds globals
    interpreter._patch_builtin = counting
    try:
        for programs in (1, 5):   # 5 programs: all of x
            del calls[:]
            _kernel[(programs,)](x, out, min(programs * 8, x.numel()), BLOCK=8)
            per_grid[programs] = len(calls)
    finally:
        interpreter._patch_builtin = patch_builtin
    # the launch's own patch (and tl.sum's module, once), whatever the number of
    # programs and helper calls in each
    assert per_grid[1] > 0 and per_grid[5] == per_grid[1], per_grid
    assert tl.arange is arange, "the launch left triton.language patched"
    torch.testing.assert_close(out, 2 * x * x + torch.exp(x))


def test_the_numpy_dtype_of_each_triton_type_is_the_interpreters_own(kernel_device):
    """The memoized ``_get_np_dtype`` answers as Triton's own function: scalars, blocks of
    them and of pointers, pointers; the second call (from the memo) too."""
    from triton.runtime import interpreter

    got = interpreter._get_np_dtype
    assert hasattr(got, "original"), "tests/_interpreter_patch.py did not memoize it"
    ptr = tl.pointer_type(tl.float32)
    types = (tl.float32, tl.bfloat16, tl.float16, tl.int1, tl.int64, tl.uint32, ptr,
             tl.block_type(tl.bfloat16, [4, 8]), tl.block_type(ptr, [16]))
    for t in types + types:
        assert got(t) == got.original(t), t
    assert got(tl.block_type(tl.bfloat16, [2])) != got(tl.float32)
