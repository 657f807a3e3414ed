"""``train_hvae``: one training step (forward, ELBO, backward, Adam) of
:class:`fastvae.models.HierarchicalVAE` (default architecture: 2 stages x 2 groups, 4
latent groups at two resolutions, ``L`` channels per group) on ``D``-pixel images
(``(1, 28, 28)`` for 784, ``(1, s, s)`` for any square).

``eager`` is the same model with the eager per-group sampling and KL (backend
"reference": ``z = mu + exp(logvar/2) * randn`` and the KL term by term, autograd for the
backward, the pattern VDVAE and NVAE write); ``fastvae-torch`` and ``fastvae-triton`` run
every group through the fused :func:`fastvae.sample_with_kl`. Every variant's checked
first step starts from the same weights and the same seed. Neither fused backend's
float32 sampler draws from torch's stream (in-kernel Philox), so the checked step of
"torch" draws ``torch.randn``'s eps inside the fused ops (``randn_noise``) and Triton's
draws eagerly; the samplers are checked in ``sample_with_kl``. The step is
convolution-bound: no roofline.
"""
import copy
import math

import torch

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
            step.check_step = lambda: run("reference")
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
