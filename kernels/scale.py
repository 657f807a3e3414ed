"""Backward of the fused losses: scale the saved gradients by grad_output, in place.

The forward kernels already wrote every gradient; backward has only to multiply
them by the (scalar) grad_output, and nothing at all when it is exactly 1, as it is
for ``loss.backward()``. Testing ``grad_output == 1`` on the host would read a GPU
value back (a sync every step, and an error under CUDA-graph capture), so this kernel
reads it on the device. One launch serves all of an op's gradients (up to six tensors
of different sizes and dtypes), each tensor's blocks walked by its own loop. The grid
is one program per SM and each program strides over the blocks, so at grad_output 1 the
launch is one wave of programs that read one scalar and exit.
"""
import triton
import triton.language as tl

from ._math import load_f32, store_as


@triton.jit
def blocks(N, BLOCK: tl.constexpr):
    """``cdiv(N, BLOCK)`` without forming ``N + BLOCK - 1``: an int32 ``N`` within BLOCK of
    2^31 wraps that sum negative, and a loop up to it would scale nothing."""
    return N // BLOCK + (N % BLOCK != 0)


@triton.jit
def _scale_block(G, N, blk, go, BLOCK: tl.constexpr):
    offs = tl.cast(blk, tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    store_as(G, offs, load_f32(G, offs, m) * go, m)


@triton.jit
def scale_grads_kernel(
    GO,                                              # grad_output, one element
    G0, N0, G1, N1, G2, N2, G3, N3, G4, N4, G5, N5,  # gradients and their sizes (0: unused)
    BLOCK: tl.constexpr,
):
    go = tl.load(GO).to(tl.float32)
    if go != 1.0:
        # a loop per tensor over its own blocks: one shared loop over the largest tensor's
        # blocks would issue every slot's masked loads and stores on each of its passes
        for blk in range(tl.program_id(0), blocks(N0, BLOCK), tl.num_programs(0)):
            _scale_block(G0, N0, blk, go, BLOCK)
        for blk in range(tl.program_id(0), blocks(N1, BLOCK), tl.num_programs(0)):
            _scale_block(G1, N1, blk, go, BLOCK)
        for blk in range(tl.program_id(0), blocks(N2, BLOCK), tl.num_programs(0)):
            _scale_block(G2, N2, blk, go, BLOCK)
        for blk in range(tl.program_id(0), blocks(N3, BLOCK), tl.num_programs(0)):
            _scale_block(G3, N3, blk, go, BLOCK)
        for blk in range(tl.program_id(0), blocks(N4, BLOCK), tl.num_programs(0)):
            _scale_block(G4, N4, blk, go, BLOCK)
        for blk in range(tl.program_id(0), blocks(N5, BLOCK), tl.num_programs(0)):
            _scale_block(G5, N5, blk, go, BLOCK)
