"""``fastvae eval`` and ``sample`` take ``--threads`` as ``train`` does: under torchrun
(OMP_NUM_THREADS=1) eval ran on one thread with no way to give it more. The count holds
for the command only."""
import pytest
import torch

from fastvae import cli, evaluation, plots
from fastvae import options as o

from _cli import TINY


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("threads") / "run"
    assert cli.main(["train", *TINY, "--iwae-k", "0", "--out", str(out)]) == 0
    return out


def _threads_seen(monkeypatch, module, name):
    seen, real = [], getattr(module, name)

    def spy(*a, **k):
        seen.append(torch.get_num_threads())
        return real(*a, **k)
    monkeypatch.setattr(module, name, spy)
    return seen


@pytest.mark.parametrize("command", ["eval", "sample"])
def test_threads_is_the_same_flag_as_train_s(command, capsys):
    parser = cli.build_parser()
    flag = {c: next(a for a in parser.commands[c]._actions if "--threads" in a.option_strings)
            for c in ("train", command)}
    assert flag[command].type is o.threads
    assert flag[command].help.split("[default")[0] == flag["train"].help.split("[default")[0]
    assert flag[command].help.endswith("[default: torch's own count]")
    assert parser.parse_args([command, "r", "--threads", "3"]).threads == 3
    with pytest.raises(SystemExit) as e:
        cli.main([command, "r", "--threads", str(o.MAX_THREADS + 1)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert f"argument --threads: must be at most {o.MAX_THREADS}" in err, err


@pytest.mark.parametrize("command, module, name, extra", [
    ("eval", evaluation, "evaluate", ["--k", "0", "--limit", "5"]),
    ("sample", plots, "save_grid", ["-n", "2"])])
def test_the_command_runs_on_the_threads_asked_for_and_gives_them_back(
        run, tmp_path, monkeypatch, capsys, command, module, name, extra):
    seen = _threads_seen(monkeypatch, module, name)
    before = torch.get_num_threads()
    out = ["--out", str(tmp_path / "s.png")] if command == "sample" else []
    want = 3 if before != 3 else 2
    assert cli.main([command, str(run), *extra, *out, "--threads", str(want)]) == 0
    # auto on 8x8 digits: one thread, as train takes it
    assert cli.main([command, str(run), *extra, *out, "--threads", "0"]) == 0
    # without the flag: torch's own count, as before the flag existed
    assert cli.main([command, str(run), *extra, *out]) == 0
    assert seen == [want, 1, before] and torch.get_num_threads() == before
