"""An --out that is a symbolic link to nothing is said as such, before anything runs
unlocked in it: mkdir took it for an existing folder, the lock could not open it, and the
error blamed the folder's permissions ("make it writable")."""
import pytest

from fastvae import cli
TINY_ARGS = ["--epochs", "1", "--hidden", "32", "--latent", "4", "--iwae-k", "0", "--no-progress"]


@pytest.mark.parametrize("resume", [False, True])
def test_a_broken_symbolic_link_as_out(tmp_path, capsys, resume):
    link = tmp_path / "run"
    link.symlink_to(tmp_path / "gone")
    assert cli.main(["train", *TINY_ARGS, "--out", str(link),
                     *(["--resume"] if resume else [])]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"{link} is a symbolic link to {tmp_path / 'gone'}, which does not exist" in err
    assert "make it writable" not in err
    assert link.is_symlink() and not (tmp_path / "gone").exists()


@pytest.mark.parametrize("command", ["eval", "sample"])
def test_eval_and_sample_on_a_broken_link_say_so(tmp_path, capsys, command):
    """Not `fastvae train --out LINK`, which is refused for the same link."""
    link = tmp_path / "run"
    link.symlink_to(tmp_path / "gone")
    assert cli.main([command, str(link)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"{link} is a symbolic link to {tmp_path / 'gone'}, which does not exist" in err
    assert "fastvae train" not in err
    assert link.is_symlink() and not (tmp_path / "gone").exists()


@pytest.mark.parametrize("command, named", [("eval", "folder"), ("eval", "file"),
                                            ("sample", "folder"), ("sample", "file"),
                                            ("resume", "folder")])   # --out is a folder
def test_a_checkpoint_that_is_a_broken_link_says_so(tmp_path, capsys, command, named):
    """A run whose checkpoint.pt links to a file now gone (a disk not mounted): said as
    such, not as a folder without a checkpoint whose advice is to train another run."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    ckpt = run / "checkpoint.pt"
    ckpt.symlink_to(tmp_path / "gone.pt")
    target = str(ckpt if named == "file" else run)
    if command == "resume":
        argv = ["train", *TINY_ARGS, "--epochs", "2", "--out", target, "--resume"]
    else:
        argv = [command, target]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"{ckpt} is a symbolic link to {tmp_path / 'gone.pt'}, which does not exist" in err
    assert "`fastvae train" not in err and "another folder" not in err
    assert ckpt.is_symlink() and not (tmp_path / "gone.pt").exists()


def test_a_fresh_run_over_a_checkpoint_that_is_a_broken_link_is_refused(tmp_path, capsys):
    """The folder holds nothing else: the fresh run trained and wrote its checkpoint over
    the link, losing the run it pointed to."""
    run = tmp_path / "run"
    run.mkdir()
    ckpt = run / "checkpoint.pt"
    ckpt.symlink_to(tmp_path / "gone.pt")
    assert cli.main(["train", *TINY_ARGS, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"{ckpt} is a symbolic link to {tmp_path / 'gone.pt'}, which does not exist" in err
    assert "pass --resume" in err and "remove the link or choose another --out" in err
    assert ckpt.is_symlink() and sorted(p.name for p in run.iterdir()) == ["checkpoint.pt"]
