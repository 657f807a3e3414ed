"""``--help`` and ``--version`` under torchrun: every rank parses the same flags, so rank 0
alone prints what they ask for, as it alone says a bad flag (each rank printed the whole
help text again)."""
import pytest

from fastvae import cli

ASKS = [["--version"], ["--help"], ["train", "--help"], ["eval", "--help"],
        ["sample", "--help"], ["bench", "--help"]]


def _as_rank(monkeypatch, rank):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", str(rank))


def _status(argv) -> int:
    # argparse exits after --help; bench's other ranks return before parsing
    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code or 0


@pytest.mark.parametrize("argv", ASKS, ids=" ".join)
def test_rank_0_alone_prints_help_and_version(monkeypatch, capsys, argv):
    _as_rank(monkeypatch, 1)
    assert _status(argv) == 0 and capsys.readouterr() == ("", "")
    _as_rank(monkeypatch, 0)
    assert _status(argv) == 0
    out = capsys.readouterr().out
    assert ("fastvae 0" in out) if argv == ["--version"] else out.startswith("usage:")


def test_bare_command_prints_its_help_once(monkeypatch, capsys):
    _as_rank(monkeypatch, 1)
    assert cli.main([]) == 2 and capsys.readouterr() == ("", "")
    _as_rank(monkeypatch, 0)
    assert cli.main([]) == 2 and capsys.readouterr().out.startswith("usage:")
