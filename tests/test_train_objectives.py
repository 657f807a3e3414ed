"""``fastvae train --objective {elbo,iwae} --k K --estimator {standard,stl,dreg}``: the
IWAE-trained and K-sample models learn, every backend follows the same curve, the
defaults are yesterday's training bit for bit, and bad combinations are refused before
any work (API and command line)."""
import json

import pytest
import torch

from fastvae import cli
from fastvae import train as T

from _train import quiet, tiny


def _curve(metrics):
    return [(e["train"], e["test"]) for e in metrics["epochs"]]


def test_iwae_dreg_training_learns(tmp_path):
    out = tmp_path / "run"
    m = T.train(tiny(out, epochs=3, objective="iwae", k=5, estimator="dreg", iwae_k=50), log=quiet)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["config"]["objective"] == "iwae" and saved["config"]["k"] == 5
    assert saved["config"]["estimator"] == "dreg"
    assert saved["final"]["test_elbo"] > saved["initial_test"]["elbo"] + 10
    assert 0 < saved["final"]["test_iwae_nll"] < -saved["initial_test"]["elbo"]
    # the logged loss is -L_5, which bounds -ELBO from below on average
    assert all(e["train"]["loss"] < -e["train"]["elbo"] + 1.0 for e in m["epochs"])


@pytest.mark.parametrize("objective,k,estimator,kl", [("iwae", 4, "dreg", "analytic"),
                                                      ("iwae", 3, "stl", "analytic"),
                                                      ("elbo", 3, "stl", "mc"),
                                                      ("elbo", 1, "stl", "mc")])
def test_backends_follow_the_same_curve(tmp_path, objective, k, estimator, kl, randn_noise):
    """The fused "torch" backend and the eager reference train the same model (with the
    same draws: ``randn_noise``)."""
    cfg = dict(epochs=2, iwae_k=0, objective=objective, k=k, estimator=estimator, kl=kl)
    a = T.train(tiny(tmp_path / "ref", backend="reference", **cfg), log=quiet)
    b = T.train(tiny(tmp_path / "fused", backend="torch", **cfg), log=quiet)
    for (ta, sa), (tb, sb) in zip(_curve(a), _curve(b)):
        for key in ("loss", "elbo", "kl", "rec"):
            assert ta[key] == pytest.approx(tb[key], rel=1e-4, abs=1e-3), key
        for key in ("elbo", "kl", "rec"):
            assert sa[key] == pytest.approx(sb[key], rel=1e-4, abs=1e-3), key


def test_the_defaults_are_the_single_sample_elbo(tmp_path):
    a = T.train(tiny(tmp_path / "default", epochs=1, iwae_k=0), log=quiet)
    b = T.train(tiny(tmp_path / "explicit", epochs=1, iwae_k=0, objective="elbo", k=1,
                     estimator="standard"), log=quiet)
    assert _curve(a) == _curve(b)


@pytest.mark.parametrize("settings,key,message", [
    (dict(estimator="stl"), "estimator", "add --kl mc"),
    (dict(estimator="dreg"), "estimator", "dreg is the estimator of --objective iwae"),
    (dict(objective="iwae", beta=0.5), "beta", "no KL weight"),
    (dict(objective="iwae", k=0), "k", "positive integer"),
    (dict(objective="vae"), "objective", "must be one of elbo, iwae"),
    (dict(estimator="rws"), "estimator", "must be one of standard, stl, dreg"),
    (dict(model="hvae", objective="iwae", k=2), "model", "--model hvae trains on the ELBO"),
    (dict(model="hvae", k=3), "model", "--model hvae trains on the ELBO"),
    (dict(model="hvae", kl="mc"), "kl", "--model hvae trains on each group.s analytic KL"),
    # settings a run would otherwise ignore without a word
    (dict(objective="iwae", k=2, kl_warmup=3), "kl_warmup", "no KL weight to ramp"),
    (dict(objective="iwae", k=2, kl="mc"), "kl", "no separate KL to choose"),
    (dict(beta=0, kl_warmup=3), "kl_warmup", "from 0 to --beta, which is 0"),
    (dict(model="hvae", hidden=None, channels=[8], beta=0, kl_warmup=3), "kl_warmup",
     "leave --kl-warmup at 0 or set --beta above 0"),
    (dict(model="hvae", hidden=[64]), "hidden", "hvae model has no hidden layers"),
    (dict(model="mlp", groups=3), "groups", "mlp model has no latent groups"),
    (dict(model="mlp", channels=[8]), "channels", "its sizes are --hidden$"),
    (dict(model="conv", groups=3), "groups", "its sizes are --hidden and --channels")])
def test_bad_combinations_are_refused_first(tmp_path, settings, key, message):
    with pytest.raises(ValueError, match=f"{key}: .*{message}"):
        T.train(tiny(tmp_path / "r", **settings), log=quiet)
    assert list(tmp_path.iterdir()) == []


def test_a_config_of_every_default_is_not_refused_for_sizes_it_holds():
    """train(default_config() | ...) holds every size; only a value away from its default
    that the model does not read is refused (a tuple as a list)."""
    from fastvae.models import MODELS
    from fastvae.options import MODEL_SIZES, check_model_sizes
    assert set(MODEL_SIZES) == set(MODELS)   # every kind says which sizes it reads
    for model in MODELS:
        check_model_sizes(dict(T.default_config(), model=model), model, T.default_config())
    with pytest.raises(ValueError, match="hidden: the hvae model"):
        check_model_sizes(dict(T.default_config(), hidden=(64,)), "hvae", T.default_config())
    check_model_sizes(dict(T.default_config(), channels=(32, 64)), "mlp", T.default_config())


@pytest.mark.parametrize("flags", [["--estimator", "stl"], ["--objective", "iwae", "--beta", "2"],
                                   ["--model", "hvae", "--hidden", "32"],
                                   ["--objective", "elbo", "--estimator", "dreg"],
                                   ["--kl-warmup", "3", "--beta", "0"]])
def test_the_command_says_so_in_one_line(tmp_path, capsys, monkeypatch, flags):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--epochs", "1", "--no-progress", *flags]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_warm_up_at_beta_0_is_refused_only_where_asked_for(tmp_path):
    """--kl-warmup at --beta 0 ramps 0 to 0: refused when given, not when it is a default
    (hvae's 10 is 0 there) or a saved run's (one saved before the refusal still resumes)."""
    for model in ("mlp", "hvae"):
        assert T._checked_config(dict(model=model, beta=0))["kl_warmup"] == 0
    assert T._checked_config(dict(beta=0, kl_warmup=0))["kl_warmup"] == 0
    out = tmp_path / "saved"
    with pytest.MonkeyPatch.context() as mp:   # a run saved before the refusal
        mp.setattr(T, "check_kl_warmup", lambda given, cfg: None)
        T.train(tiny(out, epochs=1, iwae_k=0, beta=0, kl_warmup=2), log=quiet)
    m = T.train(dict(out=str(out), resume=True, epochs=2, progress=False), log=quiet)
    assert (m["config"]["beta"], m["config"]["kl_warmup"]) == (0, 2)
    assert len(m["epochs"]) == 2


def test_the_command_trains_iwae(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--epochs", "1", "--hidden", "32", "--latent", "2",
                     "--batch-size", "128", "--iwae-k", "5", "--no-progress", "--objective",
                     "iwae", "--k", "3", "--estimator", "dreg", "--out", str(out)]) == 0
    assert "iwae K=3 dreg" in capsys.readouterr().out
    cfg = json.loads((out / "metrics.json").read_text())["config"]
    assert (cfg["objective"], cfg["k"], cfg["estimator"]) == ("iwae", 3, "dreg")


@pytest.mark.slow
def test_compiled_dreg_training_matches_eager(tmp_path):
    """--compile with DReG compiles the encoder and the decoder and samples between them,
    so the hook sees the decoder's path: the same curve as eager (inductor's own rounding)."""
    torch._dynamo.reset()
    cfg = dict(epochs=1, iwae_k=0, objective="iwae", k=3, estimator="dreg", backend="torch")
    a = T.train(tiny(tmp_path / "eager", **cfg), log=quiet)
    b = T.train(tiny(tmp_path / "compiled", compile=True, **cfg), log=quiet)
    for (ta, sa), (tb, sb) in zip(_curve(a), _curve(b)):
        for key in ("loss", "elbo"):
            assert ta[key] == pytest.approx(tb[key], rel=1e-3, abs=1e-2), key
        assert sa["elbo"] == pytest.approx(sb["elbo"], rel=1e-3, abs=1e-2)


def test_dreg_s_compiled_halves_serve_the_training_step_alone(monkeypatch):
    """--compile with DReG: the model called through CompiledHalves runs the compiled
    encode and decode; the model itself (evaluation, the final estimate, the pictures)
    stays eager, so they compile nothing for their own shapes and grad modes."""
    from fastvae import amp
    from fastvae.models import VAE

    ran = []

    def fake_compile(fn, **kw):
        def compiled(*a, **k):
            ran.append(fn.__name__)
            return fn(*a, **k)
        return compiled

    monkeypatch.setattr(amp.torch, "compile", fake_compile)
    core = VAE(data_shape=(1, 8, 8), latent_dim=2, hidden=(16,))
    model = amp.CompiledHalves(core, core, None)
    x = torch.rand(5, 1, 8, 8)
    model(x, backend="torch", n_samples=3)
    assert ran == ["_encode", "_decode"]
    assert "_encode" not in vars(core) and "_decode" not in vars(core)
    core(x, backend="torch", n_samples=3)
    core.reconstruct(x)
    assert ran == ["_encode", "_decode"]
    from fastvae.evaluation import _core
    assert _core(model) is core



def test_the_train_elbo_of_k_samples_is_minus_their_loss(tmp_path):
    """With K samples per image the epoch's train rec is the mean over all K, as the loss
    averages them: at beta 1 with the analytic KL, the K-sample ELBO loss is exactly
    -(rec - kl), as the single sample's is. It was the first sample's rec alone."""
    m = T.train(tiny(tmp_path / "run", epochs=2, iwae_k=0, k=4), log=quiet)
    for train, _ in _curve(m):
        assert train["loss"] == pytest.approx(-train["elbo"], rel=1e-5)


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_a_k_sample_step_logs_the_mean_rec_of_all_k(objective):
    """The logged reconstruction term of a K-sample step (either objective) is the mean of
    the K samples' log p(x|z_k), not the first one's."""
    import fastvae
    from fastvae.evaluation import batch_loss, batch_terms
    from fastvae.models import VAE

    torch.manual_seed(0)
    model = VAE((1, 8, 8), latent_dim=3, hidden=(16,))
    x = torch.rand(6, 1, 8, 8)
    cfg = dict(T.default_config(), objective=objective, k=4, backend="torch")
    torch.manual_seed(1)
    _, parts = batch_loss(model, x, cfg)
    got = batch_terms(model, x, parts, "torch")
    torch.manual_seed(1)
    recon_k, mu, logvar, _ = model(x, n_samples=4, backend="torch")
    want = sum(fastvae.elbo(x, r, mu, logvar, beta=0.0, reduction="sum") for r in recon_k) / 4
    torch.testing.assert_close(got[0], want.detach().double(), rtol=1e-5, atol=1e-4)
    assert got[1] == pytest.approx(float(fastvae.kl_standard_normal(mu, logvar).sum().detach()), rel=1e-5)
