"""``fastvae bench`` when something goes wrong: a variant that disagrees, sizes an op cannot
take, flags the proxy does not honour; and the units, clocks and help the table states.

Tiny shapes, measurement monkeypatched where it is not the point (tests/test_bench.py
holds the smoke tests of a working run).
"""
import json

import pytest
import torch

from fastvae import cli
from fastvae.bench import core
from fastvae.bench.specs import _common

TINY = ["--batch", "16", "--dim", "12", "--latent", "3", "--reps", "2", "--budget", "0.01",
        "--no-extras"]


def _wrong_elbo(case, inputs):   # KL with the wrong sign: a variant that must not be timed
    def loss(x, recon, mu, logvar):
        return _common.eager_loss(x, recon, mu, logvar) + torch.sum(
            1 + logvar - mu.pow(2) - logvar.exp())
    return core.loss_step(loss, inputs, ("x", "recon", "mu", "logvar"), backward=True)


def test_a_disagreeing_variant_is_an_error_row_and_the_run_goes_on(tmp_path, capsys,
                                                                   monkeypatch):
    """The failing (case, variant) is one line in the output and an error row in the JSON;
    the case's other variants and every other case are timed, printed and written, and
    the exit status says the run failed, naming what."""
    monkeypatch.setitem(core.OPS["elbo"].variants, "distributions",
                        core.Variant("distributions", _wrong_elbo))
    out = tmp_path / "b.json"
    code = cli.main(["bench", "--ops", "elbo,elbo_eval", *TINY, "--variants",
                     "distributions,fastvae-torch", "--json", str(out)])
    text, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in err
    rows = json.loads(out.read_text())["rows"]
    failed = [(r["op"], r["variant"]) for r in rows if r["error"]]
    assert failed == [("elbo", "distributions")]
    assert "distributions vs eager" in next(r["error"] for r in rows if r["error"])
    timed = {(r["op"], r["variant"]) for r in rows if not r["error"]}
    assert timed == {("elbo", "eager"), ("elbo", "fastvae-torch"), ("elbo_eval", "eager"),
                     ("elbo_eval", "distributions"), ("elbo_eval", "fastvae-torch")}
    lines = [line for line in text.splitlines() if "disagrees with eager" in line]
    assert len(lines) == 1 and "elbo B=16 D=12 L=3 fp32: distributions vs eager" in lines[0]
    assert err.strip().splitlines()[-1] == (
        "fastvae bench: error: 1 variant(s) disagreed with eager and were not timed: "
        "distributions on elbo B=16 D=12 L=3 fp32")
