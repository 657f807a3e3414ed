"""The models' docs say eval() changes nothing (no dropout or batch norm) and that a
seeded generator repeats a draw: a layer that behaves by mode would make them wrong."""
import pytest
import torch

from fastvae.hvae import HierarchicalVAE
from fastvae.models import VAE, ConvVAE


@pytest.mark.parametrize("cls", [VAE, ConvVAE, HierarchicalVAE])
def test_train_and_eval_give_the_same_draws(cls):
    torch.manual_seed(0)
    model = cls(data_shape=(1, 4, 4), channels=(4,)) if cls is not VAE else cls((1, 4, 4))
    x = torch.rand(3, 1, 4, 4).round()

    def both():
        seed = torch.Generator().manual_seed(1)
        return model.elbo(x, reduction="none", generator=seed), model.reconstruct(x)
    with torch.no_grad():
        trained = both()
        model.eval()
        evaluated = both()
    for a, b in zip(trained, evaluated):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
