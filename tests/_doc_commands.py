"""Shell commands quoted in the project's markdown, and the parsers that must take them.

tests/test_doc_commands.py holds README.md to this; tests/test_doc_commands_results.py the
results logs under benchmarks/ (and docs/). A quote is a line of a fenced or indented code
block (its ``# comment`` cut off, ``\\`` continuations joined) or an inline `code` span; a
line holding several commands (``a && b``, ``for ...; do b; done``) is each of them.

The rules a quote is judged by:

* Environment assignments (``PYTHONPATH=... ``), ``time``/``/usr/bin/time`` and the
  interpreter's path (``.venv/bin/python``) are the shell's, not the command's.
* A placeholder (``$op``, ``<B>``, ``...``, ``/path/to/...``) stands for a value the
  reader fills in: the command is checked by its flags' names only.
* ``[...]`` marks an optional part: the command must parse with it and without it.
* A line ``fastvae bench  <date> ...`` is the header bench prints (pasted output).
* A benchmarks/ script quoted by its path or bare name (``benchmarks/loss_sign.py
  --op dmol``, ``gradient_snr.py --k 5``) is ``python`` running it.
* ``python -m pytest``, ``python -c``, ``python -`` and tests' own scripts are not
  fastvae commands; a ``benchmarks/bench_*.py`` suite takes pytest's flags, not its own.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import sys
from unittest import mock

import pytest

from fastvae import cli
from fastvae import options as o
from fastvae.bench import cli as bench_cli
from fastvae.train import _checked_config, default_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the first line fastvae.bench.report.header() prints: pasted output, not a command
BENCH_HEADER = re.compile(r"^fastvae bench {2}\d{4}-\d\d-\d\d ")
PLACEHOLDER = re.compile(r"\$|<[^>]*>|^\.\.\.$|/path/to/")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# shell words that join or wrap commands: what follows them is a command of its own
_SEPARATORS = {"&&", "||", ";", "|", "do", "then", "else"}


def quoted(path):
    """(line number, text) of each code-block line and inline span of markdown ``path``."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    found, fence, carry, i = [], None, None, 0
    while i < len(lines):
        n, line = i + 1, lines[i]
        if line.strip().startswith("```"):
            fence = None if fence is not None else line.strip()[3:]
        elif fence is not None or line.startswith("    "):
            text = line
            while text.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text.rstrip()[:-1] + " " + lines[i].strip()
            if fence in (None, "", "bash", "sh", "console"):   # not a python block's comment
                found.append((n, text.split(" #")[0].strip()))
        else:
            start, text = carry or (n, "")
            text = f"{text} {line}" if text else line
            carry = (start, text) if text.count("`") % 2 else None   # a span goes on
            if carry is None:
                found += [(start, s.strip()) for s in re.findall(r"`([^`]+)`", text)]
        i += 1
    return found


def commands(text: str):
    """The simple commands of one quoted line, each as its words (shell prefixes dropped)."""
    if BENCH_HEADER.match(text):
        return []
    text = re.sub(r"\$\([^)]*\)", "$(...)", text)   # a command substitution is a value
    try:
        lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        words = list(lexer)
    except ValueError:   # prose in a span, an unclosed quote: no command
        return []
    out, current = [], []
    for w in words + [";"]:
        if w in _SEPARATORS:
            out.append(current)
            current = []
        else:
            current.append(w)
    return [c for c in map(_unwrapped, out) if c]


def _unwrapped(words):
    words = list(words)
    while words and (_ASSIGNMENT.match(words[0]) or words[0] in ("time", "/usr/bin/time")):
        words.pop(0)
    if words[:1] in (["for"], ["done"], ["cd"]):
        return []
    return words


def invocation(words):
    """What ``words`` run, as (kind, argv): kind ``fastvae`` (the command's arguments),
    ``offline`` (``python -m fastvae.bench.offline``'s) or ``script:NAME`` (benchmarks/
    NAME.py's); None for anything else (``./dev test``, a bare ``fastvae eval``)."""
    head = os.path.basename(words[0])
    rest = words[1:]
    if head == "fastvae":
        # a bare ``fastvae eval`` in prose names the command (it needs a run to read)
        return None if rest in (["eval"], ["sample"]) else ("fastvae", rest)
    if words[0] == "./dev":   # ./dev train|bench pass their flags on to the command
        return invocation(["fastvae"] + rest) if rest[:1] in (["train"], ["bench"]) else None
    if head == "torchrun":
        return invocation(["fastvae"] + rest[rest.index("-m") + 2:]) if "-m" in rest else None
    if head.endswith(".py") and os.path.dirname(words[0]) in ("", "benchmarks"):
        # a script quoted as its path (``benchmarks/loss_sign.py --op dmol``, or by name
        # where the prose is about benchmarks/): what ``python`` would run
        # (a bare name that is no benchmark script is prose about another file; a path
        # under benchmarks/ that is none is a stale quote, which the script check fails)
        path = os.path.join(ROOT, "benchmarks", head)
        return invocation(["python", os.path.join("benchmarks", head), *rest]) if (
            os.path.dirname(words[0]) or os.path.isfile(path)) else None
    if not re.fullmatch(r"python3?(\.\d+)?", head):
        return None
    while rest[:1] == ["-X"] or rest[:1] == ["-u"]:   # the interpreter's own options
        rest = rest[2:] if rest[0] == "-X" else rest[1:]
    if rest[:1] == ["-m"] and len(rest) > 1:
        module, args = rest[1], rest[2:]
        if module in ("fastvae", "fastvae.bench"):
            return invocation(["fastvae"] + (["bench"] if module == "fastvae.bench" else [])
                              + args)
        return ("offline", args) if module == "fastvae.bench.offline" else None
    if rest and rest[0].endswith(".py") and os.path.basename(os.path.dirname(
            rest[0])) == "benchmarks":
        name = os.path.basename(rest[0])[:-3]
        return None if name.startswith("bench_") else (f"script:{name}", rest[1:])
    return None


def variants(argv):
    """``argv`` with each ``[...]`` part kept and dropped: both must parse."""
    text = " ".join(shlex.quote(w) if "[" not in w and "]" not in w else w for w in argv)
    if "[" not in text:
        return [argv]
    kept = shlex.split(re.sub(r"[\[\]]", "", text))
    dropped = shlex.split(re.sub(r"\[[^\]]*\]", "", text))
    return [kept, dropped]


def found(path):
    """pytest params (kind, argv) of each command ``path`` quotes, with ids FILE:LINE."""
    name = os.path.relpath(path, ROOT)
    return [pytest.param(*run, id=f"{name}:{n}") for n, text in quoted(path)
            for words in commands(text) for run in [invocation(words)] if run and run[1]]


def has_placeholder(argv) -> bool:
    return any(PLACEHOLDER.search(w) for w in argv)


# -- the parsers ----------------------------------------------------------------------

def fastvae_parser(command: str) -> argparse.ArgumentParser:
    """The parser of ``fastvae <command>`` (``fastvae``'s own for a flag: ``--help``)."""
    if command.startswith("-"):
        return cli.build_parser()
    if command == "bench":
        parser = o.Parser(prog="fastvae bench")
        bench_cli.add_arguments(parser)
        return parser
    return cli.build_parser().commands[command]


def flags(parser: argparse.ArgumentParser) -> set:
    """Every spelling of the flags of ``parser`` and of its subcommands'."""
    out = set()
    for a in parser._actions:
        out |= set(a.option_strings)
        if isinstance(a, argparse._SubParsersAction):
            for sub in a.choices.values():
                out |= flags(sub)
    return out


def unknown_flags(argv, parser) -> list:
    # argparse may take a prefix of a flag: a flag renamed to a longer name would still
    # parse where a doc spells the old one
    known = flags(parser)
    return [w.split("=")[0] for w in argv if w.startswith("--")
            and not PLACEHOLDER.search(w.split("=")[0]) and w.split("=")[0] not in known]


def train_checks(args) -> None:
    """What ``fastvae train`` refuses before it reads data or builds a model: the checks
    ``fastvae.train._train`` makes first, on the flags merged into the defaults."""
    _checked_config({k: getattr(args, k) for k in default_config() if hasattr(args, k)})


class _Parsed(Exception):
    pass


def _exit_code(call) -> tuple:
    """(status, what was said on stderr is the caller's to read) of ``call()``."""
    try:
        return call()
    except SystemExit as e:
        return e.code
    except _Parsed:
        return 0


def refusal(kind: str, argv):
    """None where ``argv`` is taken as far as its command checks before any work; else
    the exit status (the message is on stderr)."""
    if kind == "fastvae":
        if argv[:1] == ["bench"]:
            # its own parser and the checks of its main, up to the run (which measures)
            with mock.patch.object(bench_cli, "run", lambda args: 0):
                status = _exit_code(lambda: bench_cli.main(argv[1:]))
            return status or None
        try:
            args = cli.build_parser().parse_args(argv)
        except SystemExit as e:   # --help's exit is 0, after it printed the help
            return None if e.code == 0 and "--help" in argv else e.code
        if args.command == "train":
            try:
                train_checks(args)
            except ValueError as e:
                print(f"fastvae train: {e}", file=sys.stderr)
                return 2
        return None
    if kind == "offline":
        from fastvae.bench.offline import __main__ as offline
        with mock.patch.object(offline, "_run", lambda args: 0):
            return _exit_code(lambda: offline.main(argv)) or None
    module = script(kind.split(":", 1)[1])
    # the script's parser and its type checks; its work starts after parse_args
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        real(self, args, namespace)
        raise _Parsed
    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_then_stop):
        return _exit_code(lambda: module.main(argv)) or None


_SCRIPTS: dict = {}


def script(name: str):
    """benchmarks/NAME.py as a module (its work runs only under ``__main__``)."""
    if name not in _SCRIPTS:
        folder = os.path.join(ROOT, "benchmarks")
        if folder not in sys.path:   # gpu_tiles imports gpu_report, its sibling
            sys.path.insert(0, folder)
        spec = importlib.util.spec_from_file_location(f"_doc_{name}",
                                                      os.path.join(folder, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _SCRIPTS[name] = module
    return _SCRIPTS[name]


def parser_of(kind: str, argv) -> argparse.ArgumentParser:
    """The parser that reads ``argv`` (for a script or the offline judge: the one its
    main builds, caught as it starts parsing)."""
    if kind == "fastvae":
        return fastvae_parser(argv[0])
    if kind == "offline":
        from fastvae.bench.offline import __main__ as offline
        main = offline.main
    else:
        main = script(kind.split(":", 1)[1]).main
    built = []

    def catch(self, args=None, namespace=None):
        built.append(self)
        raise _Parsed
    with mock.patch.object(argparse.ArgumentParser, "parse_args", catch):
        _exit_code(lambda: main([]))
    return built[0]


def assert_taken(kind, argv, capsys, tmp_path, monkeypatch) -> None:
    """The check of one quoted command: its flags spelled as its parser spells them, and
    (without placeholders) each of its forms taken as far as the command checks."""
    monkeypatch.chdir(tmp_path)   # a --json F writes nowhere that matters
    (tmp_path / ".triton36" / "triton").mkdir(parents=True)   # what ./dev setup makes
    quote = " ".join(argv)
    unknown = unknown_flags(argv, parser_of(kind, argv))
    assert not unknown, f"{quote!r}: {', '.join(unknown)} is no flag of it as spelled"
    if has_placeholder(argv):
        return   # a value to fill in: its flags' names are what can be checked
    for each in variants(argv):
        status = refusal(kind, each)
        assert status is None, (f"{' '.join(each)!r} is refused (exit {status}): "
                                f"{capsys.readouterr().err.strip()}")
