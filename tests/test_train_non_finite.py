"""The NaN policy of the training loop: nothing non-finite is ever saved, the run stops and
says where, and its advice (a lower --lr, or data scaled to about [0, 1]) fits the cause."""
import json
import math
import shlex

import numpy as np
import pytest
import torch

from fastvae import train as T
from fastvae.checkpoint import CHECKPOINT_NAME, load_checkpoint
from _train import quiet, tiny


def _poison_loss(monkeypatch, at_step, poison):
    """Hand the training step number ``at_step`` (1-based, over the run) ``poison(loss)``
    in place of its loss. Digits: 1438 / 64 -> 23 steps per epoch."""
    real = T.batch_loss
    calls = {"n": 0}

    def poisoned(model, x, cfg):
        loss, parts = real(model, x, cfg)
        calls["n"] += 1
        return (poison(loss) if calls["n"] == at_step else loss), parts

    monkeypatch.setattr(T, "batch_loss", poisoned)


def _nan_gradient(loss):
    loss.register_hook(lambda g: g * float("nan"))
    return loss


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    _poison_loss(monkeypatch, 23 + 3, lambda loss: loss * float("nan"))  # epoch 2, step 3
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
    _poison_loss(monkeypatch, 23 + 5, _nan_gradient)  # finite loss, NaN gradient: epoch 2, step 5
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
