"""Training with the discretized mixture of logistics (DMoL): the decoder heads of the
models (parameters out, Gumbel-max draws for samples, the mixture mean for
reconstructions), the data on the 8-bit grid, ``fastvae train/eval/sample`` with
bits/dim, the one-line errors, and bf16 autocast training."""
import json
import math
import os

import numpy as np
import pytest
import torch

import fastvae
from fastvae import cli, dmol_training
from fastvae.data import DataError, Dataset, load_array_file, load_digits
from fastvae.dmol_sampling import dmol_mean, dmol_sample
from fastvae.hvae import HierarchicalVAE
from fastvae.models import VAE, ConvVAE, build_model

DMOL = "discretized_logistic_mixture"


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread runs them as fast as two on an idle machine and
    10-100x faster on a busy one (the reason of train's --threads 0 rule)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(cls, shape, n_mix):
    latent = dict(latent_channels=2, channels=(8,), groups=1) if cls is HierarchicalVAE else \
        dict(latent_dim=3)
    if cls is VAE:
        latent["hidden"] = (16,)
    elif cls is ConvVAE:
        latent.update(channels=(4, 8), hidden=16)
    return cls(shape, likelihood=DMOL, n_mix=n_mix, **latent)


def _grid(batch, shape):
    return torch.randint(0, 256, (batch, *shape)).float() / 255


@pytest.mark.parametrize("cls", [VAE, ConvVAE, HierarchicalVAE])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 5, 7)])
def test_decoder_outputs_the_mixture_and_draws_and_means_from_it(cls, shape):
    torch.manual_seed(0)
    n_mix = 3
    model = _model(cls, shape, n_mix)
    x = _grid(4, shape)
    recon = model(x)[0]
    slots = 10 if shape[0] == 3 else 3
    assert recon.shape == (4, slots * n_mix, *shape[1:]) == (4, *model.out_shape)
    # the ELBO is the public op's on the decoder's output
    torch.manual_seed(1)
    e = model.elbo(x, reduction="none")
    torch.manual_seed(1)
    if cls is HierarchicalVAE:
        recon, kl = model(x)
        want = fastvae.discretized_logistic_mixture_log_prob(x, recon, backend="reference") \
            - kl.sum(0)
    else:
        recon, mu, logvar, _ = model(x)
        want = fastvae.elbo(x, recon, mu, logvar, likelihood=DMOL, reduction="none",
                            backend="reference")
    torch.testing.assert_close(e, want, rtol=1e-5, atol=1e-3)
    e.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # samples: draws from the decoder's mixture at z ~ N(0, I), on the 8-bit grid
    draws = model.sample(6, generator=torch.Generator().manual_seed(5))
    assert draws.shape == (6, *shape)
    assert float(draws.min()) >= 0 and float(draws.max()) <= 1
    assert torch.equal(draws * 255, torch.round(draws * 255))
    if cls is not HierarchicalVAE:  # the same generator, used in the same order
        g = torch.Generator().manual_seed(5)
        z = torch.randn(6, model.latent_dim, generator=g)
        assert torch.equal(draws, dmol_sample(model.decode(z), shape[0], 8, generator=g))
        # reconstructions: the mixture mean at z = mu
        torch.testing.assert_close(model.reconstruct(x),
                                   dmol_mean(model.decode(model.encode(x)[0]), shape[0]))
    assert model.iwae_nll(x, k=3).shape == (4,)


def test_n_mix_and_data_shape_are_checked_and_rebuilt_from_the_config():
    cfg = dict(model="conv", data_shape=[3, 4, 4], latent=2, hidden=8, channels=[4],
               likelihood=DMOL, n_mix=2)
    model = build_model(cfg)
    assert model.n_mix == 2 and model.out_shape == (20, 4, 4)
    assert build_model(dict(cfg, n_mix=None)).n_mix == 10  # the default, NVAE's
    with pytest.raises(ValueError, match="n_mix is the number of mixture components"):
        build_model(dict(cfg, likelihood="bernoulli"))
    with pytest.raises(ValueError, match="n_mix must be >= 1"):
        build_model(dict(cfg, n_mix=0))
    with pytest.raises(ValueError, match="C = 1 or 3 channels"):
        build_model(dict(cfg, data_shape=[2, 4, 4]))
    with pytest.raises(ValueError, match="C = 1 or 3 channels"):
        build_model(dict(cfg, model="mlp", data_shape=[16]))


# -- data on the 8-bit grid -----------------------------------------------------------------
def test_digits_go_onto_the_8_bit_grid_level_for_level():
    digits = load_digits()
    logged = []
    on = dmol_training.prepare(digits, DMOL, logged.append)
    assert "round(255 v / 16) / 255" in logged[0]
    for before, after in ((digits.train, on.train), (digits.test, on.test)):
        k = after * 255
        assert torch.equal(k, torch.round(k))
        torch.testing.assert_close(k, torch.round(before * 16) * 255 / 16, atol=0.5, rtol=0)
    levels = torch.unique(torch.cat([on.train, on.test]))
    assert len(levels) == 17 and torch.equal(levels, torch.sort(levels).values)
    assert dmol_training.prepare(digits, "bernoulli") is digits


def test_an_array_file_named_digits_is_checked_like_any_other(tmp_path):
    """Only scikit-learn's digits are put on the grid level for level: a file called
    ``digits`` holds whatever it holds, and its values off the grid are refused."""
    rng = np.random.RandomState(0)
    (tmp_path / "a").mkdir()
    np.save(tmp_path / "a" / "x.npy", rng.rand(10, 4, 4).astype(np.float32))
    os.rename(tmp_path / "a" / "x.npy", tmp_path / "a" / "digits")
    data = load_array_file(tmp_path / "a" / "digits")
    assert data.name == "digits" and data.levels == 0
    with pytest.raises(DataError, match="of a bin off"):
        dmol_training.prepare(data, DMOL)


def test_color_arrays_in_either_layout_and_off_grid_data(tmp_path):
    rng = np.random.RandomState(0)
    nhwc = rng.randint(0, 256, (10, 6, 5, 3)).astype(np.uint8)
    np.save(tmp_path / "nhwc.npy", nhwc)
    np.save(tmp_path / "nchw.npy", nhwc.transpose(0, 3, 1, 2))
    a = dmol_training.prepare(load_array_file(tmp_path / "nhwc.npy"), DMOL)
    b = dmol_training.prepare(load_array_file(tmp_path / "nchw.npy"), DMOL)
    assert a.shape == (3, 6, 5) and torch.equal(a.train, b.train)
    assert torch.equal(a.train * 255, torch.round(a.train * 255))

    def data(x):
        return Dataset("arr", torch.as_tensor(x, dtype=torch.float32)[None, None, None],
                       torch.zeros(1, 1, 1, 1))
    with pytest.raises(DataError, match="0.5 of a bin off"):
        dmol_training.prepare(data([0.0, 0.5 / 255, 1.0]), DMOL)
    with pytest.raises(DataError, match=r"in \[0, 1\].*\[0, 2\]"):
        dmol_training.prepare(data([0.0, 2.0]), DMOL)
    # every k/255 stored as float16 (up to 0.062 of a bin off): on the grid, snapped back;
    # a 12-bit grid in float16 is not, nor k/255 in bfloat16 (up to half a bin off)
    grid = torch.arange(256, dtype=torch.float64) / 255
    x = grid.half().float()
    assert float((x.double() * 255 - torch.arange(256)).abs().max()) > 0.01
    assert torch.equal(dmol_training.prepare(data(x), DMOL).train.flatten(), grid.float())
    for other in ((torch.arange(4096, dtype=torch.float64) / 4095).half(), grid.bfloat16()):
        with pytest.raises(DataError, match="of a bin off"):
            dmol_training.prepare(data(other.float()), DMOL)
    with pytest.raises(DataError, match="1 \\(gray\\) or 3 \\(RGB\\) channels"):
        dmol_training.prepare(Dataset("rgba", torch.zeros(2, 4, 3, 3), torch.zeros(1, 4, 3, 3)),
                              DMOL)


# -- the command ------------------------------------------------------------------------------
TINY = ["--model", "conv", "--channels", "4", "8", "--hidden", "16", "--latent", "2",
        "--batch-size", "16", "--likelihood", DMOL, "--no-progress"]


def test_train_eval_sample_resume_on_a_color_array(tmp_path, capsys):
    images = np.random.RandomState(1).randint(0, 256, (40, 6, 6, 3)).astype(np.uint8)
    np.save(tmp_path / "cifar-like.npy", images)
    run = tmp_path / "run"
    args = ["train", *TINY, "--dataset", str(tmp_path / "cifar-like.npy"), "--n-mix", "2",
            "--epochs", "1", "--iwae-k", "3", "--out", str(run)]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    m = json.loads((run / "metrics.json").read_text())
    final, dims = m["final"], 3 * 6 * 6
    assert m["config"]["n_mix"] == 2 and m["config"]["data_shape"] == [3, 6, 6]
    assert final["test_bpd"] == pytest.approx(-final["test_elbo"] / (dims * math.log(2)))
    assert final["test_iwae_bpd"] == pytest.approx(final["test_iwae_nll"] / (dims * math.log(2)))
    assert math.isfinite(final["test_iwae_bpd"]) and final["test_iwae_bpd"] > 0
    assert f"{final['test_bpd']:.3f} bits/dim" in out
    for epoch in m["epochs"]:   # the train side in the test side's unit too, in both places
        train = epoch["train"]
        assert train["bpd"] == pytest.approx(-train["elbo"] / (dims * math.log(2)))
        assert f"rec {train['rec']:8.2f}, {train['bpd']:.3f} bits/dim)  test elbo" in out
    assert cli.main(["eval", str(run), "--k", "2", "--json"]) == 0
    e = json.loads(capsys.readouterr().out)
    assert e["bpd"] == pytest.approx(final["test_bpd"], rel=1e-6)
    assert e["iwae_bpd"] == pytest.approx(e["iwae_nll"] / (dims * math.log(2)))
    assert cli.main(["eval", str(run), "--k", "2"]) == 0
    assert "bits/dim (IWAE " in capsys.readouterr().out
    png = tmp_path / "s.png"
    assert cli.main(["sample", str(run), "--n", "4", "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert cli.main(["train", "--epochs", "2", "--out", str(run), "--resume", "--no-progress",
                     "--iwae-k", "0"]) == 0
    resumed = json.loads((run / "metrics.json").read_text())
    assert len(resumed["epochs"]) == 2 and resumed["config"]["n_mix"] == 2


@pytest.mark.parametrize("extra,needle", [
    (["--likelihood", "bernoulli", "--n-mix", "3"], "n_mix: --n-mix is the number of mixture"),
    (["--objective", "iwae", "--k", "2", "--estimator", "dreg"], "dreg is not available"),
    (["--dataset", "{offgrid}"], "of a bin off it"),
    (["--dataset", "{rgba}"], "1 (gray) or 3 (RGB) channels"),
])
def test_bad_combinations_are_one_line_errors(tmp_path, capsys, extra, needle):
    np.save(tmp_path / "offgrid.npy", np.random.RandomState(0).rand(10, 4, 4).astype(np.float32))
    np.save(tmp_path / "rgba.npy", np.zeros((10, 4, 4, 4), np.uint8))
    extra = [a.format(offgrid=tmp_path / "offgrid.npy", rgba=tmp_path / "rgba.npy") for a in extra]
    assert cli.main(["train", *TINY, "--epochs", "1", *extra, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err, err


# -- mixed precision (NVAE trains its DMoL decoder under autocast) ----------------------------
def test_bf16_autocast_training_steps():
    torch.manual_seed(0)
    model = _model(ConvVAE, (3, 6, 6), 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = _grid(8, (3, 6, 6))
    with torch.no_grad():
        torch.manual_seed(2)
        full = model.elbo(x)
    for step in range(2):
        torch.manual_seed(2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            recon, mu, logvar, _ = model(x)
            loss = -fastvae.elbo(x, recon, mu, logvar, likelihood=DMOL)
        assert recon.dtype == torch.bfloat16  # the decoder ran in bf16
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        if step == 0:  # bf16 decoder outputs, fp32 math: close to the fp32 loss
            assert float(loss.detach()) == pytest.approx(-float(full), rel=2e-2)
        opt.zero_grad()
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad.dtype == p.dtype == torch.float32, name
            assert torch.isfinite(p.grad).all(), name
        opt.step()
