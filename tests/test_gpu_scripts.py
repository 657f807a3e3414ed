"""The GPU session's own checks run on CPU too: the VDVAE-like loop's closed-form check of
sample_with_kl (benchmarks/gpu_hvae_loop.py) passes the real op and catches a wrong one."""
import importlib.util
import pathlib

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
