"""VAE / ConvVAE: shapes for 8x8 and 28x28, the ELBO wiring, sampling, and the
chunked IWAE NLL estimate; every model (HierarchicalVAE too): images of another shape, empty
batches."""
import math

import pytest
import torch

import fastvae
from fastvae import models, observation
from fastvae.models import VAE, ConvVAE, HierarchicalVAE, build_model


def test_models_on_first_use_after_a_bare_import_fastvae(monkeypatch):
    """``import fastvae; fastvae.models.VAE`` (the README's spelling) works though
    ``fastvae/__init__.py`` does not import the models: the attribute is made on first use
    (the GPU run's CUDA-graph test found it missing where nothing had imported them)."""
    monkeypatch.delattr(fastvae, "models")  # as after a bare ``import fastvae``
    assert "models" not in vars(fastvae)
    assert fastvae.models.VAE is VAE and "models" in dir(fastvae)
    assert vars(fastvae)["models"] is models
    with pytest.raises(AttributeError, match="has no attribute 'modelz'"):
        fastvae.modelz


@pytest.mark.parametrize("cls", [VAE, ConvVAE])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 7, 9)])
def test_shapes(cls, shape):
    torch.manual_seed(0)
    model = cls(shape, latent_dim=3)
    x = torch.rand(5, *shape)
    recon, mu, logvar, z = model(x)
    assert recon.shape == x.shape
    assert mu.shape == logvar.shape == z.shape == (5, 3)
    assert model.sample(4).shape == (4, *shape)
    rec = model.reconstruct(x)
    assert rec.shape == x.shape and float(rec.min()) >= 0 and float(rec.max()) <= 1
    assert model.elbo(x).shape == ()
    assert model.elbo(x, reduction="none").shape == (5,)
    assert model.iwae_nll(x, k=4).shape == (5,)


@pytest.mark.parametrize("likelihood", ["bernoulli", "discretized_logistic_mixture"])
def test_sample_decodes_in_bounded_chunks_with_the_seed_s_draws(likelihood):
    """sample(n) decoded all n at once (100,000 digits: gigabytes); now chunk by chunk.
    The latents are all drawn first, so a mean decoder's images are the one-batch ones
    for any chunk size; up to the first chunk's size (>= 64) every model's are."""
    torch.manual_seed(0)
    model = VAE((1, 8, 8), latent_dim=3, hidden=(16,), likelihood=likelihood)
    assert [len(c) for c in model.sample_chunks(150, chunk_size=40)] == [40, 40, 40, 30]
    assert [len(c) for c in model.sample_chunks(0)] == [0]
    assert model.sample_chunk_size() >= 64
    g = torch.Generator().manual_seed(1)
    z = torch.randn(150, 3, generator=g)
    one_batch = model.draw(model.decode(z), generator=g)
    whole = model.sample(150, generator=torch.Generator().manual_seed(1))
    assert torch.equal(whole, one_batch)
    chunked = model.sample(150, generator=torch.Generator().manual_seed(1), chunk_size=40)
    if likelihood == "bernoulli":
        torch.testing.assert_close(chunked, one_batch)
    else:  # a chunk's pixel draws follow the previous chunk's in the stream
        g = torch.Generator().manual_seed(1)
        z = torch.randn(150, 3, generator=g)
        assert torch.equal(chunked, torch.cat([model.draw(model.decode(zc), generator=g)
                                               for zc in z.split(40)]))
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        model.sample(3, chunk_size=0)


@pytest.mark.parametrize("cls", [VAE, ConvVAE])
def test_elbo_backprops_and_matches_public_op(cls):
    torch.manual_seed(0)
    model = cls((1, 8, 8), latent_dim=2)
    x = torch.rand(6, 1, 8, 8)
    torch.manual_seed(1)
    e = model.elbo(x, kl="mc")
    e.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    torch.manual_seed(1)
    recon, mu, logvar, z = model(x)
    want = fastvae.elbo(x, recon, mu, logvar, kl="mc", z=z, backend="reference")
    torch.testing.assert_close(e.detach(), want.detach(), rtol=1e-5, atol=1e-4)


def test_gaussian_decoder_learns_its_variance():
    model = VAE((1, 8, 8), latent_dim=2, hidden=(16,), likelihood="gaussian")
    assert isinstance(model.obs_logvar, torch.nn.Parameter)
    assert model.obs_logvar.shape == (1, 8, 8)
    model.elbo(torch.rand(4, 1, 8, 8)).backward()
    assert model.obs_logvar.grad is not None and model.obs_logvar.grad.abs().sum() > 0
    assert VAE((1, 8, 8), 2).obs_logvar is None  # Bernoulli has none


def test_continuous_bernoulli_mean_matches_torch_distributions():
    logits = torch.tensor([-8.0, -2.0, -0.3, -1e-5, 0.0, 1e-5, 0.3, 2.0, 8.0], dtype=torch.float64)
    want = torch.distributions.ContinuousBernoulli(logits=logits).mean
    torch.testing.assert_close(models._cb_mean(logits), want, rtol=1e-6, atol=1e-6)


def test_build_model_from_plain_config():
    m = build_model({"model": "conv", "data_shape": [1, 28, 28], "latent": 4, "hidden": [32],
                     "channels": [8, 16]})
    assert isinstance(m, ConvVAE) and m.sample(2).shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="mlp"):
        build_model({"model": "rnn", "data_shape": [4], "latent": 2})


_SHAPE = {"data_shape": [1, 8, 8]}


@pytest.mark.parametrize("config,exc,msg", [
    (dict(_SHAPE, latent=2.7), TypeError, "latent must be an int, got float"),
    (dict(_SHAPE, latent=True), TypeError, "latent must be an int, got bool"),
    (dict(_SHAPE, latent="8"), TypeError, "latent must be an int, got str"),
    (dict(_SHAPE, latent=0), ValueError, "latent must be >= 1, got 0"),
    (dict(_SHAPE), ValueError, "the config lacks 'latent'"),
    (dict(latent=2), ValueError, "the config lacks 'data_shape'"),
    (dict(data_shape=5, latent=2), TypeError, "data_shape must be a sequence of ints, got int"),
    (dict(_SHAPE, latent=2, model="hvae", groups=2.7), TypeError,
     "groups must be an int, got float"),
    (dict(_SHAPE, latent=2, model="hvae", groups=True), TypeError,
     "groups must be an int, got bool"),
    (dict(_SHAPE, latent=2, model="conv", channels=32.5), TypeError,   # (32 is one stage)
     "channels must be an int or a sequence of ints, got float"),
    (dict(_SHAPE, latent=2, model="hvae", channels=[4, 2.5]), TypeError,
     r"channels\[1\] must be an int, got float")])
def test_build_model_names_the_config_key_before_building(config, exc, msg):
    """A checkpoint's config is checked under its own keys' names (latent, not the
    constructor's latent_dim), and before int() could turn 2.7 into 2 or True into 1."""
    with pytest.raises(exc, match=msg):
        build_model(config)


@pytest.mark.parametrize("cls,kw,msg", [
    (VAE, dict(latent_dim=0), r"latent_dim must be >= 1, got 0"),
    (VAE, dict(data_shape=(0,)), r"data_shape\[0\] must be >= 1, got 0"),
    (VAE, dict(hidden=(8, -1)), r"hidden\[1\] must be >= 1, got -1"),
    (ConvVAE, dict(channels=()), r"channels must hold at least one size"),
    (ConvVAE, dict(channels=(8, 0)), r"channels\[1\] must be >= 1, got 0"),
    (ConvVAE, dict(hidden=0), r"hidden must be >= 1, got 0"),
    # one fully connected layer: the other widths were dropped without a word
    (ConvVAE, dict(hidden=[64, 32]), r"hidden: the conv model has one fully connected layer"),
])
def test_bad_sizes_name_the_argument(cls, kw, msg):
    with pytest.raises(ValueError, match=msg):
        cls(**kw)
    assert VAE(hidden=()).hidden == ()  # no hidden layer is a linear VAE, not an error
    assert ConvVAE(hidden=[16]).hidden == 16   # a config's one-element list


def test_one_hidden_width_as_a_numpy_int():
    """One width is any int, a numpy one (a config array's) included, for both models:
    the MLP read only a Python int as one width and called numpy's 'not a sequence'."""
    np = pytest.importorskip("numpy")
    assert VAE(hidden=np.int64(16)).hidden == (16,)
    assert ConvVAE(hidden=np.int64(16)).hidden == 16
    with pytest.raises(TypeError, match=r"hidden must be an int, got bool"):
        VAE(hidden=True)


def _fixed_noise(mu, logvar, n_samples=None, generator=None, backend=None):
    """A deterministic stand-in for reparameterize: z = mu + std * 0.5."""
    z = mu + torch.exp(0.5 * logvar) * 0.5
    return z if n_samples is None else z.expand(n_samples, *z.shape).clone()


def test_iwae_chunks_combine_exactly(monkeypatch):
    """With identical samples every log w_k is the same number, so L_K must equal it for
    any chunking (uneven last chunk included): this pins the logsumexp combination."""
    torch.manual_seed(0)
    model = VAE((1, 8, 8), latent_dim=3, hidden=(16,))
    x = torch.rand(4, 1, 8, 8)
    monkeypatch.setattr(models, "reparameterize", _fixed_noise)
    mu, logvar = model.encode(x)
    z = _fixed_noise(mu, logvar)
    with torch.no_grad():
        log_w = fastvae.iwae_bound(x, model.decode(z)[None], mu, logvar, z[None])
    for k, chunk in ((1000, 1000), (1000, 7), (1000, 333), (10, 1)):
        nll = model.iwae_nll(x, k=k, chunk_size=chunk)
        torch.testing.assert_close(nll, -log_w, rtol=1e-5, atol=1e-4)


def test_iwae_nll_of_a_float64_model_keeps_float64(monkeypatch):
    """A float64 model's estimate is not rounded to float32 on its way out (it was)."""
    torch.manual_seed(0)
    model = VAE((1, 8, 8), latent_dim=3, hidden=(16,)).double()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    monkeypatch.setattr(models, "reparameterize", _fixed_noise)
    mu, logvar = model.encode(x)
    with torch.no_grad():
        log_w = fastvae.iwae_bound(x, model.decode(_fixed_noise(mu, logvar))[None], mu, logvar,
                                   _fixed_noise(mu, logvar)[None])
    nll = model.iwae_nll(x, k=6, chunk_size=4)
    assert nll.dtype == torch.float64
    torch.testing.assert_close(nll, -log_w, rtol=1e-12, atol=1e-12)
    assert VAE((1, 8, 8), 3, hidden=(16,)).iwae_nll(x.float(), k=2).dtype == torch.float32


def test_the_evaluation_of_a_float64_model_keeps_float64():
    """fastvae.evaluation's ELBO parts of a float64 model are float64 sums (its KL was
    taken in float32)."""
    from fastvae.evaluation import batch_terms
    torch.manual_seed(0)
    model = VAE((1, 8, 8), latent_dim=3, hidden=(16,)).double()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    recon, mu, logvar = model(x)[:3]
    got = batch_terms(model, x, (recon, mu, logvar), None)
    want = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum()
    torch.testing.assert_close(got[1], want.detach(), rtol=1e-13, atol=0)


def test_iwae_k1000_is_chunked_and_tighter_than_elbo(monkeypatch):
    torch.manual_seed(0)
    model = VAE((1, 28, 28), latent_dim=4, hidden=(32,))
    x = torch.rand(16, 1, 28, 28).round()
    calls = []
    real = models.iwae_bound

    def counting(x, recon_k, *a, **kw):
        calls.append(recon_k.shape[0])
        return real(x, recon_k, *a, **kw)

    monkeypatch.setattr(models, "iwae_bound", counting)
    # A small budget forces several chunks: 16 * 784 * 80 elements per chunk.
    monkeypatch.setattr(observation, "IWAE_CHUNK_ELEMENTS", 16 * 784 * 80)
    nll = model.iwae_nll(x, k=1000)
    assert sum(calls) == 1000 and max(calls) == 80 and len(calls) == 13
    assert nll.shape == (16,) and torch.isfinite(nll).all()
    with torch.no_grad():
        neg_elbo = -model.elbo(x, reduction="none")
    # L_K >= ELBO in expectation; K=1000 is far tighter than one ELBO sample here.
    assert float(nll.mean()) < float(neg_elbo.mean())


@pytest.mark.parametrize("shape,kw", [((1, 8, 8), {}), ((1, 28, 28), {}),
                                      ((3, 12, 10), {"channels": (16, 8, 4)}),
                                      ((1, 8, 8), {"likelihood": "discretized_logistic_mixture"})])
def test_conv_chunks_are_sized_by_the_widest_decoder_tensor(shape, kw):
    """The first transposed convolution's maps, not the one-channel output, bound a chunk's
    memory (8x the output at 28x28); a DMoL decoder's output is its widest tensor."""
    model = ConvVAE(shape, **kw)
    widest = []
    for module in [*model.dec_fc.modules(), *model.decoder.modules()]:
        module.register_forward_hook(lambda mod, inp, out: widest.append(out[0].numel()))
    with torch.no_grad():
        model.decode(torch.zeros(2, model.latent_dim))
    assert model.row_elements() == max(widest)


def test_iwae_nll_rejects_bad_k():
    with pytest.raises(ValueError, match="k must be"):
        VAE((4,), 2, hidden=(8,)).iwae_nll(torch.rand(2, 4), k=0)


@pytest.mark.parametrize("k,error", [(0, ValueError), (2.5, TypeError), (True, TypeError)])
def test_iwae_bound_names_k(k, error):
    """Its k, not the n_samples of the forward pass it calls."""
    with pytest.raises(error, match=r"^k must be"):
        VAE((4,), 2, hidden=(8,)).iwae_bound(torch.rand(2, 4), k)


def test_iwae_k1_equals_mc_elbo_in_expectation():
    torch.manual_seed(0)
    model = VAE((1, 8, 8), latent_dim=2, hidden=(16,))
    x = torch.rand(64, 1, 8, 8)
    nll1 = model.iwae_nll(x, k=1).mean()
    with torch.no_grad():
        neg_elbo = -model.elbo(x, kl="mc")
    assert math.isclose(float(nll1), float(neg_elbo), rel_tol=0.05)


_EVERY_MODEL = [lambda: VAE((1, 4, 4), 2, (8,)), lambda: ConvVAE((1, 4, 4), 2, (4,), 8),
                lambda: HierarchicalVAE((1, 4, 4), 2, (4, 8), 1)]


@pytest.mark.parametrize("make", _EVERY_MODEL, ids=["mlp", "conv", "hvae"])
def test_images_of_another_shape_are_refused_by_name(make):
    """Before any layer runs, and before x's batch size is read: otherwise the layers run
    on another image size and the loss blames recon's shape, or a convolution fails deep
    inside. Flattened images too, for the MLP VAE as for the others."""
    m = make()
    calls = (m, m.elbo, m.reconstruct, m.iwae_nll) + (
        (m.encode,) if hasattr(m, "encode") else ())   # encode flattened whatever it got
    for bad in (torch.rand(2, 16), torch.rand(2, 1, 3, 4), torch.rand(2, 3, 4, 4)):
        for call in calls:
            with pytest.raises(ValueError, match=r"x must be \(B, \*data_shape\) = \(B, 1, 4, "
                               rf"4\) for this model, got shape \({bad.shape[0]}, "):
                call(bad)
    for call in (m, m.elbo, m.reconstruct, m.iwae_nll):
        with pytest.raises(TypeError, match="x must be a floating-point tensor"):
            call(torch.zeros(2, 1, 4, 4, dtype=torch.uint8))
        with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
            call([[0.0]])
        with pytest.raises(ValueError, match=r"got shape \(\)"):
            call(torch.tensor(0.5))


@pytest.mark.parametrize("make", _EVERY_MODEL, ids=["mlp", "conv", "hvae"])
def test_images_of_another_dtype_or_device_are_refused_by_name(make):
    """A float64 x on a float32 model failed inside the first layer ("mat1 and mat2 must
    have the same dtype"), naming neither x nor the model. Under autocast the layers cast
    x themselves, and it runs."""
    m = make()
    calls = (m, m.elbo, m.reconstruct, m.iwae_nll) + (
        (m.encode,) if hasattr(m, "encode") else ())
    for dt in (torch.float64, torch.float16, torch.bfloat16):
        for call in calls:
            with pytest.raises(TypeError, match=rf"x is {dt}, the model's parameters "
                               r"torch.float32: pass x.to\(torch.float32\)"):
                call(torch.rand(2, 1, 4, 4, dtype=dt))
    with pytest.raises(ValueError, match=r"x is on meta, the model on cpu: move one"):
        m.elbo(torch.rand(2, 1, 4, 4, device="meta"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(m.elbo(torch.rand(2, 1, 4, 4, dtype=torch.bfloat16)))
    assert torch.isfinite(m.double().elbo(torch.rand(2, 1, 4, 4, dtype=torch.float64)))


@pytest.mark.parametrize("make", _EVERY_MODEL, ids=["mlp", "conv", "hvae"])
def test_under_autocast_a_float64_x_or_model_is_still_refused_by_name(make):
    """Autocast casts float32 and 16-bit tensors, never float64 ones: a float64 x on a
    float32 model (or a float32 x on a float64 one) failed inside the first layer ("mat1
    and mat2 must have the same dtype, but got Double and BFloat16")."""
    m = make()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for call in (m, m.elbo, m.reconstruct, m.iwae_nll):
            with pytest.raises(TypeError, match=r"x is torch.float64, the model's parameters "
                               r"torch.float32"):
                call(torch.rand(2, 1, 4, 4, dtype=torch.float64))
        m.double()
        with pytest.raises(TypeError, match=r"x is torch.float32, the model's parameters "
                           r"torch.float64"):
            m.elbo(torch.rand(2, 1, 4, 4))
        assert torch.isfinite(m.elbo(torch.rand(2, 1, 4, 4, dtype=torch.float64)))


@pytest.mark.parametrize("cls", [VAE, ConvVAE])
def test_decode_refuses_latents_of_another_shape_dtype_or_device_by_name(cls):
    """``decode(z)`` and ``decode_any(z)`` are public; a z of another width failed in the
    first layer ("mat1 and mat2 shapes cannot be multiplied (3x5 and 2x8)"), a float64
    one with "mat1 and mat2 must have the same dtype", naming neither z nor the model."""
    m = cls((1, 4, 4), 2)
    for bad in (torch.rand(3, 5), torch.rand(2), torch.rand(2, 3, 2)):
        with pytest.raises(ValueError, match=r"^z must be \(B, latent_dim\) = \(B, 2\) for "
                           rf"this model, got shape \({bad.shape[0]},"):
            m.decode(bad)
    with pytest.raises(ValueError, match=r"^z must be \(\.\.\., latent_dim\) = \(\.\.\., 2\)"):
        m.decode_any(torch.rand(2, 3, 3))
    with pytest.raises(TypeError, match=r"^z is torch.float64, the model's parameters "
                       r"torch.float32: pass z.to\(torch.float32\)"):
        m.decode(torch.rand(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^z is on meta, the model on cpu"):
        m.decode_any(torch.rand(4, 3, 2, device="meta"))
    with pytest.raises(TypeError, match=r"^z must be a torch.Tensor, got list"):
        m.decode([[0.0, 0.0]])
    assert m.decode(torch.zeros(3, 2)).shape == (3, 1, 4, 4)
    assert m.decode_any(torch.zeros(4, 3, 2)).shape == (4, 3, 1, 4, 4)


@pytest.mark.parametrize("cls", [VAE, ConvVAE])
def test_k_samples_latents_are_checked_once(cls, monkeypatch):
    """decode_any checks ``(..., L)`` and decodes the flattened rows unchecked: decode
    checked them again, every K-sample forward and every IWAE chunk."""
    m = cls((1, 4, 4), 2)
    seen = []
    check = m.check_latents
    monkeypatch.setattr(m, "check_latents", lambda z, **kw: seen.append(z.shape) or check(z, **kw))
    m(torch.rand(3, 1, 4, 4), n_samples=5)
    assert seen == [(5, 3, 2)]


@pytest.mark.parametrize("make", _EVERY_MODEL, ids=["mlp", "conv", "hvae"])
def test_with_validation_on_a_nan_in_x_is_named_as_x(make, restore_validation):
    """Not as the posterior or decoder output the layers make of it (the hierarchical
    VAE's iwae_nll said "mu_q has 128 non-finite value(s)"); with validation off, as
    before, no check runs."""
    m = make()
    x = torch.rand(3, 1, 4, 4)
    x[1, 0, 2, 2] = float("nan")
    fastvae.set_validation(True)
    for call in (m, m.elbo, m.reconstruct, lambda x: m.iwae_nll(x, 2)):
        with pytest.raises(ValueError, match=r"^x has 1 non-finite value"):
            call(x)
    fastvae.set_validation(False)
    m.reconstruct(x)


@pytest.mark.parametrize("make", _EVERY_MODEL, ids=["mlp", "conv", "hvae"])
def test_an_empty_batch_is_an_elbo_of_zero_as_in_fastvae_elbo(make):
    m = make()
    x = torch.rand(0, 1, 4, 4)
    assert m.elbo(x).item() == 0.0 and m.elbo(x, reduction="sum").item() == 0.0
    assert m.elbo(x, reduction="none").shape == (0,)
    assert m.reconstruct(x).shape == (0, 1, 4, 4)
    for bad, msg in ((dict(reduction="avg"), "reduction must be one of"),
                     (dict(beta=-1.0), "beta must be >= 0")):
        with pytest.raises(ValueError, match=msg):
            m.elbo(torch.rand(2, 1, 4, 4), **bad)


@pytest.mark.parametrize("make", _EVERY_MODEL, ids=["mlp", "conv", "hvae"])
def test_iwae_nll_checks_k_and_chunk_size_by_name(make):
    """As sample checks n and chunk_size: int() would run k=2.7 with K=2 and k=True with
    K=1 (an estimate of another K than asked), and a chunk_size below 1 has no meaning."""
    m = make()
    x = torch.rand(2, 1, 4, 4)
    for bad, exc, msg in ((2.7, TypeError, "k must be an int, got float"),
                          (True, TypeError, "k must be an int, got bool"),
                          ("5", TypeError, "k must be an int, got str"),
                          (None, TypeError, "k must be an int, got NoneType"),
                          (0, ValueError, "k must be >= 1, got 0")):
        with pytest.raises(exc, match=msg):
            m.iwae_nll(x, bad)
    for bad, exc, msg in ((0, ValueError, "chunk_size must be >= 1, got 0"),
                          (-3, ValueError, "chunk_size must be >= 1, got -3"),
                          (2.5, TypeError, "chunk_size must be an int, got float"),
                          (True, TypeError, "chunk_size must be an int, got bool")):
        with pytest.raises(exc, match=msg):
            m.iwae_nll(x, 3, chunk_size=bad)
    # None is the model's default chunking; a chunk larger than k is one chunk of k
    assert m.iwae_nll(x, 3, chunk_size=None).shape == (2,)
    assert m.iwae_nll(x, 3, chunk_size=50).shape == (2,)


@pytest.mark.parametrize("make", _EVERY_MODEL, ids=["mlp", "conv", "hvae"])
def test_sample_names_a_bad_generator(make):
    """Every model with the one message of fastvae's ops, before anything is drawn."""
    m = make()
    for call in (m.sample, m.sample_chunks):
        with pytest.raises(TypeError, match="^generator must be a torch.Generator, got str$"):
            call(3, generator="x")
    assert m.sample(3, generator=torch.Generator().manual_seed(0)).shape == (3, 1, 4, 4)


@pytest.mark.parametrize("make", _EVERY_MODEL, ids=["mlp", "conv", "hvae"])
def test_evaluation_keeps_the_training_mode_and_takes_an_empty_set(make):
    """iwae_nll left a training model in eval mode (evaluate restored it), and evaluate of
    no images failed on its int sum ("'int' object is not subscriptable")."""
    from fastvae import evaluation

    m = make()
    cfg = {"seed": 0, "backend": None}
    for training in (True, False):
        m.train(training)
        evaluation.iwae_nll(m, torch.rand(3, 1, 4, 4), 2, "cpu", seed=0)
        evaluation.evaluate(m, torch.rand(3, 1, 4, 4), cfg, "cpu")
        assert m.training == training
    got = evaluation.evaluate(m, torch.zeros(0, 1, 4, 4), cfg, "cpu")
    assert got["elbo"] == got["rec"] == got["kl"] == 0.0
    assert got.get("kl_groups", [0.0]) == [0.0] * len(got.get("kl_groups", [0.0]))
    assert evaluation.iwae_nll(m, torch.zeros(0, 1, 4, 4), 2, "cpu", seed=0) == 0.0


@pytest.mark.parametrize("setting", [{"objective": "iwae"}, {"k": 50}, {"estimator": "stl"},
                                     {"kl": "mc"}, {"kl": "exact"}])
def test_a_hierarchical_loss_refuses_what_it_would_ignore(setting):
    """evaluation.batch_loss returned the single-sample ELBO for a "K=50 IWAE" request."""
    from fastvae import evaluation

    h = HierarchicalVAE((1, 4, 4), 2, (4, 8), 1)
    cfg = {"backend": None, "kl": "analytic", "beta": 1.0, **setting}
    with pytest.raises(ValueError, match="--model hvae trains on|must be one of"):
        evaluation.batch_loss(h, torch.rand(2, 1, 4, 4), cfg)
    cfg.update(objective="elbo", k=1, estimator="standard", kl="analytic")
    assert torch.isfinite(evaluation.batch_loss(h, torch.rand(2, 1, 4, 4), cfg)[0])


@pytest.mark.parametrize("make,want", [
    (lambda: VAE(likelihood="gaussian"), "data_shape=(1, 8, 8), likelihood='gaussian', "
                                         "latent_dim=8"),
    (lambda: ConvVAE((3, 4, 4), 5, likelihood="discretized_logistic_mixture", n_mix=2),
     "data_shape=(3, 4, 4), likelihood='discretized_logistic_mixture', n_mix=2, latent_dim=5"),
    (lambda: HierarchicalVAE(channels=(4,), groups=1, latent_channels=2),
     "data_shape=(1, 8, 8), likelihood='bernoulli', latent_dim=32")])
def test_repr_shows_the_likelihood_the_layers_do_not(make, want):
    """A Bernoulli and a Gaussian decoder have the same layers: repr names the settings,
    as torch's modules' extra_repr does."""
    assert repr(make()).splitlines()[1].strip() == want
