"""``fastvae eval`` of a trained run: its JSON repeats the test ELBO, KL and reconstruction
term metrics.json saved at the end of training (the same model, data and evaluation
seed); its text line prints the same numbers as its JSON (the IWAE NLL as a positive
number of nats), over the --limit images it was given; --backend runs the ops there.
Data on which the model's ELBO is not finite is a one-line error, not a NaN result."""
from __future__ import annotations

import json
import re

import numpy as np

import pytest

import fastvae
from fastvae import cli

from _cli import TINY


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    assert cli.main(["train", *TINY, "--iwae-k", "0", "--seed", "3", "--out", str(out)]) == 0
    return out


def _eval(capsys, *argv):
    capsys.readouterr()
    assert cli.main(["eval", *argv]) == 0
    return capsys.readouterr().out


def test_eval_repeats_the_final_test_numbers_of_training(run, capsys):
    final = json.loads((run / "metrics.json").read_text())["final"]
    got = json.loads(_eval(capsys, str(run), "--k", "0", "--json"))
    assert got["iwae_nll"] is None and got["k"] == 0
    for key in ("elbo", "kl", "rec"):
        assert got[key] == pytest.approx(final["test_" + key], rel=1e-6, abs=1e-9), key


def test_the_text_line_says_what_the_json_holds(run, capsys):
    args = [str(run), "--k", "3", "--limit", "10"]
    m = json.loads(_eval(capsys, *args, "--json"))
    assert m["n_test"] == 10 and m["k"] == 3 and m["iwae_nll"] > 0
    line = _eval(capsys, *args)
    pattern = (r"\(epoch 1, 10 test images\): test elbo (\S+) \(kl (\S+), rec (\S+)\), "
               r"IWAE NLL \(K=3\) (\S+) nats")
    found = re.search(pattern, line)
    assert found, line
    assert found.groups() == tuple(f"{m[k]:.3f}" for k in ("elbo", "kl", "rec", "iwae_nll"))
    line = _eval(capsys, str(run), "--k", "0", "--limit", "10")   # no estimate: says so
    assert line.rstrip().endswith(f"rec {m['rec']:.3f}), no IWAE NLL (--k 0)"), line


def test_eval_runs_its_ops_on_the_backend_it_is_given(run, capsys):
    _eval(capsys, str(run), "--k", "0", "--backend", "reference")
    assert fastvae.last_backend() == "reference"
    _eval(capsys, str(run), "--k", "0", "--backend", "torch")
    assert fastvae.last_backend() == "torch"


def test_eval_refuses_data_on_which_the_elbo_is_not_finite(tmp_path, capsys):
    """A Gaussian run's data file rewritten at 1e30 (finite in float32): the encoder's
    and the squared residuals' float32 sums overflow, the ELBO is not a number."""
    data = tmp_path / "x.npy"
    np.save(data, np.random.RandomState(0).rand(60, 4, 4).astype(np.float32))
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--iwae-k", "0", "--likelihood", "gaussian",
                     "--dataset", str(data), "--out", str(out)]) == 0
    np.save(data, np.full((60, 4, 4), 1e30, np.float32))
    capsys.readouterr()
    assert cli.main(["eval", str(out), "--k", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(r"test ELBO is (nan|-inf|inf) on \S*x\.npy .*overflow", err), err
