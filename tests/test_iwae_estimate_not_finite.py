"""A final IWAE estimate that is NaN or inf (a test image whose K log-weights are all
-inf, or one that overflowed) keeps the trained run, but says so: the line names the value
as not finite and why it may be, and metrics.json (whose writer makes NaN and inf null)
flags it beside the null, so it does not read as "not computed"; ``fastvae eval`` alike."""
from __future__ import annotations

import json
import math

import pytest

from fastvae import cli, models

from _cli import TINY


@pytest.fixture(params=["inf", "-inf", "nan"])
def broken(request, monkeypatch):
    """The model's per-image estimates with one image's replaced by the value asked for."""
    real = models._VAEBase.iwae_nll

    def one_bad(self, x, *a, **k):
        out = real(self, x, *a, **k)
        out[0] = float(request.param)
        return out
    monkeypatch.setattr(models._VAEBase, "iwae_nll", one_bad)
    return request.param


def test_train_keeps_the_run_and_says_the_estimate_is_not_finite(tmp_path, capsys, broken):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    final = json.loads((out / "metrics.json").read_text())["final"]
    assert math.isfinite(final["test_elbo"]) and (out / "checkpoint.pt").is_file()
    assert final["test_iwae_nll"] is None and final["iwae_k"] == 5
    assert final["test_iwae_nll_not_finite"] == broken
    assert f"test IWAE NLL (K=5) is not finite ({broken}): " in line, line
    assert "nan nats" not in line and "inf nats" not in line
    why = {"inf": "log-weights of some test image is -inf", "-inf": "overflowed to +inf",
           "nan": "a log-weight is NaN"}[broken]
    assert why in line, line


def test_eval_says_the_estimate_is_not_finite(tmp_path, capsys, broken):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--iwae-k", "0", "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(out), "--k", "3", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["iwae_nll"] is None and got["iwae_nll_not_finite"] == broken and got["k"] == 3
    assert cli.main(["eval", str(out), "--k", "3"]) == 0
    line = capsys.readouterr().out
    assert f"IWAE NLL (K=3) is not finite ({broken}): " in line, line


def test_a_finite_estimate_has_no_flag(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--out", str(out)]) == 0
    final = json.loads((out / "metrics.json").read_text())["final"]
    assert final["test_iwae_nll"] > 0 and "test_iwae_nll_not_finite" not in final


def test_a_dmol_run_s_bits_per_dim_are_not_made_of_a_non_finite_estimate():
    from types import SimpleNamespace

    from fastvae import dmol_training as dmol
    core = SimpleNamespace(likelihood=dmol.DMOL, data_shape=(3, 4, 4))
    got = dmol.add_bpd({"elbo": -100.0, "iwae_nll": float("nan")}, core)
    assert got["iwae_bpd"] is None and got["bpd"] == pytest.approx(100 / (48 * math.log(2)))
    assert dmol.bpd_text(got) == f", {got['bpd']:.3f} bits/dim"


def test_a_dmol_eval_without_an_estimate_has_its_bits_per_dim_null_as_metrics_json_does():
    """``fastvae eval --json --k 0`` of a DMoL run: ``iwae_bpd`` null beside ``iwae_nll``
    null, as metrics.json's ``test_iwae_bpd`` (the key was left out); an epoch's metrics,
    with no estimate at all, get none."""
    from types import SimpleNamespace

    from fastvae import dmol_training as dmol
    core = SimpleNamespace(likelihood=dmol.DMOL, data_shape=(3, 4, 4))
    got = dmol.add_bpd({"elbo": -100.0, "iwae_nll": None}, core)
    assert "iwae_bpd" in got and got["iwae_bpd"] is None
    assert "iwae_bpd" not in dmol.add_bpd({"elbo": -100.0}, core)
    assert dmol.add_final_bpd({"test_elbo": -100.0, "test_iwae_nll": None},
                              core)["test_iwae_bpd"] is None
