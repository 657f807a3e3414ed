"""``train_mlp`` / ``train_conv``: one full training step (forward, loss, backward,
Adam) of ``fastvae.models.VAE`` (D -> 400 -> L, as pytorch/examples) and ``ConvVAE``.

``eager`` / ``distributions`` / ``compile`` draw z with the eager reparameterization
(backend "reference") and compute their own loss from the model's outputs; the
``fastvae-*`` variants run the model on the fused backend end to end (its sampler and
loss; the layers are the same nn modules). ``compile`` here is ``torch.compile`` of the
eager loss only: the model's forward and backward and Adam run eager, as in every
variant, so the variants differ only in the loss (and fastvae's sampler). Every variant's
first (checked) step starts from the same weights and noise; it returns the loss and
every parameter's gradient. Training steps are matmul-bound: no roofline.
"""
import copy
import math
from typing import Tuple

import torch

import fastvae
from fastvae import models
from fastvae.backends.torch_backend.reparameterize import randn_noise

from ..core import Op, at_least_one
from ._common import distributions_loss, eager_loss, fastvae_loss, standard_variants

ORDER = 5


KNOWN_IMAGES = {784: (1, 28, 28), 3072: (3, 32, 32)}


def conv_needs(axis: str, value: int):
    """The ConvVAE's sizes (:attr:`Op.needs`): an image of D pixels, a latent of L >= 1."""
    why = at_least_one(axis, value)
    if why is None and axis == "dim" and value not in KNOWN_IMAGES \
            and math.isqrt(value) ** 2 != value:
        why = "D = H*W (a square) or 3072"
    return why


def image_shape(dim: int) -> Tuple[int, int, int]:
    """(C, H, W) for the ConvVAE: MNIST's 1x28x28 for 784, CIFAR's 3x32x32 for 3072."""
    why = conv_needs("dim", dim)
    if why:
        raise ValueError(f"train_conv needs {why}, got D={dim}")
    if dim in KNOWN_IMAGES:
        return KNOWN_IMAGES[dim]
    side = math.isqrt(dim)
    return (1, side, side)


def make_inputs(case, gen):
    """The model (its weights from a seed drawn from ``gen``) and a batch x."""
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    if case.op == "train_mlp":
        data_shape = (case.dim,)
        model = models.VAE(data_shape=data_shape, latent_dim=case.latent, hidden=(400,))
    else:
        data_shape = image_shape(case.dim)
        model = models.ConvVAE(data_shape=data_shape, latent_dim=case.latent)
    model = model.to(device=case.device, dtype=case.dtype)
    x = torch.rand((case.batch,) + data_shape, generator=gen, device=case.device)
    return {"x": x.to(case.dtype), "model": model, "seed": 1234}


def train_step_builder(get_loss, backend: str, own_rng: bool = False):
    """A training-step variant's ``build``: one Adam step of a copy of the case's
    model, on ``backend``, with the loss ``get_loss()`` computed from its outputs.
    ``own_rng``: the backend's sampler does not draw from torch's stream (Triton's
    in-kernel Philox), so the checked first step draws z with the eager sampler
    instead; the sampler has its own check in ``reparameterize``."""
    def build(case, inputs):
        x, model = inputs["x"], copy.deepcopy(inputs["model"])
        loss_fn = get_loss()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        params = list(model.parameters())

        def run(eager_noise):
            opt.zero_grad(set_to_none=True)
            if eager_noise:  # the same z as eager's, from torch's RNG stream
                mu, logvar = model.encode(x)
                z = fastvae.reparameterize(mu, logvar, backend="reference")
                recon = model.decode(z)
            else:
                recon, mu, logvar, _ = model(x, backend=backend)
            loss = loss_fn(x, recon, mu, logvar)
            loss.backward()
            opt.step()
            return (loss.detach(), *(p.grad for p in params))

        def step():
            return run(False)
        step.release = lambda: opt.zero_grad(set_to_none=True)
        if own_rng:
            step.check_step = lambda: run(True)
        return step
    return build


def _make(get_fn, backend):
    if backend == "torch":  # its float32 draw is its own Philox stream: checked on randn's
        return _on_randn(train_step_builder(get_fn, backend))
    return train_step_builder(get_fn, backend or "reference", own_rng=backend == "triton")


def _on_randn(build):
    """A "torch" variant whose checked first step draws ``torch.randn``'s eps (eager's
    stream) inside the fused ops; its timed steps draw in the C kernel."""
    def wrapped(case, inputs):
        step = build(case, inputs)

        def check_step():
            with randn_noise():
                return step()
        step.check_step = check_step
        return step
    return wrapped


def _variants():
    return standard_variants(_make, eager_loss, distributions_loss, fastvae_loss)


OPS = [
    Op("train_mlp", make_inputs, _variants(),
       grids={"quick": dict(batch=[4096], dim=[784]),
              "cpu": dict(batch=[256, 4096, 32768], dim=[784]),
              "cuda": dict(batch=[4096, 65536], dim=[784]),
              "quick_cuda": dict(batch=[65536], dim=[784])}, needs=at_least_one),
    # Conv steps are slow on a few CPU cores: small batches there, none in --quick.
    Op("train_conv", make_inputs, _variants(),
       grids={"cpu": dict(batch=[256], dim=[784]),
              "cuda": dict(batch=[4096], dim=[784]),
              "suite_cpu": dict(batch=[256, 4096])}, needs=conv_needs),
]
