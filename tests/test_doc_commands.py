"""Every ``fastvae`` command README.md quotes is one the command takes today: parsed by the
real parser (nothing trains, evaluates or measures), and for ``train`` the flag checks
that run before anything is read or built (values and combinations: ``--estimator dreg``
without ``--objective iwae`` is refused there, not by argparse). A renamed or removed
flag, a choice dropped, or a README line naming a combination the command refuses fails
here. ``./dev train|bench`` and ``torchrun ... -m fastvae`` pass their flags on to the same
command, so they count too (tests/test_readme_examples.py runs the ```python blocks)."""
import os
import re
import shlex
from unittest import mock

import pytest

from fastvae import cli
from fastvae import options as o
from fastvae.bench import cli as bench_cli
from fastvae.train import _checked_config, default_config

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
# a line or span that runs the command (a bash block's comment is cut off first)
STARTS = re.compile(r"^(?:fastvae|\./dev|torchrun)\s")


def _quoted():
    """(README line, command) of each shell line in a ```bash block and each inline
    `code` span that starts a fastvae command."""
    with open(README, encoding="utf-8") as f:
        lines = f.read().splitlines()
    found, fence, carry = [], None, None
    for n, line in enumerate(lines, 1):
        if line.strip().startswith("```"):
            fence = None if fence is not None else line.strip()[3:]
            continue
        if fence == "bash":
            found.append((n, line.split("#")[0].strip()))
        elif fence is None:
            start, text = carry or (n, "")
            text = f"{text} {line}" if text else line
            carry = (start, text) if text.count("`") % 2 else None   # a span goes on
            if carry is None:
                found += [(start, s.strip()) for s in re.findall(r"`([^`]+)`", text)]
    return [(n, s) for n, s in found if STARTS.match(s)]


def _argv(command: str):
    """The ``fastvae`` arguments ``command`` runs, or None where it names no invocation
    (``./dev test``, a bare ``fastvae eval`` in prose, which names the command)."""
    words = shlex.split(command)
    if words[0] == "torchrun":
        words = words[words.index("-m") + 2:]
    elif words[0] == "./dev":
        if words[1:2] not in (["train"], ["bench"]):
            return None
        words = words[1:]
    else:
        words = words[1:]
    if words in (["eval"], ["sample"]):
        return None
    return words


COMMANDS = [(n, c, _argv(c)) for n, c in _quoted() if _argv(c) is not None]


def test_the_readme_quotes_commands():
    kinds = {argv[0] for _, _, argv in COMMANDS if argv}
    assert {"train", "eval", "sample", "bench"} <= kinds, (
        f"README.md's commands found: {sorted(kinds)}: the extraction or the README changed")


def _train_checks(args):
    """What ``fastvae train`` refuses before it reads data or builds a model: the checks
    ``fastvae.train._train`` makes first, on the flags merged into the defaults."""
    _checked_config({k: getattr(args, k) for k in default_config() if hasattr(args, k)})


def _flags(command: str) -> set:
    """Every spelling of the flags of ``fastvae <command>``."""
    if command == "bench":
        parser = o.Parser(prog="fastvae bench")
        bench_cli.add_arguments(parser)
    else:
        parser = cli.build_parser().commands[command]
    return {s for a in parser._actions for s in a.option_strings}


@pytest.mark.parametrize("line,command,argv", COMMANDS,
                         ids=[f"README.md:{n}" for n, _, _ in COMMANDS])
def test_readme_command_parses(line, command, argv, capsys):
    # argparse takes a prefix of a flag: a flag renamed to a longer name would still
    # parse where the README spells the old one
    written = [w.split("=")[0] for w in argv[1:] if w.startswith("--")]
    unknown = [w for w in written if w not in _flags(argv[0])]
    assert not unknown, (f"README.md:{line}: {command!r}: {', '.join(unknown)} is no flag of "
                         f"fastvae {argv[0]} as spelled")
    if argv[:1] == ["bench"]:
        # its own parser and the checks of its main, up to the run (which measures)
        with mock.patch.object(bench_cli, "run", lambda args: 0):
            try:
                status = bench_cli.main(argv[1:])
            except SystemExit as e:
                status = e.code
        assert status == 0, f"README.md:{line}: {command!r}: {capsys.readouterr().err.strip()}"
        return
    parser = cli.build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:   # --help's exit is 0, after it printed the help
        if e.code == 0 and "--help" in argv:
            return
        pytest.fail(f"README.md:{line}: {command!r} does not parse (exit {e.code}): "
                    f"{capsys.readouterr().err.strip()}")
    if args.command == "train":
        try:
            _train_checks(args)
        except ValueError as e:
            pytest.fail(f"README.md:{line}: fastvae train refuses {command!r}: {e}")
