"""The ``fastvae`` command's flags: help that documents each, unknown or abbreviated flags
and bad values refused by argparse in one line before any work, and the same checks
behind the training API."""
import os
import re
import subprocess
import sys

import pytest
import torch

from fastvae import cli


def _train_flags() -> list:
    """Every flag of ``fastvae train`` but --help, from its parser: a list by hand missed
    those added after it (--channels, --kl-warmup, --iwae-k, --threads, ...)."""
    train = cli.build_parser().commands["train"]
    return [a.option_strings[0] for a in train._actions
            if a.option_strings and "--help" not in a.option_strings]


def _readme_train_flags() -> list:
    """The flags of README.md's table under "Flags (`fastvae train --help`)"."""
    from tests._doc_commands import ROOT
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    table = text.split("### Flags (`fastvae train --help`)", 1)[1].split("\n\n", 2)[1]
    return re.findall(r"^\| `(--[a-z0-9-]+)`", table, flags=re.M)


def _readme_train_defaults() -> dict:
    """Flag -> its cell in the default column of README.md's Flags table."""
    from tests._doc_commands import ROOT
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    table = text.split("### Flags (`fastvae train --help`)", 1)[1].split("\n\n", 2)[1]
    return dict(re.findall(r"^\| `(--[a-z0-9-]+)` \| ([^|]*) \|", table, flags=re.M))


def test_the_readme_flags_table_gives_each_default():
    """The default column is the training config's default (a computed one, None there,
    is the table's own words)."""
    from fastvae.train import default_config
    defaults = default_config()
    cells = _readme_train_defaults()
    assert len(cells) == len(_readme_train_flags())
    for flag, cell in cells.items():
        want = defaults[flag[2:].replace("-", "_")]
        if want is None:
            continue
        cell = cell.replace("`", "").strip()
        if isinstance(want, bool):
            assert cell == ("on" if want else "off"), flag
        elif isinstance(want, list):
            assert cell == " ".join(map(str, want)), flag
        elif isinstance(want, (int, float)):
            assert float(cell.split()[0]) == want, flag
        else:
            assert cell.split()[0] == want, flag


def test_python_m_fastvae_help():
    r = subprocess.run([sys.executable, "-m", "fastvae", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for cmd in ("train", "eval", "sample", "bench"):
        assert cmd in r.stdout


def test_train_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    flags = _train_flags()
    assert "--kl-warmup" in flags and "--progress" in flags
    for flag in flags:
        # an entry of its own (not hidden by help=SUPPRESS), not a mention in another's
        assert re.search(rf"^  {flag}\b(?!-)", text, flags=re.M), flag
    # README.md's table documents every flag, and no flag the command no longer has
    documented = _readme_train_flags()
    assert (set(flags) - set(documented), set(documented) - set(flags)) == (set(), set())
    # every flag has its own help text (argparse would print the bare flag otherwise)
    parser = cli.build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    assert all(a.help for a in train._actions)


@pytest.mark.parametrize("cmd", ["eval", "sample"])
def test_eval_and_sample_help_give_each_default_once(capsys, cmd):
    """A default in the help where it says something: never "(default: None)" for a flag
    off unless given, nor a second one where the help names its own."""
    with pytest.raises(SystemExit) as e:
        cli.main([cmd, "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "(default: False)" not in text, text
    assert "(default: auto)" in text, text
    if cmd == "eval":
        assert "(default: the run's own) (default" not in text, text
        assert "(default: 1000)" in text, text


# -- every numeric flag is checked by argparse: exit 2, one line naming the flag, no work ---
BAD_VALUES = [
    ("train", "--batch-size", "0"), ("train", "--batch-size", "-4"),
    ("train", "--epochs", "-3"), ("train", "--epochs", "0"),
    ("train", "--latent", "0"), ("train", "--latent", "-1"),
    ("train", "--hidden", "0"), ("train", "--hidden", "32 -1"),
    ("train", "--channels", "0"), ("train", "--device", "tpu"), ("train", "--device", "meta"),
    ("train", "--device", "cuda:x"), ("train", "--lr", "0"), ("train", "--lr", "-1e-3"),
    ("train", "--lr", "nan"), ("train", "--lr", "inf"), ("train", "--lr", "1e300"),
    ("train", "--lr", "1e-300"), ("train", "--lr", "1e38"),
    ("train", "--beta", "-1"), ("train", "--beta", "1e39"),
    ("train", "--beta", "nan"), ("train", "--iwae-k", "-1"), ("train", "--threads", "-2"), ("train", "--threads", "100000"),
    ("train", "--seed", "-1"), ("train", "--seed", str(2 ** 63 - 1)),
    ("train", "--batch-size", "many"), ("train", "--n-mix", "0"),
    ("train", "--out", ""), ("sample", "--out", " "), ("sample", "--out", "x.txt"),
    ("sample", "--out", "x"), ("sample", "--out", "pngs/"),
    ("sample", "--ncol", "0"), ("sample", "--n", "0"), ("sample", "--seed", "-5"),
    ("sample", "--device", "tpu"),
    ("eval", "--limit", "-5"), ("eval", "--limit", "0"), ("eval", "--k", "-1"),
    ("eval", "--device", "tpu"),
]


@pytest.mark.parametrize("argv,prefix", [(["train", "--bogus"], "fastvae train: error"),
                                         (["eval", "run", "--bogus"], "fastvae eval: error"),
                                         (["--bogus"], "fastvae: error"),
                                         (["--bogus", "train"], "fastvae: error")])
def test_an_unknown_flag_is_named_by_its_command(capsys, argv, prefix):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(prefix) and "--bogus" in err[0], err


@pytest.mark.parametrize("argv,flag", [(["train", "--iwae", "5"], "--iwae"),
                                       (["train", "--lat", "2"], "--lat"),
                                       (["eval", "run", "--lim", "3"], "--lim"),
                                       (["sample", "run", "--see", "3"], "--see"),
                                       (["bench", "--qui"], "--qui")])
def test_a_flag_is_never_taken_by_a_prefix(tmp_path, monkeypatch, capsys, argv, flag):
    """``--iwae 5`` was ``--iwae-k 5`` (the final estimate's K) on a run that trained the
    ELBO; every prefix is an unknown flag, refused before any folder is made."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"unrecognized arguments: {flag}" in err[0], err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["eval", "sample"])
def test_an_empty_run_path_is_refused_not_read_as_the_current_folder(tmp_path, monkeypatch,
                                                                      capsys, command):
    """``fastvae eval "$RUN"`` with RUN unset read whatever run the current folder held."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main([command, ""])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "argument run: must name a folder or file, got ''" in err[0], err


@pytest.mark.parametrize("command,flag,value", BAD_VALUES)
def test_bad_flag_values_are_refused_by_argparse(tmp_path, capsys, monkeypatch, command, flag,
                                                 value):
    monkeypatch.chdir(tmp_path)
    run = [] if command == "train" else [str(tmp_path / "run")]
    with pytest.raises(SystemExit) as e:
        cli.main([command, *run, flag, *(value.split() or [value])])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert flag in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []  # refused before anything was created


def test_good_edge_values_are_accepted():
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--device", "cuda:1", "--iwae-k", "0", "--threads", "0",
                              "--beta", "0", "--seed", "0", "--lr", "1e-5", "--hidden", "8", "4"])
    assert (args.device, args.iwae_k, args.beta, args.hidden) == ("cuda:1", 0, 0.0, [8, 4])
    assert parser.parse_args(["eval", "r", "--k", "0"]).k == 0
    assert parser.parse_args(["sample", "r", "--out", "a/B.PNG"]).out == "a/B.PNG"


@pytest.mark.parametrize("key,value", [("batch_size", 0), ("epochs", -3), ("latent", 0),
                                       ("hidden", [32, 0]), ("channels", [0]), ("lr", 0.0),
                                       ("beta", float("nan")), ("lr", 1e300), ("lr", 1e-300),
                                       ("lr", 1e38), ("iwae_k", -1),
                                       ("threads", -1), ("threads", 100000),
                                       ("device", "tpu"), ("seed", -1),
                                       ("n_mix", 0), ("out", "")])
def test_the_training_api_checks_its_settings_too(tmp_path, key, value):
    from fastvae import train as T

    with pytest.raises(ValueError, match=key):
        T.train({"out": str(tmp_path / "r"), "progress": False, key: value}, log=print)
    assert list(tmp_path.iterdir()) == []


def test_the_largest_lr_is_the_one_whose_first_adam_step_fits_float32():
    """Adam's first step is lr / (1 - 0.9): 1e38 is within float32 but its step is not, and
    torch raised an overflow RuntimeError from inside the optimizer."""
    from fastvae import options as o

    import math

    f32_max = torch.finfo(torch.float32).max
    largest = f32_max * (1 - 0.9)
    assert o.learning_rate(largest) == largest and largest / (1 - 0.9) <= f32_max
    with pytest.raises(o.BadValue, match=r"at most 3.402e\+37"):
        o.learning_rate(math.nextafter(largest, math.inf))


def test_a_cuda_device_that_is_not_there_is_named_as_asked(monkeypatch):
    import torch
    from fastvae.options import resolve_device
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"--device cuda:99 asked for, but torch sees no CUDA"):
            resolve_device("cuda:99")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"--device cuda:99 asked for, but torch sees 2 CUDA"):
        resolve_device("cuda:99")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize("argv", [["train", "--dataset", "mnist"], ["train", "--resume"],
                                  ["eval", "RUN"]])
def test_an_empty_data_dir_is_refused_not_read_as_the_current_folder(tmp_path, monkeypatch,
                                                                     capsys, argv):
    """``--data-dir "$UNSET"`` read (or downloaded into) the current folder, as --out ""
    would have written there; both are refused as they are parsed."""
    monkeypatch.chdir(tmp_path)
    argv = [str(tmp_path / "run") if a == "RUN" else a for a in argv]
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--data-dir", ""])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "argument --data-dir: must name a folder or file, got ''" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_an_empty_data_dir_in_a_config_is_refused(tmp_path):
    from fastvae import train as T
    with pytest.raises(ValueError, match="^data_dir: must name a folder or file, got ' '"):
        T.train(dict(dataset="mnist", data_dir=" ", out=str(tmp_path / "run")))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cmd", ["train", "eval", "sample", "bench"])
def test_help_gives_every_valued_flags_default(cmd):
    """Every flag that takes a value says in --help what happens without it (a switch is
    off unless given): a reader should not have to open the code to learn it."""
    import argparse
    from tests._doc_commands import fastvae_parser
    parser = fastvae_parser(cmd)
    switches = (argparse._StoreTrueAction, argparse._HelpAction, argparse._VersionAction)
    for a in parser._actions:
        if not a.option_strings or isinstance(a, switches):
            continue
        formatter = parser._get_formatter()   # the entry --help prints for this flag
        formatter.add_argument(a)
        entry = " ".join(formatter.format_help().split())
        assert "default" in entry.lower(), f"fastvae {cmd} {a.option_strings[0]}: {entry!r}"


def test_train_help_gives_a_list_default_as_it_is_typed(capsys):
    """--hidden and --channels take their widths as separate words: the help's default
    reads as they are typed (README's table, ``32 64``), not as a Python list."""
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "[default: 256]" in text and "[default: 32 64]" in text, text
    assert "[default: [" not in text, text
