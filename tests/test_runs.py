"""The run folder: claimed atomically (two runs started together never share one), locked
for the run, checked writable before any data is loaded, and not left behind empty."""
import os
from pathlib import Path

import pytest

from fastvae import cli
from fastvae import train as T
from fastvae.checkpoint import CHECKPOINT_NAME, load_checkpoint

TINY = dict(epochs=1, hidden=[32], latent=4, batch_size=256, lr=3e-3, iwae_k=0, progress=False)
TINY_ARGS = ["--epochs", "1", "--hidden", "32", "--latent", "2", "--batch-size", "256",
             "--iwae-k", "0", "--no-progress"]


def quiet(*args, **kw):
    pass


def _second_run_during_data_loading(monkeypatch, second):
    """Start ``second()`` while the first run loads its data: the two runs have chosen
    their folders, neither has written a checkpoint yet."""
    real = T.load_dataset
    seen = {}

    def load(*a, **k):
        if "second" not in seen:
            seen["second"] = None
            try:
                seen["second"] = second()
            except Exception as e:  # reported to the test below
                seen["second"] = e
        return real(*a, **k)

    monkeypatch.setattr(T, "load_dataset", load)
    return seen


def test_two_default_runs_started_together_get_their_own_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen = _second_run_during_data_loading(
        monkeypatch, lambda: T.train(dict(TINY, seed=2), log=quiet))
    first = T.train(dict(TINY, seed=1), log=quiet)
    second = seen["second"]
    assert not isinstance(second, Exception), second
    assert {first["config"]["out"], second["config"]["out"]} == {
        os.path.join("runs", "digits"), os.path.join("runs", "digits-2")}
    for m in (first, second):  # each folder holds its own run, nothing overwritten
        state = load_checkpoint(tmp_path / m["config"]["out"])
        assert state["config"]["seed"] == m["config"]["seed"]


def test_a_second_run_into_a_busy_folder_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "run"
    seen = _second_run_during_data_loading(
        monkeypatch, lambda: T.train(dict(TINY, out=str(out), seed=2), log=quiet))
    T.train(dict(TINY, out=str(out), seed=1), log=quiet)
    assert "another fastvae run" in str(seen["second"]) and str(out) in str(seen["second"])
    assert load_checkpoint(out)["config"]["seed"] == 1


@pytest.mark.parametrize("resume", [False, True])
def test_out_naming_a_file(tmp_path, capsys, monkeypatch, resume):
    """One line; a resume is told to give its run's folder, not to choose another."""
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    monkeypatch.setattr(T, "load_dataset", lambda *a, **k: pytest.fail("loaded data"))
    assert cli.main(["train", *TINY_ARGS, *(["--resume"] if resume else []), "--out", str(f)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and str(f) in err
    assert ("give the run's folder" in err) == resume and ("another --out" in err) != resume
    assert f.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.skipif(os.name != "posix", reason="flock")
def test_a_busy_folder_tells_a_resume_to_wait_only(tmp_path):
    """A resume lives in its own folder: "choose another --out" is no advice for it."""
    from fastvae import runs
    holder = runs.RunFolder(tmp_path, [])
    holder._lock()
    try:
        for resume in (False, True):
            second = runs.RunFolder(tmp_path, [])
            with pytest.raises(runs.RunFolderError, match="in use by another") as e:
                second._lock(resume)
            second.close(failed=False)
            assert ("another --out" in str(e.value)) != resume
    finally:
        holder.close(failed=False)


@pytest.mark.parametrize("resume", [False, True])
def test_unwritable_run_folder_is_found_before_loading_data(tmp_path, capsys, monkeypatch,
                                                             resume):
    """Root ignores permission bits, so the refusal is simulated at the run folder's
    ``open``; the test below checks a real read-only folder where it can. A resumed run
    lives in its own folder: another --out is no advice for it."""
    from fastvae import runs
    out = tmp_path / "ro"
    out.mkdir()
    if resume:
        assert cli.main(["train", *TINY_ARGS, "--out", str(out)]) == 0
        capsys.readouterr()

    def refusing(path, mode="r", *a, **k):
        if os.path.dirname(os.fspath(path)) == str(out) and set(mode) & set("wxa"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return open(path, mode, *a, **k)

    monkeypatch.setattr(runs, "open", refusing, raising=False)
    monkeypatch.setattr(T, "load_dataset", lambda *a, **k: pytest.fail("loaded data"))
    flags = ["--resume", "--epochs", "2"] if resume else []
    assert cli.main(["train", *TINY_ARGS, *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert str(out) in err and "Permission denied" in err
    assert ("make it writable" in err) == resume and ("choose another --out" in err) != resume


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes to read-only folders")
def test_read_only_run_folder(tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert cli.main(["train", *TINY_ARGS, "--out", str(out)]) == 2
    finally:
        out.chmod(0o755)
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(out) in err


FAILURES = {"data": (["--dataset", "mnist", "--data-dir", "nodata"], 2),
            "diverged": (["--batch-size", "2000", "--lr", "0.3", "--seed", "1", "--hidden", "256",
                         "--latent", "8"], 3)}


@pytest.mark.parametrize("failure", sorted(FAILURES))
@pytest.mark.parametrize("explicit", [True, False])
def test_a_failed_start_leaves_no_empty_run_folder(tmp_path, capsys, monkeypatch, explicit,
                                                   failure):
    monkeypatch.chdir(tmp_path)
    flags, code = FAILURES[failure]
    where = ["--out", str(tmp_path / "new" / "run")] if explicit else []
    assert cli.main(["train", *TINY_ARGS, *flags, *where]) == code
    assert sorted(p.name for p in tmp_path.rglob("*")) == []


def test_a_failed_start_keeps_a_folder_it_did_not_create(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    assert cli.main(["train", *TINY_ARGS, "--dataset", "mnist", "--data-dir",
                     str(tmp_path / "nodata"), "--out", str(out)]) == 2
    assert out.is_dir()


def test_a_folder_holding_a_run_s_files_without_a_checkpoint_is_not_taken_over(tmp_path,
                                                                                 capsys):
    """metrics.json or a picture a run would write, with no checkpoint to resume: refused,
    the files as they were."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.json").write_text('{"mine": 1}')
    (out / "samples.png").write_bytes(b"x")
    with pytest.raises(T.RunFolderError, match="already holds metrics.json, samples.png"):
        T.train(dict(TINY, out=str(out)), log=quiet)
    assert (out / "metrics.json").read_text() == '{"mine": 1}'
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "samples.png"]

    # --resume, eval and sample on it: their advice is not the fresh run refused above
    for argv in (["train", "--resume", "--out", str(out)], ["eval", str(out)],
                 ["sample", str(out)]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "holds metrics.json, samples.png" in err and "another folder" in err, err
        assert f"--out {out}`" not in err, err
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "samples.png"]


def test_the_default_folder_of_an_array_file_is_named_for_it_whatever_its_suffix(tmp_path,
                                                                                monkeypatch):
    from fastvae.runs import newest_run
    monkeypatch.chdir(tmp_path)
    for name in ("/data/UP.NPY", "rel/dir/imgs.npz", "/data/plain", "digits", "fashion-mnist"):
        want = {"/data/UP.NPY": "UP", "rel/dir/imgs.npz": "imgs", "/data/plain": "plain"}.get(
            name, name)
        assert newest_run(name) == Path("runs") / want
    # a run named the old way (runs/ joined to the whole path) is still found to resume
    legacy = Path("runs") / "rel" / "UP.NPY-2"
    legacy.mkdir(parents=True)
    (legacy / CHECKPOINT_NAME).write_bytes(b"")
    assert newest_run("rel/UP.NPY") == legacy


def test_resume_without_out_takes_the_run_checkpointed_last_not_the_highest_number(
        tmp_path, monkeypatch):
    """runs/digits deleted and started again is newer than runs/digits-2: --resume takes
    the run whose checkpoint was written last (a reviewer's resume took the older one)."""
    from fastvae.runs import newest_run
    monkeypatch.chdir(tmp_path)
    runs = Path("runs")
    for name, when in (("digits", 2_000_000_000), ("digits-2", 1_000_000_000),
                       ("digits-3", None)):
        (runs / name).mkdir(parents=True)
        if when is not None:
            (runs / name / CHECKPOINT_NAME).write_bytes(b"")
            os.utime(runs / name / CHECKPOINT_NAME, (when, when))
    assert newest_run("digits") == runs / "digits"
    os.utime(runs / "digits-2" / CHECKPOINT_NAME, (3_000_000_000, 3_000_000_000))
    assert newest_run("digits") == runs / "digits-2"
    os.utime(runs / "digits" / CHECKPOINT_NAME, (3_000_000_000, 3_000_000_000))
    assert newest_run("digits") == runs / "digits-2"   # equals: the higher number


def test_a_run_whose_array_file_moved_says_where_it_was_trained_on(tmp_path, capsys):
    """eval and --resume of a run trained on an .npy that has since moved: the path the
    run keeps and what to do, not the dataset advice of a fresh run (which names datasets
    to pass, where neither command takes one)."""
    import numpy as np

    data = tmp_path / "a.npy"
    np.save(data, (np.random.default_rng(0).random((40, 8, 8)) > 0.5).astype(np.uint8) * 255)
    run = tmp_path / "run"
    assert cli.main(["train", *TINY_ARGS, "--dataset", str(data), "--out", str(run)]) == 0
    data.rename(tmp_path / "b.npy")
    capsys.readouterr()
    for argv in (["eval", str(run), "--k", "2"],
                 ["train", "--resume", "--out", str(run), "--epochs", "2", "--no-progress"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith(f"the run was trained on {data}, which is not there now; put the "
                            "file back at that path, or pass --data-dir with the folder it is "
                            "in now (its contents are checked against the run's)"), err
        assert len(err.splitlines()) == 1, err
    (tmp_path / "b.npy").rename(data)
    assert cli.main(["eval", str(run), "--k", "2"]) == 0


def test_a_run_whose_array_file_moved_folder_reads_it_there(tmp_path, capsys):
    """--data-dir on eval and --resume of a run trained on an .npy: the folder the file
    has moved to (a project moved as a whole). The resumed run keeps the new path; a
    folder without the file, or with other images under its name, is one line."""
    import numpy as np

    rng = np.random.default_rng(0)
    data = tmp_path / "a.npy"
    np.save(data, (rng.random((40, 8, 8)) > 0.5).astype(np.uint8) * 255)
    run = tmp_path / "run"
    assert cli.main(["train", *TINY_ARGS, "--dataset", str(data), "--out", str(run)]) == 0
    (tmp_path / "moved").mkdir()
    data.rename(tmp_path / "moved" / "a.npy")
    (tmp_path / "empty").mkdir()
    capsys.readouterr()
    for argv in (["eval", str(run), "--k", "2"],
                 ["train", "--resume", "--out", str(run), "--epochs", "2", "--no-progress"]):
        assert cli.main([*argv, "--data-dir", str(tmp_path / "empty")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith(f"--data-dir {tmp_path / 'empty'}: no a.npy there (the run was "
                            f"trained on {data})"), err
        assert len(err.splitlines()) == 1, err
    assert cli.main(["eval", str(run), "--k", "2", "--data-dir", str(tmp_path / "moved")]) == 0
    out = capsys.readouterr().out
    assert "test elbo" in out.lower(), out
    assert cli.main(["train", "--resume", "--out", str(run), "--epochs", "2", "--no-progress",
                     "--data-dir", str(tmp_path / "moved")]) == 0
    assert f"resuming on {tmp_path / 'moved' / 'a.npy'}" in capsys.readouterr().out
    state = load_checkpoint(run / CHECKPOINT_NAME)
    assert state["config"]["dataset"] == str(tmp_path / "moved" / "a.npy")
    assert state["epoch"] == 2
    # other images under the run's file name: said as anywhere (eval notes it, a resume
    # refuses it)
    np.save(tmp_path / "empty" / "a.npy", (rng.random((40, 8, 8)) > 0.5).astype(np.uint8) * 255)
    assert cli.main(["eval", str(run), "--k", "2", "--data-dir", str(tmp_path / "empty")]) == 0
    assert "a.npy holds other images than" in capsys.readouterr().err
    assert cli.main(["train", "--resume", "--out", str(run), "--epochs", "3", "--no-progress",
                     "--data-dir", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert "a.npy holds other images than" in err and len(err.splitlines()) == 1, err
    assert load_checkpoint(run / CHECKPOINT_NAME)["epoch"] == 2
