"""The standalone scripts under benchmarks/ refuse bad flags before their work, with a
one-line usage error naming the flag (not a traceback minutes later), and write their
files atomically. The heavy parts are shrunk or stubbed: these check the plumbing."""
import importlib.util
import json
import pathlib

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _module(name, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # gpu_hvae_loop imports gpu_probe
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _usage_error(capsys, main, argv, flag):
    """main(argv) exits 2 before any work with one line that names ``flag``."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err, err
    return err


def _no_work(*a, **kw):
    raise AssertionError("the flags were not checked before the work")


# ------------------------------------------------------------------ estimators_speed.py

def test_estimators_speed_refuses_one_round_and_an_unwritable_json_up_front(
        monkeypatch, capsys, tmp_path):
    es = _module("estimators_speed", monkeypatch)
    monkeypatch.setattr(es, "make_inputs", _no_work)
    _usage_error(capsys, es.main, ["--quick", "--reps", "1"], "--reps")
    for bad in ("/nonexistent/x.json", str(tmp_path)):
        _usage_error(capsys, es.main, ["--quick", "--reps", "2", "--json", bad], "--json")


def test_estimators_speed_writes_its_json_atomically(monkeypatch, tmp_path):
    es = _module("estimators_speed", monkeypatch)
    real = es.make_inputs
    monkeypatch.setattr(es, "make_inputs",  # tiny shapes: the plumbing, not the speed
                        lambda op, b, d, l, k, *a: real(op, 4, 6, 3, k, *a))
    monkeypatch.setattr(es, "inner_calls", lambda *a: 1)
    written = []
    real_write = es.write_json
    monkeypatch.setattr(es, "write_json", lambda obj, p: written.append(real_write(obj, p)))
    out = tmp_path / "speed.json"
    assert es.main(["--quick", "--reps", "2", "--device", "cpu", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert written == [out] and {r["estimator"] for r in rows} == {"standard", "stl", "dreg"}
    assert all(r["paired_q1"] <= r["paired_q3"] for r in rows)
    assert es._iqr([1.0, 3.0]) == (1.5, 2.5)   # within the rounds, even for two of them
