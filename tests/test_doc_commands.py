"""Every ``fastvae`` command README.md quotes is one the command takes today: parsed by the
real parser (nothing trains, evaluates or measures), and for ``train`` the flag checks
that run before anything is read or built (values and combinations: ``--estimator dreg``
without ``--objective iwae`` is refused there, not by argparse). A renamed or removed
flag, a choice dropped, or a README line naming a combination the command refuses fails
here. ``./dev train|bench`` and ``torchrun ... -m fastvae`` pass their flags on to the same
command, so they count too, as do ``python -m fastvae.bench.offline`` and
``python benchmarks/X.py`` (tests/test_readme_examples.py runs the ```python blocks;
tests/_doc_commands.py says how a quote is read; tests/test_doc_commands_results.py holds
the results logs to the same)."""
import os

import pytest

import _doc_commands as dc

README = os.path.join(dc.ROOT, "README.md")
COMMANDS = dc.found(README)


def test_the_readme_quotes_commands():
    kinds = {c.values[1][0] for c in COMMANDS if c.values[0] == "fastvae" and c.values[1]}
    assert {"train", "eval", "sample", "bench"} <= kinds, (
        f"README.md's commands found: {sorted(kinds)}: the extraction or the README changed")


@pytest.mark.parametrize("kind,argv", COMMANDS)
def test_readme_command_parses(kind, argv, capsys, tmp_path, monkeypatch):
    dc.assert_taken(kind, argv, capsys, tmp_path, monkeypatch)
