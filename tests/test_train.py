"""The training loop: it learns, writes every output, matches across backends, checks its
settings, picks a fresh run folder and scopes its threads. Resuming: test_train_resume.py;
the checkpoint's writes: test_train_checkpoint_writes.py; the NaN policy:
test_train_non_finite.py."""
import json

import pytest
import torch

from fastvae import runs, train as T
from fastvae.checkpoint import CHECKPOINT_NAME, load_checkpoint
from _train import quiet, tiny


def test_short_run_learns_and_writes_everything(tmp_path):
    out = tmp_path / "run"
    m = T.train(tiny(out, epochs=3, latent=2, hidden=[64], iwae_k=50), log=quiet)
    for name in ("checkpoint.pt", "metrics.json", "reconstructions.png", "samples.png",
                 "curves.png", "latent.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["backend"] == "torch" and saved["device"] == "cpu"
    assert [e["epoch"] for e in saved["epochs"]] == [1, 2, 3]
    for e in saved["epochs"]:
        assert {"elbo", "kl", "rec"} <= set(e["train"]) and {"elbo", "kl", "rec"} <= set(e["test"])
        assert e["wall_s"] > 0
        assert e["test"]["elbo"] == pytest.approx(e["test"]["rec"] - e["test"]["kl"])
    # Learning: the untrained model's test ELBO is ~ -45 nats; 3 short epochs gain > 10.
    assert saved["final"]["test_elbo"] > saved["initial_test"]["elbo"] + 10
    nll = saved["final"]["test_iwae_nll"]
    assert 0 < nll < -saved["initial_test"]["elbo"]
    assert m["final"] == saved["final"]


def test_reference_and_fused_backends_follow_the_same_curve(tmp_path, randn_noise):
    a = T.train(tiny(tmp_path / "ref", backend="reference", iwae_k=0), log=quiet)
    b = T.train(tiny(tmp_path / "fused", backend="torch", iwae_k=0), log=quiet)
    assert a["backend"] == "reference" and b["backend"] == "torch"
    for ea, eb in zip(a["epochs"], b["epochs"]):
        for split in ("train", "test"):
            for key in ("elbo", "kl", "rec"):
                assert ea[split][key] == pytest.approx(eb[split][key], rel=1e-4, abs=1e-3)


def test_the_final_iwae_estimate_and_eval_use_the_run_s_backend(tmp_path, monkeypatch):
    """metrics.json's backend is the one the final IWAE estimate ran on: the run's, not the
    default; fastvae eval of the run estimates on it too."""
    import fastvae
    from fastvae import cli, models

    seen, real = [], models.VAE.iwae_nll

    def spy(self, *a, **k):
        seen.append(k.get("backend"))
        return real(self, *a, **k)
    monkeypatch.setattr(models.VAE, "iwae_nll", spy)
    m = T.train(tiny(tmp_path / "run", backend="reference", epochs=1, iwae_k=10), log=quiet)
    assert m["backend"] == m["backend_selected"] == "reference"
    assert seen and set(seen) == {"reference"}
    seen.clear()
    assert cli.main(["eval", str(tmp_path / "run"), "--k", "3", "--limit", "8"]) == 0
    assert seen == ["reference"] and fastvae.last_backend() == "reference"


@pytest.mark.parametrize("settings,message", [
    (dict(dataset=5), "dataset: must be a dataset name .* as a str, got 5"),
    (dict(model="conv", channels="32"), "channels: must be a number, got the text '32'"),
    (dict(resume="no"), "resume: must be True or False, got 'no'"),
    (dict(resume=1), "resume: must be True or False, got 1"),
    (dict(amp="no"), "amp: must be True or False, got 'no'"),
    (dict(latent="8"), "latent: must be a number, got the text '8'"),
    (dict(epochs=[3]), r"epochs: must be a single value, got \[3\]"),
    (dict(model="hvae", groups=[2]), r"groups: must be a single value, got \[2\]"),
    (dict(model="hvae", kl="exact"), r"kl: must be one of \('analytic', 'mc'\), got 'exact'"),
    (dict(model="resnet"), r"model: must be one of \('mlp', 'conv', 'hvae'\), got 'resnet'"),
    (dict(likelihood="poisson"), "likelihood: must be one of .*, got 'poisson'"),
    (dict(backend="cuda"), r"backend: must be one of \('auto', .*\), got 'cuda'")])
def test_settings_of_the_wrong_kind_are_refused_by_name_first(tmp_path, settings, message):
    """The Python API's config is checked as the command line's flags are, for kinds
    argparse guarantees there: a bool for an on/off setting (any other value is read by its
    truthiness), text for the dataset, a number for a number (each of a list's)."""
    with pytest.raises(ValueError, match=message):
        T.train(tiny(tmp_path / "r", **settings), log=quiet)
    assert list(tmp_path.iterdir()) == []


def test_default_run_folder_never_overwrites(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tiny(None, epochs=1, iwae_k=0)
    cfg.pop("out")
    T.train(dict(cfg), log=quiet)
    T.train(dict(cfg), log=quiet)
    assert (tmp_path / "runs" / "digits" / CHECKPOINT_NAME).is_file()
    assert (tmp_path / "runs" / "digits-2" / CHECKPOINT_NAME).is_file()
    T.train(dict(cfg, epochs=2, resume=True), log=quiet)  # continues the newest
    assert load_checkpoint(tmp_path / "runs" / "digits-2")["epoch"] == 2
    assert load_checkpoint(tmp_path / "runs" / "digits")["epoch"] == 1


def test_threads_setting_is_scoped_to_the_run(tmp_path):
    before = torch.get_num_threads()
    seen = []
    T.train(tiny(tmp_path, epochs=1, iwae_k=0, threads=before + 1),
            log=lambda *a: seen.append(torch.get_num_threads()))
    assert seen and seen[-1] == before + 1
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("is_main", [True, False])
def test_a_run_folder_rank_0_cannot_claim_reaches_the_other_ranks(monkeypatch, is_main):
    """Under torchrun rank 0 broadcasts its claim's error, any error: an OSError (a
    permission, a full disk) was raised on rank 0 alone, and the others waited in the
    broadcast until its timeout."""
    sent = []

    def broadcast(msg, src):
        if not is_main:   # what rank 0 sends on the other ranks
            msg[:] = [None, "[Errno 13] Permission denied: 'runs/x'"]
        sent.append(list(msg))

    def claim(*a):
        raise PermissionError(13, "Permission denied", "runs/x")
    monkeypatch.setattr(runs.torch.distributed, "broadcast_object_list", broadcast)
    monkeypatch.setattr(runs.RunFolder, "claim", claim)
    with pytest.raises(OSError if is_main else T.RunFolderError,
                       match=r"Permission denied: 'runs/x'") as e:
        runs.claim_folder(dict(out="runs/x", dataset="digits", resume=False), is_main, 2)
    assert sent == [[None, "[Errno 13] Permission denied: 'runs/x'"]]
    assert getattr(e.value, "alike", False)
