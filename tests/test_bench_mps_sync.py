"""``fastvae bench --device mps`` times on the host clock between two syncs, and MPS
queues its work as CUDA does: the sync waited only for CUDA, so an MPS call was timed
as long as its queueing took. With no MPS here, torch.mps.synchronize is recorded."""
import torch

from fastvae.bench import timing


def test_a_timed_mps_call_waits_for_the_device(monkeypatch):
    seen = []
    monkeypatch.setattr(torch.mps, "synchronize", lambda: seen.append("sync"))
    timing.timed(lambda: seen.append("call"), "mps")
    assert seen == ["sync", "call", "sync"]


def test_the_cpu_needs_no_wait(monkeypatch):
    seen = []
    monkeypatch.setattr(torch.mps, "synchronize", lambda: seen.append("sync"))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: seen.append("sync"))
    timing.timed(lambda: seen.append("call"), "cpu")
    assert seen == ["call"]
