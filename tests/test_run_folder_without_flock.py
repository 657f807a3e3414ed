"""A file system without flock (network mounts on clusters): the run goes on, unlocked,
and says so in one line on stderr, instead of running unlocked in silence."""
import errno
import os

import pytest

from fastvae import runs

fcntl = pytest.importorskip("fcntl")


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP])
def test_an_unlocked_folder_is_said(tmp_path, capsys, monkeypatch, code):
    def refuse(fd, op):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", refuse)
    folder = runs.RunFolder.claim(str(tmp_path / "run"), "digits", resume=False)
    folder.close(failed=False)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert f"{tmp_path / 'run'} is not locked" in err and errno.errorcode[code] in err, err
    assert (tmp_path / "run").is_dir()


def test_a_locked_folder_says_nothing(tmp_path, capsys):
    runs.RunFolder.claim(str(tmp_path / "run"), "digits", resume=False).close(failed=False)
    assert capsys.readouterr().err == ""
