"""``train_hvae``: one training step (forward, ELBO, backward, Adam) of
:class:`fastvae.models.HierarchicalVAE` (default architecture: 2 stages x 2 groups, 4
latent groups at two resolutions, ``L`` channels per group) on ``D``-pixel images
(``(1, 28, 28)`` for 784, ``(1, s, s)`` for any square).

``eager`` is the same model with the eager per-group sampling and KL (backend
"reference": ``z = mu + exp(logvar/2) * randn`` and the KL term by term, autograd for the
backward: the pattern VDVAE and NVAE write, plus the reference's few ops that hold
``exp(-logvar_p/2)`` below float overflow, under 1% of this convolution-bound step);
``fastvae-torch`` and ``fastvae-triton`` run every group through the fused
:func:`fastvae.sample_with_kl`; the likelihood term runs
on each variant's backend too (``HierarchicalVAE.elbo(backend=)``). Every variant's
checked first step starts from the same weights and the same seed. Neither fused
backend's float32 sampler draws from torch's stream (in-kernel Philox), so the checked
step of "torch" draws ``torch.randn``'s eps inside the fused ops (``randn_noise``), and
Triton's draws each group's z as eager does and computes its KL with the Triton
``kl_normal`` (:func:`_eager_draws`); the likelihood is Triton's either way, and the
samplers are checked in ``sample_with_kl``. The step is convolution-bound: no roofline.
"""
import contextlib
import copy
import math
from unittest import mock

import torch

import fastvae
from fastvae import hvae
from fastvae.backends.torch_backend.reparameterize import randn_noise
from fastvae.hvae import HierarchicalVAE

from ..core import Op, Variant, at_least_one

ORDER = 6


def needs(axis: str, value: int):
    """Its sizes (:attr:`Op.needs`): a square image of D >= 1 pixels, L >= 1 channels."""
    why = at_least_one(axis, value)
    if why is None and axis == "dim" and math.isqrt(value) ** 2 != value:
        why = "D = H*W (a square)"
    return why


def image_shape(dim: int):
    why = needs("dim", dim)
    if why:
        raise ValueError(f"train_hvae needs {why}, got D={dim}")
    side = math.isqrt(dim)
    return (1, side, side)


def make_inputs(case, gen):
    """The model (weights from a seed drawn from ``gen``) and a batch of binary images."""
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    shape = image_shape(case.dim)
    model = HierarchicalVAE(data_shape=shape, latent_channels=case.latent)
    model = model.to(device=case.device, dtype=case.dtype)
    x = (torch.rand((case.batch,) + shape, generator=gen) < 0.3).float()
    return {"x": x.to(device=case.device, dtype=case.dtype), "model": model, "seed": 1234}


@contextlib.contextmanager
def _eager_draws(kl_backend: str):
    """The model's per-group ``sample_with_kl`` with z drawn as the eager variant draws it
    (the reference's, ``torch.randn``'s eps) and the KL on ``kl_backend``: a backend whose
    sampler has its own stream is still checked on everything but the draw."""
    def draw(mu_q, logvar_q, mu_p=None, logvar_p=None, generator=None, backend=None):
        z, _ = fastvae.sample_with_kl(mu_q, logvar_q, mu_p, logvar_p, generator=generator,
                                      backend="reference")
        return z, fastvae.kl_normal(mu_q, logvar_q, 0.0 if mu_p is None else mu_p,
                                    0.0 if logvar_p is None else logvar_p, backend=kl_backend)
    with mock.patch.object(hvae, "sample_with_kl", draw):
        yield


def _build(backend: str, own_rng: bool = False, randn_check: bool = False):
    def build(case, inputs):
        x, model = inputs["x"], copy.deepcopy(inputs["model"])
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        params = list(model.parameters())

        def run(on):
            opt.zero_grad(set_to_none=True)
            loss = -model.elbo(x, backend=on)
            loss.backward()
            opt.step()
            return (loss.detach(), *(p.grad for p in params))

        def step():
            return run(backend)
        step.release = lambda: opt.zero_grad(set_to_none=True)
        if own_rng:
            def check_step():
                with _eager_draws(backend):
                    return run(backend)
            step.check_step = check_step
        if randn_check:
            def check_step():
                with randn_noise():
                    return run(backend)
            step.check_step = check_step
        return step
    return build


VARIANTS = {
    "eager": Variant("eager", _build("reference")),
    "fastvae-torch": Variant("fastvae-torch", _build("torch", randn_check=True)),
    "fastvae-triton": Variant("fastvae-triton", _build("triton", own_rng=True), cuda_only=True),
}

OPS = [
    Op("train_hvae", make_inputs, VARIANTS, uses_dim=True, needs=needs,
       grids={"cpu": dict(batch=[32, 256], dim=[784], latent=[8]),
              "cuda": dict(batch=[16, 256], dim=[784], latent=[8]),
              "suite_cpu": dict(batch=[32, 256], dim=[784], latent=[8]),
              "suite_cuda": dict(batch=[16, 256], dim=[784], latent=[8])}),
]
