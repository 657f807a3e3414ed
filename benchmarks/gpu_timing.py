"""How the GPU scripts time a step: CUDA events over back-to-back steps (wall clock on
the CPU), the host's enqueue time, each kernel's device time (torch.profiler), a CUDA
graph's replay, and the device-to-device copy bandwidth a roofline is measured against."""
from __future__ import annotations

import statistics
import time

import torch


def copy_bandwidth(device, nbytes):
    a = torch.empty(nbytes // 4, device=device)
    b = torch.empty_like(a)
    times = [timed_gpu(lambda: b.copy_(a), device, 1) for _ in range(7)]
    del a, b
    return 2 * nbytes / (statistics.median(times) / 1e3)


def timed_gpu(fn, device, n):
    """ms per call over ``n`` back-to-back calls (CUDA events; wall clock on CPU)."""
    if device.type != "cuda":
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t) / n * 1e3
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(n):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / n


def host_us(fn, device, n):
    """Median wall time of the call itself (enqueue only on CUDA), synced between calls."""
    out = []
    for _ in range(n):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e6)
    return statistics.median(out)


def kernel_times(fn, device, steps=3):
    """{kernel name: (launches per step, device us per step)} from torch.profiler."""
    if device.type != "cuda":
        return {}
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    out = {}
    for e in prof.key_averages():
        dev_us = getattr(e, "device_time_total", None)
        if dev_us is None:
            dev_us = getattr(e, "cuda_time_total", 0)
        if dev_us and e.count:
            out[e.key] = (e.count / steps, dev_us / steps)
    return dict(sorted(out.items(), key=lambda kv: -kv[1][1]))


def graph_ms(step, device, n):
    """GPU ms per replay of ``step`` captured in a CUDA graph (None off CUDA)."""
    if device.type != "cuda":
        return None
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    ms = timed_gpu(graph.replay, device, n)
    del graph
    return ms
