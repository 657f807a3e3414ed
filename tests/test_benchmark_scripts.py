"""The standalone scripts under benchmarks/ refuse bad flags before their work, with a
one-line usage error naming the flag (not a traceback minutes later), and write their
files atomically. The heavy parts are shrunk or stubbed: these check the plumbing."""
import importlib.util
import json
import os
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
    for bad in (os.path.join(__file__, "x.json"), str(tmp_path)):   # under a file; a folder
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


# ------------------------------------------------------------------ gradient_snr.py

@pytest.mark.parametrize("argv, flag", [
    (["--draws", "1"], "--draws"), (["--batch", "0"], "--batch"), (["--k", "1,0"], "--k"),
    (["--backend", "bogus"], "--backend"), (["--epochs", "0"], "--epochs"),
    (["--run", "/nonexistent/run"], "--run"), (["--out", "{file}/sub/x"], "--out")])
def test_gradient_snr_refuses_bad_flags_before_training(monkeypatch, capsys, tmp_path, argv,
                                                          flag):
    snr = _module("gradient_snr", monkeypatch)
    monkeypatch.setattr(snr, "train_into", _no_work)
    (tmp_path / "file").write_text("")   # a folder that cannot be made: a file is in the way
    _usage_error(capsys, snr.main, [a.format(file=tmp_path / "file") for a in argv], flag)


def test_gradient_snr_refuses_triton_on_the_cpu(monkeypatch, capsys):
    snr = _module("gradient_snr", monkeypatch)
    monkeypatch.setattr(snr, "train_into", _no_work)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    _usage_error(capsys, snr.main, ["--backend", "triton"], "--backend")


def test_gradient_snr_needs_matplotlib_up_front_unless_no_plot_of_a_run(monkeypatch, capsys,
                                                                          tmp_path):
    snr = _module("gradient_snr", monkeypatch)
    monkeypatch.setattr(snr, "train_into", _no_work)
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # import fails
    err = _usage_error(capsys, snr.main, ["--out", str(tmp_path / "x")], "matplotlib")
    assert "train" in err   # training draws the run's pictures, --no-plot or not
    _usage_error(capsys, snr.main, ["--no-plot", "--out", str(tmp_path / "x")], "matplotlib")
    monkeypatch.setattr(snr, "load_checkpoint", lambda run: {})
    monkeypatch.setattr(snr, "open_run", lambda state, run: (None, None))
    monkeypatch.setattr(snr, "study", lambda args, state, model, test: 0)
    assert snr.main(["--run", str(tmp_path), "--no-plot", "--out", str(tmp_path / "x")]) == 0


def test_gradient_snr_refuses_an_hvae_run_and_skips_dreg_for_the_mixture(monkeypatch, capsys,
                                                                          tmp_path):
    """An hvae (its latent groups have no one IWAE bound to estimate) is a usage error,
    not a traceback; a discretized-mixture run is studied without DReG, which its
    likelihood does not take."""
    snr = _module("gradient_snr", monkeypatch)
    monkeypatch.setattr(snr, "load_checkpoint", lambda run: {"config": {"model": "hvae"}})
    err = _usage_error(capsys, snr.main, ["--run", str(tmp_path), "--no-plot", "--out",
                                          str(tmp_path / "x")], "--run")
    assert "hvae" in err, err
    assert snr.estimators_for({"likelihood": "discretized_logistic_mixture"}) == (
        "standard", "stl")
    assert snr.estimators_for({"likelihood": "bernoulli"}) == snr.ESTIMATORS


@pytest.mark.parametrize("edit, said", [
    (dict(latent="4"), "its config does not describe a model"),
    (dict(dataset=5), "its config's dataset is 5"),
    (dict(dataset="/nonexistent/x.npy"), "dataset file /nonexistent/x.npy not found")])
def test_gradient_snr_refuses_a_run_it_cannot_study_before_any_work(
        monkeypatch, capsys, tmp_path, good_run, edit, said):
    """A run whose config builds no model, or whose data is gone (a run moved away from
    its .npy), is a usage error naming --run, not a traceback from inside the study."""
    from fastvae.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint

    snr = _module("gradient_snr", monkeypatch)
    monkeypatch.setattr(snr, "study", _no_work)
    state = load_checkpoint(good_run)
    state["config"].update(edit)
    save_checkpoint(state, tmp_path / "run" / CHECKPOINT_NAME)
    err = _usage_error(capsys, snr.main, ["--run", str(tmp_path / "run"), "--no-plot",
                                          "--out", str(tmp_path / "x")], "--run")
    assert said in err, err


def _left_in(tmp):
    """What a run left in the temporary folder; torch's own inductor cache, which a
    process makes there on its first use of inductor, is not the run's."""
    return [p for p in tmp.iterdir() if not p.name.startswith("torchinductor_")]


def test_gradient_snr_writes_the_json_before_the_plot_and_removes_its_training(
        monkeypatch, capsys, tmp_path):
    """A plot that fails (all NaN: "Data cannot be log-scaled") loses no number, and the
    model trained into a temporary folder is removed, on success as on failure."""
    snr = _module("gradient_snr", monkeypatch)
    monkeypatch.setattr(snr.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()

    def broken_plot(*a):
        raise ValueError("Data cannot be log-scaled")
    monkeypatch.setattr(snr, "plot", broken_plot)
    out = tmp_path / "out" / "snr"
    argv = ["--epochs", "1", "--draws", "2", "--k", "1", "--batch", "2", "--out", str(out)]
    assert snr.main(argv) == 1
    assert "log-scaled" in capsys.readouterr().err
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["estimator"] for r in rows] == list(snr.ESTIMATORS)
    assert _left_in(tmp_path / "tmp") == []

    def crash(args, state, model, test):   # the run still there while it is studied
        assert [p.name for p in (tmp_path / "tmp").rglob("checkpoint.pt") if p.is_file()]
        raise KeyboardInterrupt
    monkeypatch.setattr(snr, "study", crash)
    with pytest.raises(KeyboardInterrupt):
        snr.main(argv)
    assert _left_in(tmp_path / "tmp") == []

    def failed_training(args, out):   # a training stopped halfway: its folder goes too
        out.mkdir()
        (out / "checkpoint.pt").write_text("")
        raise KeyboardInterrupt
    monkeypatch.setattr(snr, "train_into", failed_training)
    with pytest.raises(KeyboardInterrupt):
        snr.main(argv)
    assert _left_in(tmp_path / "tmp") == []


# ------------------------------------------------------------------ cpu_kernel_decision.py

@pytest.mark.parametrize("argv, flag", [
    (["--parts", "bogus"], "--parts"), (["--parts", "steady", "--batches", "0"], "--batches"),
    (["--batches", "x"], "--batches"), (["--rounds", "0"], "--rounds"),
    (["--first-repeats", "0"], "--first-repeats"), (["--json", "{tmp}"], "--json")])
def test_cpu_kernel_decision_refuses_bad_flags_before_timing(monkeypatch, capsys, tmp_path,
                                                             argv, flag):
    ckd = _module("cpu_kernel_decision", monkeypatch)
    for part in ("first_call", "steady", "floor"):
        monkeypatch.setattr(ckd, part, _no_work)
    _usage_error(capsys, ckd.main, [a.format(tmp=tmp_path) for a in argv], flag)


def test_cpu_kernel_decision_runs_the_parts_named_and_writes_the_json(monkeypatch, tmp_path):
    ckd = _module("cpu_kernel_decision", monkeypatch)
    seen = []
    monkeypatch.setattr(ckd, "first_call", _no_work)
    monkeypatch.setattr(ckd, "steady", lambda b, r, th, clock: seen.append((b, r)) or [])
    monkeypatch.setattr(ckd, "floor", lambda: "| floor |")
    out = tmp_path / "d.json"
    ckd.main(["--parts", "steady, floor", "--batches", "8,16", "--rounds", "1", "--json",
              str(out)])
    assert seen == [([8, 16], 1)] * 2   # the wall clock, then the CPU clock
    assert json.loads(out.read_text())["floor"] == "| floor |"


# ------------------------------------------------------------------------ host_path.py

@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs the triton package")
def test_host_path_times_the_step_its_stub_stands_for(tmp_path):
    """One short run in a child (the script sets process-wide switches): every way to
    launch timed and the step's two planned launches recorded (no speed asserted)."""
    import subprocess
    import sys
    out = tmp_path / "h.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "host_path.py"),
                           "--warmup", "3", "--rounds", "1", "--calls", "3", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    assert res["launches_per_step"] == 2 and res["py_calls_per_step"] > 0
    for way in ("stub_us", "planned_us", "triton_us", "launches_only_us", "floor_us"):
        assert res[way] > 0, way


# ----------------------------------------------------------------- checkpoint_memory.py

def test_checkpoint_memory_refuses_bad_sizes(monkeypatch, capsys):
    mod = _module("checkpoint_memory", monkeypatch)
    _usage_error(capsys, mod.main, ["--batch", "0"], "--batch")


def test_checkpoint_memory_measures_what_the_forward_holds(monkeypatch, capsys):
    """A checkpointed step holds less than one recon (the fused op's saved inputs are
    dropped with the rest); a plain fastvae step holds its gradient and recon, two."""
    mod = _module("checkpoint_memory", monkeypatch)
    b, d = 64, 300
    rows = mod.main(["--batch", str(b), "--dim", str(d), "--latent", "4", "--hidden", "16"])
    recon = b * d * 4
    assert rows["fastvae + checkpoint"] < recon and rows["eager + checkpoint"] < recon
    assert rows["fastvae"] >= 2 * recon


# ------------------------------------------------------------------------ every script

def test_every_script_ends_through_script_main():
    """Each standalone script's ``__main__`` exits through ``script_main``, so Ctrl-C prints
    one line, not a traceback; a pytest-benchmark suite's through pytest (``run_suite``),
    which sums up an interrupt itself."""
    scripts = [p for p in (ROOT / "benchmarks").glob("*.py")
               if 'if __name__ == "__main__":' in p.read_text()]
    assert len(scripts) >= 8 + 9
    for p in scripts:
        tail = p.read_text().split('if __name__ == "__main__":')[-1]
        if p.name.startswith("bench_"):
            assert "bench.run_suite(__file__)" in tail, p.name
        else:
            assert f'script_main(main, "{p.name}")' in tail, p.name


def test_script_main_turns_ctrl_c_into_one_line_and_keeps_the_status(capsys):
    from fastvae.bench.extras import script_main

    def interrupted():
        raise KeyboardInterrupt
    assert script_main(interrupted, "x.py") == 130
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == ["x.py: interrupted; nothing it writes is left half-written"]
    assert script_main(lambda: 1, "x.py") == 1
    assert script_main(lambda: None, "x.py") == 0
    assert script_main(lambda: {"rows": 1}, "x.py") == 0   # numbers for a caller: success
    with pytest.raises(ValueError):   # anything else is not swallowed
        script_main(lambda: int("x"), "x.py")


# ------------------------------------------------------------------ loss_sign.py

def test_loss_sign_refuses_bad_flags_up_front(monkeypatch, capsys):
    mod = _module("loss_sign", monkeypatch)
    monkeypatch.setattr(mod, "step", _no_work)
    _usage_error(capsys, mod.main, ["--rounds", "0"], "--rounds")
    _usage_error(capsys, mod.main, ["--backend", "cuda"], "--backend")
    _usage_error(capsys, mod.main, ["--op", "elbo"], "--op")
    _usage_error(capsys, mod.main, ["--device", "tpu"], "--device")
    if not torch.cuda.is_available():   # a device or backend this machine lacks: one line
        _usage_error(capsys, mod.main, ["--device", "cuda"], "no CUDA device")
        if not os.environ.get("TRITON_INTERPRET"):
            _usage_error(capsys, mod.main, ["--backend", "triton"], "triton")
    _usage_error(capsys, mod.main, ["--device", "mps"], "only cpu and cuda")


@pytest.mark.parametrize("op", ["iwae", "dmol"])
def test_loss_sign_times_both_forms_of_each_case(monkeypatch, capsys, op):
    mod = _module("loss_sign", monkeypatch)
    calls = []
    monkeypatch.setattr(mod, "step", lambda fn, inputs, wrt: calls.append(fn))
    assert mod.main(["--op", op, "--rounds", "1", "--calls", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    cases = len(out) - 1
    assert cases >= 2 and len(calls) == cases * 2 * 2   # warm-up and one sample, each form
    assert all(" / " in line for line in out[1:])
