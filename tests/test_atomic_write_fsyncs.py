"""atomic_write's durability: the temp file is fsynced before the rename, and the
folder after it."""
import os

from fastvae import checkpoint


def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path,
                                                                             monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "metrics.json"
    checkpoint.write_json({"a": 1}, target)
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"], events
    assert os.path.basename(events[0][1]).startswith(".tmp-metrics.json."), events
    assert events[1] == ("replace", str(target))
    assert events[2] == ("fsync", str(tmp_path)), events
