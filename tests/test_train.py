"""The training loop: it learns, writes every output, matches across backends, resumes
bit-for-bit, never loses a checkpoint, and stops cleanly on a non-finite loss."""
import json
import math
import os
import shlex

import numpy as np
import pytest
import torch

from fastvae import runs, train as T
from fastvae.checkpoint import (CHECKPOINT_NAME, CheckpointError, load_checkpoint,
                                save_checkpoint)


def tiny(out, **kw):
    """A few seconds of training on the embedded digits."""
    cfg = dict(out=str(out), epochs=2, hidden=[32], latent=4, batch_size=64, lr=3e-3,
               iwae_k=10, progress=False)
    cfg.update(kw)
    return cfg


def quiet(*args, **kw):
    pass


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


def _states_equal(a, b):
    ma, mb = a["model"], b["model"]
    assert ma.keys() == mb.keys()
    for k in ma:
        assert torch.equal(ma[k], mb[k]), k
    oa, ob = a["optimizer"]["state"], b["optimizer"]["state"]
    for k in oa:
        for name in oa[k]:
            assert torch.equal(torch.as_tensor(oa[k][name]), torch.as_tensor(ob[k][name]))
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert torch.equal(a["rng"]["shuffle"], b["rng"]["shuffle"])


def _numbers(history):
    return [(e["epoch"], e["train"], e["test"]) for e in history]


def test_resume_is_bit_for_bit(tmp_path):
    T.train(tiny(tmp_path / "straight", epochs=2), log=quiet)
    T.train(tiny(tmp_path / "split", epochs=1), log=quiet)
    first = load_checkpoint(tmp_path / "split")
    assert first["epoch"] == 1
    T.train(tiny(tmp_path / "split", epochs=2, resume=True), log=quiet)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "split")
    assert a["epoch"] == b["epoch"] == 2
    _states_equal(a, b)
    assert _numbers(a["history"]) == _numbers(b["history"])
    ma = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "split" / "metrics.json").read_text())
    assert ma["final"]["test_iwae_nll"] == mb["final"]["test_iwae_nll"]


def test_resume_without_epochs_continues_to_the_run_s_own(tmp_path, monkeypatch):
    """A 3-epoch run interrupted in epoch 2 and resumed without --epochs trains to 3, not
    to the flag's default 60, and without --iwae-k skips the final estimate as the run
    did, not a K=1000 one; resumed once more it is finished and says so."""
    real, calls = T._train_epoch, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(T, "_train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        T.train(tiny(tmp_path, epochs=3, iwae_k=0), log=quiet)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path)["epoch"] == 1
    cfg = tiny(tmp_path, resume=True)
    cfg.pop("epochs")
    cfg.pop("iwae_k", None)
    seen = []
    T.train(cfg, log=seen.append)
    assert load_checkpoint(tmp_path)["epoch"] == 3
    assert any("epoch   3/3" in line for line in seen) and not any("/60" in s for s in seen)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 3 and metrics["final"]["test_iwae_nll"] is None
    with pytest.raises(ValueError, match="is finished: it has trained its 3 epochs; pass "
                                         "--epochs with a total above 3"):
        T.train(cfg, log=quiet)


def test_a_resumed_run_stopped_in_its_final_stage_can_be_finished(tmp_path, monkeypatch):
    """A finished 1-epoch run resumed to 2 and stopped after epoch 2, in its final stage,
    still holds the first run's metrics.json: resuming it again to 2 finishes it (that
    file once read as "finished", and the command the stop printed was refused)."""
    T.train(tiny(tmp_path, epochs=1, iwae_k=0), log=quiet)

    def stopped(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(T, "finish", stopped)
    with pytest.raises(KeyboardInterrupt):
        T.train(tiny(tmp_path, epochs=2, iwae_k=0, resume=True), log=quiet)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path)["epoch"] == 2
    assert len(json.loads((tmp_path / "metrics.json").read_text())["epochs"]) == 1
    seen = []
    T.train(tiny(tmp_path, epochs=2, iwae_k=0, resume=True), log=seen.append)
    assert any("finishing the run" in line for line in seen)
    assert len(json.loads((tmp_path / "metrics.json").read_text())["epochs"]) == 2
    with pytest.raises(ValueError, match="has already trained 2 epochs"):
        T.train(tiny(tmp_path, resume=True), log=quiet)


def test_resume_keeps_the_run_s_threads_unless_given(tmp_path, monkeypatch):
    """The thread count orders a CPU run's sums: a plain --resume keeps the run's, so it
    continues bit-for-bit (it took the default, auto, before); --threads still changes it."""
    T.train(tiny(tmp_path, epochs=1, iwae_k=0, threads=2), log=quiet)
    seen, real = [], T._set_threads
    monkeypatch.setattr(T, "_set_threads", lambda cfg, *a: seen.append(cfg["threads"])
                        or real(cfg, *a))
    T.train(tiny(tmp_path, epochs=2, iwae_k=0, resume=True), log=quiet)
    T.train(tiny(tmp_path, epochs=3, iwae_k=0, resume=True, threads=1), log=quiet)
    assert seen == [2, 1]


def test_checkpoint_loads_weights_only_and_refuses_to_overwrite(tmp_path):
    T.train(tiny(tmp_path, epochs=1, iwae_k=0), log=quiet)
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert state["format"] == "fastvae-checkpoint" and isinstance(state["config"], dict)
    with pytest.raises(CheckpointError, match="--resume"):
        T.train(tiny(tmp_path, epochs=1), log=quiet)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        T.train(tiny(tmp_path / "empty", resume=True), log=quiet)


@pytest.mark.parametrize("settings,message", [
    (dict(dataset=5), "dataset: must be a dataset name .* as a str, got 5"),
    (dict(model="conv", channels=32), "channels: must be a list of ints, one per stage, got 32"),
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
    truthiness), text for the dataset, a list for channels, a number for a number."""
    with pytest.raises(ValueError, match=message):
        T.train(tiny(tmp_path / "r", **settings), log=quiet)
    assert list(tmp_path.iterdir()) == []


def test_crash_between_write_and_rename_keeps_old_checkpoint(tmp_path, monkeypatch):
    T.train(tiny(tmp_path, epochs=1, iwae_k=0), log=quiet)
    before = (tmp_path / CHECKPOINT_NAME).read_bytes()

    def killed(src, dst):
        raise KeyboardInterrupt("simulated kill between write and rename")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        T.train(tiny(tmp_path, epochs=2, resume=True), log=quiet)
    monkeypatch.undo()
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == before
    assert load_checkpoint(tmp_path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir() if "checkpoint" in p.name) == [CHECKPOINT_NAME]
    # A hard kill cannot clean up: a stray temp file must not count as the checkpoint.
    (tmp_path / ".tmp-checkpoint.pt.abc123").write_bytes(b"half a checkpoint")
    T.train(tiny(tmp_path, epochs=2, resume=True), log=quiet)
    assert load_checkpoint(tmp_path)["epoch"] == 2


def test_save_checkpoint_failure_leaves_no_temp(tmp_path, monkeypatch):
    save_checkpoint({"config": {}, "model": {}, "epoch": 1}, tmp_path / "c.pt")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save_checkpoint({"config": {}, "model": {}, "epoch": 2}, tmp_path / "c.pt")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    assert load_checkpoint(tmp_path / "c.pt")["epoch"] == 1


def test_corrupt_and_foreign_checkpoints(tmp_path):
    T.train(tiny(tmp_path / "run", epochs=1, iwae_k=0), log=quiet)
    good = (tmp_path / "run" / CHECKPOINT_NAME).read_bytes()
    (tmp_path / "trunc.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="trunc.pt"):
        load_checkpoint(tmp_path / "trunc.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a fastvae checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real = T.batch_loss
    calls = {"n": 0}

    def poisoned(model, x, cfg):
        loss, parts = real(model, x, cfg)
        calls["n"] += 1
        if calls["n"] == 23 + 3:  # digits: 1438 / 64 -> 23 steps per epoch; epoch 2, step 3
            loss = loss * float("nan")
        return loss, parts

    monkeypatch.setattr(T, "batch_loss", poisoned)
    out = tmp_path / "a run"
    with pytest.raises(T.NonFiniteLoss, match=r"epoch 2, step 3/23") as e:
        T.train(tiny(out, epochs=3), log=quiet)
    assert "epoch 1" in str(e.value) and CHECKPOINT_NAME in str(e.value)
    # the command to continue repeats the run's target (the default, 60, would be refused
    # where the run asked for other than that), its folder quoted for the shell
    assert f"--resume --out {shlex.quote(str(out))} --epochs 3 --lr" in str(e.value), str(e.value)
    state = load_checkpoint(out)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())


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


# -- the NaN policy: nothing non-finite is ever saved, the run stops and says where ------
def _finite_state(state):
    tensors = list(state["model"].values())
    for per_param in state["optimizer"]["state"].values():
        tensors += [torch.as_tensor(v) for v in per_param.values()]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def _assert_strict_json(path):
    def refuse(token):
        raise ValueError(f"{path} holds the non-JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("epochs", [1, 5])
def test_diverging_epoch_is_not_saved_and_the_run_fails(tmp_path, epochs):
    """The issue's repro: one huge step per epoch at lr 0.3 leaves finite weights whose
    test ELBO is NaN. That epoch must not be saved, and even as the last epoch the run
    must not end 'done' with NaN in metrics.json."""
    cfg = dict(out=str(tmp_path), batch_size=2000, lr=0.3, epochs=epochs, seed=1, iwae_k=0,
               progress=False)
    with pytest.raises(T.NonFiniteLoss, match=r"epoch 1\b.*step 1/1") as e:
        T.train(cfg, log=quiet)
    assert "no checkpoint was written" in str(e.value)
    assert not (tmp_path / CHECKPOINT_NAME).exists()
    assert not (tmp_path / "metrics.json").exists()


def test_a_first_step_that_overflows_blames_the_data_not_the_lr(tmp_path):
    """0..255 values under a Gaussian likelihood: the untrained model's test ELBO is finite
    (summed in float64) but its first training loss overflows float32, before any
    optimizer step. The advice was a lower --lr, which cannot help."""
    data = tmp_path / "raw.npy"
    np.save(data, np.random.default_rng(0).uniform(0, 255, (10, 8, 8)).astype(np.float32))
    cfg = dict(out=str(tmp_path / "r"), dataset=str(data), likelihood="gaussian", epochs=1,
               batch_size=8, iwae_k=0, progress=False)
    with pytest.raises(T.NonFiniteLoss, match=r"epoch 1, step 1/.*no --lr can help.*scale it"):
        T.train(cfg, log=quiet)


def test_a_first_gradient_whose_square_overflows_blames_the_data(tmp_path):
    """0..120 values under a Gaussian likelihood: the first loss and gradient are finite,
    but a gradient of ~2e20 has a square past float32 in Adam's state, and every later
    update is 0 or NaN. Caught at step 1 (it was caught after the epoch, blaming --lr)."""
    data = tmp_path / "wide.npy"
    np.save(data, np.random.default_rng(0).uniform(0, 120, (200, 8, 8)).astype(np.float32))
    cfg = dict(out=str(tmp_path / "r"), dataset=str(data), likelihood="gaussian", epochs=1,
               batch_size=40, iwae_k=0, progress=False)
    with pytest.raises(T.NonFiniteLoss, match=r"a gradient of .*, past 1.84e\+19, whose "
                       r"square overflows Adam's state, at epoch 1, step 1/4; .*no --lr can "
                       r"help.*scale it"):
        T.train(cfg, log=quiet)


def test_a_learning_rate_stop_on_digits_does_not_blame_the_data(tmp_path):
    """Digits lie in [0, 1]: a stop at --lr 1e6 advised starting again 'with the data
    scaled to about [0, 1] or a lower --lr'."""
    cfg = dict(out=str(tmp_path / "r"), epochs=1, lr=1e6, iwae_k=0, progress=False)
    with pytest.raises(T.NonFiniteLoss) as e:
        T.train(cfg, log=quiet)
    assert "lower --lr" in str(e.value) and "scale" not in str(e.value), e.value


def test_a_stop_mid_epoch_clears_the_progress_bar_first(tmp_path, monkeypatch):
    """The bar's line was left as it was, and the stop's message ran on after it."""
    data = tmp_path / "raw.npy"
    np.save(data, np.random.default_rng(0).uniform(0, 255, (10, 8, 8)).astype(np.float32))
    bars = []

    class Bar:
        closed = False

        def update(self, n):
            pass

        def set_postfix(self, **kw):
            pass

        def close(self):
            self.closed = True
    monkeypatch.setattr(T, "_progress", lambda *a: bars.append(Bar()) or bars[-1])
    cfg = dict(out=str(tmp_path / "r"), dataset=str(data), likelihood="gaussian", epochs=1,
               batch_size=8, iwae_k=0, progress=True)
    with pytest.raises(T.NonFiniteLoss):
        T.train(cfg, log=quiet)
    assert len(bars) == 1 and bars[0].closed


def test_guard_looks_past_a_gradient_norm_for_an_element_whose_square_overflows():
    from fastvae.guard import Guard

    model = torch.nn.Linear(100, 1)
    guard = Guard(CHECKPOINT_NAME, 3, "out", 1e-3, epochs=9)
    model.weight.grad = torch.full_like(model.weight, 1e19)   # norm 1e20, each square fits
    guard.step(model, 4, 1, 2)
    model.weight.grad[0, 7] = -3e19
    with pytest.raises(T.NonFiniteLoss, match=r"a gradient of 3e\+19, past 1.84e\+19, .* "
                       r"at epoch 4, step 1/2; the last good checkpoint \(epoch 3\) .*--lr "
                       r"0.0001` \(or start again with the data scaled to about \[0, 1\]\)"):
        guard.step(model, 4, 1, 2)
    # data within [-1, 1] already (digits): the learning rate alone is advised
    guard = Guard(CHECKPOINT_NAME, 3, "out", 1e-3, epochs=9, data_scaled=True)
    guard.stepped = True
    with pytest.raises(T.NonFiniteLoss, match=r"--lr 0.0001`$"):
        guard.step(model, 4, 1, 2)
    guard = Guard(CHECKPOINT_NAME, None, "out", 1e-3, epochs=9, data_scaled=True)
    guard.stepped = True
    with pytest.raises(T.NonFiniteLoss, match=r"no checkpoint was written yet; start again "
                       r"with a lower --lr$"):
        guard.step(model, 1, 2, 2)
    guard = Guard(CHECKPOINT_NAME, None, "out", 1e-3, epochs=9, data_scaled=True)
    with pytest.raises(T.NonFiniteLoss, match=r"no --lr can help: .* overflows on this data, "
                       r"though it lies within \[-1, 1\]: the model's settings are the cause$"):
        guard.loss(float("nan"), 1, 1, 2)


def test_a_stop_at_a_checkpoints_own_weights_does_not_advise_resuming_from_it():
    """A gradient that overflows at the first step after a checkpoint was computed at the
    checkpoint's weights: a resume from it meets the same one at any --lr (a reviewer
    followed the advice down to --lr 1e-10). Once a step has passed since, resuming with a
    lower --lr is the advice again."""
    from fastvae.guard import Guard

    model = torch.nn.Linear(4, 1)
    guard = Guard(CHECKPOINT_NAME, None, "out", 0.3, epochs=6)
    model.weight.grad = torch.ones_like(model.weight)
    guard.step(model, 1, 45, 45)
    guard.saved(1)
    model.weight.grad[0, 0] = 3e19
    with pytest.raises(T.NonFiniteLoss, match=r"at epoch 2, step 1/45; it came at the weights "
                       r"of the last good checkpoint \(epoch 1, kept at .*\) before any "
                       r"update, so resuming from it cannot help at any --lr; start again in "
                       r"a new --out with the data scaled to about \[0, 1\] or a lower --lr "
                       r"than 0.3$"):
        guard.step(model, 2, 1, 45)
    model.weight.grad[0, 0] = 1.0
    guard.step(model, 2, 1, 45)
    model.weight.grad[0, 0] = 3e19
    with pytest.raises(T.NonFiniteLoss, match=r"`fastvae train --resume --out out --epochs 6 "
                                              r"--lr 0.03`"):
        guard.step(model, 2, 2, 45)
    guard.world = 2   # under torchrun: torchrun's command, as many processes per node
    with pytest.raises(T.NonFiniteLoss, match=r"`torchrun --nproc_per_node=2 -m fastvae train "
                                              r"--resume --out out --epochs 6 --lr 0.03`"):
        guard.step(model, 2, 2, 45)


def _poison_after_step(monkeypatch, at_step, what):
    """Make the optimizer step number ``at_step`` (1-based, over the run) leave a NaN in
    a weight or in Adam's state, as an overflow would."""
    real_step = torch.optim.Adam.step
    calls = {"n": 0}

    def step(self, *a, **k):
        out = real_step(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == at_step:
            p = self.param_groups[0]["params"][0]
            with torch.no_grad():
                if what == "weight":
                    p.view(-1)[0] = float("nan")
                else:
                    self.state[p]["exp_avg_sq"].view(-1)[0] = float("inf")
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", step)


@pytest.mark.parametrize("what", ["weight", "optimizer"])
def test_non_finite_weights_at_epoch_end_keep_the_last_good_checkpoint(tmp_path, monkeypatch,
                                                                       what):
    _poison_after_step(monkeypatch, 23 + 23, what)  # the last step of epoch 2
    with pytest.raises(T.NonFiniteLoss, match=r"epoch 2, step 23/23") as e:
        T.train(tiny(tmp_path, epochs=3, iwae_k=0), log=quiet)
    assert "(epoch 1)" in str(e.value) and CHECKPOINT_NAME in str(e.value)
    state = load_checkpoint(tmp_path)
    assert state["epoch"] == 1 and _finite_state(state)
    assert all(math.isfinite(h["test"]["elbo"]) for h in state["history"])


def test_non_finite_gradient_stops_before_the_step(tmp_path, monkeypatch):
    real = T.batch_loss
    calls = {"n": 0}

    def poisoned(model, x, cfg):
        loss, parts = real(model, x, cfg)
        calls["n"] += 1
        if calls["n"] == 23 + 5:  # finite loss, NaN gradient: epoch 2, step 5
            loss.register_hook(lambda g: g * float("nan"))
        return loss, parts

    monkeypatch.setattr(T, "batch_loss", poisoned)
    with pytest.raises(T.NonFiniteLoss, match=r"gradient.*epoch 2, step 5/23"):
        T.train(tiny(tmp_path, epochs=3, iwae_k=0), log=quiet)
    state = load_checkpoint(tmp_path)
    assert state["epoch"] == 1 and _finite_state(state)


def test_resume_after_a_stop_with_a_lower_lr(tmp_path, monkeypatch):
    _poison_after_step(monkeypatch, 23 + 23, "weight")
    with pytest.raises(T.NonFiniteLoss, match="--lr"):
        T.train(tiny(tmp_path, epochs=3, iwae_k=0), log=quiet)
    monkeypatch.undo()
    seen = []
    T.train(tiny(tmp_path, epochs=2, iwae_k=0, lr=1e-4, resume=True), log=seen.append)
    assert any("--lr 0.0001" in line and "0.003" in line for line in seen), seen
    state = load_checkpoint(tmp_path)
    assert state["epoch"] == 2 and state["config"]["lr"] == 1e-4
    assert state["optimizer"]["param_groups"][0]["lr"] == 1e-4
    _assert_strict_json(tmp_path / "metrics.json")


def test_resume_without_lr_keeps_the_saved_one_silently(tmp_path):
    T.train(tiny(tmp_path, epochs=1, iwae_k=0), log=quiet)
    seen = []
    cfg = tiny(tmp_path, epochs=2, iwae_k=0, resume=True)
    cfg.pop("lr")
    T.train(cfg, log=seen.append)
    assert not any("--lr" in line for line in seen), seen
    assert load_checkpoint(tmp_path)["config"]["lr"] == 3e-3


@pytest.mark.parametrize("flags", [dict(estimator="dreg"), dict(estimator="stl"),
                                   dict(estimator="stl", kl="mc"), dict(objective="elbo")])
def test_resume_judges_the_objective_by_the_checkpoint_not_the_defaults(tmp_path, flags):
    """An IWAE DReG run resumed with objective flags: they are the checkpoint's or ignored
    with the note, never refused as if combined with the defaults (--estimator dreg read
    as DReG with the ELBO, --estimator stl as STL with the analytic KL)."""
    T.train(tiny(tmp_path, epochs=1, iwae_k=0, objective="iwae", k=3, estimator="dreg"),
            log=quiet)
    seen = []
    T.train(tiny(tmp_path, epochs=2, iwae_k=0, resume=True, **flags), log=seen.append)
    state = load_checkpoint(tmp_path)
    assert state["epoch"] == 2
    assert (state["config"]["objective"], state["config"]["estimator"]) == ("iwae", "dreg")
    ignored = [k for k, v in flags.items() if v != state["config"][k]]
    notes = [line for line in seen if "command-line values ignored" in line]
    assert notes == ([f"resuming: using the checkpoint's {', '.join(ignored)} (command-line "
                      "values ignored)"] if ignored else []), seen


def test_metrics_json_never_holds_nan_tokens(tmp_path):
    from fastvae.checkpoint import write_json

    write_json({"a": float("nan"), "b": [float("inf"), -float("inf"), 1.5], "c": {"d": 2}},
               tmp_path / "m.json")
    assert _assert_strict_json(tmp_path / "m.json") == {"a": None, "b": [None, None, 1.5],
                                                        "c": {"d": 2}}


def test_guard_tells_huge_finite_weights_from_non_finite_ones():
    from fastvae.guard import Guard

    model = torch.nn.Linear(3, 2)
    guard = Guard(CHECKPOINT_NAME, None, "out", 1e-3)
    with torch.no_grad():
        model.weight[0, 0] = 3e38  # finite, though its square overflows float32
    guard.step(model, 1, 1, 1)
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    with pytest.raises(T.NonFiniteLoss, match="weights"):
        guard.step(model, 1, 1, 1)


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
