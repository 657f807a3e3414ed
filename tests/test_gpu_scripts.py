"""The GPU session's own checks run on CPU too: the tile sweep's agreement check and its
configuration patch (benchmarks/gpu_tiles.py), the VDVAE-like loop's closed-form check of
sample_with_kl (benchmarks/gpu_hvae_loop.py) passes the real op and catches a wrong one, and
benchmarks/gpu_session.sh without CUDA reports every GPU stage as skipped."""
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess

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


# The console and steps.tsv names of the stages that need CUDA (ncu-iwae runs under ncu's).
GPU_STAGES = ("bar", "captured bar", "probe", "tiles", "host profile", "hvae loop", "ncu",
              "tests")


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                    reason="gpu_session.sh needs bash and coreutils' timeout")
def test_gpu_session_without_cuda_skips_every_gpu_stage_with_its_reason(tmp_path):
    """The header's promise: without CUDA (and without FASTVAE_GPU_SMOKE) each GPU stage is
    skipped with a one-line reason, on the console and in steps.tsv, and the script exits 2.
    A stub interpreter stands in for Python: the env stage's CUDA probe says "none" (exit
    3), as on a CPU machine, whatever this one has, in a second instead of torch's import."""
    py = tmp_path / "python"
    py.write_text('#!/bin/sh\ncase "$*" in\n  *is_available*) echo "cuda: none (stub)"; exit 3 ;;\n'
                  '  -) cat >/dev/null ;;\nesac\nexit 0\n')
    py.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTVAE_GPU_")}
    env.update(PYTHON=str(py), OUT=str(tmp_path / "out"), FASTVAE_GPU_KEEP_RAW="1")
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    steps = (tmp_path / "out" / "raw" / "steps.tsv").read_text().splitlines()
    for name in GPU_STAGES:
        assert f"== {name}: skipped, no CUDA device" in res.stdout, name
        assert f"{name}\tskipped (no CUDA device (see env.txt))\t0\t0" in steps, name
