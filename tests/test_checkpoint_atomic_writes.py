"""What a write leaves behind: stale temporary files cleaned up (a live writer's kept), a
signal or a full disk mid-write leaving the previous file and no temporary file or new
folder, and run files that follow the umask."""
import os
import subprocess
import sys

import pytest
import torch

from fastvae import cli
from fastvae import train as T
from fastvae.checkpoint import load_checkpoint, save_checkpoint

from _checkpoint import TINY_CONFIG, copy_run
from _train import quiet


def test_stale_temporary_files_are_removed_by_the_next_save(good_run, tmp_path):
    run = copy_run(good_run, tmp_path / "run")
    for name in (".tmp-checkpoint.pt.k1ll3d", ".tmp-checkpoint.pt.x_9"):  # left by kill -9
        (run / name).write_bytes(b"\0" * 1000)
    (run / ".tmp-notes.txt").write_text("not ours")  # a user's file: left alone
    T.train(dict(TINY_CONFIG, out=str(run), epochs=2, resume=True), log=quiet)
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
    theirs = run / f".tmp-write-check.{os.getpid()}-0a1b2c"

    def token(n):   # taken after the sweep of stale probes, as the probe is named
        theirs.write_bytes(b"")
        return "0a1b2c"
    monkeypatch.setattr(checkpoint.secrets, "token_hex", token)
    with pytest.raises(runs.RunFolderError, match="File exists"):
        runs.RunFolder.claim(run, "digits", resume=False)
    assert theirs.exists()


def test_a_claim_removes_the_probe_a_killed_run_left_and_nothing_else(tmp_path):
    """A SIGKILL between the probe's create and its unlink left it for good: the next
    claim of the folder removes it, but not another live run's probe nor other files."""
    from fastvae import runs
    run = tmp_path / "run"
    run.mkdir()
    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()   # its pid runs no more
    dead = run / f".tmp-write-check.{killed.pid}-0a1b2c"
    live = run / f".tmp-write-check.{os.getppid()}-0a1b2c"
    others = [run / ".tmp-write-checks", run / f".tmp-checkpoint.pt.{killed.pid}-0a1b2c",
              run / "write-check"]
    for p in (dead, live, *others):
        p.write_bytes(b"")
    runs.RunFolder.claim(run, "digits", resume=False).close(failed=False)
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in (live, *others))


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
        T.train(dict(TINY_CONFIG, out=str(out), latent=2), log=quiet)
    finally:
        os.umask(old)
    for p in out.iterdir():
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, (p.name, oct(p.stat().st_mode))
