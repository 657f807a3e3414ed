"""A well-formed checkpoint (its checksum matches: written by something else) whose
contents eval, sample or --resume cannot use: a config that disagrees with the weights,
settings missing or of another kind, non-finite weights. One line naming the file and
what is wrong, exit 2; ``fastvae.load_run`` refuses the same as a CheckpointError."""
import pytest
import torch

from fastvae import cli
from fastvae.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint, save_checkpoint

from _checkpoint import one_error_line


def _command(command, run):
    """The argv of eval, sample or a resume of the run in folder ``run``."""
    return {"eval": ["eval", str(run), "--k", "0"],
            "sample": ["sample", str(run), "--out", str(run / "s.png")],
            "resume": ["train", "--out", str(run), "--resume", "--epochs", "2",
                       "--no-progress"]}[command]


@pytest.mark.parametrize("command", ["eval", "sample", "resume"])
def test_config_that_disagrees_with_the_weights(good_run, tmp_path, capsys, command):
    state = load_checkpoint(good_run)
    state["config"]["latent"] = 5
    save_checkpoint(state, tmp_path / CHECKPOINT_NAME)
    assert cli.main(_command(command, tmp_path)) == 2
    one_error_line(capsys, tmp_path / CHECKPOINT_NAME, "do not match")


@pytest.mark.parametrize("key,value,needle", [("config", [1, 2], "its config is a list"),
                                               ("epoch", -1, "its epoch is -1"),
                                               ("epoch", "3", "its epoch is '3'")])
@pytest.mark.parametrize("command", ["eval", "sample", "resume"])
def test_a_config_or_epoch_of_the_wrong_kind(good_run, tmp_path, capsys, key, value, needle,
                                             command):
    """Written by something else, with a checksum that matches: one line, exit 2."""
    state = load_checkpoint(good_run)
    state[key] = value
    save_checkpoint(state, tmp_path / CHECKPOINT_NAME)
    assert cli.main(_command(command, tmp_path)) == 2
    one_error_line(capsys, tmp_path / CHECKPOINT_NAME, needle)


_DROP = object()


@pytest.mark.parametrize("command,key,value,needle", [
    ("eval", "seed", _DROP, "its config lacks 'seed', needed to evaluate the run"),
    ("eval", "data_dir", _DROP, "its config lacks 'data_dir'"),
    ("eval", "dataset", 5, "its config's dataset is 5, not str"),
    ("eval", "backend", ["auto"], "its config's backend is ['auto'], not str"),
    ("eval", "backend", "cuda", "its config's backend is 'cuda', not one of"),
    ("resume", "backend", "cuda", "its config's backend is 'cuda', not one of"),
    ("resume", "kl", "exact", "its config's kl is 'exact', not one of"),
    ("resume", "likelihood", "poisson", "its config's likelihood is 'poisson', not one of"),
    ("resume", "model", "resnet", "its config's model is 'resnet', not one of"),
    ("resume", "likelihood", _DROP, "its config lacks 'likelihood', needed to resume"),
    ("resume", "seed", True, "its config's seed is True, not int"),
    ("eval", "seed", 2 ** 70, "its config's seed must be an integer in [0, 2**63 - 2**20)"),
    ("resume", "seed", -1, "its config's seed must be an integer in [0, 2**63 - 2**20)"),
    ("resume", "lr", "x", "its config's lr is 'x', not int or float"),
    ("resume", "lr", -1.0, "its config cannot be resumed: lr: must be a positive number"),
    ("resume", "amp", 1, "its config's amp is 1, not bool")])
def test_a_saved_setting_missing_or_of_another_kind(good_run, tmp_path, capsys, command, key,
                                                   value, needle):
    """A setting eval or --resume reads by name, missing, of another kind or outside the
    train command's choices (a checksum that matches: written by something else): one
    line naming the file and the key, not a KeyError or AttributeError where it is used,
    nor the op's message without the file. sample reads only the model's settings."""
    state = load_checkpoint(good_run)
    if value is _DROP:
        del state["config"][key]
    else:
        state["config"][key] = value
    save_checkpoint(state, tmp_path / CHECKPOINT_NAME)
    assert cli.main(_command(command, tmp_path)) == 2
    one_error_line(capsys, tmp_path / CHECKPOINT_NAME, needle)
    if key in ("model", "likelihood") and value is not _DROP:
        assert cli.main(_command("sample", tmp_path)) == 2
        one_error_line(capsys, tmp_path / CHECKPOINT_NAME, "its config does not describe a model")
    else:
        assert cli.main(_command("sample", tmp_path)) == 0


@pytest.mark.parametrize("change,needle", [
    (lambda s: s.update(history=5), "its history is not a list of epochs: got int"),
    (lambda s: s.update(rng={}), "its random-number state cannot be restored (KeyError"),
    (lambda s: s["rng"].update(torch=torch.zeros(3, dtype=torch.uint8)),
     "its random-number state cannot be restored (RuntimeError")])
def test_resume_with_a_history_or_rng_state_of_another_kind(good_run, tmp_path, capsys, change,
                                                            needle):
    state = load_checkpoint(good_run)
    change(state)
    save_checkpoint(state, tmp_path / CHECKPOINT_NAME)
    assert cli.main(_command("resume", tmp_path)) == 2
    one_error_line(capsys, tmp_path / CHECKPOINT_NAME, needle)
    assert load_checkpoint(tmp_path)["epoch"] == 1


def test_weights_that_are_not_finite_are_refused_by_eval_sample_and_resume(good_run, tmp_path,
                                                                           capsys):
    state = load_checkpoint(good_run)
    next(v for v in state["model"].values() if v.is_floating_point()).view(-1)[0] = float("nan")
    save_checkpoint(state, tmp_path / CHECKPOINT_NAME)
    for command in ("eval", "sample", "resume"):   # resume: not blamed on the data
        assert cli.main(_command(command, tmp_path)) == 2
        one_error_line(capsys, tmp_path / CHECKPOINT_NAME, "weights are not all finite")
    assert not (tmp_path / "s.png").exists()


def test_load_run_gives_the_trained_model_in_eval_mode_and_refuses_what_eval_refuses(
        good_run, tmp_path, monkeypatch):
    """``fastvae.load_run`` (made on first use, like ``fastvae.models``): the run's model
    with its checkpoint's weights, in eval mode, from the folder or its checkpoint.pt;
    whatever eval refuses, a CheckpointError naming the file."""
    import fastvae
    monkeypatch.delitem(vars(fastvae), "load_run", raising=False)
    assert "load_run" in dir(fastvae) and "load_run" not in vars(fastvae)
    model = fastvae.load_run(good_run)
    assert not model.training and next(model.parameters()).device.type == "cpu"
    assert not fastvae.load_run(good_run, device="auto").training
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda"):
        fastvae.load_run(good_run, device="gpu0")
    with pytest.raises(ValueError, match="^run must name a folder or file, got ''"):
        fastvae.load_run("")   # not the current folder's run, as the CLI refuses it too
    for bad in (None, 3, b"run"):   # pathlib's TypeError names no argument
        with pytest.raises(TypeError, match="^run must be a run folder or its checkpoint"):
            fastvae.load_run(bad)
    if not torch.cuda.is_available():   # named as the argument it is, not as --device
        with pytest.raises(ValueError, match="^device cuda asked for, but torch sees no CUDA"):
            fastvae.load_run(good_run, device="cuda")
    state = load_checkpoint(good_run)
    assert all(torch.equal(v, state["model"][k]) for k, v in model.state_dict().items())
    assert fastvae.load_run(good_run / CHECKPOINT_NAME).state_dict().keys() == state["model"].keys()
    assert model.sample(3).shape[0] == 3
    next(v for v in state["model"].values() if v.is_floating_point()).view(-1)[0] = float("nan")
    save_checkpoint(state, tmp_path / CHECKPOINT_NAME)
    with pytest.raises(CheckpointError, match="weights are not all finite"):
        fastvae.load_run(tmp_path)
    with pytest.raises(fastvae.CheckpointError, match="no checkpoint at"):
        fastvae.load_run(tmp_path / "elsewhere")
    assert fastvae.CheckpointError is CheckpointError   # the name README gives to catch


def test_eval_data_dir_of_a_run_that_reads_no_data_folder(good_run, tmp_path, capsys):
    assert cli.main(["eval", str(good_run), "--k", "0", "--data-dir", str(tmp_path)]) == 2
    one_error_line(capsys, "--data-dir: the run's dataset digits is not read from a folder")


@pytest.mark.parametrize("key", ["data_shape", "latent"])
def test_config_missing_a_model_setting(good_run, tmp_path, capsys, key):
    state = load_checkpoint(good_run)
    del state["config"][key]
    save_checkpoint(state, tmp_path / CHECKPOINT_NAME)
    assert cli.main(["eval", str(tmp_path), "--k", "0"]) == 2
    one_error_line(capsys, tmp_path / CHECKPOINT_NAME, key)
