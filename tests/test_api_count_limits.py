"""The Python API's sample counts and model sizes are refused in one line naming the
argument where torch cannot hold them or the work would never end, with the bounds of
fastvae.validation (the CLI's flags take the same MAX_COUNT). Before, ``reparameterize``'s
``n_samples`` and a model's sizes from 2**63 were torch's "Overflow when unpacking long"
TypeError, a (K, B, L) past 2**63 elements its "Storage size calculation overflowed", and
``iwae_nll(k=2**63)`` or ``k=2**64`` ran for ever (chunk after chunk). Workable counts pass:
a tensor's dim past MAX_COUNT is checked on the meta device, which allocates nothing."""
import pytest
import torch

import fastvae
from fastvae import options
from fastvae import validation as V
from fastvae.hvae import HierarchicalVAE
from fastvae.models import VAE
from fastvae.observation import RunningLogSumExp


def _refused(call, name, match):
    with pytest.raises(ValueError, match=match) as e:
        call()
    text = str(e.value)
    assert text.startswith(name) and "\n" not in text, text


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("k", [2 ** 63, 2 ** 64])
def test_reparameterize_refuses_n_samples_past_int64(backend, k):
    mu = torch.zeros(2, 3)
    _refused(lambda: fastvae.reparameterize(mu, mu, n_samples=k, backend=backend),
             "n_samples", r"at most 9223372036854775807 \(2\*\*63 - 1")


def test_reparameterize_refuses_samples_a_tensor_cannot_hold():
    mu = torch.zeros(4, 1)   # 2**62 samples of 4 elements: 2**64
    _refused(lambda: fastvae.reparameterize(mu, mu, n_samples=2 ** 62, backend="torch"),
             "n_samples", "more than a tensor holds")


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_reparameterize_takes_a_tensor_dim_past_max_count(backend):
    mu = torch.zeros(4, 3, device="meta")
    z = fastvae.reparameterize(mu, mu, n_samples=2 ** 40, backend=backend)
    assert z.shape == (2 ** 40, 4, 3)


@pytest.mark.parametrize("model", [VAE((1, 4, 4), 2, hidden=8),
                                   HierarchicalVAE((1, 4, 4), 1, channels=(4,), groups=1)],
                         ids=["vae", "hvae"])
@pytest.mark.parametrize("k", [options.MAX_COUNT + 1, 2 ** 63, 2 ** 64])
def test_iwae_nll_refuses_a_k_it_would_never_finish(model, k, monkeypatch):
    def ran(*a):   # a k let through would run chunk after chunk: fail at the first
        raise AssertionError(f"iwae_nll ran k={k}")
    monkeypatch.setattr(RunningLogSumExp, "add", ran)
    x = torch.rand(2, 1, 4, 4)
    _refused(lambda: model.iwae_nll(x, k=k), "k", r"at most 2147483647 \(2\*\*31 - 1\)")
    assert model.check_k(options.MAX_COUNT) == options.MAX_COUNT


@pytest.mark.parametrize("model", [VAE((1, 4, 4), 2, hidden=8),
                                   HierarchicalVAE((1, 4, 4), 1, channels=(4,), groups=1)],
                         ids=["vae", "hvae"])
def test_sample_refuses_an_n_past_max_count(model, monkeypatch):
    assert model.sample(0).shape == (0, 1, 4, 4)

    def drew(*a):   # an n let through would allocate n latents: fail before
        raise AssertionError("sample drew")
    monkeypatch.setattr(type(model), "_sample_chunks", drew)
    for n in (options.MAX_COUNT + 1, 2 ** 63, 2 ** 64):
        _refused(lambda: model.sample(n), "n", "at most 2147483647")
        _refused(lambda: model.sample_chunks(n), "n", "at most 2147483647")


@pytest.mark.parametrize("kwargs, name", [
    (dict(latent_dim=2 ** 63), "latent_dim"), (dict(hidden=2 ** 64), "hidden must"),
    (dict(data_shape=(1, 4, 2 ** 63)), "data_shape[2]"),
    (dict(likelihood="discretized_logistic_mixture", n_mix=2 ** 63), "n_mix")])
def test_model_sizes_past_int64_are_refused(kwargs, name):
    _refused(lambda: VAE(**{"data_shape": (1, 4, 4), **kwargs}), name, "torch's sizes are int64")


def test_the_cli_and_the_api_share_one_bound():
    assert options.MAX_COUNT is V.MAX_COUNT
