"""A folder a run creates is made durable in its parent: fsyncing a file and the folder
holding it does not persist that folder's own name (fsync(2)), so a power loss could drop
a new run folder with its first checkpoint."""
import os

import pytest

from fastvae import checkpoint
from fastvae.runs import RunFolder


@pytest.fixture
def fsynced(monkeypatch):
    seen = []
    real = os.fsync

    def fsync(fd):
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    return seen


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names fds through /proc")
def test_a_run_folder_s_new_parents_are_fsynced(tmp_path, fsynced):
    folder = RunFolder.claim(tmp_path / "runs" / "one", "digits", resume=False)
    folder.close(failed=False)
    assert str(tmp_path) in fsynced and str(tmp_path / "runs") in fsynced, fsynced


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names fds through /proc")
def test_folders_a_write_creates_are_fsynced_in_their_parents(tmp_path, fsynced):
    checkpoint.write_json({"a": 1}, tmp_path / "a" / "b" / "metrics.json")
    for folder in (tmp_path, tmp_path / "a", tmp_path / "a" / "b"):
        assert str(folder) in fsynced, (folder, fsynced)
