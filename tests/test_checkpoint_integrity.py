"""A damaged or unreadable checkpoint file: the checksum covers every part, torch's own
warnings and advice stay out, and eval or --resume refuse it in one line naming the file
(exit 2), as they do a folder where the file should be or no checkpoint at all."""
import shlex
import warnings
import zipfile

import pytest
import torch

from fastvae import cli
from fastvae.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint

from _checkpoint import copy_run, one_error_line


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
    run = copy_run(good_run, tmp_path / "run")
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
    one_error_line(capsys, path, "checksum")


@pytest.mark.parametrize("protocol", [0, 1, 3, 9, 255])
def test_a_damaged_pickle_protocol_byte_prints_no_torch_warning(good_run, tmp_path, capsys,
                                                                protocol):
    """The byte after the pickle's PROTO opcode names a protocol; torch warns about one it
    does not expect and reads on. fastvae judges what was read (format, checksum) and
    says nothing else: the file loads (the content is intact) or is one line."""
    run = copy_run(good_run, tmp_path / "run")
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


def test_empty_checkpoint(tmp_path, capsys):
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path)
    assert cli.main(["eval", str(tmp_path)]) == 2
    one_error_line(capsys, tmp_path / CHECKPOINT_NAME)
    assert cli.main(["train", "--out", str(tmp_path), "--resume", "--no-progress"]) == 2
    one_error_line(capsys, tmp_path / CHECKPOINT_NAME)


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
        err = one_error_line(capsys, path, "is not a readable fastvae checkpoint",
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
    err = one_error_line(capsys, path, "_NotAWeight", "refuses")
    assert "weights_only" not in err, err


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
    one_error_line(capsys, tmp_path / CHECKPOINT_NAME, "is a folder, not a checkpoint file")


def test_no_checkpoint_names_the_command_with_its_folder_quoted(tmp_path, capsys):
    run = tmp_path / "a run"
    run.mkdir()
    assert cli.main(["eval", str(run)]) == 2
    one_error_line(capsys, f"`fastvae train --out {shlex.quote(str(run))}`")


def test_a_checkpoint_file_named_without_a_suffix(good_run, tmp_path, capsys):
    (tmp_path / "ckpt").write_bytes((good_run / CHECKPOINT_NAME).read_bytes())
    assert cli.main(["eval", str(tmp_path / "ckpt"), "--k", "0", "--limit", "2"]) == 0
    assert "(epoch 1, 2 test images)" in capsys.readouterr().out
