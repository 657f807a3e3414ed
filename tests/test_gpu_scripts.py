"""The GPU session's own checks run on CPU too: the tile sweep's agreement check and its
configuration patch (benchmarks/gpu_tiles.py), the VDVAE-like loop's closed-form check of
sample_with_kl (benchmarks/gpu_hvae_loop.py) passes the real op and catches a wrong one, and
benchmarks/gpu_session.sh without CUDA reports every GPU stage as skipped, refuses an unknown
stage name, and exits 1 (with the summary rebuilt after each stage) when a stage fails."""
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch

import fastvae

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _module(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_hvae_loop_check_passes_the_op_and_catches_a_wrong_gradient():
    loop = _module("gpu_hvae_loop")
    groups = loop.make_groups(loop.group_shapes(3, [(1, 1), (4, 2)]), torch.device("cpu"))

    def fused(*a):
        return fastvae.sample_with_kl(*a, backend="torch")
    loop.check_fastvae(groups, fused)

    def wrong(mu, lv, pm, plv):   # the KL's dlogvar_p off by a factor: only a gradient moves
        z, kl = fused(mu, lv, pm, plv)
        return z, kl + 0.01 * (plv - plv.detach()).flatten(1).sum(1)
    with pytest.raises(AssertionError, match="dlogvar_p"):
        loop.check_fastvae(groups, wrong)


def test_hvae_loop_whole_step_forward_is_the_per_group_step():
    """The whole-step compile's step (``forward_all``, here uncompiled) draws, returns and
    differentiates what the per-group step does, group for group."""
    loop = _module("gpu_hvae_loop")
    groups = loop.make_groups(loop.group_shapes(2, [(1, 1), (4, 2)]), torch.device("cpu"))
    results = []
    for kwargs in ({"fn": loop.eager_sample_with_kl}, {"forward_all": loop.every_group}):
        torch.manual_seed(0)
        outs = loop.make_step(groups, **kwargs)()
        results.append((outs, [t.grad.clone() for gr in groups for t in gr["leaves"]]))
    (outs_a, grads_a), (outs_b, grads_b) = results
    assert len(outs_a) == 2 * len(groups) and len(grads_a) == 4 * len(groups)
    for a, b in zip(outs_a + grads_a, outs_b + grads_b):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_hvae_loop_smoke_labels_its_cpu_columns(tmp_path):
    """--smoke times the CPU's wall clock, and the profiler counts CUDA kernels only: the
    table says "cpu wall ms" and "-" launches (a 0.0 read as no launch at all)."""
    loop = _module("gpu_hvae_loop")
    assert loop.main(["--smoke", "--out", str(tmp_path), "--reps", "1"]) == 0
    md = (tmp_path / "hvae_loop.md").read_text()
    head = md.split("| variant | ")[1].splitlines()[0]
    assert head.startswith("cpu wall ms |"), head
    table = [line for line in md.splitlines() if line.startswith(("| eager", "| fastvae"))]
    assert len(table) == 2 and all(line.endswith("| - |") for line in table), table
    res = json.loads((tmp_path / "hvae_loop.json").read_text())
    assert all(r["launches_per_group"] is None for r in res["cases"][0]["rows"])
    assert "batch 2" in res["cases"][0]["case"]
    for flag, value in (("--reps", "0"), ("--budget-s", "nan")):   # error rows, exit 0
        with pytest.raises(SystemExit) as e:
            loop.main(["--smoke", "--out", str(tmp_path), flag, value])
        assert e.value.code == 2


def test_hvae_loop_names_its_two_graph_ratios_for_what_each_divides():
    """Two ratios, two columns: eager's graph replay over the row's ("graph x eager
    graph", 1.00 for eager's own row) and eager's uncaptured ms over the row's graph
    replay ("graph x uncaptured eager"). A ratio with no eager row to divide is "-", not
    0.00."""
    loop = _module("gpu_hvae_loop")
    rows = [{"variant": "eager", "ms": 10.0, "host_us": 1.0, "graph_ms": 2.0},
            {"variant": "fastvae-triton", "ms": 5.0, "host_us": 1.0, "graph_ms": 0.5},
            {"variant": "compile", "ms": 4.0, "host_us": 1.0}]
    loop.ratios(rows)
    eager, fused, compiled = rows
    assert (eager["graph_x_eager_graph"], eager["graph_x_uncaptured_eager"]) == (1.0, 5.0)
    assert (fused["graph_x_eager_graph"], fused["graph_x_uncaptured_eager"]) == (4.0, 20.0)
    assert fused["x_eager"] == 2.0 and "graph_x_eager_graph" not in compiled
    no_eager = [{"variant": "fastvae-triton", "ms": 5.0, "host_us": 1.0}]
    loop.ratios(no_eager)
    md = loop.markdown({"device": "d", "torch": "t", "triton": "t", "cuda": True, "cases": [
        {"case": "c", "groups": 1, "rows": rows}, {"case": "e", "groups": 1, "rows": no_eager}]})
    head = next(line for line in md.splitlines() if line.startswith("| variant |"))
    cells = [c.strip() for c in head.strip("|").split("|")]
    assert cells[4:7] == ["graph ms", "graph x eager graph", "graph x uncaptured eager"], cells
    table = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
             for line in md.splitlines() if line.startswith(("| eager", "| fastvae"))}
    assert table["eager"][5:7] == ["1.00", "5.00"]
    assert table["fastvae-triton"][2] == "-"   # the second case: no eager row measured


def test_hvae_loop_fails_on_a_failed_variant_and_keeps_rows_as_it_goes(tmp_path, monkeypatch):
    """A variant that raises is an error row and exit 1 (gpu_session.sh read 0 as "ok"),
    and each row is in the report as soon as it is measured (a stage killed at its limit
    kept nothing)."""
    loop = _module("gpu_hvae_loop")
    real = loop.measure
    seen = []

    def measure(name, *a, **k):
        if seen:   # the report already holds the row before this one
            res = json.loads((tmp_path / "hvae_loop.json").read_text())
            assert [r["variant"] for r in res["cases"][0]["rows"]] == seen
        seen.append(name)
        if name.startswith("fastvae"):
            raise RuntimeError("a kernel failed")
        return real(name, *a, **k)
    monkeypatch.setattr(loop, "measure", measure)
    assert loop.main(["--smoke", "--out", str(tmp_path), "--reps", "1"]) == 1
    assert seen == ["eager", "fastvae-torch"]
    assert "| fastvae-torch | RuntimeError: a kernel failed |" in (
        tmp_path / "hvae_loop.md").read_text()


def test_tile_sweep_checks_every_candidate_and_restores_the_shipped_tiles(monkeypatch):
    """benchmarks/gpu_tiles.py: its check passes equal outputs and names a gradient or a
    value that moved; a candidate's tables hold inside its block only, and the ELBO's plans
    are rebuilt on the way in and out."""
    pytest.importorskip("triton")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    tiles = _module("gpu_tiles")
    g = [torch.randn(4, 3), torch.randn(4, 2)]
    want = (10.0, g)
    assert tiles.agreement((10.0, [t.clone() for t in g]), want) == ""
    moved = [g[0].clone(), g[1].clone()]
    moved[1][2, 1] = torch.nextafter(moved[1][2, 1], torch.tensor(1e9))
    assert "gradients [1] differ" in tiles.agreement((10.0, moved), want)
    assert "value" in tiles.agreement((10.001, g), want)

    from fastvae.backends.triton_backend import configs, elbo
    before = (dict(configs.ELBO_TILE_ELEMENTS), configs.ELBO_WARPS, configs.ELBO_BLOCK_D,
              dict(configs.ELBO_STAGES))
    elbo._PLANS["stale"] = None
    with pytest.raises(RuntimeError):
        with tiles.Patched(2, dict(tile=1024, warps=8, block_d=128, stages=3)):
            assert "stale" not in elbo._PLANS
            assert (configs.ELBO_TILE_ELEMENTS[2], configs.ELBO_WARPS, configs.ELBO_BLOCK_D,
                    configs.ELBO_STAGES[2]) == (1024, 8, 128, 3)
            assert configs.ELBO_TILE_ELEMENTS[4] == before[0][4]
            elbo._PLANS["stale"] = None
            raise RuntimeError("a failed candidate")
    assert "stale" not in elbo._PLANS
    assert (dict(configs.ELBO_TILE_ELEMENTS), configs.ELBO_WARPS, configs.ELBO_BLOCK_D,
            dict(configs.ELBO_STAGES)) == before


def test_tile_sweep_refuses_a_budget_that_is_not_a_positive_number(capsys, monkeypatch):
    """A negative --budget-s would skip every candidate and exit 0; nan would disable it."""
    pytest.importorskip("triton")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    tiles = _module("gpu_tiles")
    for value in ("-1", "0", "nan"):
        with pytest.raises(SystemExit) as e:
            tiles.main(["--smoke", "--budget-s", value])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "argument --budget-s: must be a" in err, err


# The console and steps.tsv names of the stages that need CUDA.
GPU_STAGES = ("bar", "captured bar", "probe", "tiles", "host profile", "hvae loop", "ncu",
              "ncu iwae", "tests")
needs_bash = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="gpu_session.sh needs bash and coreutils' timeout")


def _session(tmp_path, stub, **env_vars):
    """gpu_session.sh under a stub interpreter (a shell script standing in for Python)."""
    py = tmp_path / "python"
    py.write_text(stub)
    py.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTVAE_GPU_")}
    env.update(PYTHON=str(py), OUT=str(tmp_path / "out"), FASTVAE_GPU_KEEP_RAW="1", **env_vars)
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh")], env=env,
                          capture_output=True, text=True, timeout=120)


@needs_bash
def test_gpu_session_without_cuda_skips_every_gpu_stage_with_its_reason(tmp_path):
    """The header's promise: without CUDA (and without FASTVAE_GPU_SMOKE) each GPU stage is
    skipped with a one-line reason, on the console and in steps.tsv, and the script exits 2.
    A stub interpreter stands in for Python: the env stage's CUDA probe says "none" (exit
    3), as on a CPU machine, whatever this one has, in a second instead of torch's import."""
    res = _session(tmp_path, '#!/bin/sh\ncase "$*" in\n  *is_available*) echo "cuda: none '
                   '(stub)"; exit 3 ;;\n  -) cat >/dev/null ;;\nesac\nexit 0\n')
    assert res.returncode == 2, res.stdout + res.stderr
    steps = (tmp_path / "out" / "raw" / "steps.tsv").read_text().splitlines()
    for name in GPU_STAGES:
        assert f"== {name}: skipped, no CUDA device" in res.stdout, name
        assert f"{name}\tskipped (no CUDA device (see env.txt))\t0\t0" in steps, name


@needs_bash
def test_gpu_session_refuses_an_unknown_stage_before_anything_runs(tmp_path):
    """A misspelt FASTVAE_GPU_STAGES entry would match no stage: the call would measure
    nothing. One line names it and the valid names; nothing is written."""
    res = _session(tmp_path, "#!/bin/sh\nexit 0\n", FASTVAE_GPU_STAGES="tile,hvae-loop,ncu")
    assert res.returncode == 2 and res.stdout == "", res.stdout + res.stderr
    (line,) = res.stderr.splitlines()
    assert "unknown stage 'tile', 'hvae-loop' in FASTVAE_GPU_STAGES" in line
    assert "ncu-iwae" in line and not (tmp_path / "out").exists()
    # spaces separate names as commas do; the message quotes the value as given
    res = _session(tmp_path, "#!/bin/sh\nexit 0\n", FASTVAE_GPU_STAGES="tests tilez")
    assert res.returncode == 2 and res.stderr.startswith(
        "gpu_session: unknown stage 'tilez' in FASTVAE_GPU_STAGES='tests tilez'"), res.stderr
    for empty in (",", " , "):   # set, but naming no stage: not "every stage"
        res = _session(tmp_path, "#!/bin/sh\nexit 0\n", FASTVAE_GPU_STAGES=empty)
        assert res.returncode == 2 and res.stdout == "", res.stdout + res.stderr
        assert "names no stage" in res.stderr and not (tmp_path / "out").exists()


@needs_bash
def test_gpu_session_exits_1_when_a_stage_fails_and_summarizes_after_each_stage(tmp_path):
    """With CUDA (the stub's env probe passes) a failed stage makes the exit status 1 and is
    named last; the next stage still runs, and by then 0-summary.md and 0-session.tgz already
    hold the failed one (a call cut short still brings the summary back)."""
    stub = """#!/bin/sh
case "$*" in
  *"--ops elbo"*) echo "stub: elbo failed"; exit 1 ;;
  *"--ops reparameterize"*) cp "$OUT/../0-summary.md" "$OUT/../mid-summary.md"
    tar tzf "$OUT/../0-session.tgz" >"$OUT/../mid-tgz.txt" ;;
  -) cat >/dev/null ;;
esac
exit 0
"""
    res = _session(tmp_path, stub, FASTVAE_GPU_STAGES=" bar ")   # spaces are ignored
    out = tmp_path / "out"
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stdout.splitlines()[-1] == "gpu_session: failed or timed out: bar elbo (exit 1)"
    assert "== bar reparameterize: ok" in res.stdout
    mid = (out / "mid-summary.md").read_text()
    assert "failed or timed out: bar elbo (exit 1)" in mid and "stub: elbo failed" in mid
    assert "raw/summary.md" in (out / "mid-tgz.txt").read_text().split()
    assert "bar reparameterize" in (out / "0-summary.md").read_text()


@needs_bash
def test_gpu_session_runs_fastvae_from_a_tree_where_it_is_not_installed(tmp_path):
    """A GPU machine's Python has torch but no fastvae, and perhaps no setuptools >= 77 for
    ``pip install -e .`` (pyproject's license field) or nowhere to install: the session
    used fastvae only through that install, so a failed one failed the env stage and every
    GPU stage after it was skipped. Now it runs the tree's own: PYTHONPATH at the root and
    fastvae/kernels linked to kernels/ (git-ignored). Simulated with this Python under
    ``-S`` (site-packages on the path, its .pth files, the editable install's, unread) on a
    copy of the tree without the link; no pip runs."""
    import site
    import sysconfig
    tree = tmp_path / "tree"
    for part in ("benchmarks", "fastvae", "kernels"):
        shutil.copytree(ROOT / part, tree / part, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    link = tree / "fastvae" / "kernels"   # a checkout's own link (what the session makes)
    if link.is_symlink():
        link.unlink()
    (tree / "tests").mkdir()
    shutil.copy(ROOT / "tests" / "test_triton_interpreter.py", tree / "tests")
    assert not (tree / "fastvae" / "kernels").exists()
    paths = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
             *site.getsitepackages()]
    py = tmp_path / "python"
    py.write_text('#!/bin/sh\nPYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}%s" exec %s -S "$@"\n'
                  % (":".join(dict.fromkeys(paths)), sys.executable))
    py.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("FASTVAE_GPU_") and k != "PYTHONPATH"}
    env.update(PYTHON=str(py), OUT=str(tmp_path / "out"), FASTVAE_GPU_KEEP_RAW="1",
               FASTVAE_GPU_STAGES="env")
    bare = subprocess.run([str(py), "-c", "import fastvae"], env=env, cwd=tmp_path,
                          capture_output=True, text=True)
    assert bare.returncode != 0, "the stand-in Python imports fastvae without the tree"
    res = subprocess.run(["bash", str(tree / "benchmarks" / "gpu_session.sh")], env=env,
                         capture_output=True, text=True, timeout=300)
    env_txt = (tmp_path / "out" / "raw" / "env.txt").read_text()
    assert f"from {tree / 'fastvae' / '__init__.py'}" in env_txt, res.stdout + env_txt
    assert "linked fastvae/kernels -> ../kernels" in env_txt
    assert "install" not in (tmp_path / "out" / "raw" / "steps.tsv").read_text()
    assert (tree / "fastvae" / "kernels").is_symlink()
