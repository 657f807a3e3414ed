"""A device without float64 (Apple's MPS): what runs on the model's device (an evaluation,
an IWAE NLL estimate, a DMoL grid check, a train step) takes ``_dtypes.widest`` for the sums
that must not drift, never float64 outright. With no MPS here, widest is made to answer
float32 for the CPU, and every op is watched for a float64 tensor going in or coming out."""
import sys
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_leaves

import fastvae
from fastvae import _dtypes, evaluation, train as T
from fastvae.guard import Guard
from fastvae.models import build_model

ON_MPS = ("reference", "torch")   # the ones that run on MPS tensors (Triton: CUDA only)


class NoFloat64(TorchDispatchMode):
    """Raises at the first op with a float64 tensor among its inputs or outputs."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves((args, kwargs, out)):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                raise AssertionError(f"{func} has a float64 tensor")
        return out


@pytest.fixture(autouse=True)
def no_float64_device(monkeypatch):
    """widest() as on MPS, here and wherever a module took it by name."""
    real = _dtypes.widest
    for mod in [m for name, m in sys.modules.items() if name.startswith("fastvae")]:
        if getattr(mod, "widest", None) is real:
            monkeypatch.setattr(mod, "widest", lambda device: torch.float32)


def _images(shape, n=6, levels=255):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, levels + 1, (n, *shape), generator=g).float() / levels


MODELS = {
    "mlp": dict(model="mlp", data_shape=[16], latent=2, hidden=[8]),
    "hvae": dict(model="hvae", data_shape=[1, 8, 8], latent=2, channels=[4, 8]),
    "dmol": dict(model="conv", data_shape=[3, 4, 4], latent=2, hidden=8, channels=[4],
                 likelihood="discretized_logistic_mixture", n_mix=2),
}


@pytest.mark.parametrize("backend", ON_MPS)
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_evaluation_and_iwae_nll_stay_off_float64(kind, backend):
    torch.manual_seed(0)
    core = build_model(MODELS[kind])
    images = _images(MODELS[kind]["data_shape"])
    cfg = {"seed": 0, "backend": backend}
    with NoFloat64():
        m = evaluation.evaluate(core, images, cfg, "cpu", batch_size=4)
        nll = evaluation.iwae_nll(core, images, 3, "cpu", 0, batch_size=4, backend=backend)
    assert all(isinstance(v, float) for v in (m["elbo"], nll))


def test_dmol_grid_check_stays_off_float64():
    x = _images([3, 2, 2], n=2)
    params = torch.randn(2, 10 * 2, 2, 2)
    with NoFloat64():
        fastvae.discretized_logistic_mixture_log_prob(x, params, validate=True)


def test_train_step_reduces_its_loss_off_float64(tmp_path, monkeypatch):
    torch.manual_seed(0)
    core = build_model(MODELS["mlp"])
    cfg = dict(backend="torch", beta=1.0, kl="analytic", kl_warmup=0)
    run = SimpleNamespace(cfg=cfg, device=torch.device("cpu"), core=core, world=1,
                          amp_dtype=None, opt=torch.optim.SGD(core.parameters(), lr=0.1),
                          scaler=torch.amp.GradScaler("cpu", enabled=False))
    guard = Guard(tmp_path / "checkpoint.pt", None, tmp_path, 0.1)
    host = T._host_sums   # the epoch's sums are kept on the host, in float64

    def on_host(*args):
        with _disable_current_modes():
            return host(*args)

    monkeypatch.setattr(T, "_host_sums", on_host)
    with NoFloat64():
        sums = T._train_step(run, core, guard, _images([16]), 1, 0, 1)
    assert sums.dtype == torch.float64 and sums[1] == 6
