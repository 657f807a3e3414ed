"""The CUDA random states a checkpoint keeps: a CUDA run's, every visible device's; a CPU
run's, none (asking would start CUDA on every GPU). One saved where more GPUs were
visible than now resumes: the states of devices this machine lacks are not restored,
rather than the whole resume refused as a damaged random state."""
import pytest
import torch

from fastvae import ranks


def test_cuda_states_of_missing_devices_are_skipped(monkeypatch):
    restored = []

    def set_state(state, device=0):   # as torch's: default_generators[index]
        if device >= 1:
            raise IndexError("tuple index out of range")
        restored.append((device, state))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_state)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_state)
    gen = torch.Generator().manual_seed(1)
    saved = {"torch": torch.get_rng_state(), "shuffle": gen.get_state(),
             "cuda": [torch.full((8,), 1, dtype=torch.uint8),
                      torch.full((8,), 2, dtype=torch.uint8)]}
    ranks.set_rng_state(saved, torch.Generator(), rank=0, world=1,
                          device=torch.device("cuda", 0))
    assert [(d, s.tolist()) for d, s in restored] == [(0, [1] * 8)]


def test_a_cpu_run_saves_no_cuda_state_and_starts_no_cuda(monkeypatch):
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: asked.append(1) or [])
    gen = torch.Generator().manual_seed(1)
    assert "cuda" not in ranks.rng_state(gen, 1, torch.device("cpu")) and not asked
    assert ranks.rng_state(gen, 1, torch.device("cuda", 0))["cuda"] == [] and asked


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_states_round_trip_on_this_machine():
    gen = torch.Generator().manual_seed(1)
    state = ranks.rng_state(gen, 1, torch.device("cuda"))
    want = torch.cuda.get_rng_state(0)
    torch.cuda.manual_seed_all(123)
    ranks.set_rng_state(state, gen, 0, 1, torch.device("cuda"))
    assert torch.equal(torch.cuda.get_rng_state(0), want)


def test_a_cpu_resume_restores_no_cuda_state_and_starts_no_cuda(monkeypatch):
    """A checkpoint with CUDA states (a CUDA run's, or a CPU run's saved before CPU runs
    kept none) resumed on the CPU of a GPU machine: restoring them would start CUDA on
    every visible device, which the CPU run never draws on."""
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, d=0: restored.append(d))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: restored.append("all"))
    gen = torch.Generator().manual_seed(1)
    saved = {"torch": torch.get_rng_state(), "shuffle": gen.get_state(),
             "cuda": [torch.zeros(8, dtype=torch.uint8)] * 2}
    ranks.set_rng_state(saved, torch.Generator(), 0, 1, torch.device("cpu"))
    assert restored == []
    ranks.set_rng_state(saved, torch.Generator(), 0, 1, torch.device("cuda", 1))
    assert restored == [0, 1]
