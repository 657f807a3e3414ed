"""Checkpoints and run files: checksummed, atomic, cleaned up, umask-following, and every
bad file is one clear error (exit status 2 from the command), never a traceback."""
import json
import os
import shlex
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest
import torch

from fastvae import cli
from fastvae import train as T
from fastvae.checkpoint import (CHECKPOINT_NAME, CheckpointError, load_checkpoint,
                                save_checkpoint)

TINY = dict(epochs=1, hidden=[32], latent=4, batch_size=256, lr=3e-3, iwae_k=0, progress=False)


def quiet(*args, **kw):
    pass


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """One finished tiny run; tests copy its checkpoint, never change it."""
    out = tmp_path_factory.mktemp("good") / "run"
    T.train(dict(TINY, out=str(out)), log=quiet)
    return out


def _copy_run(good_run, dst):
    dst.mkdir(parents=True, exist_ok=True)
    (dst / CHECKPOINT_NAME).write_bytes((good_run / CHECKPOINT_NAME).read_bytes())
    return dst


def _one_error_line(capsys, *needles):
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert str(n) in err, (n, err)
    return err


# -- item 6: integrity --------------------------------------------------------------------
def _largest_record(path):
    """(offset, size) of the largest tensor record inside the checkpoint's zip, whose
    bytes are stored uncompressed: flipping them changes weights, not the zip layout."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = path.read_bytes()
    # local file header: 30 bytes, then the name and the extra field
    name_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def test_flipped_bits_in_the_weights_are_refused(good_run, tmp_path, capsys):
    run = _copy_run(good_run, tmp_path / "run")
    path = run / CHECKPOINT_NAME
    assert load_checkpoint(path)["epoch"] == 1
    offset, size = _largest_record(path)
    raw = bytearray(path.read_bytes())
    for i in range(64):  # one bit in each of 64 float32 weights
        raw[offset + (i * 4 * 7) % size + 1] ^= 0x10
    path.write_bytes(bytes(raw))
    state = torch.load(path, weights_only=True)  # torch itself notices nothing
    assert state["format"] == "fastvae-checkpoint"
    with pytest.raises(CheckpointError, match="checksum") as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)
    assert cli.main(["eval", str(run), "--k", "0"]) == 2
    _one_error_line(capsys, path, "checksum")


@pytest.mark.parametrize("protocol", [0, 1, 3, 9, 255])
def test_a_damaged_pickle_protocol_byte_prints_no_torch_warning(good_run, tmp_path, capsys,
                                                                protocol):
    """The byte after the pickle's PROTO opcode names a protocol; torch warns about one it
    does not expect and reads on. fastvae judges what was read (format, checksum) and
    says nothing else: the file loads (the content is intact) or is one line."""
    run = _copy_run(good_run, tmp_path / "run")
    path = run / CHECKPOINT_NAME
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/data.pkl"))
    raw = bytearray(path.read_bytes())
    name_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    assert raw[start] == 0x80, raw[start:start + 2]   # PROTO
    raw[start + 1] = protocol
    path.write_bytes(bytes(raw))
    with warnings.catch_warnings(record=True) as seen:   # pytest would keep them off stderr
        warnings.simplefilter("always")
        try:
            state = load_checkpoint(path)
        except CheckpointError as e:
            assert str(path) in str(e)
        else:
            assert state["epoch"] == 1
        code = cli.main(["eval", str(run), "--k", "0"])
    assert not [w for w in seen if "pickle" in str(w.message)], [str(w.message) for w in seen]
    assert "Traceback" not in capsys.readouterr().err
    assert code in (0, 2)


def test_checksum_covers_config_optimizer_and_history(good_run, tmp_path):
    for key, change in (("config", lambda s: s["config"].update(latent=3)),
                        ("optimizer", lambda s: s["optimizer"]["param_groups"][0].update(lr=1.0)),
                        ("history", lambda s: s["history"][0]["test"].update(elbo=0.0)),
                        ("epoch", lambda s: s.update(epoch=7))):
        state = torch.load(good_run / CHECKPOINT_NAME, weights_only=True)
        change(state)
        torch.save(state, tmp_path / f"{key}.pt")  # the old checksum, edited content
        with pytest.raises(CheckpointError, match="checksum"):
            load_checkpoint(tmp_path / f"{key}.pt")


def test_checkpoint_without_checksum_is_refused(good_run, tmp_path):
    state = torch.load(good_run / CHECKPOINT_NAME, weights_only=True)
    del state["checksum"]
    torch.save(state, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(tmp_path / "c.pt")


# -- item 7: bad checkpoints are one line, exit 2 -----------------------------------------
def test_empty_checkpoint(tmp_path, capsys):
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path)
    assert cli.main(["eval", str(tmp_path)]) == 2
    _one_error_line(capsys, tmp_path / CHECKPOINT_NAME)
    assert cli.main(["train", "--out", str(tmp_path), "--resume", "--no-progress"]) == 2
    _one_error_line(capsys, tmp_path / CHECKPOINT_NAME)


def _unreadable_files(good_run, folder):
    """{name: bytes} of files that are no checkpoint torch can load."""
    good = (good_run / CHECKPOINT_NAME).read_bytes()
    return {"zeros": bytes(4096), "text": b"hello, I am a text file\n",
            "metrics": (good_run / "metrics.json").read_bytes(),
            "truncated": good[:len(good) // 2], "truncated_early": good[:3000]}


@pytest.mark.parametrize("kind", ["zeros", "text", "metrics", "truncated", "truncated_early"])
def test_an_unreadable_checkpoint_is_one_line_without_torch_s_advice(good_run, tmp_path, capsys,
                                                                    kind):
    """Zero-filled, text, a metrics.json passed as a checkpoint, cut short: one line naming
    the file, for eval and --resume alike, and never torch's advice to load it again with
    weights_only=False (which would run any code an untrusted file holds)."""
    run = tmp_path / "run"
    run.mkdir()
    path = run / CHECKPOINT_NAME
    path.write_bytes(_unreadable_files(good_run, tmp_path)[kind])
    for argv in (["eval", str(path)], ["eval", str(run)],
                 ["train", "--out", str(run), "--resume", "--no-progress"]):
        assert cli.main(argv) == 2
        err = _one_error_line(capsys, path, "is not a readable fastvae checkpoint",
                              "truncated" if kind.startswith("truncated") else "corrupt")
        assert "weights_only" not in err and "miniz" not in err and len(err) < 300, err


class _NotAWeight:
    pass


def test_a_checkpoint_holding_a_refused_type_names_it(tmp_path, capsys):
    """A whole zip that weights-only loading refuses: the line names the refused type (what
    to look for), still without torch's advice."""
    path = tmp_path / CHECKPOINT_NAME
    torch.save({"format": "fastvae-checkpoint", "model": _NotAWeight()}, path)
    assert cli.main(["eval", str(path)]) == 2
    err = _one_error_line(capsys, path, "_NotAWeight", "refuses")
    assert "weights_only" not in err, err


@pytest.mark.parametrize("key", ["optimizer", "rng", "history"])
def test_resume_from_a_checkpoint_missing_a_part(good_run, tmp_path, capsys, key):
    state = load_checkpoint(good_run)
    del state[key]
    save_checkpoint(state, tmp_path / CHECKPOINT_NAME)  # well-formed, checksum and all
    assert load_checkpoint(tmp_path)["epoch"] == 1       # eval/sample need only the weights
    assert cli.main(["train", "--out", str(tmp_path), "--resume", "--epochs", "2",
                     "--no-progress", "--iwae-k", "0"]) == 2
    _one_error_line(capsys, tmp_path / CHECKPOINT_NAME, key)


@pytest.mark.parametrize("done,epochs", [(1, "1"), (3, "2")])
def test_resume_to_no_more_epochs_is_refused_and_changes_nothing(good_run, tmp_path, capsys,
                                                                done, epochs):
    run = _copy_run(good_run, tmp_path / "run")
    (run / "metrics.json").write_bytes((good_run / "metrics.json").read_bytes())
    if done != 1:  # as if it had trained more, without the time it takes
        save_checkpoint(dict(load_checkpoint(run), epoch=done), run / CHECKPOINT_NAME)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert cli.main(["train", "--out", str(run), "--resume", "--epochs", epochs,
                     "--no-progress"]) == 2
    _one_error_line(capsys, f"--epochs {epochs}:", f"already trained {done} epoch",
                    f"must exceed {done}")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


@pytest.mark.parametrize("same_epochs", [True, False])
def test_resume_at_the_same_epochs_finishes_a_run_stopped_before_its_metrics(good_run, tmp_path,
                                                                            same_epochs):
    """A run stopped after its last epoch's checkpoint (Ctrl-C in the final IWAE estimate, a
    full disk at the pictures) has no metrics.json: --resume with the same --epochs, or with
    none (the run's own), writes the final estimate, pictures and metrics.json, trains
    nothing and keeps the checkpoint; once finished, the same command is refused."""
    run = _copy_run(good_run, tmp_path / "run")
    ckpt = (run / CHECKPOINT_NAME).read_bytes()
    done = load_checkpoint(run)["epoch"]
    argv = ["train", "--out", str(run), "--resume", "--no-progress", "--iwae-k", "0"]
    argv += ["--epochs", str(done)] if same_epochs else []
    assert cli.main(argv) == 0
    got = json.loads((run / "metrics.json").read_text())
    want = json.loads((good_run / "metrics.json").read_text())
    got["final"].pop("iwae_s"), want["final"].pop("iwae_s")
    assert got["epochs"] == want["epochs"] and got["final"] == want["final"]
    assert (run / "curves.png").is_file() and (run / CHECKPOINT_NAME).read_bytes() == ckpt
    assert cli.main(argv) == 2


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
    _one_error_line(capsys, tmp_path / CHECKPOINT_NAME, "do not match")


@pytest.mark.parametrize("images,needle", [
    (np.full((10, 5, 7), 128, np.uint8), "was trained on images of shape (1, 8, 8)"),
    (np.full((10, 8, 8), 3.0, np.float32), "needs pixels in [0, 1]")])
def test_eval_on_data_that_changed_since_training(good_run, tmp_path, capsys, images, needle):
    np.save(tmp_path / "x.npy", images)
    state = load_checkpoint(good_run)
    state["config"]["dataset"] = str(tmp_path / "x.npy")
    save_checkpoint(state, tmp_path / CHECKPOINT_NAME)
    assert cli.main(["eval", str(tmp_path), "--k", "0"]) == 2
    _one_error_line(capsys, "x.npy", needle)


def test_eval_and_resume_on_data_scaled_since_training(tmp_path, capsys):
    """A Gaussian run's images replaced by others x 1e20: eval says that the model's
    densities overflow on them, and that they are not the images it was trained on (one
    line, exit 2), not a NaN ELBO with exit 0; a resume refuses other images before it
    trains (not a non-finite loss blamed on the learning rate)."""
    rng = np.random.default_rng(0)
    data = tmp_path / "g.npy"
    np.save(data, rng.random((40, 4, 4), dtype=np.float32))
    run = tmp_path / "run"
    T.train(dict(TINY, out=str(run), dataset=str(data), likelihood="gaussian"), log=quiet)
    np.save(data, rng.random((40, 4, 4), dtype=np.float32) * 1e20)
    assert cli.main(["eval", str(run), "--k", "2"]) == 2
    _one_error_line(capsys, "the model's test ELBO is", "g.npy", "densities overflow",
                    "holds other images than")
    assert cli.main(["train", "--out", str(run), "--resume", "--epochs", "2",
                     "--no-progress"]) == 2
    _one_error_line(capsys, "g.npy holds other images than", "restore the data")
    assert load_checkpoint(run)["epoch"] == 1


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
    _one_error_line(capsys, tmp_path / CHECKPOINT_NAME, needle)


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
    _one_error_line(capsys, tmp_path / CHECKPOINT_NAME, needle)
    if key in ("model", "likelihood") and value is not _DROP:
        assert cli.main(_command("sample", tmp_path)) == 2
        _one_error_line(capsys, tmp_path / CHECKPOINT_NAME, "its config does not describe a model")
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
    _one_error_line(capsys, tmp_path / CHECKPOINT_NAME, needle)
    assert load_checkpoint(tmp_path)["epoch"] == 1


def test_weights_that_are_not_finite_are_refused_by_eval_sample_and_resume(good_run, tmp_path,
                                                                           capsys):
    state = load_checkpoint(good_run)
    next(v for v in state["model"].values() if v.is_floating_point()).view(-1)[0] = float("nan")
    save_checkpoint(state, tmp_path / CHECKPOINT_NAME)
    for command in ("eval", "sample", "resume"):   # resume: not blamed on the data
        assert cli.main(_command(command, tmp_path)) == 2
        _one_error_line(capsys, tmp_path / CHECKPOINT_NAME, "weights are not all finite")
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


def test_no_checkpoint_names_the_command_with_its_folder_quoted(tmp_path, capsys):
    run = tmp_path / "a run"
    run.mkdir()
    assert cli.main(["eval", str(run)]) == 2
    _one_error_line(capsys, f"`fastvae train --out {shlex.quote(str(run))}`")


def test_eval_data_dir_of_a_run_that_reads_no_data_folder(good_run, tmp_path, capsys):
    assert cli.main(["eval", str(good_run), "--k", "0", "--data-dir", str(tmp_path)]) == 2
    _one_error_line(capsys, "--data-dir: the run's dataset digits is not read from a folder")


def test_a_checkpoint_file_named_without_a_suffix(good_run, tmp_path, capsys):
    (tmp_path / "ckpt").write_bytes((good_run / CHECKPOINT_NAME).read_bytes())
    assert cli.main(["eval", str(tmp_path / "ckpt"), "--k", "0", "--limit", "2"]) == 0
    assert "(epoch 1, 2 test images)" in capsys.readouterr().out


@pytest.mark.parametrize("key", ["data_shape", "latent"])
def test_config_missing_a_model_setting(good_run, tmp_path, capsys, key):
    state = load_checkpoint(good_run)
    del state["config"][key]
    save_checkpoint(state, tmp_path / CHECKPOINT_NAME)
    assert cli.main(["eval", str(tmp_path), "--k", "0"]) == 2
    _one_error_line(capsys, tmp_path / CHECKPOINT_NAME, key)


# -- item 8: a full disk while saving ------------------------------------------------------
_FULL_DISK = """
import resource, signal, sys
from fastvae import cli
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
sys.exit(cli.main(sys.argv[1:]))
"""


def test_disk_full_while_saving_is_one_line_and_keeps_the_old_checkpoint(good_run, tmp_path):
    run = _copy_run(good_run, tmp_path / "run")
    before = (run / CHECKPOINT_NAME).read_bytes()
    r = subprocess.run([sys.executable, "-c", _FULL_DISK, "train", "--out", str(run), "--resume",
                        "--epochs", "2", "--no-progress", "--iwae-k", "0"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert str(run / CHECKPOINT_NAME) in r.stderr and "intact" in r.stderr
    assert f"fastvae train --resume --out {shlex.quote(str(run))}" in r.stderr
    assert (run / CHECKPOINT_NAME).read_bytes() == before
    assert sorted(p.name for p in run.iterdir()) == [CHECKPOINT_NAME]


def test_disk_full_at_the_final_pictures_says_how_to_finish(good_run, tmp_path, capsys,
                                                             monkeypatch):
    """The last epoch's checkpoint is kept when a picture cannot be written: the one line
    names the picture (not "nothing was written", read as the whole run) and the command
    that finishes the run."""
    from fastvae import plots

    run = _copy_run(good_run, tmp_path / "run")
    done = load_checkpoint(run)["epoch"]
    real = plots.atomic_write

    def full_at_samples(path, write):
        if os.path.basename(path) == "samples.png":
            def write(f):
                raise OSError(28, "No space left on device")
        return real(path, write)

    monkeypatch.setattr(plots, "atomic_write", full_at_samples)
    capsys.readouterr()
    assert cli.main(["train", "--out", str(run), "--resume", "--epochs", str(done + 1),
                     "--lr", "0.002", "--no-progress", "--iwae-k", "0"]) == 2
    _one_error_line(capsys, "samples.png: No space left", "no samples.png was written",
                    f"fastvae train --resume --out {shlex.quote(str(run))} --epochs {done + 1} "
                    "--iwae-k 0 --lr 0.002` continues the run")
    assert load_checkpoint(run)["epoch"] == done + 1
    monkeypatch.undo()
    assert cli.main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert (run / "metrics.json").is_file() and (run / "samples.png").is_file()


def test_disk_full_while_drawing_leaves_no_half_picture(good_run, tmp_path):
    run = _copy_run(good_run, tmp_path / "run")
    png = tmp_path / "big.png"
    r = subprocess.run([sys.executable, "-c", _FULL_DISK, "sample", str(run), "--n", "256",
                        "--out", str(png)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and str(png) in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_torch_writer_errors_are_reported_with_the_file(tmp_path, monkeypatch):
    from fastvae import checkpoint as C

    save_checkpoint({"config": {}, "model": {}, "epoch": 1}, tmp_path / "c.pt")

    def full(obj, f):
        f.write(b"PK\x03\x04partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")

    monkeypatch.setattr(C.torch, "save", full)
    with pytest.raises(C.WriteError, match="c.pt") as e:
        save_checkpoint({"config": {}, "model": {}, "epoch": 2}, tmp_path / "c.pt")
    assert "intact" in str(e.value)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    assert load_checkpoint(tmp_path / "c.pt")["epoch"] == 1


# -- item 11: housekeeping -------------------------------------------------------------------
def test_stale_temporary_files_are_removed_by_the_next_save(good_run, tmp_path):
    run = _copy_run(good_run, tmp_path / "run")
    for name in (".tmp-checkpoint.pt.k1ll3d", ".tmp-checkpoint.pt.x_9"):  # left by kill -9
        (run / name).write_bytes(b"\0" * 1000)
    (run / ".tmp-notes.txt").write_text("not ours")  # a user's file: left alone
    T.train(dict(TINY, out=str(run), epochs=2, resume=True), log=quiet)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == [".tmp-notes.txt"]


def test_a_live_writers_temporary_file_is_left_alone(tmp_path):
    """Two processes writing the same file at once (two benches given one --json): the
    second's housekeeping must not delete the first's file in progress; a dead writer's,
    this process's own, and (Linux) one whose pid a process started after it was last
    written now holds (a reused pid) go."""
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    names = {"live": f".tmp-c.pt.{os.getppid()}-0a1b2c", "dead": f".tmp-c.pt.{dead.pid}-0a1b2c",
             "own": f".tmp-c.pt.{os.getpid()}-0a1b2c", "old style": ".tmp-c.pt.k1ll3d",
             "reused pid": f".tmp-c.pt.{os.getppid()}-3d4e5f"}
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
    # last written long before the live process of its pid started: not that process's
    os.utime(tmp_path / names["reused pid"], (946684800, 946684800))   # 2000-01-01
    save_checkpoint({"config": {}, "model": {}, "epoch": 1}, tmp_path / "c.pt")
    kept = ["c.pt", names["live"]] + ([names["reused pid"]] if sys.platform != "linux" else [])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def _interrupted_after_creating(monkeypatch, module, prefix):
    """``open`` in ``module`` that raises KeyboardInterrupt right after it creates a file
    whose name starts with ``prefix``: a signal that lands during the create, handled
    just after (the file object, which nothing holds then, closes itself)."""
    def open_then_interrupt(path, *a, **k):
        f = open(path, *a, **k)
        if os.path.basename(path).startswith(prefix):
            f.close()
            raise KeyboardInterrupt
        return f
    monkeypatch.setattr(module, "open", open_then_interrupt, raising=False)


def test_a_signal_while_the_temporary_file_is_created_leaves_none(tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM landing as the temporary file is created: the previous file
    intact, no temporary file left (a training stopped by a signal checked it, flakily)."""
    from fastvae.checkpoint import atomic_write
    target = tmp_path / "c.pt"
    target.write_bytes(b"previous")
    from fastvae import checkpoint
    _interrupted_after_creating(monkeypatch, checkpoint, ".tmp-c.pt.")
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, lambda f: f.write(b"new"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
    assert target.read_bytes() == b"previous"


def test_a_signal_inside_torchs_writer_is_the_signal_not_a_write_error(tmp_path):
    """A signal handled in the file's ``write`` that torch's C++ writer calls comes out of
    torch.save as a RuntimeError ("unexpected pos"): the command must say it was stopped
    (SIGTERM as SIGTERM), not that the disk refused, and leave the previous file."""
    from fastvae.checkpoint import atomic_write
    target = tmp_path / "c.pt"
    target.write_bytes(b"previous")

    class Stopping:
        def __init__(self, f):
            self.f, self.writes = f, 0

        def write(self, b):
            self.writes += 1
            if self.writes == 3:
                raise cli.Terminated
            return self.f.write(b)

        def flush(self):
            self.f.flush()
    with pytest.raises(cli.Terminated):
        atomic_write(target, lambda f: torch.save({"w": torch.randn(1000)}, Stopping(f)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
    assert target.read_bytes() == b"previous"


def test_a_signal_inside_torchs_reader_is_the_signal_not_a_bad_checkpoint(good_run,
                                                                          monkeypatch):
    def load(*a, **k):  # what torch's C++ reader makes of an interrupt in a Python callback
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("unexpected pos") from None
    monkeypatch.setattr(torch, "load", load)
    with pytest.raises(KeyboardInterrupt):
        load_checkpoint(good_run)


def test_a_signal_while_the_run_folder_is_checked_leaves_no_probe(tmp_path, monkeypatch):
    from fastvae import runs
    _interrupted_after_creating(monkeypatch, runs, ".tmp-write-check.")
    with pytest.raises(KeyboardInterrupt):
        runs.RunFolder.claim(tmp_path / "run", "digits", resume=False)
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").iterdir())


def test_the_write_probe_never_removes_a_file_it_did_not_create(tmp_path, monkeypatch):
    """A probe name already taken (another run's probe): the claim fails with the OS's
    reason and that file stays."""
    from fastvae import checkpoint, runs
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setattr(checkpoint.secrets, "token_hex", lambda n: "0a1b2c")
    theirs = run / f".tmp-write-check.{os.getpid()}-0a1b2c"
    theirs.write_bytes(b"")
    with pytest.raises(runs.RunFolderError, match="File exists"):
        runs.RunFolder.claim(run, "digits", resume=False)
    assert theirs.exists()


def test_a_disk_error_inside_a_ctrl_c_handler_stays_a_disk_error(tmp_path):
    """A program that saves on Ctrl-C (inside ``except KeyboardInterrupt:``) and hits a
    full disk gets WriteError, not the interrupt it was already handling."""
    from fastvae.checkpoint import WriteError, atomic_write

    def full(f):
        raise OSError(28, "No space left on device")
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        with pytest.raises(WriteError, match="No space left"):
            atomic_write(tmp_path / "c.pt", full)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_removes_the_folders_it_made(tmp_path):
    """``sample --out new/dir/x.png`` on a full disk left the empty new/dir behind (a
    review's find): the folders a write creates go with it when it fails; one that was
    there, or that got another file meanwhile, stays."""
    from fastvae.checkpoint import WriteError, atomic_write

    def full(f):
        raise OSError(28, "No space left on device")
    with pytest.raises(WriteError):
        atomic_write(tmp_path / "new" / "dir" / "x.png", full)
    assert list(tmp_path.iterdir()) == []

    def full_beside_another(f):
        (tmp_path / "a" / "b" / "other").write_bytes(b"")
        full(f)
    with pytest.raises(WriteError):
        atomic_write(tmp_path / "a" / "b" / "x.png", full_beside_another)
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["other"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_run_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        out = tmp_path / "run"
        T.train(dict(TINY, out=str(out), latent=2), log=quiet)
    finally:
        os.umask(old)
    for p in out.iterdir():
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, (p.name, oct(p.stat().st_mode))


@pytest.mark.parametrize("command", ["train", "resume", "eval", "eval-file"])
def test_a_folder_named_checkpoint_pt(tmp_path, capsys, command):
    """A run folder whose checkpoint.pt is a folder: one line that says so, from every
    command (train said to --resume, and --resume then looked inside it)."""
    (tmp_path / CHECKPOINT_NAME).mkdir()
    argv = {"train": ["train", "--out", str(tmp_path), "--epochs", "1"],
            "resume": ["train", "--resume", "--out", str(tmp_path)],
            "eval": ["eval", str(tmp_path)],
            "eval-file": ["eval", str(tmp_path / CHECKPOINT_NAME)]}[command]
    assert cli.main(argv) == 2
    _one_error_line(capsys, tmp_path / CHECKPOINT_NAME, "is a folder, not a checkpoint file")
