"""Timing steps: samples of back-to-back calls, variants interleaved round-robin, the
L2 flush between calls on GPUs, and the copy bandwidth (the roofline's denominator).

On a GPU a sample is several back-to-back calls, as in a training loop: the host's
launch work for one call overlaps the GPU's work on the one before, and the fixed cost
of the syncs around a sample is spread over its calls.

L2 on GPUs: an H100 or H200 has about 50 MB of L2, so a memory-bound op whose inputs fit
(the ELBO at B=4096) would be timed from cache on every call after the first, and its
GB/s against DRAM's copy bandwidth would overstate. ``fastvae bench`` therefore flushes
L2 before every call on a GPU, as ``triton.testing.do_bench`` does: it writes a
256 MiB buffer, then times the call alone between two CUDA events, so the flush is
outside the timed span while calls stay back to back on the host. The CPU path has no
flush and times with the host clock as before.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

CUDA_SAMPLE_S = 0.02   # a GPU sample lasts about this long, for the slowest variant
CUDA_MAX_INNER = 10
L2_FLUSH_BYTES = 256 << 20  # larger than any GPU's L2, as triton.testing.do_bench's


def is_cuda(device: str) -> bool:
    return torch.device(device).type == "cuda"


def sync(device: str) -> None:
    """Wait for ``device``'s queued work: a GPU's calls return before it ran them, and a
    host clock read without this times the queueing alone."""
    if is_cuda(device):
        torch.cuda.synchronize(device)   # "cuda:1": that device, not the current one
    elif torch.device(device).type == "mps":
        torch.mps.synchronize()


def l2_flusher(device: str) -> Optional[Callable[[], None]]:
    """On a GPU, a callable that evicts L2 by writing :data:`L2_FLUSH_BYTES`; None on
    the CPU, whose timing is left as it was."""
    if not is_cuda(device):
        return None
    buf = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device)
    return buf.zero_


def _marker(device: str, clock: Callable[[], float]):
    """(mark, seconds between two marks): CUDA events on a GPU (they time the GPU's
    work only, so a flush enqueued before the first mark is outside the span), the
    host ``clock`` elsewhere."""
    if is_cuda(device):
        stream = torch.cuda.current_stream(device)   # "cuda:1": where the step runs

        def mark():
            e = torch.cuda.Event(enable_timing=True)
            e.record(stream)
            return e
        return mark, lambda a, b: a.elapsed_time(b) / 1e3
    return clock, lambda a, b: b - a


def timed(step: Callable, device: str, clock: Callable[[], float] = time.perf_counter,
          inner: int = 1, flush: Optional[Callable[[], None]] = None) -> Tuple[float, tuple]:
    """Seconds per call of ``inner`` back-to-back calls, and the last call's output.

    Without ``flush``: the span from a sync before the first call to a sync after the
    last. With ``flush``: ``flush()`` before each call, each call timed alone between
    two marks (see :func:`_marker`) and the spans summed, so no flush is timed."""
    sync(device)
    if flush is None:
        t0 = clock()
        for _ in range(inner):
            out = step()
        sync(device)
        return (clock() - t0) / inner, out
    mark, seconds = _marker(device, clock)
    spans = []
    for _ in range(inner):
        flush()
        start = mark()
        out = step()
        spans.append((start, mark()))
    sync(device)
    return sum(seconds(a, b) for a, b in spans) / inner, out


def inner_calls(device: str, slowest_s: float) -> int:
    """Calls per timed sample: 1 on the CPU; on a GPU enough to fill CUDA_SAMPLE_S."""
    if not is_cuda(device):
        return 1
    return max(1, min(CUDA_MAX_INNER, int(CUDA_SAMPLE_S / max(slowest_s, 1e-6))))


def time_interleaved(steps: Dict[str, Callable], device: str, reps: int,
                     clock: Callable[[], float] = time.perf_counter, inner: int = 1,
                     flush: Optional[Callable[[], None]] = None) -> Dict[str, List[float]]:
    """``reps`` rounds; each round runs every variant once (``inner`` calls, see
    :func:`timed`), starting one further along the list each round, so drift and noise
    hit all variants alike. ``clock``: wall clock, or ``time.thread_time`` (see
    :func:`check_cpu_time`)."""
    names = list(steps)
    times: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(reps):
        for j in range(len(names)):
            n = names[(r + j) % len(names)]
            dt, out = timed(steps[n], device, clock, inner, flush)
            del out
            times[n].append(dt)
    return times


def check_cpu_time(device: str) -> None:
    """CPU time of the calling thread is the work only when that thread does all of it:
    a CPU run with one torch thread. Raises ``ValueError`` otherwise."""
    if torch.device(device).type != "cpu" or torch.get_num_threads() != 1:
        raise ValueError(f"--cpu-time times the calling thread: it needs device cpu and "
                         f"--threads 1 (have {device}, {torch.get_num_threads()} threads)")


def copy_bandwidth(device: str, nbytes: int = 256 << 20, reps: int = 10,
                   clock: Callable[[], float] = time.perf_counter) -> float:
    """Measured copy bandwidth in bytes/s (reads + writes) on ``device``: the roofline.
    The buffers are larger than any cache, so this is memory's bandwidth. ``clock``: the
    one the rows are timed with (``time.thread_time`` under --cpu-time), so that % roof
    divides a rate by a bandwidth of the same clock."""
    n = nbytes // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    inner = inner_calls(device, timed(lambda: dst.copy_(src), device, clock)[0])
    times = [timed(lambda: dst.copy_(src), device, clock, inner)[0] for _ in range(reps)]
    return 2 * n * 4 / statistics.median(times)
