"""Files the command is to write (sample's picture, bench's --json): a place that cannot take
them is one line at the flag, before any work; folders still to be made are fine."""
import pytest

from fastvae import cli

from _cli import TINY


@pytest.mark.parametrize("make,out,needle", [
    (lambda d: (d / "afile").write_text(""), "afile/x.png", "afile is a file, not a folder"),
    (lambda d: (d / "d.png").mkdir(), "d.png", "cannot write d.png: it is a folder")])
def test_sample_refuses_an_out_it_cannot_write_before_any_work(tmp_path, capsys, monkeypatch,
                                                               make, out, needle):
    """An --out under a file, or naming a folder: one line at the flag, before the
    checkpoint is read or a sample drawn (it was the OS's EEXIST or EISDIR at the end)."""
    monkeypatch.chdir(tmp_path)
    make(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main(["sample", "no-such-run", "--out", out])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--out" in err and needle in err, err


def test_sample_checks_its_default_picture_in_the_run_folder_before_decoding(
        tmp_path, capsys, monkeypatch):
    """Without --out the picture goes into the run's folder; one that refuses new files is
    one line before any image is decoded, as a given --out is."""
    import tempfile

    from fastvae import models
    run = tmp_path / "run"
    assert cli.main(["train", *TINY, "--out", str(run)]) == 0
    capsys.readouterr()

    def refuse(**kw):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    for cls in vars(models).values():
        if isinstance(cls, type) and hasattr(cls, "sample_chunks"):
            monkeypatch.setattr(cls, "sample_chunks", lambda *a, **k: pytest.fail("decoded"))
    assert cli.main(["sample", str(run), "--n", "4"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "refuses new files" in err, err
    assert "samples-4-seed0.png" in err and "pass --out" in err
    assert not list(run.glob("samples-*"))


def test_a_file_to_write_in_a_folder_that_refuses_files_is_refused_first(tmp_path, monkeypatch,
                                                                       capsys):
    """os.access says yes to root for any folder, and /proc, /sys or a read-only mount
    still refuse a new file: bench --json found out only after the whole benchmark. The
    check makes (and removes) a file there; a folder that refuses it is one line at the
    flag, before any work."""
    import tempfile
    from fastvae import options as o

    def refuse(**kw):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(o.BadValue, match="refuses new files .Permission denied"):
        o.file_to_write(str(tmp_path / "x.json"))
    monkeypatch.undo()
    assert o.file_to_write(str(tmp_path / "x.json")) and list(tmp_path.iterdir()) == []
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--ops", "elbo", "--batch", "4", "--dim", "8", "--latent", "2",
                  "--reps", "1", "--variants", "eager", "--no-extras",
                  "--json", "/proc/fastvae-check.json"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--json" in err and "cannot write" in err, err


def test_a_file_to_write_may_be_in_folders_to_create(tmp_path):
    """The writers create missing folders (atomic_write): the nearest existing one is what
    the check looks at."""
    from fastvae import options as o
    for name in ("a/b/x.json", "a/b/x.png"):
        path = str(tmp_path / name)
        assert (o.png_file if name.endswith(".png") else o.file_to_write)(path) == path
    assert not (tmp_path / "a").exists()
