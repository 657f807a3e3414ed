"""``fastvae bench`` when something goes wrong: a variant that disagrees, sizes an op cannot
take, flags the proxy does not honour; and the units, clocks and help the table states.

Tiny shapes, measurement monkeypatched where it is not the point (tests/test_bench_cli.py
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


@pytest.mark.parametrize("argv,flag,value,ops", [
    (["--ops", "elbo,train_conv", "--dim", "10"], "--dim", "10", ["train_conv"]),
    (["--ops", "train_hvae", "--dim", "784,3072"], "--dim", "3072", ["train_hvae"])])
def test_sizes_an_op_cannot_take_are_a_usage_error_before_any_work(capsys, monkeypatch, argv,
                                                                    flag, value, ops):
    """Each op states its sizes once (Op.needs); --dim / --latent are checked against the
    ops that will run when the command is parsed, not at the op's first case."""
    from fastvae.bench import cli as bench_cli

    monkeypatch.setattr(bench_cli, "copy_bandwidth", lambda *a, **k: pytest.fail("measured"))
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"argument {flag}: {', '.join(ops)} cannot run at {flag} {value} (" in err, err
    others = [n for n in core.OPS if n not in ops]
    if "--ops" not in argv and "--gpu-train-step" not in argv:   # names the ops that can
        assert f"--ops {','.join(others)}" in err, err


@pytest.mark.parametrize("argv,line", [
    (["--dim", "0"], "argument --dim: must be a positive integer, got 0"),
    (["--latent", "2,0"], "argument --latent: must be a positive integer, got 0"),
    (["--gpu-train-step", "--latent", "0"], "argument --latent: must be a positive integer, got 0"),
    (["--batch", "8,,16"], "argument --batch: an empty entry in '8,,16'")])
def test_sizes_of_nothing_and_empty_entries_are_refused(capsys, argv, line):
    """A case of D = 0 or L = 0 times nothing (a review's find: it ran, exit 0); an empty
    entry is a value left out, not a shorter list."""
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", *argv])
    assert e.value.code == 2 and f"fastvae bench: error: {line} (see" in capsys.readouterr().err


@pytest.mark.parametrize("op", sorted(core.OPS))
def test_an_ops_stated_sizes_are_the_ones_it_runs_at(op):
    """Op.needs is the truth: where it refuses a size the op's first step fails, where it
    accepts one the step runs (an op without needs runs at any size)."""
    from fastvae import bench

    spec = core.OPS[op]
    names = [n for n in core.variant_names(op, "cpu") if n not in core.COMPILED]
    for dim, latent in ((0, 3), (16, 0), (10, 3), (16, 3)):
        refused = spec.needs is not None and (
            (spec.uses_dim and spec.needs("dim", dim)) or spec.needs("latent", latent))
        case = core.Case(op, 2, dim, latent, k=1)
        try:
            bench.prepare(case, names, warmup=0, check=False)
        except ValueError:
            assert refused, (dim, latent)
        else:
            assert not refused, (dim, latent)


def test_the_grid_refuses_sizes_for_callers_of_the_api():
    import argparse

    from fastvae import bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    with pytest.raises(ValueError, match="train_conv cannot run at --dim 10"):
        bench.grid_from_args(parser.parse_args(["--ops", "train_conv", "--dim", "10"]), "cpu", [])


def test_copy_bandwidth_is_timed_with_the_rows_clock(tmp_path, capsys, monkeypatch):
    """% roof divides a row's rate by the copy bandwidth: under --cpu-time both are thread
    CPU time, and the header says which clock the bandwidth used."""
    from fastvae.bench import cli as bench_cli, timing

    ticks = iter(range(1000))
    nbytes = 1 << 12
    assert timing.copy_bandwidth("cpu", nbytes, reps=3, clock=lambda: float(next(ticks))) \
        == 2 * nbytes   # every timed copy took one tick of the given clock
    used = []
    monkeypatch.setattr(bench_cli, "copy_bandwidth",
                        lambda device, clock=None: used.append(clock) or 2e9)
    monkeypatch.setattr(bench_cli, "grid_from_args", lambda *a: [])
    threads = torch.get_num_threads()
    try:
        for flags, clock, name in ((["--cpu-time", "--threads", "1"], "thread_time",
                                    "thread CPU time"), ([], "perf_counter", "wall clock")):
            out = tmp_path / "b.json"   # an empty grid: exit 2, the JSON written all the same
            assert cli.main(["bench", "--device", "cpu", *flags, "--json", str(out)]) == 2
            assert used.pop().__name__ == clock
            assert f"copy 2.0 GB/s ({name})" in capsys.readouterr().out
            assert json.loads(out.read_text())["environment"]["copy_bandwidth_clock"] == name
    finally:
        torch.set_num_threads(threads)


def test_the_proxy_plans_the_targets_grid_and_leaves_the_cpu_as_it_was():
    """The capture's stand-in device reports the target's SMs (the H200's 132 for sm_90),
    so the scale kernel's grid is the GPU's (SCALE_PROGRAMS_PER_SM x 132, not the 4 of no
    GPU); outside it, a CPU tensor still has no SM count and no plan of the GPU is kept."""
    triton = pytest.importorskip("triton")
    import os

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") or not hasattr(triton, "knobs"):
        pytest.skip("the capture needs Triton's JIT (>= 3.4), not the interpreter")
    from fastvae.backends.triton_backend import _launch, configs, scale
    from fastvae.bench.offline import capture, judge, proxy

    assert capture.TARGET_SMS[90] == proxy.H200["sms"] == 132
    (case,) = judge.bar_cases(("fp32",), ("elbo",))
    grids = {la.short: la.grid for la in judge.capture_case(case)}
    assert grids["scale_grads_kernel"] == (configs.SCALE_PROGRAMS_PER_SM * 132,)
    cpu = torch.device("cpu")
    assert _launch.sm_count(cpu) is None and scale._programs(cpu) == 4
    assert not any(p is not scale._TORCH and p.grid[0] > 4 for p in scale._PLANS.values())


@pytest.mark.parametrize("argv,flags", [
    (["--batch", "64", "--markdown", "--variants", "eager", "--threads", "1", "--cpu-time"],
     "arguments --variants, --batch, --threads, --cpu-time, --markdown"),
    (["--quick"], "argument --quick"), (["--k-iwae", "3"], "argument --k-iwae"),
    (["--device", "cpu"], "argument --device"), (["--max-elements", "5"], "argument --max")])
def test_the_proxy_refuses_flags_it_would_ignore(capsys, argv, flags):
    """--proxy runs the bar shapes: a flag it does not honour is a usage error, not a
    table that looks as if it had."""
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--proxy", "--ops", "elbo", "--dtype", "fp32", *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"error: {flags}" in err and "--proxy does not honour" in err, err


def test_a_missing_pinned_triton_is_named_where_the_user_put_it(monkeypatch):
    from fastvae.bench.offline import proxy, report

    monkeypatch.setenv("FASTVAE_TRITON36", "/nonexistent-triton36")
    assert report.pinned_triton() is None
    case = dict(op="elbo", shape="B=1", dtype="fp32", launches=[], memory_us=None,
                bound_us=[1.0, 1.0], overlap=True)
    table = report.proxy_table(dict(triton={"version": "0.0"}, gpu=proxy.H200, cases=[case]))
    assert "(FASTVAE_TRITON36=/nonexistent-triton36 holds no triton package)" in table


def test_the_proxy_table_marks_a_loop_it_could_not_count():
    """A guessed trip count is in the table, not only in the JSON's notes."""
    from fastvae.bench.offline import proxy, report

    launch = dict(kernel="k", grid=[4], warps=4, regs=32, programs_per_sm=1, warps_per_sm=4,
                  hot_shortest=9, hot_static=9, per_element=[1.0, 1.0],
                  kernel_per_element=[1.5, 1.5], issue_us=[1.0, 1.0],
                  mufu_us=[0.0, 0.0], notes=["line 3: condition unknown (x): not taken .. taken",
                                             "k.py:7: trip count unknown; counted once per "
                                             "program"])
    case = dict(op="elbo", shape="B=1", dtype="fp32", launches=[launch], memory_us=2.0,
                bound_us=[2.0, 2.0], overlap=True)
    table = report.proxy_table(dict(triton={"version": "3.6.0"}, gpu=proxy.H200, cases=[case]))
    assert " k *" in table
    assert table.splitlines()[-1] == ("  * k (elbo fp32): k.py:7: trip count unknown; counted "
                                      "once per program")
    launch["notes"] = launch["notes"][:1]
    table = report.proxy_table(dict(triton={"version": "3.6.0"}, gpu=proxy.H200, cases=[case]))
    assert " k *" not in table and "counted once" not in table


def test_a_missing_compiler_tool_is_one_line(monkeypatch, capsys, tmp_path):
    """nvdisasm absent: one line and exit 2 from the judge in this process, from its
    child, and from fastvae bench (a traceback inside a traceback before)."""
    from fastvae.bench.offline import __main__ as offline, compiler, report

    monkeypatch.setattr(compiler, "_tool", lambda name: None)
    with pytest.raises(compiler.ToolMissing, match="nvdisasm not found next to Triton"):
        compiler.disassemble(b"", str(tmp_path))
    monkeypatch.setattr(offline.judge, "proxy_cases", lambda cases: compiler.disassemble(
        b"", str(tmp_path)))
    assert offline.main(["proxy", "--here", "--ops", "elbo", "--dtype", "fp32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m fastvae.bench.offline: error: nvdisasm not found")
    assert len(err.strip().splitlines()) == 1

    class Child:   # the child's exit: its own one line
        returncode = 2

        def __init__(self, *args, **kw):
            pass

        def communicate(self, timeout=None):
            return "", f"python -m fastvae.bench.offline: error: {err.split(': error: ')[1]}"
    monkeypatch.setattr(report, "proxy_run", lambda *a, **kw: compiler.run_version(
        "/t36", ["proxy"], popen=Child))
    assert cli.main(["bench", "--proxy", "--ops", "elbo", "--dtype", "fp32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastvae bench: error: the offline judge under /t36: nvdisasm not "
                          "found next to Triton") and len(err.strip().splitlines()) == 1


def test_a_busy_machine_is_named_before_wall_clock_cpu_timings():
    """Eager's small parallel ops each wait for busy cores: the header says the machine
    was loaded, where that skews the ratios (wall clock, CPU, 2+ threads)."""
    from fastvae.bench import report

    env = dict(cpu_count=2, torch_threads=2, clock="wall", load_average=[3.2, 3.0, 2.0])
    assert "load average 3.2 on 2 cores" in report.busy_note(env)
    assert "--threads 1 --cpu-time" in report.busy_note(env)
    for quiet in (dict(load_average=[0.4, 3.0, 2.0]), dict(torch_threads=1),
                  dict(clock="cpu (thread_time)"), dict(gpu="H200"), dict(load_average=None)):
        assert report.busy_note({**env, **quiet}) == "", quiet


def test_a_repeated_name_runs_once():
    from fastvae import options as o
    from fastvae.bench import cli as bench

    parser = o.Parser(prog="fastvae bench")
    bench.add_arguments(parser)
    args = parser.parse_args(["--ops", "elbo,iwae,elbo", "--dtype", "fp32,fp32",
                              "--variants", "eager,eager,compile", "--batch", "16,16,4",
                              "--dim", "8,8"])
    assert (args.ops, args.dtype, args.variants) == (["elbo", "iwae"], ["fp32"],
                                                     ["eager", "compile"])
    assert (args.batch, args.dim) == ([16, 4], [8])   # numbers too: 16 ran twice


def test_memory_columns_are_labelled_mib_in_text_and_markdown():
    """report.py divides bytes by 2**20: the columns say MiB (GB/s stays 1e9 bytes/s)."""
    from fastvae.bench import report

    row = dict(variant="eager", op="elbo", shape="B=1", dtype="fp32", median_ms=1.0,
               speedup_vs_eager=1.0, speedup_vs_compile=None, peak_extra_bytes=3 << 20,
               saved_bytes=1 << 20, kernels=None, gbps=None, pct_roofline=None)
    for markdown in (False, True):
        head, _, body = report.format_table([row], markdown=markdown).splitlines()
        assert "peak MiB" in head and "saved MiB" in head and " MB" not in head
        assert "3.0" in body and "1.0" in body


def test_max_elements_0_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--max-elements", "0"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--max-elements: must be at least 1, got 0" in err and "skip every case" in err


def test_help_names_every_dtype_and_the_whole_quick_grid():
    """--dtype's help lists what it accepts (fp64 too); --quick's lists every op and shape
    the quick grid runs (sample_with_kl and dmol included), read from the specs."""
    import argparse

    from fastvae import bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    helps = {a.dest: " ".join(a.help.split()) for a in parser._actions if a.help}
    for name in core.DTYPES:
        assert name in helps["dtype"]
        assert parser.parse_args(["--dtype", name]).dtype == [name]
    quick = bench.grid_from_args(parser.parse_args(["--quick"]), "cpu", [])
    assert {c.op for c in quick} >= {"sample_with_kl", "dmol"}
    for c in quick:
        assert c.op in helps["quick"] and c.shape in helps["quick"], (c.op, c.shape)


def test_an_interrupt_kills_the_offline_judges_child(tmp_path):
    """Ctrl-C sent to the parent alone left the child compiling for ~40 s."""
    from fastvae.bench.offline import compiler

    class Child:
        killed = False

        def __init__(self, *args, **kw):
            Child.made = self

        def communicate(self, timeout=None):
            if not self.killed:
                raise KeyboardInterrupt
            return "", ""

        def kill(self):
            self.killed = True
    with pytest.raises(KeyboardInterrupt):
        compiler.run_version("/t36", ["proxy"], popen=Child)
    assert Child.made.killed


def test_gpu_train_step_refuses_the_sizes_it_would_override(capsys):
    """It runs train_mlp and train_conv at B=65536, D=784: --ops, --batch and --dim were
    replaced without a word."""
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--gpu-train-step", "--ops", "elbo", "--batch", "1024"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("fastvae bench: error: argument --ops, --batch: --gpu-train-step "
                          "runs train_mlp and train_conv at B=65536, D=784") and \
        len(err.strip().splitlines()) == 1


def test_json_and_plot_of_one_file_are_refused(capsys, tmp_path):
    """The figure, written last, replaced the JSON."""
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--json", str(tmp_path / "a.png"), "--plot",
                  str(tmp_path / "." / "a.png")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "arguments --json, --plot: both name" in err and len(err.strip().splitlines()) == 1


def test_the_proxy_refuses_here_with_another_triton(capsys, tmp_path):
    """--triton was ignored without a word beside --here."""
    from fastvae.bench.offline import __main__ as offline

    (tmp_path / "triton").mkdir()   # what the flag's own check looks for
    with pytest.raises(SystemExit) as e:
        offline.main(["proxy", "--here", "--triton", str(tmp_path)])
    assert e.value.code == 2
    assert "--here runs this interpreter's Triton, --triton another's" in capsys.readouterr().err


def test_a_run_that_measures_nothing_says_so_and_draws_no_figure(tmp_path, capsys):
    """Every case over --max-elements: one line and exit 2 (not 0 with an empty figure);
    the JSON is still written, no rows and the skipped case listed, as a run's record."""
    out_json, out_png = tmp_path / "e.json", tmp_path / "e.png"
    assert cli.main(["bench", "--ops", "elbo", "--batch", "64", "--dim", "16", "--latent", "8",
                     "--max-elements", "100", "--json", str(out_json),
                     "--plot", str(out_png)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("fastvae bench: error: no case was measured (") and "100" in line
    assert line.endswith("no figure was written") and not out_png.exists()
    data = json.loads(out_json.read_text())
    assert data["rows"] == [] and [c["batch"] for c in data["skipped"]] == [64]


def test_the_plot_gives_each_variant_one_colour_in_every_panel(monkeypatch):
    """matplotlib's colour cycle restarts per panel: a panel without `distributions` would
    draw fastvae-torch in the colour another panel gives distributions."""
    pytest.importorskip("matplotlib")
    from fastvae.bench import report
    figs = []
    monkeypatch.setattr(report, "save_figure", lambda fig, path, **kw: figs.append(fig))

    def row(variant, dim, batch):
        return dict(op="elbo", variant=variant, batch=batch, dim=dim, latent=3, k=None,
                    dtype="fp32", shape=f"B={batch} D={dim} L=3", speedup_vs_eager=1.5)
    rows = [row(v, 12, b) for v in ("eager", "fastvae-torch") for b in (16, 32)]
    rows += [row(v, 24, b) for v in ("eager", "distributions", "fastvae-torch") for b in (16, 32)]
    report.plot(rows, "unused.png")
    (fig,) = figs
    colours = [{ln.get_label(): ln.get_color() for ln in ax.get_lines() if ln.get_label()[0] != "_"}
               for ax in fig.axes if ax.get_lines()]
    assert len(colours) == 2 and set(colours[0]) == {"eager", "fastvae-torch"}
    assert all(c[v] == colours[1][v] for c in colours for v in c)
    assert len(set(colours[1].values())) == 3
    with pytest.raises(ValueError, match="no timed row"):
        report.plot([], "unused.png")


def _unbuildable(case, inputs):   # as torch.compile's first call fails without a C++ compiler
    def step():
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")
    return step


def test_a_compile_torch_cannot_build_is_an_error_row_and_the_run_goes_on(tmp_path, capsys,
                                                                          monkeypatch):
    """No C++ compiler: compile's first call fails. Its rows say why, every other variant
    is timed, the JSON is written, and one line at the end says it once for all cases."""
    monkeypatch.setitem(core.OPS["elbo"].variants, core.COMPILE,
                        core.Variant(core.COMPILE, _unbuildable))
    out = tmp_path / "b.json"
    code = cli.main(["bench", "--ops", "elbo", *TINY, "--batch", "8,16", "--variants",
                     "compile,fastvae-torch", "--json", str(out)])
    text, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in err, err
    rows = json.loads(out.read_text())["rows"]
    assert sorted((r["variant"], r["error_kind"]) for r in rows) == [
        ("compile", "not built"), ("compile", "not built"), ("eager", None), ("eager", None),
        ("fastvae-torch", None), ("fastvae-torch", None)]
    assert text.count("not timed, not built: compile: torch.compile could not build it "
                      "(RuntimeError: InvalidCxxCompiler: No working C++ compiler found)") == 2
    assert err.strip().splitlines()[-1] == (
        "fastvae bench: error: compile: torch.compile could not build it (RuntimeError: "
        "InvalidCxxCompiler: No working C++ compiler found) on 2 case(s); --variants without "
        "compile times the others alone")


def test_another_variant_that_fails_still_raises(monkeypatch):
    """Only compile's failure to build is a row: a fastvae variant that raises is a bug."""
    from fastvae.bench.harness import prepare
    from fastvae.bench.core import Case
    monkeypatch.setitem(core.OPS["elbo"].variants, "fastvae-torch",
                        core.Variant("fastvae-torch", _unbuildable))
    with pytest.raises(RuntimeError, match="InvalidCxxCompiler"):
        prepare(Case("elbo", 8, 12, 3), ["fastvae-torch"], drop_disagreeing=True)


@pytest.mark.parametrize("argv,flag,op", [
    (["--ops", "elbo", "--k-iwae", "7"], "--k-iwae", "iwae"),
    (["--ops", "elbo,iwae", "--k-iwae", "7", "--k-reparam", "2"], "--k-reparam",
     "reparameterize")])
def test_a_k_flag_of_an_op_not_run_is_a_usage_error(capsys, argv, flag, op):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", *argv, *TINY])
    assert e.value.code == 2
    assert (f"error: argument {flag}: sets K of {op}, which this run does not run"
            in capsys.readouterr().err)


def test_the_json_s_command_is_the_argv_main_was_given(tmp_path):
    out = tmp_path / "b.json"
    from fastvae.bench import main
    assert main(["--ops", "elbo", *TINY, "--variants", "eager", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["environment"]["command"] == (
        "fastvae bench --ops elbo " + " ".join(TINY) + f" --variants eager --json {out}")
