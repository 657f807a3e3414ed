"""A file system without flock (network mounts on clusters), or an OS without fcntl
(Windows): the run goes on, unlocked, and says so in one line on stderr, instead of
running unlocked in silence."""
import errno
import importlib.util
import os
import sys

import pytest

from fastvae import runs

# not at module level: the test without fcntl runs everywhere, Windows included
needs_fcntl = pytest.mark.skipif(importlib.util.find_spec("fcntl") is None,
                                 reason="no fcntl on this system")


@needs_fcntl
@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP])
def test_an_unlocked_folder_is_said(tmp_path, capsys, monkeypatch, code):
    import fcntl

    def refuse(fd, op):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", refuse)
    folder = runs.RunFolder.claim(str(tmp_path / "run"), "digits", resume=False)
    folder.close(failed=False)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert f"{tmp_path / 'run'} is not locked" in err and errno.errorcode[code] in err, err
    assert (tmp_path / "run").is_dir()


@needs_fcntl
def test_a_locked_folder_says_nothing(tmp_path, capsys):
    runs.RunFolder.claim(str(tmp_path / "run"), "digits", resume=False).close(failed=False)
    assert capsys.readouterr().err == ""


def test_an_os_without_fcntl_is_said(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "fcntl", None)   # `import fcntl` raises ImportError
    folder = runs.RunFolder.claim(str(tmp_path / "run"), "digits", resume=False)
    folder.close(failed=False)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert f"{tmp_path / 'run'} is not locked (this system has no flock)" in err, err
    assert (tmp_path / "run").is_dir()
