"""A full disk while a checkpoint or picture is written: one line naming the file, the
previous checkpoint intact, no half-written file left, and the command that finishes the
run."""
import os
import shlex
import subprocess
import sys

import pytest

from fastvae import cli
from fastvae.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint

from _checkpoint import copy_run, one_error_line


_FULL_DISK = """
import resource, signal, sys
from fastvae import cli
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
sys.exit(cli.main(sys.argv[1:]))
"""


def test_disk_full_while_saving_is_one_line_and_keeps_the_old_checkpoint(good_run, tmp_path):
    run = copy_run(good_run, tmp_path / "run")
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

    run = copy_run(good_run, tmp_path / "run")
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
    one_error_line(capsys, "samples.png: No space left", "no samples.png was written",
                   f"fastvae train --resume --out {shlex.quote(str(run))} --epochs {done + 1} "
                   "--iwae-k 0 --lr 0.002` continues the run")
    assert load_checkpoint(run)["epoch"] == done + 1
    monkeypatch.undo()
    assert cli.main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert (run / "metrics.json").is_file() and (run / "samples.png").is_file()


def test_disk_full_while_drawing_leaves_no_half_picture(good_run, tmp_path):
    run = copy_run(good_run, tmp_path / "run")
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
