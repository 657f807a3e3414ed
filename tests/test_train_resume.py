"""Resuming a run: bit-for-bit where it stopped, to the run's own epochs, threads, learning
rate and objective unless the command line changes them."""
import json

import pytest
import torch

from fastvae import train as T
from fastvae.checkpoint import load_checkpoint
from _train import quiet, tiny


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
    seen, real = [], T.set_threads
    monkeypatch.setattr(T, "set_threads", lambda cfg, *a: seen.append(cfg["threads"])
                        or real(cfg, *a))
    T.train(tiny(tmp_path, epochs=2, iwae_k=0, resume=True), log=quiet)
    T.train(tiny(tmp_path, epochs=3, iwae_k=0, resume=True, threads=1), log=quiet)
    assert seen == [2, 1]


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


def test_a_resumed_run_s_train_time_counts_every_epoch(tmp_path):
    """metrics.json's train_wall_s was the last invocation's loop alone: after a resume
    of the last of many epochs it read as a fraction of the run's time (a hunt's find)."""
    T.train(tiny(tmp_path, epochs=2, iwae_k=0), log=quiet)
    first = json.loads((tmp_path / "metrics.json").read_text())
    T.train(tiny(tmp_path, epochs=3, iwae_k=0, resume=True), log=quiet)
    m = json.loads((tmp_path / "metrics.json").read_text())
    walls = [e["wall_s_with_eval"] for e in m["epochs"]]
    assert m["epochs"][:2] == first["epochs"]
    assert m["train_wall_s"] == pytest.approx(sum(walls))
    assert first["train_wall_s"] == pytest.approx(sum(walls[:2]))
    assert m["session_wall_s"] >= walls[2] > 0   # the resumed epoch and its checkpoint


def test_a_saved_target_past_today_s_limit_names_the_flag_that_replaces_it(tmp_path):
    """A run saved with --epochs 1e10 ("until I stop it", accepted before counts were
    capped at 2**31 - 1) is refused on resume; the message says --epochs replaces it, and
    that works."""
    from fastvae.checkpoint import CHECKPOINT_NAME, CheckpointError, save_checkpoint

    T.train(tiny(tmp_path, epochs=1, iwae_k=0), log=quiet)
    state = load_checkpoint(tmp_path)
    state["config"]["epochs"] = 10 ** 10
    save_checkpoint(state, tmp_path / CHECKPOINT_NAME)
    with pytest.raises(CheckpointError, match="epochs: must be at most .*; resume with "
                                              "--epochs to replace it"):
        T.train(tiny(tmp_path, epochs=None, iwae_k=None, resume=True), log=quiet)
    T.train(tiny(tmp_path, epochs=2, iwae_k=None, resume=True), log=quiet)
    assert load_checkpoint(tmp_path)["epoch"] == 2


@pytest.mark.parametrize("first, again", [(32, [32]), ([32], 32), ((32,), [32]), ([32], (32,))])
def test_one_width_as_an_int_or_a_list_is_the_same_setting_on_resume(tmp_path, first, again):
    """hidden=32, hidden=(32,) and --hidden 32 (a list of one) are one model: a resume
    giving another spelling was told its value was ignored."""
    T.train(tiny(tmp_path, epochs=1, iwae_k=0, hidden=first), log=quiet)
    seen = []
    T.train(tiny(tmp_path, epochs=2, iwae_k=0, hidden=again, resume=True), log=seen.append)
    assert not any("ignored" in line for line in seen), seen
    assert load_checkpoint(tmp_path)["config"]["hidden"] == [32]
