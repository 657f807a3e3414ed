"""evaluation.iwae_nll is the mean over the images: the final estimate in metrics.json
and `fastvae eval`'s IWAE NLL."""
import torch

from fastvae.evaluation import iwae_nll
from fastvae.models import VAE


def test_iwae_nll_is_the_mean_of_the_per_image_estimates():
    torch.manual_seed(0)
    core = VAE((1, 4, 4), latent_dim=2, hidden=(8,), likelihood="bernoulli").eval()
    x = torch.rand(10, 1, 4, 4)
    got = iwae_nll(core, x, 5, "cpu", seed=7, backend="torch")
    gen = torch.Generator().manual_seed(7 + 3)
    with torch.no_grad():
        want = core.iwae_nll(x, 5, generator=gen, backend="torch").sum().item() / 10
    assert abs(got - want) <= 1e-9 * max(1.0, abs(want)), (got, want)
