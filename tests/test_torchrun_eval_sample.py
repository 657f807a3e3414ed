"""``fastvae eval``, ``sample`` and ``bench`` under torchrun: none splits its work, so rank 0
alone runs it, as one process would (every rank printed the same numbers, and wrote the same
picture, again); a bad flag is said once; ``-n`` passes torchrun's own parser, which takes
``--n`` for an ambiguous abbreviation of its options and stops before fastvae runs."""
import subprocess
import sys

import pytest

import _torchrun
from fastvae import cli


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tr") / "run"
    assert cli.main(["train", "--model", "hvae", "--epochs", "1", "--latent", "2",
                     "--channels", "4", "4", "--groups", "1", "--batch-size", "128",
                     "--iwae-k", "0", "--no-progress", "--out", str(out)]) == 0
    return out


def _as_rank(monkeypatch, rank):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", str(rank))


def test_rank_1_evaluates_and_samples_nothing(run, tmp_path, monkeypatch, capsys):
    capsys.readouterr()
    single = cli.main(["eval", str(run), "--k", "2", "--limit", "10"]), capsys.readouterr().out
    _as_rank(monkeypatch, 1)
    assert cli.main(["eval", str(run), "--k", "2", "--limit", "10"]) == 0
    assert cli.main(["sample", str(run), "-n", "3", "--out", str(tmp_path / "a.png")]) == 0
    assert capsys.readouterr() == ("", "") and not (tmp_path / "a.png").exists()
    with pytest.raises(SystemExit) as e:   # a bad flag: every rank meets it, rank 0 says it
        cli.main(["sample", str(run), "--n", "0"])
    assert e.value.code == 2 and capsys.readouterr() == ("", "")
    _as_rank(monkeypatch, 0)
    assert cli.main(["eval", str(run), "--k", "2", "--limit", "10"]) == 0
    out, err = capsys.readouterr()
    assert (0, out) == single
    assert err == "fastvae eval: note: it runs in one process; torchrun's other 1 process(es) " \
                  "do nothing\n"
    assert cli.main(["sample", str(run), "-n", "3", "--out", str(tmp_path / "a.png")]) == 0
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):
        cli.main(["sample", str(run), "--n", "0"])
    assert capsys.readouterr().err.count("error: argument --n/-n") == 1


def test_under_torchrun_eval_prints_once_and_sample_takes_n(run, tmp_path):
    _torchrun.torchrun()   # skips the test without it
    args = ["eval", str(run), "--k", "2", "--limit", "10", "--json"]
    single = subprocess.run([sys.executable, "-m", "fastvae", *args], capture_output=True,
                            text=True, timeout=240, env=_torchrun.env(tmp_path)).stdout
    assert '"iwae_nll"' in single   # with the same threads as a rank
    r = _torchrun.run(tmp_path, "-m", "fastvae", *args)
    assert r.returncode == 0 and r.stdout == single, r.stdout + r.stderr[-3000:]
    png = tmp_path / "s.png"
    r = _torchrun.run(tmp_path, "-m", "fastvae", "sample", run, "-n", "5", "--out", png)
    assert r.returncode == 0 and r.stdout.count("wrote 5 samples") == 1, r.stderr[-3000:]
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("env,named", [({"WORLD_SIZE": "2"}, "RANK is not set"),
                                       ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK is 2"),
                                       ({"WORLD_SIZE": "two"}, "WORLD_SIZE must be")])
def test_a_broken_torchrun_environment_is_one_line(monkeypatch, capsys, env, named):
    # WORLD_SIZE left set outside torchrun: a flag's error is still said, and a command
    # names the variable (a KeyError or int()'s traceback, or a rank past the world kept quiet)
    monkeypatch.delenv("RANK", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as e:
        cli.main(["eval"])
    assert e.value.code == 2 and "required: run" in capsys.readouterr().err
    assert cli.main(["sample", "no-such-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err, err


def test_bench_runs_on_rank_0_alone(monkeypatch, capsys):
    # every rank ran the whole benchmark: the table printed twice, --json written by both,
    # and each timing taken with the other rank busy on the same cores
    calls = []
    monkeypatch.setattr(cli, "_run_bench", lambda argv: calls.append(argv) or 0)
    _as_rank(monkeypatch, 1)
    assert cli.main(["bench", "--quick"]) == 0
    assert calls == [] and capsys.readouterr() == ("", "")
    _as_rank(monkeypatch, 0)
    assert cli.main(["bench", "--quick"]) == 0 and calls == [["--quick"]]
    assert "fastvae bench: note: it runs in one process" in capsys.readouterr().err
