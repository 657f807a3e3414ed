"""FASTVAE_DEBUG and FASTVAE_DIRECT_LAUNCH read their values as FASTVAE_NATIVE does: a
value neither on nor off is said once and taken as off (it was taken silently, as on for
FASTVAE_DEBUG=maybe and FASTVAE_DIRECT_LAUNCH=2)."""
import os
import warnings

import pytest

from fastvae import _env, cli

SWITCHES = [("FASTVAE_DEBUG", _env.debug, False),
            ("FASTVAE_DIRECT_LAUNCH", _env.direct_launch, True)]


@pytest.fixture(autouse=True)
def nothing_said_yet(monkeypatch):
    monkeypatch.setattr(_env, "_said", set(), raising=False)


@pytest.mark.parametrize("name, read, default", SWITCHES)
@pytest.mark.parametrize("value, want", [("", None), (" ", None), ("1", True), ("On", True),
                                         ("0", False), ("no", False)])
def test_on_off_and_unset(monkeypatch, name, read, default, value, want):
    monkeypatch.setenv(name, value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read() is (default if want is None else want)


@pytest.mark.parametrize("name, read, default", SWITCHES)
@pytest.mark.parametrize("value", ["2", "maybe"])
def test_an_unknown_value_is_said_once_and_off(monkeypatch, name, read, default, value):
    monkeypatch.setenv(name, value)
    with pytest.warns(RuntimeWarning, match=f"{name}='{value}' is neither") as seen:
        assert read() is False
        assert read() is False
    assert len(seen) == 1


def test_fastvae_debug_maybe_keeps_the_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FASTVAE_DEBUG", "maybe")
    with pytest.warns(RuntimeWarning, match="FASTVAE_DEBUG"):
        assert cli.main(["eval", str(tmp_path / "nothing")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_the_readme_names_every_value_that_turns_fastvae_debug_on():
    """README's line on FASTVAE_DEBUG says which values show the traceback: one it left
    out (yes, say) read there as "any other value", off with a warning, yet is on."""
    import os
    from tests._doc_commands import ROOT
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = " ".join(f.read().split())
    line = text.split("`FASTVAE_DEBUG=", 1)[1].split(")", 1)[0]
    shows = line.split("shows it", 1)[0]
    assert all(v in shows for v in _env._ON), line


@pytest.mark.parametrize("launcher", ["-m", "script"])
def test_the_command_says_a_switch_warning_in_one_line_of_its_own(tmp_path, launcher):
    """Under the command no line of the user's calls fastvae: the warning named runpy's
    frame (python -m) or the console script's line with its source, both meaningless; it
    is one line beside the command's error, as ``fastvae eval: warning: ...``."""
    import subprocess
    import sys
    script = tmp_path / "fastvae-script"   # what pip writes for the console entry point
    script.write_text("import sys\nfrom fastvae.cli import console\nsys.exit(console())\n")
    env = dict(os.environ, FASTVAE_DEBUG="maybe")
    env.pop("PYTHONWARNINGS", None)
    r = subprocess.run([sys.executable, *(["-m", "fastvae"] if launcher == "-m" else [script]),
                        "eval", str(tmp_path / "nothing")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "fastvae eval: warning: FASTVAE_DEBUG='maybe' is neither 1/true/yes/on nor "
        "0/false/no/off; taken as off",
        f"fastvae eval: error: no checkpoint at {tmp_path / 'nothing' / 'checkpoint.pt'}; "
        f"train one with `fastvae train --out {tmp_path / 'nothing'}`"], r.stderr
