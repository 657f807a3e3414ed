"""Deterministic reductions shared by the ELBO and the IWAE bound: no float atomics, so
the same inputs give the same bits.

``finish_by_ticket`` — inside a row kernel: each program writes its partial sum, takes an
integer ticket, and the program with the last ticket sums every partial in a fixed order,
writes ``c * sum`` and resets the ticket counter (zero between launches). The row pass
and the batch sum are then one launch. ``last_ticket`` is its ticket alone, for a kernel
whose programs fold in groups (sample_with_kl: the column chunks of one row block, each
group its own counter).

``finish_kernel`` — a launch of its own, grid ``SUM_ROWS + cdiv(D, BLOCK_D)``: with
``SUM_ROWS`` program 0 sums the ``B`` row values in wide 1-D blocks and writes
``c * sum``; the other programs each sum a ``BLOCK_D`` slice of columns of the
``(NPART, D)`` partial d/dobs_logvar, in program order.
"""
import triton
import triton.language as tl

from ._math import store_as


@triton.jit
def sum_rows(ROW_VALUES, B, BLOCK_SUM: tl.constexpr):
    """The sum of ``B`` fp32 row values, in a fixed order."""
    wide = tl.zeros([BLOCK_SUM], dtype=tl.float32)
    for b0 in range(0, B, BLOCK_SUM):
        rows = b0 + tl.arange(0, BLOCK_SUM).to(tl.int64)
        wide += tl.load(ROW_VALUES + rows, mask=rows < B, other=0.0)
    return tl.sum(wide, axis=0)


@triton.jit
def sum_partial_columns(PARTIALS, OUT, block, D, NPART,
                        BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    """OUT[cols] = sum over the NPART rows of PARTIALS (NPART, D), for column block ``block``."""
    cols = block.to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    acc = tl.zeros([BLOCK_P, BLOCK_D], dtype=tl.float32)
    for p0 in range(0, NPART, BLOCK_P):
        parts = p0 + tl.arange(0, BLOCK_P).to(tl.int64)
        m = (parts < NPART)[:, None] & cmask[None, :]
        acc += tl.load(PARTIALS + parts[:, None] * D + cols[None, :], mask=m, other=0.0)
    store_as(OUT, cols, tl.sum(acc, axis=0), cmask)


@triton.jit
def last_ticket(COUNTER, programs):
    """Whether this program is the last of ``programs`` to take a ticket from ``COUNTER``
    (one int32, zero between launches): the stores every program made before its ticket
    are visible to the last one after it. The barrier orders this program's threads
    before the ticket; the last one puts the counter back to zero when it is done with the
    partials (``tl.atomic_xchg(COUNTER, 0)``), after a barrier of its own."""
    tl.debug_barrier()
    ticket = tl.atomic_add(COUNTER, 1, sem="acq_rel")
    return ticket == programs - 1


@triton.jit
def finish_by_ticket(PARTIALS, COUNTER, OUT, pid, partial, c, BLOCK_SUM: tl.constexpr):
    """Write this program's ``partial``; the last program to arrive writes ``c`` times the
    sum of all of them to OUT. ``COUNTER`` (one int32, zero between launches) is the
    ticket (``last_ticket``)."""
    tl.store(PARTIALS + pid, partial)
    if last_ticket(COUNTER, tl.num_programs(0)):
        tl.debug_barrier()
        total = sum_rows(PARTIALS, tl.num_programs(0), BLOCK_SUM)
        tl.store(OUT, (total * c).to(OUT.dtype.element_ty))
        tl.atomic_xchg(COUNTER, 0)


@triton.jit(do_not_specialize=["c"])
def finish_kernel(
    ROW_VALUES, GOBS_PARTIALS,      # inputs: (B,) fp32 row values, (NPART, D) fp32 partials
    OUT, GOBS,                      # outputs: () the reduced value, (D,) d/dobs_logvar
    B, D, NPART,
    c,
    SUM_ROWS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SUM: tl.constexpr,
):
    c = tl.cast(c, tl.float32)  # scalars from inductor arrive as fp64
    pid = tl.program_id(0)
    if SUM_ROWS:
        if pid == 0:
            tl.store(OUT, (sum_rows(ROW_VALUES, B, BLOCK_SUM) * c).to(OUT.dtype.element_ty))
        else:
            sum_partial_columns(GOBS_PARTIALS, GOBS, pid - 1, D, NPART, BLOCK_P, BLOCK_D)
    else:
        sum_partial_columns(GOBS_PARTIALS, GOBS, pid, D, NPART, BLOCK_P, BLOCK_D)
