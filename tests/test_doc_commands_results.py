"""Every command the results logs (benchmarks/*.md, docs/*.md) quote is one that its
parser takes today, so that a reader can rerun the numbers: ``fastvae ...`` / ``python -m
fastvae ...`` through the real command (``fastvae bench``'s checks up to its run, which
is mocked), ``python -m fastvae.bench.offline ...`` through its main up to the judge, and
``python benchmarks/X.py ...`` through the script's own parser. tests/_doc_commands.py
says how a quote is read (placeholders, optional parts, pasted output). A command from the
past whose flag was since renamed is quoted as today's equivalent where that measures the
same; where it does not, the log says so beside it (``(the script at `<hash>`)``) and the
quote is not one a command here runs (a ``bench_*.py`` suite now takes pytest's flags)."""
import glob
import os

import pytest

import _doc_commands as dc

DOCS = sorted(glob.glob(os.path.join(dc.ROOT, "benchmarks", "*.md"))
              + glob.glob(os.path.join(dc.ROOT, "docs", "**", "*.md"), recursive=True))
CASES = [case for path in DOCS for case in dc.found(path)]


def test_the_logs_quote_commands_of_every_kind():
    kinds = {c.values[0] for c in CASES}
    assert {"fastvae", "offline", "script:host_path", "script:estimators_speed"} <= kinds, (
        f"commands found: {sorted(kinds)}: the extraction or the logs changed")


@pytest.mark.parametrize("kind,argv", CASES)
def test_quoted_command_is_taken(kind, argv, capsys, tmp_path, monkeypatch):
    dc.assert_taken(kind, argv, capsys, tmp_path, monkeypatch)
