"""torch.func.hessian of a sampler's output: torch's own error said to set vmap's
randomness flags, which hessian has none of; fastvae's says what to call instead."""
import pytest
import torch
from torch.func import hessian, jacfwd, jacrev, vmap

import fastvae

MU, LV = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)


def kl_of_sample_with_kl(mu):
    return fastvae.sample_with_kl(mu, LV)[1].sum()


@pytest.mark.parametrize("transform", [
    lambda: hessian(kl_of_sample_with_kl)(MU),
    lambda: vmap(lambda m: fastvae.reparameterize(m[None], LV[:1]))(MU)],
    ids=["hessian", "vmap"])
def test_the_error_names_what_to_do(transform):
    with pytest.raises(RuntimeError, match=r"kl_normal.*draws nothing") as e:
        transform()
    assert "hessian(f) is jacfwd(jacrev(f))" in str(e.value)
    assert "randomness error mode" in str(e.value.__cause__)   # torch's, kept as the cause


def test_the_advice_works():
    want = hessian(lambda m: fastvae.kl_normal(m, LV, None, None).sum())(MU)
    assert want.shape == (2, 3, 2, 3)
    got = jacfwd(jacrev(kl_of_sample_with_kl), randomness="same")(MU)
    torch.testing.assert_close(got, want)
