"""Backward of the fused losses: scale the saved gradients by grad_output, in place.

The forward kernels already wrote every gradient; backward has only to multiply
them by the (scalar) grad_output, and nothing at all when it is exactly 1, as it is
for ``loss.backward()``. Testing ``grad_output == 1`` on the host would read a GPU
value back (a sync every step, and an error under CUDA-graph capture), so this kernel
reads it on the device. One launch serves all of an op's gradients (up to six tensors
of different sizes and dtypes): block ``i`` of every tensor is scaled by the same
program. The grid is one program per SM and each program strides over the blocks, so
at grad_output 1 the launch is one wave of programs that read one scalar and exit.
"""
import triton
import triton.language as tl

from ._math import load_f32, store_as


@triton.jit
def _scale_block(G, N, offs, go):
    m = offs < N
    store_as(G, offs, load_f32(G, offs, m) * go, m)


@triton.jit
def scale_grads_kernel(
    GO,                                              # grad_output, one element
    G0, N0, G1, N1, G2, N2, G3, N3, G4, N4, G5, N5,  # gradients and their sizes (0: unused)
    NBLK,
    BLOCK: tl.constexpr,
):
    go = tl.load(GO).to(tl.float32)
    if go != 1.0:
        for blk in range(tl.program_id(0), NBLK, tl.num_programs(0)):
            offs = tl.cast(blk, tl.int64) * BLOCK + tl.arange(0, BLOCK)
            _scale_block(G0, N0, offs, go)
            _scale_block(G1, N1, offs, go)
            _scale_block(G2, N2, offs, go)
            _scale_block(G3, N3, offs, go)
            _scale_block(G4, N4, offs, go)
            _scale_block(G5, N5, offs, go)
