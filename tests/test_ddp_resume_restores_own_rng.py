"""A resume under torchrun with the same number of processes gives each rank its own
saved random state: rank 0's on every rank would make them draw the same posterior noise,
and the resume would not be bit for bit."""
import torch

from fastvae import ranks


def test_each_rank_resumes_its_own_saved_random_state():
    states = []
    for s in (11, 22):
        torch.manual_seed(s)
        states.append({"torch": torch.get_rng_state()})
    saved = {"torch": states[0]["torch"], "shuffle": torch.Generator().manual_seed(5).get_state(),
             "per_rank": states}
    keep = torch.get_rng_state()
    try:
        for rank in (0, 1):
            gen = torch.Generator()
            ranks.set_rng_state(saved, gen, rank, world=2, device=torch.device("cpu"))
            assert torch.equal(torch.get_rng_state(), states[rank]["torch"]), rank
            assert torch.equal(gen.get_state(), saved["shuffle"])
    finally:
        torch.set_rng_state(keep)
