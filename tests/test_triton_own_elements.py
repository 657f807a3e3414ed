"""tests/_addresses.py's ``own_elements`` on a small kernel: a read that lands in another
argument tensor of the same launch (a padded row past B reading the next allocation, as
a GPU's allocator packs them) or in a strided tensor's padding fails, naming the kernel,
the pointer and the offsets; checking only that each address lies inside some argument
let both through.

Runs under TRITON_INTERPRET=1 (tests/test_triton_interpreter.py runs it there).
"""
import pytest
import torch

from _backends import skip_unless_kernels_run

skip_unless_kernels_run()

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from _addresses import own_elements  # noqa: E402

B, N = 4, 5


@triton.jit
def _copy_rows(SRC, DST, B, N, stride_s, BLOCK: tl.constexpr):
    row = tl.program_id(0)   # past B: a padded row, read unmasked, never stored
    col = tl.arange(0, BLOCK)
    m = col < N
    v = tl.load(SRC + row * stride_s + col, mask=m)
    tl.store(DST + row * N + col, v, mask=m & (row + col * 0 < B))


def _launch(src, dst, rows, stride):
    from fastvae.backends.triton_backend import _launch
    _launch.launch(_copy_rows, (rows,), SRC=src, DST=dst, B=B, N=N, stride_s=stride, BLOCK=8)


def _packed():
    """src then dst, back to back in one allocation."""
    buf = torch.arange(2 * B * N, dtype=torch.float32)
    return buf[:B * N].view(B, N), buf[B * N:].view(B, N)


def _padded():
    """src (B, N) with 3 padding columns a row, dst a tensor of its own."""
    return torch.arange(B * (N + 3), dtype=torch.float32).view(B, N + 3)[:, :N], torch.empty(B, N)


def test_reads_of_own_elements_pass(kernels):
    src, dst = _packed()
    with own_elements():
        _launch(src, dst, B, N)
    assert torch.equal(dst, src)
    src, dst = _padded()
    with own_elements():
        _launch(src, dst, B, N + 3)
    assert torch.equal(dst, src)


@pytest.mark.parametrize("case,rows,stride,offsets", [
    ("packed", B + 1, N, [20, 21, 22, 23, 24]),   # row B: dst's first row
    ("padded", B, N, [5, 6, 7, 13, 14, 15]),      # stride N: the padding columns
])
def test_a_read_of_another_tensor_or_padding_fails(kernels, case, rows, stride, offsets):
    src, dst = {"packed": _packed, "padded": _padded}[case]()
    with pytest.raises(AssertionError) as e:
        with own_elements():
            _launch(src, dst, rows, stride)
    assert str(e.value).startswith(f"_copy_rows: {len(offsets)} load lane(s) through SRC "
                                   f"[4, 5] miss its elements"), str(e.value)
    assert str(e.value).endswith(f"at {offsets}"), str(e.value)
