"""``fastvae bench --device mps --dtype fp64`` failed inside its first measurement (MPS
has no float64): the dtype is refused before any case runs. No MPS is needed to check
the rule on a device object."""
import pytest
import torch

from fastvae import options
from fastvae.bench import cli
from fastvae.bench.grids import dtype_problem


def test_fp64_on_mps_is_refused():
    why = dtype_problem(["fp32", "fp64"], torch.device("mps"))
    assert why is not None and why.startswith("--dtype:") and "fp64" in why, why
    assert "fp32" not in why.split("(")[0]   # the one it can run is not named
    assert len(why.splitlines()) == 1


def test_what_mps_and_the_cpu_can_run_passes():
    assert dtype_problem(["fp32", "bf16", "fp16"], torch.device("mps")) is None
    assert dtype_problem(["fp64", "fp32"], torch.device("cpu")) is None
    assert dtype_problem(["fp64"], "cuda") is None
    assert dtype_problem(None, "mps") is None


def test_the_command_refuses_it_before_measuring(monkeypatch, capsys):
    monkeypatch.setattr(options, "resolve_device", lambda name, *a, **k: torch.device(name))
    monkeypatch.setattr(cli, "run", lambda args: pytest.fail("measured"))
    with pytest.raises(SystemExit) as stop:
        cli.main(["--device", "mps", "--dtype", "fp64", "--ops", "elbo"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--dtype: mps has no fp64" in err[-1], err
