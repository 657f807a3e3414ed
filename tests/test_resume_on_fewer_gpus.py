"""A checkpoint saved where more GPUs were visible than now (every visible device's
random state is saved) resumes: the states of devices this machine lacks are not
restored, rather than the whole resume refused as a damaged random state."""
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
    ranks.set_rng_state(saved, torch.Generator(), rank=0, world=1)
    assert [(d, s.tolist()) for d, s in restored] == [(0, [1] * 8)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_states_round_trip_on_this_machine():
    gen = torch.Generator().manual_seed(1)
    state = ranks.rng_state(gen, 1)
    want = torch.cuda.get_rng_state(0)
    torch.cuda.manual_seed_all(123)
    ranks.set_rng_state(state, gen, 0, 1)
    assert torch.equal(torch.cuda.get_rng_state(0), want)
