"""``fastvae train`` under torchrun tears its process group down before the interpreter
exits. A module imported after ``init_process_group`` that binds ``group.WORLD`` as a
default argument (``torch.distributed.nn.functional``, which DDP's first use of
torch._dynamo imports) kept the group alive past ``destroy_process_group``: its gloo
threads ran on into the interpreter's finalization, where one releasing a finished
collective's work took the GIL and the rank aborted (signal 6, reported by torchrun as a
failure; most often after a SIGTERM to one rank, now and then after a good run)."""
import os
import textwrap

import pytest

import _torchrun

GLOO_THREADS = ("gloo_tcp_loop", "pt_gloo_runloop")


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="threads named in /proc")
def test_no_gloo_thread_outlives_the_command(tmp_path):
    script = tmp_path / "wrapped.py"
    script.write_text(textwrap.dedent(f"""
        import glob, os, sys
        from fastvae.cli import main
        status = main(sys.argv[1:])
        names = []
        for f in glob.glob("/proc/self/task/*/comm"):
            with open(f) as t:
                names.append(t.read().strip())
        with open({str(tmp_path)!r} + "/threads." + os.environ["RANK"], "w") as f:
            f.write(" ".join(n for n in names if n in {GLOO_THREADS!r}))
        sys.exit(status)
    """))
    r = _torchrun.run(tmp_path, script, *_torchrun.TRAIN, "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr[-3000:]
    for rank in (0, 1):
        assert (tmp_path / f"threads.{rank}").read_text() == "", rank


def test_a_failed_run_whose_group_was_kept_exits_without_the_interpreter_s_shutdown(
        monkeypatch, capsys):
    """A failed run keeps its group (``ranks.end_group``), whose threads the interpreter's
    shutdown would abort the process under: the command's status goes straight to the
    OS, after what it wrote is flushed. Without a kept group, console returns as usual."""
    from fastvae import cli, ranks

    exits = []
    monkeypatch.setattr(cli, "main", lambda argv: print("the line") or 1)
    monkeypatch.setattr(cli.stops, "exiting", lambda: None)
    monkeypatch.setattr(os, "_exit", exits.append)
    assert cli.console([]) == 1 and exits == []
    capsys.readouterr()
    monkeypatch.setattr(ranks, "_held", [object()])
    cli.console([])
    assert exits == [1] and capsys.readouterr().out == "the line\n"


def test_a_traceback_with_a_kept_group_still_exits_straight_to_the_os(monkeypatch, capsys):
    """An error the command does not word (a rank's own bug) escapes main as a traceback:
    with a kept group the rank then hung in the interpreter's exit until torchrun killed
    it (SIGTERM, reported in place of its status 1)."""
    from fastvae import cli, ranks

    def broken(argv):
        raise RuntimeError("a rank's own failure")
    exits = []
    monkeypatch.setattr(cli, "main", broken)
    monkeypatch.setattr(cli.stops, "exiting", lambda: None)
    monkeypatch.setattr(os, "_exit", exits.append)
    monkeypatch.setattr(ranks, "_held", [object()])
    cli.console([])
    err = capsys.readouterr().err
    assert exits == [1] and "Traceback" in err and "RuntimeError: a rank's own failure" in err


def test_a_failure_every_rank_raises_together_frees_the_group(tmp_path):
    """A Python caller's train failing on every rank at once (an uneven batch) left the
    group kept, as after a rank's own failure: its gloo threads ran into the
    interpreter's exit, which may abort the process. No collective is unfinished there,
    so the group is torn down as after a good run."""
    script = tmp_path / "api.py"
    script.write_text(textwrap.dedent(f"""
        import glob, os
        from fastvae import ranks
        from fastvae.train import train
        try:
            train(dict(out={str(tmp_path / "run")!r}, epochs=1, hidden=[16], latent=2,
                       batch_size=255, iwae_k=0, progress=False, device="cpu"))
        except ValueError as e:
            said = str(e).split(":")[0]
        names = []
        for f in glob.glob("/proc/self/task/*/comm"):
            with open(f) as t:
                names.append(t.read().strip())
        with open({str(tmp_path)!r} + "/kept." + os.environ["RANK"], "w") as f:
            f.write(f"{{said}} {{ranks.group_kept()}} "
                    + " ".join(n for n in names if n in {GLOO_THREADS!r}))
    """))
    r = _torchrun.run(tmp_path, script)
    assert r.returncode == 0, r.stderr[-3000:]
    for rank in (0, 1):
        assert (tmp_path / f"kept.{rank}").read_text().strip() == "--batch-size False", rank
