"""The hierarchical VAE (fastvae.models.HierarchicalVAE) and ``fastvae train --model hvae``:
shapes at several image sizes, the ELBO as the sum of its parts (log p(x|z) minus each
group's KL, that KL being kl_normal of the group's posterior and prior), the bounded
parameterization, the IWAE estimate from per-group log-densities, and the run: it
learns, writes per-group KLs, resumes bit for bit on CPU, round-trips its checkpoint
through eval and sample, trains compiled under CPU autocast, and refuses settings it
cannot train with."""
import json

import pytest
import torch

import fastvae
from fastvae import cli
from fastvae import train as T
from fastvae.checkpoint import load_checkpoint
from fastvae.hvae import soft_clamp
from fastvae.models import HierarchicalVAE, build_model


def small(shape=(1, 8, 8), **kw):
    torch.manual_seed(0)
    return HierarchicalVAE(shape, **{"latent_channels": 3, "channels": (8, 12), **kw})


def with_heads(model):
    """``model`` with every group's prior and posterior head at PyTorch's default
    initialization instead of zero: posteriors and priors that differ, as after training,
    for the tests of the math (a fresh model's groups all start at q = p = N(0, I))."""
    torch.manual_seed(1)
    for groups in model.stages:
        for group in groups:
            group.prior.reset_parameters()
            group.posterior.reset_parameters()
    return model


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 7, 9)])
def test_shapes_and_api(shape):
    model = small(shape, groups=2)
    x = torch.rand(5, *shape)
    recon, kl = model(x)
    assert recon.shape == x.shape and kl.shape == (model.num_groups, 5) == (4, 5)
    assert (kl >= 0).all()
    assert len(model.group_dims) == 4 and model.latent_dim == sum(model.group_dims)
    assert model.sample(3).shape == (3, *shape)
    rec = model.reconstruct(x)
    assert rec.shape == x.shape and 0 <= float(rec.min()) and float(rec.max()) <= 1
    assert model.elbo(x).shape == () and model.elbo(x, reduction="none").shape == (5,)
    assert model.iwae_nll(x, k=3).shape == (5,)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        HierarchicalVAE((64,))


@pytest.mark.parametrize("n,error", [(-1, "n must be >= 0, got -1"), (2.5, "n must be an int")])
def test_sample_checks_n(n, error):
    """expand(-1, ...) keeps a size of 1: sample(-1) drew one image, silently."""
    with pytest.raises((ValueError, TypeError), match=error):
        small().sample(n)
    assert small().sample(0).shape == (0, 1, 8, 8)
    # decoded top-down chunk by chunk (memory bounded for any n)
    assert [len(c) for c in small().sample_chunks(5, chunk_size=2)] == [2, 2, 1]


@pytest.mark.parametrize("env", ["reference", "bogus"])
def test_sampling_does_not_read_fastvae_backend(monkeypatch, env):
    """The prior's draws take the "auto" backend: FASTVAE_BACKEND changed a seed's images
    ("reference"), or failed after training had finished, while the final pictures were drawn
    ("bogus")."""
    model = small()
    want = model.sample(3, generator=torch.Generator().manual_seed(1))
    monkeypatch.setenv("FASTVAE_BACKEND", env)
    got = model.sample(3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(got, want)


def test_a_seed_fixes_one_n_s_draw_not_a_prefix():
    """What HierarchicalVAE._sample_chunks says a seed fixes: one n's images (one batch up
    to the chunk size), not sample(5)[:3] for sample(3): on the float32 Philox stream the
    two agree to rounding, on torch.randn's eps each group's draw of all n shifts the next."""
    from fastvae.backends.torch_backend import gaussian_rows
    from fastvae.backends.torch_backend.reparameterize import randn_noise
    model = small()

    def draw(n, **kw):
        return model.sample(n, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(draw(5), draw(5)) and torch.equal(draw(5, chunk_size=8), draw(5))
    assert not torch.allclose(draw(5, chunk_size=2), draw(5))   # chunk by chunk past one
    if gaussian_rows.available():
        torch.testing.assert_close(draw(3), draw(5)[:3], rtol=0, atol=1e-5)
    with randn_noise():
        assert torch.equal(draw(5), draw(5))
        assert not torch.allclose(draw(3), draw(5)[:3])


def test_a_deep_hierarchy_starts_at_its_priors_with_the_state_at_scale():
    """Zero heads: every group starts at q = p = N(0, I), a KL of exactly 0. Depth-scaled
    residual branches with zero biases: the top-down state of 40 groups is within 20% of
    the scale of 4 groups' (PyTorch's default initialization: 80x, and a starting KL of
    ~5e9 nats; scaled weights with default biases: 2.3x, growing with depth)."""
    scale = {}
    for groups in (2, 20):
        model = small(groups=groups)
        model.out.register_forward_pre_hook(lambda mod, inp: scale.__setitem__(groups,
                                                                               inp[0].std()))
        with torch.no_grad():
            recon, kl = model(torch.rand(16, 1, 8, 8).round())
        assert kl.shape == (2 * groups, 16) and (kl == 0).all()
    assert scale[20] < 1.2 * scale[2]


@pytest.mark.parametrize("kw,msg", [
    (dict(latent_channels=0), r"latent_channels must be >= 1, got 0"),
    (dict(data_shape=(1, 0, 8)), r"data_shape\[1\] must be >= 1, got 0"),
    (dict(channels=(-3,)), r"channels\[0\] must be >= 1, got -3"),
    (dict(channels=()), r"channels must hold at least one size"),
    (dict(groups=0), r"groups must be >= 1, got 0"),
])
def test_bad_sizes_name_the_argument(kw, msg):
    with pytest.raises(ValueError, match=msg):
        HierarchicalVAE(**kw)


def test_elbo_is_the_sum_of_its_parts():
    """elbo = log p(x|z) - sum_i KL_i for one draw, and KL_i is kl_normal of group i's
    posterior and prior (the tensors the model fed sample_with_kl)."""
    model = with_heads(small(groups=2, likelihood="gaussian"))
    x = torch.rand(6, 1, 8, 8)
    seen = []

    def draw(q, p):
        z, kl = fastvae.sample_with_kl(*q, *p)
        seen.append((q, p, kl))
        return z, kl

    torch.manual_seed(3)
    recon, kls = model._top_down(6, model._bottom_up(x), draw)
    torch.manual_seed(3)
    e = model.elbo(x, reduction="none")
    want = model.log_px(x, recon) - torch.stack(kls).sum(0)
    torch.testing.assert_close(e, want)
    rec = fastvae.gaussian_log_prob(x.flatten(1), recon.flatten(1),
                                    model.obs_logvar.expand_as(x).flatten(1))
    torch.testing.assert_close(model.log_px(x, recon), rec, rtol=1e-5, atol=1e-4)
    for q, p, kl in seen:
        assert (kl > 0).all()
        torch.testing.assert_close(kl, fastvae.kl_normal(*q, *p, backend="reference"))
    # the same draws on the eager reference: the fused ops change nothing (in float64, where
    # both draw torch.randn; float32 on "torch" draws its own Philox stream in C)
    model, x = model.double(), x.double()
    torch.manual_seed(3)
    e = model.elbo(x, reduction="none")
    torch.manual_seed(3)
    e_ref = model.elbo(x, reduction="none", backend="reference")
    torch.testing.assert_close(e, e_ref, rtol=1e-9, atol=1e-8)


def test_bounded_parameterization_keeps_everything_finite():
    """Means in (-5, 5), log-variances in (-10, 10) whatever the weights: an exploding
    layer cannot send exp(logvar) to inf (the NaN the docs warn about)."""
    torch.testing.assert_close(soft_clamp(torch.tensor([0.0, 1e-3, 1e9, -1e9])),
                               torch.tensor([0.0, 1e-3, 5.0, -5.0]))
    model = with_heads(small())
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e4)
    x = torch.rand(4, 1, 8, 8)
    seen = []
    model._top_down(4, model._bottom_up(x),
                    lambda q, p: seen.append((q, p)) or fastvae.sample_with_kl(*q, *p))
    for q, p in seen:
        for mu, lv in (q, p):
            assert mu.abs().max() <= 5 and lv.abs().max() <= 10
    recon, kl = model(x)
    assert torch.isfinite(kl).all()


def test_iwae_estimate_is_a_tighter_bound():
    model = with_heads(small())
    x = torch.rand(8, 1, 8, 8).round()
    torch.manual_seed(0)
    elbo = torch.stack([model.elbo(x, reduction="none") for _ in range(20)]).mean(0)
    nll = model.iwae_nll(x, k=64, chunk_size=16, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(nll).all()
    assert (-nll).mean() >= elbo.mean() - 0.05
    with pytest.raises(ValueError, match="k must be"):
        model.iwae_nll(x, k=0)


@pytest.mark.parametrize("kw", [{}, {"latent_channels": 1, "channels": (24, 40)},
                                {"channels": (4,), "groups": 3}])
def test_iwae_chunks_are_sized_by_the_widest_top_down_tensor(kw, monkeypatch):
    """A chunk's memory is its widest activation, not its latents: a narrow-latent, wide
    model chunked by latent count held gigabytes per chunk."""
    from fastvae import observation
    model = small(**kw)
    widest = []
    for module in model.modules():
        if module is not model and not any(module is m for m in model.down.modules()):
            module.register_forward_hook(
                lambda mod, inp, out: widest.append(out[0].numel())
                if isinstance(out, torch.Tensor) and out.dim() == 4 else None)
    with torch.no_grad():
        model(torch.rand(6, 1, 8, 8).round())
    assert model.row_elements() == max(widest + [model.latent_dim])
    monkeypatch.setattr(observation, "IWAE_CHUNK_ELEMENTS", 6 * model.row_elements() * 5)
    assert model.iwae_sizes(12, None, 6) == (12, 5)
    assert model.iwae_sizes(3, None, 6) == (3, 3)


def test_iwae_nll_of_a_float64_model_keeps_float64():
    model = with_heads(small()).double()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64).round()
    nll = model.iwae_nll(x, k=4, generator=torch.Generator().manual_seed(1))
    assert nll.dtype == torch.float64 and torch.isfinite(nll).all()
    assert with_heads(small()).iwae_nll(x.float(), k=2).dtype == torch.float32


def test_build_model_from_config():
    m = build_model({"model": "hvae", "data_shape": [1, 8, 8], "latent": 2, "channels": [4, 8],
                     "groups": 3})
    assert isinstance(m, HierarchicalVAE) and m.num_groups == 6 and m.latent_channels == 2


def hvae_cfg(out, **kw):
    cfg = dict(out=str(out), model="hvae", epochs=2, latent=2, channels=[8, 12], groups=2,
               batch_size=128, lr=3e-3, iwae_k=4, progress=False)
    cfg.update(kw)
    return cfg


def quiet(*args, **kw):
    pass


def test_trains_and_reports_every_group(tmp_path):
    out = tmp_path / "run"
    m = T.train(hvae_cfg(out, epochs=3), log=quiet)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["final"]["test_elbo"] > saved["initial_test"]["elbo"] + 5
    for e in saved["epochs"]:
        for split in ("train", "test"):
            groups = e[split]["kl_groups"]
            assert len(groups) == 4 and all(g >= 0 for g in groups)
            assert sum(groups) == pytest.approx(e[split]["kl"], rel=1e-6, abs=1e-6)
            assert e[split]["elbo"] == pytest.approx(e[split]["rec"] - e[split]["kl"])
    assert len(saved["final"]["test_kl_groups"]) == 4
    assert 0 < saved["final"]["test_iwae_nll"] < -saved["initial_test"]["elbo"]
    for name in ("checkpoint.pt", "curves.png", "samples.png", "reconstructions.png"):
        assert (out / name).stat().st_size > 0
    assert not (out / "latent.png").exists()
    assert m["final"] == saved["final"]


def test_curves_of_many_groups_lay_out_without_a_warning(tmp_path, monkeypatch):
    """40 groups (--groups 20 over two stages): the legend goes beside the panel in columns;
    matplotlib's 'tight layout not applied' warning reached the terminal before. Each
    group's line has its own colour and marker (ten colours repeated alone told groups 1,
    11, 21 and 31 apart by nothing)."""
    import warnings
    from fastvae import plots
    pytest.importorskip("matplotlib")
    figures = []
    save = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, *a, **k: figures.append(fig) or
                        save(fig, *a, **k))
    kl = [0.1 * g for g in range(40)]
    history = [{"epoch": e, "train": {"elbo": -1.0, "kl": 1.0, "rec": 0.0, "kl_groups": kl},
                "test": {"elbo": -1.0, "kl": 1.0, "rec": 0.0, "kl_groups": kl}} for e in (1, 2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.save_curves(history, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    lines = [ln for ln in figures[0].axes[3].get_lines() if ln.get_label().startswith("group")]
    assert len({(ln.get_color(), ln.get_marker()) for ln in lines}) == len(lines) == 40


def test_resume_is_bit_for_bit(tmp_path):
    T.train(hvae_cfg(tmp_path / "straight", iwae_k=0), log=quiet)
    T.train(hvae_cfg(tmp_path / "split", epochs=1, iwae_k=0), log=quiet)
    T.train(hvae_cfg(tmp_path / "split", resume=True, iwae_k=0), log=quiet)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "split")
    assert a["epoch"] == b["epoch"] == 2
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [h["test"] for h in a["history"]] == [h["test"] for h in b["history"]]
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


def test_checkpoint_round_trip_through_eval_and_sample(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--model", "hvae", "--epochs", "1", "--latent", "2",
                     "--channels", "8", "12", "--groups", "1", "--batch-size", "128",
                     "--iwae-k", "0", "--no-progress", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "training hvae VAE" in out
    assert cli.main(["eval", str(run), "--k", "3", "--limit", "20", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert len(m["kl_groups"]) == 2 and m["iwae_nll"] > 0
    assert m["elbo"] == pytest.approx(json.loads((run / "metrics.json").read_text())
                                      ["epochs"][0]["test"]["elbo"], abs=2.0)
    assert cli.main(["eval", str(run), "--k", "2", "--limit", "10"]) == 0
    assert "KL per group" in capsys.readouterr().out
    png = tmp_path / "s.png"
    assert cli.main(["sample", str(run), "--n", "6", "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_settings_it_cannot_train_with(tmp_path, capsys):
    args = ["train", "--model", "hvae", "--epochs", "1", "--no-progress",
            "--out", str(tmp_path / "r")]
    assert cli.main([*args, "--kl", "mc"]) == 2
    assert "analytic KL" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main([*args, "--groups", "0"])
    assert e.value.code == 2 and "--groups" in capsys.readouterr().err
    with pytest.raises(ValueError, match="groups"):
        T.train(hvae_cfg(tmp_path / "r", groups=0), log=quiet)
    assert not (tmp_path / "r").exists()


def test_compiled_under_cpu_amp_trains_every_group(tmp_path):
    """--compile --amp on the CPU: inductor's channels-last code gave the top-down path no
    gradient (fastvae.amp.compile_options), so every group's KL stayed 0; now each learns,
    as in eager. Two stages (two upsamplings: the failing chain), two equal steps (one
    graph); without the fix each KL is exactly 0."""
    cfg = hvae_cfg(tmp_path / "r", epochs=1, channels=[4, 4], groups=1, latent=2, iwae_k=0,
                   batch_size=719, compile=True, amp=True, device="cpu")
    m = T.train(cfg, log=quiet)
    assert all(g > 0 for g in m["epochs"][0]["test"]["kl_groups"])
