"""Timing steps: samples of back-to-back calls, variants interleaved round-robin, and
the copy bandwidth (the roofline's denominator).

On a GPU a sample is several back-to-back calls, as in a training loop: the host's
launch work for one call overlaps the GPU's work on the one before, and the fixed cost
of the syncs around a sample is spread over its calls.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch

CUDA_SAMPLE_S = 0.02   # a GPU sample lasts about this long, for the slowest variant
CUDA_MAX_INNER = 10


def is_cuda(device: str) -> bool:
    return torch.device(device).type == "cuda"


def sync(device: str) -> None:
    if is_cuda(device):
        torch.cuda.synchronize()


def timed(step: Callable, device: str, clock: Callable[[], float] = time.perf_counter,
          inner: int = 1) -> Tuple[float, tuple]:
    """Seconds per call of ``inner`` back-to-back calls between two syncs, and the
    last call's output."""
    sync(device)
    t0 = clock()
    for _ in range(inner):
        out = step()
    sync(device)
    return (clock() - t0) / inner, out


def inner_calls(device: str, slowest_s: float) -> int:
    """Calls per timed sample: 1 on the CPU; on a GPU enough to fill CUDA_SAMPLE_S."""
    if not is_cuda(device):
        return 1
    return max(1, min(CUDA_MAX_INNER, int(CUDA_SAMPLE_S / max(slowest_s, 1e-6))))


def time_interleaved(steps: Dict[str, Callable], device: str, reps: int,
                     clock: Callable[[], float] = time.perf_counter,
                     inner: int = 1) -> Dict[str, List[float]]:
    """``reps`` rounds; each round runs every variant once (``inner`` calls, see
    :func:`timed`), starting one further along the list each round, so drift and noise
    hit all variants alike. ``clock``: wall clock, or ``time.thread_time`` (see
    :func:`check_cpu_time`)."""
    names = list(steps)
    times: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(reps):
        for j in range(len(names)):
            n = names[(r + j) % len(names)]
            dt, out = timed(steps[n], device, clock, inner)
            del out
            times[n].append(dt)
    return times


def check_cpu_time(device: str) -> None:
    """CPU time of the calling thread is the work only when that thread does all of it:
    a CPU run with one torch thread. Raises ``ValueError`` otherwise."""
    if torch.device(device).type != "cpu" or torch.get_num_threads() != 1:
        raise ValueError(f"--cpu-time times the calling thread: it needs device cpu and "
                         f"--threads 1 (have {device}, {torch.get_num_threads()} threads)")


def copy_bandwidth(device: str, nbytes: int = 256 << 20, reps: int = 10) -> float:
    """Measured copy bandwidth in bytes/s (reads + writes) on ``device``: the roofline.
    The buffers are larger than any cache, so this is memory's bandwidth."""
    n = nbytes // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    inner = inner_calls(device, timed(lambda: dst.copy_(src), device)[0])
    times = [timed(lambda: dst.copy_(src), device, inner=inner)[0] for _ in range(reps)]
    return 2 * n * 4 / statistics.median(times)
